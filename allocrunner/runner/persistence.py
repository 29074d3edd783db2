"""The alloc runner's writes to the state DB, fenced against its destroy.

No lock is held during state DB I/O, so a write could race a destroy and bring a
destroyed allocation back (Nomad #5984/#6207). `AllocPersister` prevents it: every
write registers itself as in flight first, and `delete` marks the allocation
destroyed, waits for the writes in flight to drain and only then deletes its state;
a write that comes after is dropped. Failed writes are logged, never raised: the
allocation runs on without them.

A destroy begins with `mark_destroying`, a durable mark in the state DB
(`allocrunner.state.marks`) that `delete` removes with the rest; an agent killed in
between finds the mark on restore and finishes the destroy (`recovery`).

Threads: writes come from the alloc runner's threads (run, state handler, health
watcher, API callers); `delete` from its ``destroy-<id8>`` thread. Locks: it uses the
runner's ``AllocRunner._destroyed_lock``, which the runner lends it, for the destroyed
flag and the count of writes in flight; it is never held during I/O. Owner: the
AllocRunner builds it and is its only caller.
"""

from __future__ import annotations

import logging

from allocrunner._locking import Mutex, calls_out, guarded, immutable
from allocrunner._sync import Waiter
from allocrunner.state import LocalState, StateDB
from allocrunner.state.marks import mark_destroying
from allocrunner.structs import Allocation, AllocDeploymentStatus

__all__ = ["AllocPersister"]

log = logging.getLogger("allocrunner.runner")


class AllocPersister:
    """Thread-safe. Writes one allocation's state unless it was destroyed."""

    # _lock guards: _destroyed, _in_flight, _drain_waiter
    _lock = immutable()
    _destroyed = guarded("_lock")
    _in_flight = guarded("_lock")
    _drain_waiter = guarded("_lock")  # made by `delete` only when writes are in flight
    _alloc_id = immutable()
    _state_db = immutable()

    def __init__(self, alloc_id: str, state_db: StateDB, *, lock: Mutex) -> None:
        self._lock = lock
        self._destroyed = False
        self._in_flight = 0
        self._drain_waiter: Waiter | None = None
        self._alloc_id = alloc_id
        self._state_db = state_db

    @calls_out
    def put_allocation(self, alloc: Allocation) -> None:
        if not self._begin():
            return
        try:
            self._state_db.put_allocation(alloc)
        except Exception:
            log.exception("allocation %s: persisting failed", self._alloc_id)
        finally:
            self._end()

    @calls_out
    def put_deployment_status(self, status: AllocDeploymentStatus | None) -> None:
        if not self._begin():
            return
        try:
            self._state_db.put_deployment_status(self._alloc_id, status)
        except Exception:
            log.exception("allocation %s: persisting deployment status failed", self._alloc_id)
        finally:
            self._end()

    @calls_out
    def put_local_state(self, name: str, local: LocalState) -> None:
        """Write client-only state under `name` (a task's, or a reserved name an alloc
        hook keeps its own state under; deleted with the allocation)."""
        if not self._begin():
            return
        try:
            self._state_db.put_task_local_state(self._alloc_id, name, local)
        except Exception:
            log.exception("allocation %s: persisting %s failed", self._alloc_id, name)
        finally:
            self._end()

    @calls_out
    def mark_destroying(self) -> None:
        """Record, durably, that the destroy has begun (before anything is removed)."""
        if not self._begin():
            return
        try:
            mark_destroying(self._state_db, self._alloc_id)
        except Exception:
            log.exception("allocation %s: marking its destroy failed", self._alloc_id)
        finally:
            self._end()

    @calls_out
    def delete(self) -> None:
        """Refuse every later write, wait for those in flight, delete the state."""
        with self._lock:
            self._destroyed = True
            waiter = Waiter() if self._in_flight else None
            self._drain_waiter = waiter
        if waiter is not None:
            waiter.wait()
        try:
            self._state_db.delete_allocation(self._alloc_id)
        except Exception:
            log.exception("allocation %s: deleting its state failed", self._alloc_id)

    def _begin(self) -> bool:
        """Register a write in flight; False once the allocation is destroyed."""
        with self._lock:
            if self._destroyed:
                return False
            self._in_flight += 1
            return True

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1
            waiter = None
            if self._in_flight == 0:
                waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None:
            waiter.wake()
