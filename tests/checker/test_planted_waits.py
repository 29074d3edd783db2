"""Planted waits under a lock: each test swaps in a broken copy of real code that blocks
while holding a declared lock, and asserts that check mode raises at once instead of
letting it deadlock or stall every thread queued on that lock.

- `AllocPersister.delete` waiting for the writes in flight to drain while it holds the
  lock those writes need to finish (the destroy / persist deadlock);
- a driver that waits for its process while holding its task table's lock;
- a health watch that sleeps out its poll interval under the hook's lock.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

from allocrunner import _locking
from allocrunner._locking import make_lock
from allocrunner._sync import Waiter
from allocrunner.errors import CalloutUnderLockError
from allocrunner.runner.persistence import AllocPersister
from allocrunner.state import MemDB
from allocrunner.structs import Allocation
from allocrunner.testing import assert_stays, mock_alloc

pytestmark = pytest.mark.requires_lockcheck


# --- 3. the destroy waits for the writes in flight while holding their lock ---------------


def delete_waiting_under_the_lock(self: AllocPersister) -> None:
    """Marks destroyed and waits for the writes in flight in one lock section: a write
    in flight needs this lock to count itself out, so with one in flight it never ends."""
    with self._lock:
        self._destroyed = True
        waiter = Waiter() if self._in_flight else None
        self._drain_waiter = waiter
        if waiter is not None:
            waiter.wait()
    self._state_db.delete_allocation(self._alloc_id)


class HeldWrites(MemDB):
    """Thread-safe. A MemDB whose allocation writes wait at a gate, to keep one in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def put_allocation(self, alloc: Allocation) -> None:
        self.entered.set()
        self.gate.wait(10)
        super().put_allocation(alloc)


def test_a_destroy_that_waits_for_writes_under_their_lock_raises_instead_of_deadlocking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(AllocPersister, "delete", delete_waiting_under_the_lock)
    db = HeldWrites()
    persister = AllocPersister("a1", db, lock=make_lock("AllocRunner._destroyed_lock"))
    writer = threading.Thread(
        target=persister.put_allocation, args=(mock_alloc(),), name="persist-in-flight"
    )
    writer.start()
    try:
        assert db.entered.wait(10)
        started = time.monotonic()
        with pytest.raises(CalloutUnderLockError, match=r"Waiter\.wait.*_destroyed_lock"):
            persister.delete()
        assert time.monotonic() - started < 5, "the check must fire before the wait"
    finally:
        db.gate.set()
        writer.join(10)
    assert not writer.is_alive()
    assert len(_locking.take_violations()) == 1


def test_the_real_delete_waits_for_the_write_in_flight_with_no_lock_held() -> None:
    db = HeldWrites()
    alloc = mock_alloc()
    persister = AllocPersister(alloc.id, db, lock=make_lock("AllocRunner._destroyed_lock"))
    writer = threading.Thread(target=persister.put_allocation, args=(alloc,), name="in-flight")
    writer.start()
    deleter = threading.Thread(target=persister.delete, name="destroy")
    try:
        assert db.entered.wait(10)
        deleter.start()
        assert_stays(lambda: _assert(deleter.is_alive()), 0.05)  # waiting, no lock held
        db.gate.set()
        deleter.join(10)
        writer.join(10)
    finally:
        db.gate.set()
    assert not deleter.is_alive() and not writer.is_alive()
    assert db.all_allocations() == []  # the write landed first, the delete removed it


def _assert(condition: bool) -> None:
    assert condition


# --- other waits under a lock ---------------------------------------------------------------


class ProcessTable:
    """Thread-safe. A driver's table of processes, as `Driver._lock` guards one."""

    _lock = _locking.immutable()

    def __init__(self) -> None:
        self._lock = make_lock("Driver._lock")

    def reap_holding_the_table(self, proc: subprocess.Popen[bytes]) -> int:
        """Waits for the process with the table locked: every start, stop and inspect of
        every other task waits behind this one exit."""
        with self._lock:
            return proc.wait()


def test_waiting_for_a_process_under_the_driver_lock_raises() -> None:
    proc = subprocess.Popen(["sleep", "0.2"])
    try:
        with pytest.raises(CalloutUnderLockError, match=r"Popen\.wait.*Driver\._lock"):
            ProcessTable().reap_holding_the_table(proc)
    finally:
        proc.wait()
    assert len(_locking.take_violations()) == 1


class HealthWatch:
    """Thread-safe. A watch whose poll sleeps under the hook lock (planted)."""

    _lock = _locking.immutable()

    def __init__(self) -> None:
        self._lock = make_lock("HealthHook._lock")

    def poll_once(self) -> None:
        with self._lock:
            time.sleep(0.01)  # the planted mistake: the hook's update waits on this


def test_sleeping_under_the_hook_lock_raises() -> None:
    with pytest.raises(CalloutUnderLockError, match=r"time\.sleep.*HealthHook\._lock"):
        HealthWatch().poll_once()
    assert len(_locking.take_violations()) == 1
