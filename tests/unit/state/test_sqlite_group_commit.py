"""SQLiteStateDB's writer thread: group commit, per-key order, flush and delete barriers,
reads that never wait for the writer's transaction, and the thread's lifecycle."""

from __future__ import annotations

import random
import sqlite3
import threading

import pytest

from allocrunner._sync import Event, ThreadGroup
from allocrunner.drivers.base import TaskConfig, TaskHandle
from allocrunner.errors import StateDBError
from allocrunner.state import LocalState, SQLiteStateDB, sqlite_writer
from allocrunner.state.sqlite_writer import (
    DELETE_ALLOC,
    DELETE_KEY,
    PUT,
    WRITER_THREAD,
    Record,
    WriteQueue,
    plan_batch,
)
from allocrunner.structs import AllocDeploymentStatus, TaskState
from allocrunner.testing import assert_stays, mock_alloc, wait_for


@pytest.fixture
def path(tmp_path):
    return tmp_path / "client" / "state.db"


@pytest.fixture
def db(path):
    db = SQLiteStateDB(path)
    yield db
    db.close()


def _rows(path, alloc_id: str) -> list[tuple[str, str]]:
    """What the file holds for the allocation, read by a connection of our own."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT task, kind FROM entries WHERE alloc_id = ? ORDER BY task, kind", (alloc_id,)
        ).fetchall()
    finally:
        conn.close()


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WRITER_THREAD]


# --- plan_batch --------------------------------------------------------------------------


def test_a_batch_keeps_the_last_write_of_each_key():
    batch = [
        Record(1, PUT, "a", "web", "task_state", "1"),
        Record(2, PUT, "a", "web", "task_state", "2"),
        Record(3, PUT, "b", "web", "task_state", "x"),
        Record(4, DELETE_KEY, "b", "", "deploy_status"),
        Record(5, PUT, "a", "web", "task_state", "3"),
    ]
    plan = plan_batch(batch)
    assert plan.puts == (("a", "web", "task_state", "3"), ("b", "web", "task_state", "x"))
    assert plan.deleted_keys == (("b", "", "deploy_status"),)
    assert plan.deleted_allocs == ()
    assert plan.coalesced == 2


def test_an_alloc_delete_drops_the_earlier_writes_of_that_alloc_only():
    batch = [
        Record(1, PUT, "a", "web", "task_state", "old"),
        Record(2, PUT, "b", "web", "task_state", "kept"),
        Record(3, DELETE_ALLOC, "a"),
        Record(4, PUT, "a", "", "alloc", "again"),  # put_allocation after the delete
    ]
    plan = plan_batch(batch)
    assert plan.deleted_allocs == ("a",)
    assert sorted(plan.puts) == [("a", "", "alloc", "again"), ("b", "web", "task_state", "kept")]
    assert plan.coalesced == 1


# --- group commit ------------------------------------------------------------------------


def test_writes_queued_while_the_writer_waits_become_one_transaction(db, path):
    # Another connection holds the file's write lock, so the writer cannot commit:
    # everything queued meanwhile goes into the transaction after the one it waits with.
    blocker = sqlite3.connect(path, isolation_level=None)
    before = db.stats()
    try:
        blocker.execute("BEGIN IMMEDIATE")
        for n in range(50):
            db.put_task_state("a", "web", TaskState(restarts=n))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    db.flush()
    after = db.stats()
    assert after.writes - before.writes == 50
    assert after.commits - before.commits <= 2
    assert after.coalesced - before.coalesced >= 48
    assert db.task_runner_state("a", "web") == (None, TaskState(restarts=49))


def test_the_last_put_of_a_key_wins_across_batches(db, path):
    keys = [(f"alloc-{i}", f"task-{j}") for i in range(3) for j in range(2)]
    rounds = 150
    errors: list[BaseException] = []

    def write(alloc_id: str, task: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            for n in range(rounds):
                db.put_task_state(alloc_id, task, TaskState(restarts=n))
                if rng.random() < 0.05:
                    db.flush()
        except BaseException as err:
            errors.append(err)

    group = ThreadGroup("statedb-order")
    for seed, (alloc_id, task) in enumerate(keys):
        group.spawn(f"writer-{seed}", write, alloc_id, task, seed)
    assert group.join(timeout=60)
    assert errors == []
    db.flush()
    assert db.stats().commits > 1, "the writes spanned several transactions"
    fresh = SQLiteStateDB(path)
    try:
        for alloc_id, task in keys:
            want = (None, TaskState(restarts=rounds - 1))
            assert db.task_runner_state(alloc_id, task) == want
            assert fresh.task_runner_state(alloc_id, task) == want
    finally:
        fresh.close()


def test_deleting_an_allocation_forgets_its_last_values_and_no_other(db, path):
    """The de-dup record is per allocation: a delete drops that allocation's (its values
    are written again once it is re-added) and leaves every other allocation's."""
    gone, kept = mock_alloc(), mock_alloc()
    state = TaskState(restarts=3)
    for alloc in (gone, kept):
        db.put_allocation(alloc)
        db.put_task_state(alloc.id, "web", state)
    db.delete_allocation(gone.id)
    before = db.stats()
    db.put_task_state(kept.id, "web", state)
    assert db.stats().skipped == before.skipped + 1, "the kept allocation's value is known"
    db.put_allocation(gone)
    db.put_task_state(gone.id, "web", state)
    after = db.stats()
    assert after.writes == before.writes + 2, "the re-added allocation's writes are queued"
    db.flush()
    assert _rows(path, gone.id) == [("", "alloc"), ("web", "task_state")]
    assert db.task_runner_state(kept.id, "web") == (None, state)


def test_the_same_object_put_again_is_skipped_before_it_is_encoded(db, path, monkeypatch):
    """A put of the very object last queued for its key is skipped without encoding it;
    an equal object built anew is encoded and skipped by its digest, and after the key
    or its allocation was deleted the same object is written again."""
    from allocrunner.state import sqlite as sqlite_module

    encoded: list[object] = []
    real = sqlite_module.encode_task_state

    def counting(state: TaskState) -> object:
        encoded.append(state)
        return real(state)

    monkeypatch.setattr(sqlite_module, "encode_task_state", counting)
    status = AllocDeploymentStatus(healthy=True)
    state = TaskState(restarts=3)
    db.put_task_state("a", "web", state)
    before = db.stats()
    db.put_task_state("a", "web", state)
    assert (len(encoded), db.stats().skipped) == (1, before.skipped + 1)
    db.put_task_state("a", "web", TaskState(restarts=3))  # equal, another object
    assert (len(encoded), db.stats().skipped) == (2, before.skipped + 2)
    db.put_deployment_status("a", status)
    db.put_deployment_status("a", None)
    db.put_deployment_status("a", status)  # the key was deleted: written again
    assert db.stats().writes == before.writes + 3
    db.delete_allocation("a")
    db.put_task_state("a", "web", state)  # the allocation was deleted: dropped
    assert db.stats().dropped == before.dropped + 1
    db.put_allocation(alloc := mock_alloc())
    db.put_allocation(alloc)
    assert db.stats().skipped == before.skipped + 3
    db.flush()
    assert _rows(path, alloc.id) == [("", "alloc")]
    db.close()
    with pytest.raises(StateDBError, match="closed"):
        db.put_allocation(alloc)  # the same object: refused as any put on a closed DB


def test_a_flushed_write_is_read_by_a_fresh_instance_on_the_same_file(db, path):
    alloc = mock_alloc()
    db.put_allocation(alloc)
    db.put_task_state(alloc.id, "web", TaskState(restarts=3))
    db.put_deployment_status(alloc.id, AllocDeploymentStatus(healthy=True))
    db.flush()
    fresh = SQLiteStateDB(path)
    try:
        assert fresh.all_allocations() == [alloc]
        assert fresh.task_runner_state(alloc.id, "web") == (None, TaskState(restarts=3))
        assert fresh.deployment_status(alloc.id) == AllocDeploymentStatus(healthy=True)
    finally:
        fresh.close()


def test_close_commits_what_is_queued(path):
    db = SQLiteStateDB(path)
    for n in range(20):
        db.put_task_state("a", f"task-{n}", TaskState(restarts=n))
    db.close()
    assert len(_rows(path, "a")) == 20


# --- barriers ----------------------------------------------------------------------------


def _local_with_handle(pid: int) -> LocalState:
    config = TaskConfig(id=f"a/web/{pid}", alloc_id="a", name="web")
    return LocalState().with_task_handle(
        TaskHandle(driver="mock_driver", config=config, driver_state={"pid": pid})
    )


def test_a_new_driver_handle_is_committed_when_its_put_returns(db, path):
    db.put_task_local_state("a", "web", _local_with_handle(1))
    assert _rows(path, "a") == [("web", "local_state")], "on disk without a flush"
    db.put_task_local_state("a", "other", LocalState())  # no handle: just queued
    db.put_task_local_state("a", "web", _local_with_handle(2))
    assert ("web", "local_state") in _rows(path, "a")
    fresh = SQLiteStateDB(path)
    try:
        assert fresh.task_runner_state("a", "web")[0] == _local_with_handle(2)
    finally:
        fresh.close()


def test_delete_racing_writers_of_several_threads_never_resurrects(db, path):
    allocs = [mock_alloc() for _ in range(6)]
    for alloc in allocs:
        db.put_allocation(alloc)
    stop = Event()
    errors: list[BaseException] = []

    def persist(alloc_id: str, seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                n = rng.randrange(1000)
                db.put_task_state(alloc_id, "web", TaskState(restarts=n))
                db.put_task_local_state(alloc_id, "web", LocalState(run_complete=n % 2 == 0))
                db.put_deployment_status(alloc_id, AllocDeploymentStatus(modify_index=n))
        except BaseException as err:
            errors.append(err)

    group = ThreadGroup("statedb-delete-race")
    for i, alloc in enumerate(allocs):
        for j in range(2):
            group.spawn(f"persist-{i}-{j}", persist, alloc.id, 10 * i + j)
    for alloc in allocs:
        wait_for(lambda alloc=alloc: _assert_has_rows(path, alloc.id), 10)
        db.delete_allocation(alloc.id)
        assert _rows(path, alloc.id) == [], "the delete is on disk when it returns"
        assert db.task_runner_state(alloc.id, "web") == (None, None)
    stop.set()
    assert group.join(timeout=30)
    assert errors == []
    db.flush()
    assert db.all_allocations() == []
    for alloc in allocs:
        assert _rows(path, alloc.id) == []
    assert db.stats().dropped > 0, "late writes were dropped"


def _assert_has_rows(path, alloc_id: str) -> None:
    assert len(_rows(path, alloc_id)) >= 2


# --- reads -------------------------------------------------------------------------------


def test_reads_never_wait_for_the_writers_transaction(db, monkeypatch):
    quiet = mock_alloc()
    db.put_allocation(quiet)
    db.put_task_state(quiet.id, "web", TaskState(restarts=1))
    db.flush()
    entered, release = Event(), Event()
    commit = WriteQueue._commit

    def held_commit(self: WriteQueue) -> None:
        entered.set()
        release.wait(30)
        commit(self)

    monkeypatch.setattr(WriteQueue, "_commit", held_commit)
    db.put_task_state("busy", "web", TaskState(restarts=7))
    try:
        assert entered.wait(10), "the writer holds a transaction open"
        # another allocation: read from the last committed snapshot, at once
        assert db.task_runner_state(quiet.id, "web") == (None, TaskState(restarts=1))
        # a write is only queued, whatever the writer is doing
        db.put_task_state("other", "web", TaskState(restarts=2))
        # a read of the busy allocation waits for its caller's write
        seen: list[object] = []
        group = ThreadGroup("statedb-reader")
        group.spawn("reader", lambda: seen.append(db.task_runner_state("busy", "web")))
        assert_stays(lambda: _equal(seen, []), 0.2)
    finally:
        release.set()
    assert group.join(timeout=10)
    assert seen == [(None, TaskState(restarts=7))]


def _equal(got: object, want: object) -> None:
    assert got == want


# --- the writer thread -------------------------------------------------------------------


def test_the_writer_starts_with_the_first_write_and_ends_at_close(path):
    before = set(_writers())
    db = SQLiteStateDB(path)
    db.all_allocations()
    assert set(_writers()) == before, "reading needs no writer"
    db.put_task_state("a", "web", TaskState())
    assert len(set(_writers()) - before) == 1
    db.close()
    assert set(_writers()) == before
    db.close()


def test_concurrent_closes_all_return_closed(path):
    db = SQLiteStateDB(path)
    for n in range(100):
        db.put_task_state("a", "web", TaskState(restarts=n))
    group = ThreadGroup("statedb-close")
    for i in range(4):
        group.spawn(f"close-{i}", db.close)
    assert group.join(timeout=30)
    with pytest.raises(StateDBError, match="closed"):
        db.flush()
    fresh = SQLiteStateDB(path)
    try:
        assert fresh.task_runner_state("a", "web") == (None, TaskState(restarts=99))
    finally:
        fresh.close()


def test_a_writer_far_behind_makes_puts_wait(db, path, monkeypatch):
    # With the file locked by another connection nothing commits: once more than
    # MAX_PENDING records are queued, a put waits for the writer instead of queueing.
    monkeypatch.setattr(sqlite_writer, "MAX_PENDING", 5)
    done = Event()

    def write() -> None:
        for n in range(20):
            db.put_task_state("a", f"task-{n}", TaskState(restarts=n))
        done.set()

    blocker = sqlite3.connect(path, isolation_level=None)
    group = ThreadGroup("statedb-backpressure")
    try:
        blocker.execute("BEGIN IMMEDIATE")
        group.spawn("writer", write)
        wait_for(lambda: _assert_queued_at_least(db, 6), 10)
        assert_stays(lambda: _equal(done.is_set(), False), 0.3)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert group.join(timeout=30)
    assert done.is_set()
    db.flush()
    assert len(_rows(path, "a")) == 20


def _assert_queued_at_least(db: SQLiteStateDB, n: int) -> None:
    assert db.stats().writes >= n


# --- the group-commit window -------------------------------------------------------------


@pytest.fixture
def long_linger(monkeypatch):
    """A window far longer than any test: a batch is committed only when something
    other than its age asks for it."""
    monkeypatch.setattr(sqlite_writer, "LINGER", 3600.0)


def test_a_batch_nobody_waits_on_stays_open_until_a_flush(long_linger, db, path):
    before = db.stats().commits
    for n in range(3):
        db.put_task_state("a", f"task-{n}", TaskState(restarts=n))
    assert_stays(lambda: _equal(_rows(path, "a"), []), 0.2)
    db.flush()
    assert len(_rows(path, "a")) == 3
    assert db.stats().commits - before == 1


def test_a_read_does_not_wait_for_the_window(long_linger, db):
    db.put_task_state("a", "web", TaskState(restarts=7))
    # The read waits for its own allocation's writes: the open batch is committed now.
    assert db.task_runner_state("a", "web") == (None, TaskState(restarts=7))


def test_a_batch_as_long_as_linger_max_is_committed_without_a_waiter(
    long_linger, db, path, monkeypatch
):
    monkeypatch.setattr(sqlite_writer, "LINGER_MAX", 4)
    for n in range(3):
        db.put_task_state("a", f"task-{n}", TaskState(restarts=n))
    assert_stays(lambda: _equal(_rows(path, "a"), []), 0.2)
    db.put_task_state("a", "task-3", TaskState(restarts=3))
    wait_for(lambda: _equal(len(_rows(path, "a")), 4), 10)


def test_a_write_nobody_waits_for_reaches_the_file_within_the_window(db, path):
    assert sqlite_writer.LINGER < 1.0
    db.put_task_state("a", "web", TaskState(restarts=1))
    wait_for(lambda: _equal(_rows(path, "a"), [("web", "task_state")]), 10)


def test_a_queued_handle_is_committed_by_wait_committed_and_not_before(long_linger, db, path):
    before = db.stats().commits
    db.queue_task_local_state("a", "web", _local_with_handle(1))
    db.queue_task_local_state("b", "web", _local_with_handle(2))
    assert_stays(lambda: _equal(_rows(path, "a") + _rows(path, "b"), []), 0.2)
    db.wait_committed("a")
    assert _rows(path, "a") == [("web", "local_state")]
    assert _rows(path, "b") == [("web", "local_state")], "queued before: the same batch"
    db.wait_committed("b")  # committed already: returns at once, with no new commit
    assert db.stats().commits - before == 1
