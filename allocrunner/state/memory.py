"""MemDB: an in-memory StateDB for tests and for agents that need no persistence.

Threads: none of its own; any thread may call it. Locks: "StateDB._lock" guards the
records (a checked container changed in place under it), the ids of deleted
allocations, the write counters and the closed flag; nothing is called under it but
pure value operations. Owner: tests and embedders create it and pass it where a
`StateDB` is expected.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from allocrunner._guarded import guarded_dict
from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner.errors import StateDBError
from allocrunner.state.base import LocalState, WriteStats
from allocrunner.structs import Allocation, AllocDeploymentStatus, TaskState
from allocrunner.structs.frozen import FrozenDict

__all__ = ["MemDB"]


@attrs.frozen
class _TaskRecord:
    """Immutable. The two entries of one task."""

    local: LocalState | None = None
    state: TaskState | None = None


@attrs.frozen
class _AllocRecord:
    """Immutable. Everything stored under one allocation id."""

    alloc: Allocation | None = None
    deployment: AllocDeploymentStatus | None = None
    tasks: FrozenDict[str, _TaskRecord] = attrs.field(factory=FrozenDict)


_EMPTY_RECORD = _AllocRecord()
_EMPTY_TASK = _TaskRecord()


def _same(old: object, new: object) -> bool:
    return old is new or (old is not None and old == new)


class MemDB:
    """Thread-safe. A StateDB held in memory; lost when the process exits.

    Values are immutable, so they are stored as given and handed back as stored.
    A write equal to the stored value is skipped and counted like the SQLite store's
    de-duplication, so both implementations satisfy one contract.
    """

    # _lock guards: _records (a checked container, changed in place), _deleted, _writes,
    # _skipped, _dropped, _closed
    _lock = immutable()
    _records = immutable()
    _deleted = guarded("_lock")
    _writes = guarded("_lock")
    _skipped = guarded("_lock")
    _dropped = guarded("_lock")
    _closed = guarded("_lock")

    def __init__(self) -> None:
        self._lock = make_lock("StateDB._lock")
        self._records: dict[str, _AllocRecord] = guarded_dict(self._lock)
        self._deleted: frozenset[str] = frozenset()
        self._writes = self._skipped = self._dropped = 0
        self._closed = False

    # --- helpers (lock held) -------------------------------------------------------------

    @requires("_lock")
    def _check_open_locked(self) -> None:
        if self._closed:
            raise StateDBError("in-memory state db is closed")

    @requires("_lock")
    def _replace_locked(self, alloc_id: str, record: _AllocRecord | None) -> None:
        if record is None:
            self._records.pop(alloc_id, None)
        else:
            self._records[alloc_id] = record

    @requires("_lock")
    def _put_task_locked(
        self, alloc_id: str, task: str, change: Callable[[_TaskRecord], _TaskRecord]
    ) -> None:
        """Store `change(entry)` as the task's entry, unless it leaves the entry as is
        (`change` replaces one immutable field: a pure step, safe under the lock)."""
        self._check_open_locked()
        if alloc_id in self._deleted:
            self._dropped += 1
            return
        record = self._records.get(alloc_id, _EMPTY_RECORD)
        entry = record.tasks.get(task, _EMPTY_TASK)
        updated = change(entry)
        if _same(entry.local, updated.local) and _same(entry.state, updated.state):
            self._skipped += 1
            return
        tasks = record.tasks.set(task, updated)
        self._replace_locked(alloc_id, attrs.evolve(record, tasks=tasks))
        self._writes += 1

    # --- StateDB -----------------------------------------------------------------------

    @calls_out
    def put_allocation(self, alloc: Allocation) -> None:
        """Store (or replace) the allocation; re-adds an id deleted earlier."""
        if not isinstance(alloc, Allocation):
            raise TypeError(f"put_allocation: expected Allocation, got {type(alloc).__name__}")
        with self._lock:
            self._check_open_locked()
            if alloc.id in self._deleted:
                self._deleted = self._deleted - {alloc.id}
            record = self._records.get(alloc.id, _EMPTY_RECORD)
            if _same(record.alloc, alloc):
                self._skipped += 1
                return
            self._replace_locked(alloc.id, attrs.evolve(record, alloc=alloc))
            self._writes += 1

    @calls_out
    def all_allocations(self) -> list[Allocation]:
        """Every stored allocation (task-only entries without an allocation are not listed)."""
        with self._lock:
            self._check_open_locked()
            return [r.alloc for r in self._records.values() if r.alloc is not None]

    @calls_out
    def delete_allocation(self, alloc_id: str) -> None:
        """Remove the allocation and its entries; later task writes for it are dropped."""
        with self._lock:
            self._check_open_locked()
            self._replace_locked(alloc_id, None)
            self._deleted = self._deleted | {alloc_id}

    @calls_out
    def put_task_state(self, alloc_id: str, task: str, state: TaskState) -> None:
        """Store the server-visible state of one task."""
        if not isinstance(state, TaskState):
            raise TypeError(f"put_task_state: expected TaskState, got {type(state).__name__}")
        with self._lock:
            self._put_task_locked(alloc_id, task, lambda e: attrs.evolve(e, state=state))

    @calls_out
    def put_task_local_state(self, alloc_id: str, task: str, local: LocalState) -> None:
        """Store the client-only state of one task."""
        if not isinstance(local, LocalState):
            raise TypeError(
                f"put_task_local_state: expected LocalState, got {type(local).__name__}"
            )
        with self._lock:
            self._put_task_locked(alloc_id, task, lambda e: attrs.evolve(e, local=local))

    @calls_out
    def task_runner_state(
        self, alloc_id: str, task: str
    ) -> tuple[LocalState | None, TaskState | None]:
        """The task's (local state, task state); each None when absent."""
        with self._lock:
            self._check_open_locked()
            record = self._records.get(alloc_id, _EMPTY_RECORD)
        entry = record.tasks.get(task, _EMPTY_TASK)
        return entry.local, entry.state

    @calls_out
    def put_deployment_status(self, alloc_id: str, status: AllocDeploymentStatus | None) -> None:
        """Store the deployment status; None removes it."""
        if status is not None and not isinstance(status, AllocDeploymentStatus):
            raise TypeError(
                "put_deployment_status: expected AllocDeploymentStatus or None, "
                f"got {type(status).__name__}"
            )
        with self._lock:
            self._check_open_locked()
            if alloc_id in self._deleted:
                self._dropped += 1
                return
            record = self._records.get(alloc_id, _EMPTY_RECORD)
            if _same(record.deployment, status):
                self._skipped += 1
                return
            self._replace_locked(alloc_id, attrs.evolve(record, deployment=status))
            self._writes += 1

    @calls_out
    def deployment_status(self, alloc_id: str) -> AllocDeploymentStatus | None:
        """The stored deployment status, or None."""
        with self._lock:
            self._check_open_locked()
            record = self._records.get(alloc_id, _EMPTY_RECORD)
        return record.deployment

    def stats(self) -> WriteStats:
        """Counters of the writes since creation."""
        with self._lock:
            return WriteStats(self._writes, self._skipped, self._dropped)

    @calls_out
    def flush(self) -> None:
        """Nothing to wait for: every write is in place when it returns. StateDBError
        once closed, like the other methods."""
        with self._lock:
            self._check_open_locked()

    @calls_out
    def close(self) -> None:
        """Refuse further use. Idempotent."""
        with self._lock:
            self._closed = True

    def __repr__(self) -> str:
        return "<MemDB>"
