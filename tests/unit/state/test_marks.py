"""The destroying mark, over every StateDB: set by a destroy, seen by a later reader
(another SQLite connection after a restart included), removed with the allocation's
state, never taken for a task or an allocation, and dropped after the delete."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner.state import MemDB, NoopDB, SQLiteStateDB, StateDB
from allocrunner.state.marks import DESTROYING_TASK, destroy_interrupted, mark_destroying
from allocrunner.structs import TaskState
from allocrunner.testing import mock_alloc


@pytest.fixture(params=["memory", "sqlite"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateDB]:
    made: StateDB = MemDB() if request.param == "memory" else SQLiteStateDB(tmp_path / "s.db")
    yield made
    made.close()


def test_a_mark_is_seen_until_the_allocation_is_deleted(db: StateDB) -> None:
    alloc = mock_alloc()
    db.put_allocation(alloc)
    db.put_task_state(alloc.id, "web", TaskState())
    assert not destroy_interrupted(db, alloc.id)
    mark_destroying(db, alloc.id)
    assert destroy_interrupted(db, alloc.id)
    assert db.all_allocations() == [alloc], "the mark is not an allocation"
    db.delete_allocation(alloc.id)
    assert not destroy_interrupted(db, alloc.id)
    mark_destroying(db, alloc.id)  # a late write after the delete is dropped
    assert not destroy_interrupted(db, alloc.id)


def test_a_mark_survives_a_restart(tmp_path: Path) -> None:
    alloc = mock_alloc()
    first = SQLiteStateDB(tmp_path / "state.db")
    first.put_allocation(alloc)
    mark_destroying(first, alloc.id)
    first.close()
    second = SQLiteStateDB(tmp_path / "state.db")
    try:
        assert destroy_interrupted(second, alloc.id)
        assert second.task_runner_state(alloc.id, "web") == (None, None)
    finally:
        second.close()


def test_no_task_can_take_the_marks_name() -> None:
    from allocrunner.allocdir.alloc_dir import _task_name
    from allocrunner.errors import PathEscapeError

    with pytest.raises(PathEscapeError):
        _task_name(DESTROYING_TASK)


def test_a_noop_db_keeps_no_mark() -> None:
    db = NoopDB()
    mark_destroying(db, "a")
    assert not destroy_interrupted(db, "a")
