"""`_TaskTable`, the task table both drivers share: lookups, one running task per id,
replacement of an exited task, removal only of the same record, close, and the lock it
requires."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from allocrunner import _locking
from allocrunner._locking import guarded, immutable, make_lock, requires
from allocrunner.drivers._common import _TaskTable
from allocrunner.errors import DriverError, LockNotHeldError, TaskExitedError


class Record:
    """Thread-safe. A task record whose state is guarded by the driver's lock."""

    _lock = immutable()
    _running = guarded("_lock")

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._running = True

    @requires("_lock")
    def running_locked(self) -> bool:
        return self._running

    @requires("_lock")
    def exit_locked(self) -> None:
        self._running = False


@pytest.fixture
def lock() -> Any:
    return make_lock("Driver._lock")


@pytest.fixture
def table(lock: Any) -> _TaskTable[Record]:
    return _TaskTable("test_driver", lock)


def test_lookup_of_an_unknown_task_names_it(lock, table):
    with lock, pytest.raises(DriverError, match="test_driver: unknown task 'a'"):
        table.get_locked("a")
    with lock:
        assert not table.contains_locked("a")


def test_added_task_is_found(lock, table):
    record = Record(lock)
    with lock:
        table.add_locked("a", record)
        assert table.get_locked("a") is record
        assert table.get_live_locked("a") is record
        assert table.contains_locked("a")


def test_a_running_task_id_is_not_taken_twice(lock, table):
    first = Record(lock)
    with lock:
        table.add_locked("a", first)
        with pytest.raises(DriverError, match="already running"):
            table.check_addable_locked("a")
        with pytest.raises(DriverError, match="already running"):
            table.add_locked("a", Record(lock))
        assert table.get_locked("a") is first


def test_an_exited_task_is_replaced(lock, table):
    first, second = Record(lock), Record(lock)
    with lock:
        table.add_locked("a", first)
        first.exit_locked()
        table.check_addable_locked("a")
        table.add_locked("a", second)
        assert table.get_locked("a") is second


def test_remove_forgets_only_the_same_record(lock, table):
    first, second = Record(lock), Record(lock)
    with lock:
        table.add_locked("a", first)
        first.exit_locked()
        table.add_locked("a", second)
        assert not table.remove_locked("a", first)
        assert table.get_locked("a") is second
        assert table.remove_locked("a", second)
        assert not table.contains_locked("a")
        assert not table.remove_locked("a", second)


def test_a_live_lookup_of_an_exited_or_destroyed_task_is_task_exited(lock, table):
    record = Record(lock)
    with lock:
        table.add_locked("a", record)
        record.exit_locked()
        with pytest.raises(TaskExitedError):
            table.get_live_locked("a")
        table.remove_locked("a", record)
        with pytest.raises(TaskExitedError):
            table.get_live_locked("a")


def test_a_closed_table_takes_nothing_and_finds_nothing(lock, table):
    record = Record(lock)
    with lock:
        table.add_locked("a", record)
        table.close_locked()
        assert table.closed_locked()
        assert not table.contains_locked("a")
        for lookup in (table.get_locked, table.get_live_locked, table.check_addable_locked):
            with pytest.raises(DriverError, match="test_driver is closed") as caught:
                lookup("a")
            assert not isinstance(caught.value, TaskExitedError)
        with pytest.raises(DriverError, match="is closed"):
            table.add_locked("b", Record(lock))


@pytest.mark.requires_lockcheck
def test_every_method_requires_the_driver_lock(lock, table):
    with pytest.raises(LockNotHeldError):
        table.get_locked("a")
    with pytest.raises(LockNotHeldError):
        table.add_locked("a", Record(lock))
    assert len(_locking.take_violations()) == 2


def test_racing_adds_of_one_id_leave_exactly_one_running(lock, table, fast_switching):
    records = [Record(lock) for _ in range(8)]
    won: list[Record] = []
    barrier = threading.Barrier(len(records))

    def add(record: Record) -> None:
        barrier.wait()
        try:
            with lock:
                table.add_locked("a", record)
        except DriverError:
            return
        won.append(record)

    threads = [
        threading.Thread(target=add, args=(r,), name=f"add-{i}") for i, r in enumerate(records)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(won) == 1
    with lock:
        assert table.get_locked("a") is won[0]
