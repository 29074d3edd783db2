"""Stress: task runners persisting while their allocations are deleted and re-added,
with the interpreter switching threads as often as it can."""

from __future__ import annotations

import random
import threading
import time

import pytest

from allocrunner._sync import ThreadGroup
from allocrunner.state import LocalState, MemDB, SQLiteStateDB
from allocrunner.structs import TaskState
from allocrunner.testing import mock_alloc

DURATION = 1.5



@pytest.mark.stress
@pytest.mark.parametrize("kind", ["memdb", "sqlite"])
def test_persist_delete_readd_race(tmp_path, fast_switching, kind):
    db = MemDB() if kind == "memdb" else SQLiteStateDB(tmp_path / "state.db")
    allocs = [mock_alloc() for _ in range(4)]
    stop = threading.Event()
    errors: list[BaseException] = []
    group = ThreadGroup("statedb-stress")

    def persister(alloc, seed):
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                n = rng.randrange(4)
                db.put_task_state(alloc.id, "web", TaskState(restarts=n))
                db.put_task_local_state(alloc.id, "web", LocalState(run_complete=n % 2 == 0))
        except BaseException as err:
            errors.append(err)

    def reader():
        try:
            while not stop.is_set():
                for alloc in db.all_allocations():
                    db.task_runner_state(alloc.id, "web")
        except BaseException as err:
            errors.append(err)

    for i, alloc in enumerate(allocs):
        db.put_allocation(alloc)
        group.spawn(f"persist-{i}", persister, alloc, i)
    group.spawn("reader", reader)
    rng = random.Random(42)
    deadline = time.monotonic() + DURATION
    rounds = 0
    while time.monotonic() < deadline and rounds < 2000:
        alloc = rng.choice(allocs)
        db.delete_allocation(alloc.id)
        # gone at once, whatever the persisters do meanwhile
        assert alloc.id not in {a.id for a in db.all_allocations()}
        assert db.task_runner_state(alloc.id, "web") == (None, None)
        db.put_allocation(alloc)
        rounds += 1
    for alloc in allocs:
        db.delete_allocation(alloc.id)
    stop.set()
    assert group.join(timeout=30)
    assert errors == []
    assert rounds > 10
    assert db.all_allocations() == []
    for alloc in allocs:
        assert db.task_runner_state(alloc.id, "web") == (None, None)
    db.close()
