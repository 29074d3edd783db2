"""The agent's server side: jobs, evaluations and allocations of a one-node cluster.

Nomad's servers keep jobs and allocations in a replicated state store with one
increasing index, and serve reads (and blocking queries) from it. Here the node is
the whole cluster, so the `Cluster` is that store:

- One immutable `ClusterState` snapshot is published at a time. Writers build a new
  one under ``Cluster._lock`` and publish it on a latest-only `Broadcaster`; readers
  take the current snapshot and never wait for a writer. Blocking queries and the
  event stream listen on the broadcaster (`wait_for`).
- Every change gets the next index. What each write does to the snapshot (placing a
  registered job, stopping allocations, merging the client's state reports,
  forgetting old evaluations and finished children) is a pure transition in
  `allocrunner.agent.cluster_state`; this class runs it under its lock, publishes
  the result and then, with no lock held, hands the desired set to the `Client`.
- The state is saved to ``<data_dir>/server/state.json`` by a `StateSaver`
  (`allocrunner.agent.cluster_persist`), kicked after each change and flushed on
  `close`; a crash loses at most the last few changes, which `adopt` rebuilds from the
  allocations the client restored (they carry their job).

Threads: ``cluster-persist`` (the saver's); every other method runs on its caller's
thread (HTTP request threads, the periodic launcher, the client's update thread).
Lock: ``Cluster._lock`` guards `_state` and `_closed`; it is never held while calling
the client, the disk or a listener (the broadcaster's send and the saver's kick are
notify-only). Owner: the `Agent` creates the cluster, loads, adopts and starts it,
and closes it first on shutdown.

The data types and transitions are re-exported here for the modules that import them
from this one.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterable

from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken
from allocrunner.agent.cluster_persist import StateSaver, state_path
from allocrunner.agent.cluster_state import (
    DEAD_CHILDREN_KEPT,
    EVAL_LIMIT,
    EVENT_BUFFER,
    TOPIC_ALLOC,
    TOPIC_EVAL,
    TOPIC_JOB,
    Change,
    ClusterEvent,
    ClusterState,
    Evaluation,
    RegisterResult,
    adopt_restored,
    check_placeable,
    deregister_job,
    encode_event_payload,
    job_key,
    merge_client_views,
    register_job,
    runs_at_once,
    stop_allocation,
    with_events,
)
from allocrunner.agent.errors import ApiError, not_found
from allocrunner.broadcaster import AllocListener, Broadcaster
from allocrunner.errors import BroadcasterClosed
from allocrunner.structs import Allocation, Job

__all__ = [
    "DEAD_CHILDREN_KEPT",
    "EVAL_LIMIT",
    "EVENT_BUFFER",
    "TOPIC_ALLOC",
    "TOPIC_EVAL",
    "TOPIC_JOB",
    "Cluster",
    "ClusterEvent",
    "ClusterState",
    "Evaluation",
    "RegisterResult",
    "encode_event_payload",
]


class Cluster:
    """Thread-safe. The one-node cluster's state store (module docstring).

    `on_register(job)` is called, with no lock held, after each register of a job that
    does not run at once (periodic, parameterized) and after each deregister: the
    periodic launcher's feed.
    """

    _node_id = immutable()
    _run_allocs = immutable()
    _tracked = immutable()
    _broadcaster = immutable()
    _saver = immutable()
    _launch_hooks = immutable()
    _lock = immutable()
    # _lock guards _state and _closed
    _state = guarded("_lock")
    _closed = guarded("_lock")

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        node_id: str,
        run_allocs: Callable[[list[Allocation], int], None],
        tracked: Callable[[str], bool],
        on_register: Callable[[Job], None] | None = None,
    ) -> None:
        self._node_id = node_id
        self._run_allocs = run_allocs
        self._tracked = tracked
        self._broadcaster = Broadcaster()
        self._saver = StateSaver(state_path(data_dir), self.state)
        self._launch_hooks = (on_register,) if on_register is not None else ()
        self._lock = make_lock("Cluster._lock")
        self._state = ClusterState()
        self._closed = False

    # --- reads ----------------------------------------------------------------------

    def state(self) -> ClusterState:
        """The current snapshot (immutable)."""
        with self._lock:
            return self._state

    @calls_out
    def wait_for(
        self,
        ready: Callable[[ClusterState], bool],
        timeout: float,
        cancel: CancelToken | None = None,
    ) -> ClusterState:
        """The first snapshot for which `ready` holds, or the current one once `timeout`
        passes, `cancel` fires or the cluster closes (a blocking query's wait)."""
        deadline = time.monotonic() + timeout
        with self._broadcaster.listen() as listener:
            while True:
                state = self.state()
                if ready(state):
                    return state
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (cancel is not None and cancel.cancelled()):
                    return state
                try:
                    listener.get(timeout=remaining)
                except TimeoutError:
                    return self.state()
                except BroadcasterClosed:
                    return self.state()

    def parked(self) -> int:
        """How many waits (blocking queries, event streams) are parked right now."""
        return self._broadcaster.blocked_listeners()

    def is_closed(self) -> bool:
        with self._lock:
            return self._closed

    def listen(self) -> AllocListener:
        """A latest-only listener of snapshots (the event stream's feed)."""
        return self._broadcaster.listen()

    def job(self, job_id: str, namespace: str = "default") -> Job:
        job = self.state().jobs.get(job_key(namespace, job_id))
        if job is None:
            raise not_found("job not found")
        return job

    def alloc(self, alloc_id: str) -> Allocation:
        alloc = self.state().allocs.get(alloc_id)
        if alloc is None:
            raise not_found("alloc not found")
        return alloc

    # --- lifecycle ------------------------------------------------------------------

    @calls_out
    def load(self) -> None:
        """Load the saved state (before the client starts, so that no state report of
        a restored allocation is dropped as unknown)."""
        state = self._saver.load()
        with self._lock:
            self._state = state

    def adopt(self, restored: Iterable[Allocation]) -> None:
        """Add what the client restored that the saved state does not know (a crash can
        lose the last cluster writes, never the client's), with the job each carries."""
        with self._lock:
            change = adopt_restored(self._state, restored)
            if change is not None:
                self._publish_locked(change)

    def start(self) -> None:
        """Start the persisting thread and hand the desired set to the client."""
        self._saver.start()
        self._push()

    @calls_out
    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking changes, wake every blocking query, save the state. Idempotent."""
        with self._lock:
            self._closed = True
        self._broadcaster.close()
        return self._saver.close(timeout)

    # --- jobs -----------------------------------------------------------------------

    @calls_out
    def register(self, job: Job, *, warnings: Iterable[str] = ()) -> RegisterResult:
        """Register (or update) `job` and place it; Nomad's ``PUT /v1/jobs``."""
        check_placeable(job)
        eval_id = str(uuid.uuid4())
        with self._lock:
            self._check_open_locked()
            change, job = register_job(self._state, job, node_id=self._node_id, eval_id=eval_id)
            self._publish_locked(change)
        self._after_change()
        if not runs_at_once(job):
            for hook in self._launch_hooks:
                hook(job)
        return RegisterResult(eval_id, job.job_modify_index, change.state.index, tuple(warnings))

    @calls_out
    def deregister(self, job_id: str, namespace: str = "default", *, purge: bool = False) -> str:
        """Stop a job (and with `purge` forget it and its allocations); the eval id."""
        eval_id = str(uuid.uuid4())
        with self._lock:
            self._check_open_locked()
            change, stopped = deregister_job(
                self._state, job_id, namespace, purge=purge, eval_id=eval_id
            )
            self._publish_locked(change)
        self._after_change()
        for hook in self._launch_hooks:
            hook(stopped)
        return eval_id

    # --- allocations ----------------------------------------------------------------

    @calls_out
    def stop_alloc(self, alloc_id: str) -> tuple[str, int]:
        """Stop one allocation; a service job gets a replacement (Nomad's alloc stop).
        Returns the eval id and the index."""
        eval_id = str(uuid.uuid4())
        with self._lock:
            self._check_open_locked()
            change = stop_allocation(self._state, alloc_id, node_id=self._node_id, eval_id=eval_id)
            self._publish_locked(change)
        self._after_change()
        return eval_id, change.state.index

    def client_updated(self, views: list[Allocation]) -> None:
        """The client's state reports: merge client status and task states (the
        Client's ``state_updater``; called on its update thread, no lock held)."""
        with self._lock:
            if self._closed:
                return
            change = merge_client_views(self._state, views)
            if change is None:
                return
            self._publish_locked(change)
        self._saver.kick()

    # --- internals ------------------------------------------------------------------

    @requires("_lock")
    def _check_open_locked(self) -> None:
        if self._closed:
            raise ApiError(503, "agent is shutting down")

    @requires("_lock")
    def _publish_locked(self, change: Change) -> None:
        state = with_events(change)
        self._state = state
        with contextlib.suppress(BroadcasterClosed):
            self._broadcaster.send(state)

    @calls_out
    def _after_change(self) -> None:
        self._saver.kick()
        self._push()

    @calls_out
    def _push(self) -> None:
        """Hand the client the desired set: every allocation it tracks, and every one
        not finished yet. A finished allocation the client no longer tracks (collected,
        or stopped before it ever ran) is never handed over again: it would run anew."""
        state = self.state()
        desired = [a for a in state.allocs.values() if not a.terminal() or self._tracked(a.id)]
        self._run_allocs(desired, state.index)
