"""One contract for every StateDB: MemDB, SQLiteStateDB and (where it applies) NoopDB.

Ports Nomad's client/state db_test.go (TestStateDB_Allocations / TaskState / Batch,
§9 item 87) and adds what this project promises on top: missing entries read as None,
identical writes are de-duplicated, and a task write after `delete_allocation` cannot
resurrect the allocation (Nomad #5984/#6207).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from allocrunner._locking import make_lock
from allocrunner._sync import ThreadGroup
from allocrunner.drivers.base import TaskConfig, TaskHandle
from allocrunner.errors import CalloutUnderLockError, StateDBError
from allocrunner.state import HookState, LocalState, MemDB, NoopDB, SQLiteStateDB, StateDB
from allocrunner.structs import (
    EVENT_RESTARTING,
    EVENT_STARTED,
    EVENT_TERMINATED,
    TASK_DEAD,
    TASK_RUNNING,
    Allocation,
    AllocDeploymentStatus,
    TaskEvent,
    TaskState,
)
from allocrunner.testing import lock_violations, mock_alloc, mock_task

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

Factory = Callable[[], StateDB]


def _mem(tmp_path) -> Factory:
    return MemDB


def _sqlite(tmp_path) -> Factory:
    return lambda: SQLiteStateDB(tmp_path / "client" / "state.db")


def _noop(tmp_path) -> Factory:
    return NoopDB


STORING = {"memdb": _mem, "sqlite": _sqlite}
ALL = {**STORING, "noop": _noop}


def _open(factory: Factory) -> Iterator[StateDB]:
    db = factory()
    try:
        yield db
    finally:
        db.close()


@pytest.fixture(params=sorted(STORING))
def db(request, tmp_path) -> Iterator[StateDB]:
    """A StateDB that keeps what it is given."""
    yield from _open(STORING[request.param](tmp_path))


@pytest.fixture(params=sorted(ALL))
def any_db(request, tmp_path) -> Iterator[StateDB]:
    """Any StateDB, including the one that keeps nothing."""
    yield from _open(ALL[request.param](tmp_path))


def task_state(n: int = 0) -> TaskState:
    state = TaskState().with_state(TASK_RUNNING, T0)
    state = state.with_event(TaskEvent(EVENT_STARTED, time=T0, message=f"run {n}"))
    if n:
        state = state.with_event(
            TaskEvent(EVENT_TERMINATED, time=T0 + timedelta(seconds=n), exit_code=n)
        )
        state = state.with_event(TaskEvent(EVENT_RESTARTING, time=T0 + timedelta(seconds=n)))
    return state


def local_state(n: int = 0) -> LocalState:
    config = TaskConfig(id=f"alloc/web/{n}", alloc_id="alloc", name="web", env={"A": str(n)})
    handle = TaskHandle(driver="mock_driver", config=config, driver_state={"pid": 1000 + n})
    return (
        LocalState()
        .with_hook("task_dir", HookState(prestart_done=True, data={"n": str(n)}))
        .with_hook("env", HookState(prestart_done=False, env={"FOO": "bar"}))
        .with_task_handle(handle)
    )


def allocation(**fields) -> Allocation:
    alloc = mock_alloc(mock_task("web"), mock_task("sidecar"))
    return attrs.evolve(alloc, **fields) if fields else alloc


# --- every implementation --------------------------------------------------------------


def test_is_a_statedb(any_db):
    assert isinstance(any_db, StateDB)


def test_missing_entries_are_none(any_db):
    assert any_db.all_allocations() == []
    assert any_db.task_runner_state("nope", "web") == (None, None)
    assert any_db.deployment_status("nope") is None
    any_db.delete_allocation("nope")  # deleting what is not there is fine


def test_close_is_idempotent(any_db):
    any_db.close()
    any_db.close()


@pytest.mark.requires_lockcheck
def test_calls_with_a_lock_held_are_refused(any_db):
    # Every StateDB method is a callout: holding a declared lock while calling one
    # would put file I/O under that lock.
    outer = make_lock("AllocRunner._state_lock")
    with outer, pytest.raises(CalloutUnderLockError):
        any_db.put_task_state("a", "web", task_state())
    assert lock_violations(), "the violation is recorded for the test harness"


# --- implementations that store --------------------------------------------------------


def test_put_and_get_allocation(db):
    alloc = allocation()
    db.put_allocation(alloc)
    assert db.all_allocations() == [alloc]


def test_overwrite_allocation(db):
    alloc = allocation()
    db.put_allocation(alloc)
    newer = attrs.evolve(alloc, alloc_modify_index=7, desired_status="stop")
    db.put_allocation(newer)
    assert db.all_allocations() == [newer]


def test_task_states_round_trip(db):
    alloc = allocation()
    db.put_allocation(alloc)
    db.put_task_state(alloc.id, "web", task_state(1))
    assert db.task_runner_state(alloc.id, "web") == (None, task_state(1))
    db.put_task_local_state(alloc.id, "web", local_state(1))
    assert db.task_runner_state(alloc.id, "web") == (local_state(1), task_state(1))
    # the other task and another alloc are untouched
    assert db.task_runner_state(alloc.id, "sidecar") == (None, None)
    assert db.task_runner_state("other", "web") == (None, None)


def test_task_states_overwrite(db):
    db.put_task_state("a", "web", task_state(1))
    db.put_task_local_state("a", "web", local_state(1))
    dead = task_state(2).with_state(TASK_DEAD, T0 + timedelta(minutes=1))
    db.put_task_state("a", "web", dead)
    db.put_task_local_state("a", "web", local_state(2).with_run_complete())
    local, state = db.task_runner_state("a", "web")
    assert state == dead
    assert local == local_state(2).with_run_complete()
    assert local.run_complete


def test_task_entries_without_allocation_are_not_listed(db):
    db.put_task_state("a", "web", task_state())
    assert db.all_allocations() == []
    assert db.task_runner_state("a", "web") == (None, task_state())


def test_deployment_status(db):
    alloc = allocation()
    db.put_allocation(alloc)
    status = AllocDeploymentStatus(healthy=True, timestamp=T0, canary=True, modify_index=3)
    db.put_deployment_status(alloc.id, status)
    assert db.deployment_status(alloc.id) == status
    unknown = AllocDeploymentStatus()
    db.put_deployment_status(alloc.id, unknown)
    assert db.deployment_status(alloc.id) == unknown
    db.put_deployment_status(alloc.id, None)
    assert db.deployment_status(alloc.id) is None
    assert db.all_allocations() == [alloc]


def test_delete_allocation_removes_everything_under_it(db):
    keep, gone = allocation(), allocation()
    for alloc in (keep, gone):
        db.put_allocation(alloc)
        db.put_deployment_status(alloc.id, AllocDeploymentStatus(healthy=False))
        for task in ("web", "sidecar"):
            db.put_task_state(alloc.id, task, task_state(1))
            db.put_task_local_state(alloc.id, task, local_state(1))
    db.delete_allocation(gone.id)
    assert db.all_allocations() == [keep]
    assert db.deployment_status(gone.id) is None
    for task in ("web", "sidecar"):
        assert db.task_runner_state(gone.id, task) == (None, None)
        assert db.task_runner_state(keep.id, task) == (local_state(1), task_state(1))
    assert db.deployment_status(keep.id) == AllocDeploymentStatus(healthy=False)


def test_writes_after_delete_do_not_resurrect(db):
    alloc = allocation()
    db.put_allocation(alloc)
    db.put_task_state(alloc.id, "web", task_state(0))
    db.delete_allocation(alloc.id)
    before = db.stats()
    # a runner persisting after its destroy (Nomad #5984/#6207)
    db.put_task_state(alloc.id, "web", task_state(1))
    db.put_task_local_state(alloc.id, "web", local_state(1))
    db.put_deployment_status(alloc.id, AllocDeploymentStatus(healthy=True))
    assert db.all_allocations() == []
    assert db.task_runner_state(alloc.id, "web") == (None, None)
    assert db.deployment_status(alloc.id) is None
    after = db.stats()
    assert after.dropped - before.dropped == 3
    assert after.writes == before.writes


def test_put_allocation_after_delete_adds_it_again(db):
    alloc = allocation()
    db.put_allocation(alloc)
    db.put_task_state(alloc.id, "web", task_state(0))
    db.delete_allocation(alloc.id)
    db.put_allocation(alloc)  # the server sent it again
    db.put_task_state(alloc.id, "web", task_state(2))
    assert db.all_allocations() == [alloc]
    assert db.task_runner_state(alloc.id, "web") == (None, task_state(2))


def test_identical_writes_are_skipped(db):
    alloc = allocation()
    base = db.stats()
    db.put_allocation(alloc)
    db.put_allocation(attrs.evolve(alloc))  # equal value, another object
    db.put_task_state(alloc.id, "web", task_state(1))
    db.put_task_state(alloc.id, "web", task_state(1))
    db.put_task_local_state(alloc.id, "web", local_state(1))
    db.put_task_local_state(alloc.id, "web", local_state(1))
    db.put_deployment_status(alloc.id, AllocDeploymentStatus(healthy=True))
    db.put_deployment_status(alloc.id, AllocDeploymentStatus(healthy=True))
    stats = db.stats()
    assert (stats.writes - base.writes, stats.skipped - base.skipped) == (4, 4)
    # a changed value is written; going back to an older value is written too
    db.put_task_state(alloc.id, "web", task_state(2))
    db.put_task_state(alloc.id, "web", task_state(1))
    assert db.stats().writes - base.writes == 6
    assert db.task_runner_state(alloc.id, "web")[1] == task_state(1)


def test_dedup_forgets_deleted_allocations(db):
    alloc = allocation()
    db.put_allocation(alloc)
    db.delete_allocation(alloc.id)
    before = db.stats()
    db.put_allocation(alloc)
    assert db.stats().writes == before.writes + 1
    assert db.all_allocations() == [alloc]


def test_many_allocations_and_tasks(db):
    allocs = [allocation(alloc_modify_index=i) for i in range(40)]
    for i, alloc in enumerate(allocs):
        db.put_allocation(alloc)
        for t in range(3):
            db.put_task_state(alloc.id, f"task{t}", task_state(i + t))
            db.put_task_local_state(alloc.id, f"task{t}", local_state(i * t))
    for alloc in allocs[::2]:
        db.delete_allocation(alloc.id)
    kept = allocs[1::2]
    assert sorted(a.id for a in db.all_allocations()) == sorted(a.id for a in kept)
    by_id = {a.id: a for a in db.all_allocations()}
    for alloc in kept:
        i = alloc.alloc_modify_index
        assert by_id[alloc.id] == alloc
        for t in range(3):
            assert db.task_runner_state(alloc.id, f"task{t}") == (
                local_state(i * t),
                task_state(i + t),
            )


def test_concurrent_writers_and_readers(db):
    writers, rounds = 6, 25
    allocs = [allocation() for _ in range(writers)]
    errors: list[BaseException] = []
    start = threading.Barrier(writers + 1)

    def write(alloc: Allocation) -> None:
        try:
            start.wait()
            db.put_allocation(alloc)
            for n in range(rounds):
                db.put_task_state(alloc.id, "web", task_state(n))
                db.put_task_local_state(alloc.id, "sidecar", local_state(n))
                db.put_deployment_status(alloc.id, AllocDeploymentStatus(modify_index=n))
        except BaseException as err:
            errors.append(err)

    def read() -> None:
        try:
            start.wait()
            for _ in range(rounds):
                for alloc in db.all_allocations():
                    local, state = db.task_runner_state(alloc.id, "web")
                    assert local is None
                    assert state is None or state.events
        except BaseException as err:
            errors.append(err)

    group = ThreadGroup("statedb-contract")
    for i, alloc in enumerate(allocs):
        group.spawn(f"writer-{i}", write, alloc)
    group.spawn("reader", read)
    assert group.join(timeout=30)
    assert errors == []
    assert sorted(a.id for a in db.all_allocations()) == sorted(a.id for a in allocs)
    for alloc in allocs:
        last = rounds - 1
        assert db.task_runner_state(alloc.id, "web") == (None, task_state(last))
        assert db.task_runner_state(alloc.id, "sidecar") == (local_state(last), None)
        assert db.deployment_status(alloc.id) == AllocDeploymentStatus(modify_index=last)


def test_concurrent_delete_and_task_writes_never_resurrect(db):
    # A task runner persisting while its allocation is deleted: whatever the order,
    # once delete returned the allocation is gone for good.
    allocs = [allocation() for _ in range(8)]
    for alloc in allocs:
        db.put_allocation(alloc)
    stop = threading.Event()
    errors: list[BaseException] = []

    def persist(alloc: Allocation) -> None:
        n = 0
        try:
            while not stop.is_set():
                db.put_task_state(alloc.id, "web", task_state(n % 5))
                n += 1
        except BaseException as err:
            errors.append(err)

    group = ThreadGroup("statedb-contract")
    for i, alloc in enumerate(allocs):
        group.spawn(f"persist-{i}", persist, alloc)
    for alloc in allocs:
        db.delete_allocation(alloc.id)
    stop.set()
    assert group.join(timeout=30)
    assert errors == []
    assert db.all_allocations() == []
    for alloc in allocs:
        assert db.task_runner_state(alloc.id, "web") == (None, None)


def test_flush_makes_every_earlier_write_visible_and_raises_once_closed(db):
    alloc = allocation()
    db.put_allocation(alloc)
    db.put_task_state(alloc.id, "web", task_state(1))
    db.flush()
    db.flush()  # nothing queued: returns at once
    assert db.all_allocations() == [alloc]
    assert db.task_runner_state(alloc.id, "web") == (None, task_state(1))
    db.close()
    with pytest.raises(StateDBError, match="closed"):
        db.flush()


def test_flush_after_writes_returns(any_db):
    any_db.put_task_state("a", "web", task_state())
    any_db.flush()


def test_use_after_close_raises(db):
    db.put_allocation(allocation())
    db.close()
    with pytest.raises(StateDBError, match="closed"):
        db.all_allocations()
    with pytest.raises(StateDBError, match="closed"):
        db.put_task_state("a", "web", task_state())
    with pytest.raises(StateDBError, match="closed"):
        db.task_runner_state("a", "web")


def test_rejects_wrong_value_types(db):
    with pytest.raises(TypeError, match="Allocation"):
        db.put_allocation({"ID": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TaskState"):
        db.put_task_state("a", "web", "running")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LocalState"):
        db.put_task_local_state("a", "web", {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AllocDeploymentStatus"):
        db.put_deployment_status("a", True)  # type: ignore[arg-type]


# --- NoopDB keeps nothing --------------------------------------------------------------


def test_noop_keeps_nothing():
    db = NoopDB()
    alloc = allocation()
    db.put_allocation(alloc)
    db.put_task_state(alloc.id, "web", task_state())
    db.put_task_local_state(alloc.id, "web", local_state())
    db.put_deployment_status(alloc.id, AllocDeploymentStatus(healthy=True))
    assert db.all_allocations() == []
    assert db.task_runner_state(alloc.id, "web") == (None, None)
    assert db.deployment_status(alloc.id) is None
    assert db.stats().writes == 0
    db.close()
    db.put_allocation(alloc)  # never fails, not even after close


# --- persistence (SQLite) --------------------------------------------------------------


def test_sqlite_close_makes_queued_writes_durable(tmp_path):
    # writes are committed by a writer thread; close() commits what is still queued
    path = tmp_path / "data" / "client" / "state.db"
    db = SQLiteStateDB(path)
    alloc = allocation()
    db.put_allocation(alloc)
    for n in range(30):
        db.put_task_state(alloc.id, "web", task_state(n))
    db.close()
    again = SQLiteStateDB(path)
    try:
        assert again.all_allocations() == [alloc]
        assert again.task_runner_state(alloc.id, "web") == (None, task_state(29))
    finally:
        again.close()


def test_sqlite_reopen_keeps_everything(tmp_path):
    path = tmp_path / "data" / "client" / "state.db"
    allocs = [allocation(alloc_modify_index=i) for i in range(5)]
    db = SQLiteStateDB(path)
    for i, alloc in enumerate(allocs):
        db.put_allocation(alloc)
        db.put_deployment_status(alloc.id, AllocDeploymentStatus(healthy=i % 2 == 0, timestamp=T0))
        db.put_task_state(alloc.id, "web", task_state(i))
        db.put_task_local_state(alloc.id, "web", local_state(i))
    db.delete_allocation(allocs[0].id)
    db.close()

    again = SQLiteStateDB(path)
    try:
        by_id = {a.id: a for a in again.all_allocations()}
        assert sorted(by_id) == sorted(a.id for a in allocs[1:])
        for i, alloc in enumerate(allocs[1:], start=1):
            assert by_id[alloc.id] == alloc
            assert again.task_runner_state(alloc.id, "web") == (local_state(i), task_state(i))
            assert again.deployment_status(alloc.id) == AllocDeploymentStatus(
                healthy=i % 2 == 0, timestamp=T0
            )
        assert again.task_runner_state(allocs[0].id, "web") == (None, None)
    finally:
        again.close()
