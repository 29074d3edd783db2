"""Saving the one-node cluster's state to disk, and reading it back on start.

The cluster's jobs, allocations and evaluations are kept in
``<data_dir>/server/state.json`` (Nomad's API JSON, with the index, and the count of
allocations each job still lacks), so a blocked evaluation and the summary's
``Queued`` outlive a restart. `StateSaver` writes the newest snapshot on its
own thread whenever it is kicked, so a burst of changes costs one write, and flushes
on `StateSaver.close`. A write goes to a temporary file that is synced and then
renamed over the old one, so a crash leaves the old state or the new, never half of
one; at worst the last few changes are lost, and the agent rebuilds them from the
allocations the client restored (they carry their job). `read_state` treats a
missing, unreadable or invalid file as an empty cluster, with a logged error.

Threads: ``cluster-persist``, started by `StateSaver.start` and joined by
`StateSaver.close`. Locks: none declared here; the saver reads snapshots through
the callable it is given (``Cluster.state``, which takes ``Cluster._lock`` briefly)
and writes with no lock held. Owner: the `Cluster`, which creates one saver, kicks it
after each change and closes it when the cluster closes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from allocrunner._locking import calls_out, immutable
from allocrunner._sync import CancelToken, Kick, ThreadGroup
from allocrunner.agent.cluster_state import ClusterState, job_key
from allocrunner.agent.evaluations import evaluation_from_api
from allocrunner.errors import JobSpecError
from allocrunner.jobspec import decode_allocation, decode_job, encode_allocation, encode_job
from allocrunner.structs import FrozenDict

__all__ = ["StateSaver", "read_state", "state_path", "write_state"]

log = logging.getLogger("allocrunner.agent.cluster")


def state_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where the cluster state of the agent on `data_dir` is saved."""
    return Path(data_dir) / "server" / "state.json"


class StateSaver:
    """Thread-safe. Saves the newest snapshot to `path` on its own thread (module
    docstring); `current()` gives the snapshot to save."""

    _path = immutable()
    _current = immutable()
    _kick = immutable()
    _stop = immutable()
    _threads = immutable()

    def __init__(self, path: Path, current: Callable[[], ClusterState]) -> None:
        self._path = path
        self._current = current
        self._kick = Kick()
        self._stop = CancelToken()
        self._threads = ThreadGroup("cluster")

    @calls_out
    def load(self) -> ClusterState:
        """The saved state; an empty one when there is none (or it is unusable)."""
        return read_state(self._path)

    def start(self) -> None:
        """Start the ``cluster-persist`` thread."""
        self._threads.spawn("cluster-persist", self._loop)

    def kick(self) -> None:
        """Ask for the newest snapshot to be saved (notify-only: safe under a lock)."""
        self._kick.kick()

    @calls_out
    def close(self, timeout: float) -> bool:
        """Save what is not saved yet, stop the thread and join it; True if it ended
        within `timeout`."""
        self._stop.cancel("cluster closed")
        self._kick.kick()
        return self._threads.join(timeout)

    @calls_out
    def _loop(self) -> None:
        written = -1
        while True:
            self._kick.wait()
            state = self._current()
            if state.index != written:
                try:
                    write_state(self._path, state)
                    written = state.index
                except OSError as err:
                    log.error("saving the cluster state to %s failed: %s", self._path, err)
            if self._stop.cancelled() and not self._kick.pending():
                return


@calls_out
def write_state(path: Path, state: ClusterState) -> None:
    """Save `state` to `path` atomically (temporary file, fsync, rename)."""
    data = {
        "Index": state.index,
        "Jobs": [encode_job(j) for j in state.jobs.values()],
        "Allocations": [encode_allocation(a) for a in state.allocs.values()],
        "Evaluations": [e.to_api() for e in state.evals.values()],
        "Queued": {k: dict(v) for k, v in state.queued.items() if v},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@calls_out
def read_state(path: Path) -> ClusterState:
    """The state saved at `path`; an empty one (with a logged error when the file is
    there but unreadable or invalid) otherwise."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return ClusterState()
    except (OSError, ValueError) as err:
        log.error("cluster state %s unreadable (%s); rebuilding from the client", path, err)
        return ClusterState()
    try:
        jobs = {}
        for obj in data.get("Jobs") or ():
            job = decode_job(obj)
            jobs[job_key(job.namespace, job.id)] = job
        allocs = {}
        for obj in data.get("Allocations") or ():
            alloc = decode_allocation(obj)
            allocs[alloc.id] = alloc
        evals = {}
        for obj in data.get("Evaluations") or ():
            evaluation = evaluation_from_api(obj)
            evals[evaluation.id] = evaluation
        queued = {
            str(k): FrozenDict({str(g): int(n) for g, n in v.items()})
            for k, v in (data.get("Queued") or {}).items()
        }
        index = int(data.get("Index") or 1)
    except (JobSpecError, ValueError, TypeError, KeyError, AttributeError) as err:
        log.error("cluster state %s invalid (%s); rebuilding from the client", path, err)
        return ClusterState()
    return ClusterState(
        index=index,
        jobs=FrozenDict(jobs),
        job_index=index,
        allocs=FrozenDict(allocs),
        alloc_index=index,
        evals=FrozenDict(evals),
        eval_index=index,
        queued=FrozenDict(queued),
    )
