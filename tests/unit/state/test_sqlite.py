"""SQLiteStateDB specifics: the file, its schema version, corruption, other processes."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import textwrap

import attrs
import pytest

from allocrunner.errors import StateDBError
from allocrunner.jobspec import encode_allocation
from allocrunner.jobspec.codec import encode_allocation_with_job
from allocrunner.state import LocalState, SQLiteStateDB
from allocrunner.state.sqlite import SCHEMA_VERSION
from allocrunner.structs import TaskState, new_allocation
from allocrunner.testing import mock_alloc, mock_job, mock_task


@pytest.fixture
def path(tmp_path):
    return tmp_path / "data" / "client" / "state.db"


def test_creates_parent_dirs_wal_and_version(path):
    db = SQLiteStateDB(path)
    db.close()
    assert path.is_file()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]
        assert int(version) == SCHEMA_VERSION
    finally:
        conn.close()


def test_newer_schema_is_refused(path):
    SQLiteStateDB(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(SCHEMA_VERSION + 1),))
    conn.close()
    with pytest.raises(StateDBError, match="newer") as info:
        SQLiteStateDB(path)
    assert str(path) in str(info.value)


def test_corrupt_file_is_refused_naming_it(path):
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(StateDBError) as info:
        SQLiteStateDB(path)
    assert str(path) in str(info.value)


def test_foreign_database_is_refused(path):
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    conn.close()
    with pytest.raises(StateDBError, match="not an allocrunner state database"):
        SQLiteStateDB(path)


def test_directory_path_is_refused(tmp_path):
    with pytest.raises(StateDBError, match="is a directory"):
        SQLiteStateDB(tmp_path)


def test_durable_mode_round_trips(path):
    alloc = mock_alloc()
    db = SQLiteStateDB(path, durable=True)
    db.put_allocation(alloc)
    db.close()
    again = SQLiteStateDB(path)
    assert again.all_allocations() == [alloc]
    again.close()


def _corrupt(path, alloc_id, task, kind):
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "UPDATE entries SET value = '{\"broken\": true' WHERE alloc_id = ? AND task = ? "
            "AND kind = ?",
            (alloc_id, task, kind),
        )
    conn.close()


def test_undecodable_allocation_is_skipped_and_logged(path, caplog):
    good, bad = mock_alloc(), mock_alloc()
    db = SQLiteStateDB(path)
    db.put_allocation(good)
    db.put_allocation(bad)
    db.flush()  # on disk before the file is damaged under it
    _corrupt(path, bad.id, "", "alloc")
    with caplog.at_level(logging.ERROR, logger="allocrunner.state"):
        assert db.all_allocations() == [good]
    assert bad.id in caplog.text
    db.close()


def test_undecodable_task_state_raises_naming_it(path):
    alloc = mock_alloc()
    db = SQLiteStateDB(path)
    db.put_task_state(alloc.id, "web", TaskState())
    db.put_task_local_state(alloc.id, "web", LocalState())
    db.flush()  # on disk before the file is damaged under it
    _corrupt(path, alloc.id, "web", "local_state")
    with pytest.raises(StateDBError, match=f"local_state of task 'web' in allocation {alloc.id}"):
        db.task_runner_state(alloc.id, "web")
    db.close()


def test_file_shared_with_another_process(path):
    """Another process holding the file open (and writing) does not stop us."""
    alloc = mock_alloc()
    db = SQLiteStateDB(path)
    db.put_allocation(alloc)
    db.flush()  # another process sees what is committed
    script = textwrap.dedent(
        f"""
        import sys
        from allocrunner.state import SQLiteStateDB
        from allocrunner.structs import TaskState
        db = SQLiteStateDB({str(path)!r})
        ids = [a.id for a in db.all_allocations()]
        db.put_task_state({alloc.id!r}, "web", TaskState(restarts=3))
        db.flush()
        print(",".join(ids), flush=True)
        sys.stdin.readline()  # keep the file open until told to exit
        db.close()
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            seen = child.stdout.readline().strip()
            assert seen == alloc.id, "the other process reads what we wrote"
            # the other process still has the file open; our reads and writes go on
            assert db.task_runner_state(alloc.id, "web") == (None, TaskState(restarts=3))
            db.put_task_state(alloc.id, "web", TaskState(restarts=4))
        finally:
            child.stdin.close()
            assert child.wait(timeout=30) == 0
    db.close()
    again = SQLiteStateDB(path)
    assert again.task_runner_state(alloc.id, "web") == (None, TaskState(restarts=4))
    again.close()


def test_write_errors_name_the_file(path, caplog):
    """A write fails on the writer thread: it is logged and counted, and the next
    flush, every later write and the first close raise StateDBError naming the file."""
    db = SQLiteStateDB(path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("DROP TABLE entries")
    conn.close()
    with caplog.at_level(logging.ERROR, logger="allocrunner.state"):
        db.put_task_state("a", "web", TaskState())  # queued: the failure comes later
        with pytest.raises(StateDBError, match=str(path)):
            db.flush()
    assert str(path) in caplog.text
    assert db.stats().failed == 1
    with pytest.raises(StateDBError, match=str(path)):
        db.put_task_state("a", "web", TaskState(restarts=1))
    with pytest.raises(StateDBError, match=str(path)):
        db.delete_allocation("a")
    with pytest.raises(StateDBError, match=str(path)):
        db.close()
    db.close()  # idempotent: the failure was reported once


def test_allocations_of_one_job_share_its_encoding_and_round_trip(path):
    """The allocations of one job are stored through one encoding of the job; each
    reads back whole, as does one of another job in between and after."""
    job = mock_job(mock_task("web"))
    other = attrs.evolve(job, id="other", name="other", version=3)
    allocs = [new_allocation(job, "web", index=i) for i in range(3)]
    allocs.insert(2, new_allocation(other, "web", index=0))
    allocs.append(attrs.evolve(allocs[0], desired_status="stop", alloc_modify_index=9))
    db = SQLiteStateDB(path)
    try:
        for alloc in allocs:
            db.put_allocation(alloc)
        stored = {a.id: a for a in db.all_allocations()}
    finally:
        db.close()
    assert stored == {a.id: a for a in allocs[1:]} | {allocs[0].id: allocs[-1]}
    for alloc in allocs:
        assert encode_allocation_with_job(alloc, encode_allocation(alloc)["Job"]) == (
            encode_allocation(alloc)
        )


def test_a_job_is_serialised_once_for_the_allocations_that_share_it(path, monkeypatch):
    """The job's text is made again only when an allocation of another Job object is
    written (A, A, B, A: three times), and each stored text is the allocation's whole
    encoding, job included."""
    from allocrunner.state import sqlite as sqlite_module

    encoded: list[str] = []
    real = sqlite_module.encode_job

    def counting(job):
        encoded.append(job.id)
        return real(job)

    monkeypatch.setattr(sqlite_module, "encode_job", counting)
    job = mock_job(mock_task("web"))
    other = attrs.evolve(job, id="other", name="other", version=3)
    allocs = [
        new_allocation(job, "web", index=0),
        new_allocation(job, "web", index=1),
        new_allocation(other, "web", index=0),
        new_allocation(job, "web", index=2),
    ]
    db = SQLiteStateDB(path)
    try:
        for alloc in allocs:
            db.put_allocation(alloc)
        db.flush()
    finally:
        db.close()
    assert encoded == [job.id, "other", job.id]
    conn = sqlite3.connect(path)
    try:
        rows = dict(conn.execute("SELECT alloc_id, value FROM entries WHERE kind = 'alloc'"))
    finally:
        conn.close()
    assert {alloc.id: json.loads(rows[alloc.id]) for alloc in allocs} == {
        alloc.id: encode_allocation(alloc) for alloc in allocs
    }
