"""TaskStateCell: immutable snapshots, versions, and the single-writer persistence that
never leaves the database older than the newest state anyone asked to persist."""

from __future__ import annotations

import threading

import attrs
import pytest

from allocrunner._sync import ThreadGroup
from allocrunner.drivers.base import TaskConfig, TaskHandle
from allocrunner.state import LocalState
from allocrunner.structs import TaskEvent, TaskState
from allocrunner.taskrunner.state import TaskStateCell
from allocrunner.testing import assert_stays, wait_for
from tests.unit.taskrunner.conftest import RecordingDB

ALLOC = "a1b2c3d4-0000-0000-0000-000000000000"
TASK = "web"


class Notes:
    """Thread-safe. Counts change notifications."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.count = 0

    def __call__(self) -> None:
        with self._mutex:
            self.count += 1


@pytest.fixture
def db() -> RecordingDB:
    return RecordingDB(ALLOC, TASK)


@pytest.fixture
def notes() -> Notes:
    return Notes()


@pytest.fixture
def cell(db: RecordingDB, notes: Notes) -> TaskStateCell:
    return TaskStateCell(ALLOC, TASK, db, TaskState().with_event(TaskEvent("Received")), notes)


def handle(task_id: str = "t1") -> TaskHandle:
    return TaskHandle(
        driver="mock_driver", config=TaskConfig(id=task_id, alloc_id=ALLOC, name=TASK)
    )


def types(state: TaskState | None) -> list[str]:
    assert state is not None
    return [e.type for e in state.events]


# --- publishing -------------------------------------------------------------------------


def test_nothing_is_written_before_the_first_change(cell, db) -> None:
    assert types(cell.state()) == ["Received"]
    assert cell.local() == LocalState() and cell.handle() is None
    assert db.stored() == (None, None)


def test_publish_writes_then_notifies(cell, db, notes) -> None:
    cell.publish(state="running", event=TaskEvent("Started"))
    local, stored = db.stored()
    assert stored is cell.state() and stored.state == "running"
    assert types(stored) == ["Received", "Started"]
    assert local is None  # only the changed entry is written
    assert notes.count == 1
    cell.publish(event=TaskEvent("Driver"), notify=False)
    assert types(db.stored()[1])[-1] == "Driver" and notes.count == 1


def test_publish_of_no_change_writes_and_notifies_nothing(cell, db, notes) -> None:
    cell.publish(state="pending")  # the state it already is in
    assert db.state_writes == 0 and notes.count == 0


def test_handle_is_published_in_the_local_state(cell, db) -> None:
    cell.publish(state="running", handle=handle())
    assert cell.handle() == handle() and db.stored()[0] == cell.local()
    state, local = cell.snapshot()
    assert state.state == "running" and local.task_handle == handle()
    cell.publish(handle=None, notify=False)
    assert cell.handle() is None and db.stored()[0].task_handle is None


def test_snapshots_are_immutable_and_stable(cell) -> None:
    first = cell.state()
    assert cell.state() is first
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.state = "dead"  # type: ignore[misc]
    cell.publish(event=TaskEvent("Driver"))
    assert cell.state() is not first and types(first) == ["Received"]


def test_record_notifies_without_writing_and_the_next_write_carries_it(cell, db, notes) -> None:
    cell.record(TaskEvent("Killed"))
    assert types(cell.state())[-1] == "Killed" and notes.count == 1
    assert db.state_writes == 0
    cell.update_local(lambda local: local.with_run_complete(True))
    local, stored = db.stored()
    assert types(stored)[-1] == "Killed" and local is not None and local.run_complete


def test_update_local_skips_an_equal_state(cell, db, notes) -> None:
    cell.update_local(lambda local: local.with_run_complete(True))
    assert db.local_writes == 1
    cell.update_local(lambda local: local.with_run_complete(True))  # equal, new object
    assert db.local_writes == 1 and notes.count == 0


def test_persist_all_rewrites_both_entries(cell, db) -> None:
    cell.publish(event=TaskEvent("Driver"))
    before = (db.state_writes, db.local_writes)
    cell.persist_all()
    assert (db.state_writes, db.local_writes) == (before[0] + 1, before[1] + 1)
    assert db.stored() == (cell.local(), cell.state())


def test_adopt_takes_a_restored_state_without_writing(cell, db) -> None:
    stored = TaskState(state="running").with_event(TaskEvent("Started"))
    local = LocalState().with_task_handle(handle())
    assert cell.adopt(stored, local) is stored
    assert cell.local() is local and cell.handle() == handle()
    assert db.state_writes == db.local_writes == 0
    assert cell.adopt(None, None) is stored  # None keeps what is there


def test_stored_reads_the_database(cell) -> None:
    assert cell.stored() == (None, None)
    cell.publish(event=TaskEvent("Driver"))
    assert cell.stored() == (None, cell.state())


# --- the single writer --------------------------------------------------------------------


def test_a_failed_write_is_logged_and_later_writes_go_on(cell, db, caplog) -> None:
    db.fail_next = True
    cell.publish(event=TaskEvent("Lost"))  # does not raise
    assert "persisting task state failed" in caplog.text
    cell.publish(event=TaskEvent("Kept"))
    assert types(db.stored()[1])[-2:] == ["Lost", "Kept"]


def test_no_lock_is_held_while_writing(cell, db) -> None:
    cell.publish(state="running", event=TaskEvent("Started"), handle=handle())
    cell.persist_all()
    assert db.state_writes and db.locks_seen == []


def test_a_caller_returns_only_once_its_version_is_written(cell, db) -> None:
    db.gate.clear()  # the first writer is held inside the database
    group = ThreadGroup("cell-writers")
    done: list[str] = []

    def publish(name: str) -> None:
        cell.publish(event=TaskEvent(name))
        done.append(name)

    group.spawn("writer-first", publish, "first")
    wait_for(lambda: _assert_true(db.inside == 1))
    group.spawn("writer-second", publish, "second")
    wait_for(lambda: _assert_true(types(cell.state())[-1] == "second"))
    assert_stays(lambda: _assert_true(done == [] and db.inside == 1), 0.1)
    db.gate.set()
    assert group.join(10)
    assert sorted(done) == ["first", "second"]
    assert db.stored()[1] == cell.state()
    assert db.most_inside == 1


def test_concurrent_writers_leave_the_newest_state(fast_switching, cell, db) -> None:
    group = ThreadGroup("cell-writers")

    def writer(n: int) -> None:
        for i in range(40):
            cell.publish(event=TaskEvent("Driver", message=f"{n}-{i}"))
            if i % 7 == 0:
                cell.update_local(lambda local, i=i: local.with_run_complete(i % 2 == 0))
            if i % 11 == 0:
                cell.record(TaskEvent("Noted", message=f"{n}-{i}"))

    for n in range(4):
        group.spawn(f"cell-writer-{n}", writer, n)
    assert group.join(30)
    cell.persist_all()
    assert db.stored() == (cell.local(), cell.state())
    assert db.most_inside == 1
    assert db.locks_seen == []


def _assert_true(value: bool) -> None:
    assert value
