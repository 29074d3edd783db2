"""Nomad's blocking queries: ``?index=N&wait=5m`` and the ``X-Nomad-Index`` header.

A read with ``index`` waits until the thing it reads has changed past that index, or
until ``wait`` passes (default 5 minutes, at most 10, as Nomad), and then answers
with the current value. The wait parks on the cluster's latest-only broadcaster: a
parked query costs no CPU and wakes at the first change that concerns it.

Threads: the caller's request thread, parked in `Cluster.wait_for`. Locks: none.
Owner: helpers for the API handlers.
"""

from __future__ import annotations

from collections.abc import Callable

from allocrunner.agent.cluster import ClusterState
from allocrunner.agent.context import ApiContext
from allocrunner.agent.errors import bad_request
from allocrunner.agent.http import Request
from allocrunner.durations import parse_duration

DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0


def wait_time(req: Request) -> float:
    """The ``wait`` parameter in seconds (a Go duration, or bare seconds)."""
    raw = req.param("wait")
    if raw is None or raw == "":
        return DEFAULT_WAIT
    try:
        seconds = float(raw) if raw.replace(".", "", 1).isdigit() else parse_duration(raw)
    except (ValueError, TypeError):
        raise bad_request(f"query parameter 'wait': invalid duration {raw!r}") from None
    return max(0.0, min(seconds, MAX_WAIT))


def query(
    ctx: ApiContext, req: Request, index_of: Callable[[ClusterState], int]
) -> tuple[ClusterState, int]:
    """The snapshot to answer from and its index, after the blocking wait if asked.

    `index_of(state)` is the index of what the request reads (a table's last change,
    or one object's modify index).
    """
    min_index = req.int_param("index", 0)
    if min_index < 0:
        raise bad_request(f"query parameter 'index': must be >= 0, got {min_index}")
    state = ctx.cluster.state()
    if min_index == 0 or index_of(state) > min_index:
        return state, max(1, index_of(state))
    state = ctx.cluster.wait_for(
        lambda s: index_of(s) > min_index, wait_time(req), cancel=req.cancel
    )
    return state, max(1, index_of(state))
