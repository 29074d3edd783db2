"""A hypothesis state machine: MemDB and SQLiteStateDB behave like a plain model,
through any interleaving of puts, deletes, re-adds and (for SQLite) reopening."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from allocrunner.state import HookState, LocalState, MemDB, SQLiteStateDB
from allocrunner.structs import AllocDeploymentStatus, TaskState
from allocrunner.testing import mock_alloc

ALLOCS = [mock_alloc() for _ in range(3)]
TASKS = ["web", "db"]

alloc_index = st.integers(0, len(ALLOCS) - 1)
tasks = st.sampled_from(TASKS)
numbers = st.integers(0, 3)


def _task_state(n: int) -> TaskState:
    return TaskState(restarts=n)


def _local(n: int) -> LocalState:
    return LocalState(hooks={"h": HookState(prestart_done=n % 2 == 0, data={"n": str(n)})})


class StateDBModel(RuleBasedStateMachine):
    """Not thread-safe; owned by hypothesis. Compares one DB with a dict model."""

    sqlite = False

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="statedb-model-"))
        self.db = self._open()
        self.allocs: dict[str, object] = {}
        self.tasks: dict[tuple[str, str], tuple[object, object]] = {}
        self.deploy: dict[str, AllocDeploymentStatus] = {}
        self.deleted: set[str] = set()

    def _open(self):
        return SQLiteStateDB(self.dir / "state.db") if self.sqlite else MemDB()

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(i=alloc_index, index=numbers)
    def put_allocation(self, i, index):
        alloc = attrs.evolve(ALLOCS[i], alloc_modify_index=index)
        self.db.put_allocation(alloc)
        self.allocs[alloc.id] = alloc
        self.deleted.discard(alloc.id)

    @rule(i=alloc_index, task=tasks, n=numbers)
    def put_task_state(self, i, task, n):
        alloc_id = ALLOCS[i].id
        self.db.put_task_state(alloc_id, task, _task_state(n))
        if alloc_id not in self.deleted:
            local, _ = self.tasks.get((alloc_id, task), (None, None))
            self.tasks[(alloc_id, task)] = (local, _task_state(n))

    @rule(i=alloc_index, task=tasks, n=numbers)
    def put_local_state(self, i, task, n):
        alloc_id = ALLOCS[i].id
        self.db.put_task_local_state(alloc_id, task, _local(n))
        if alloc_id not in self.deleted:
            _, state = self.tasks.get((alloc_id, task), (None, None))
            self.tasks[(alloc_id, task)] = (_local(n), state)

    @rule(i=alloc_index, healthy=st.none() | st.booleans(), clear=st.booleans())
    def put_deployment_status(self, i, healthy, clear):
        alloc_id = ALLOCS[i].id
        status = None if clear else AllocDeploymentStatus(healthy=healthy)
        self.db.put_deployment_status(alloc_id, status)
        if alloc_id in self.deleted:
            return
        if status is None:
            self.deploy.pop(alloc_id, None)
        else:
            self.deploy[alloc_id] = status

    @rule(i=alloc_index)
    def delete_allocation(self, i):
        alloc_id = ALLOCS[i].id
        self.db.delete_allocation(alloc_id)
        self.allocs.pop(alloc_id, None)
        self.deploy.pop(alloc_id, None)
        self.tasks = {k: v for k, v in self.tasks.items() if k[0] != alloc_id}
        self.deleted.add(alloc_id)

    @precondition(lambda self: self.sqlite)
    @rule()
    def reopen(self):
        self.db.close()
        self.db = self._open()
        # tombstones protect against late writers of this process only
        self.deleted.clear()

    @invariant()
    def matches_model(self):
        assert {a.id: a for a in self.db.all_allocations()} == self.allocs
        for alloc in ALLOCS:
            assert self.db.deployment_status(alloc.id) == self.deploy.get(alloc.id)
            for task in TASKS:
                expected = self.tasks.get((alloc.id, task), (None, None))
                assert self.db.task_runner_state(alloc.id, task) == expected


class SQLiteStateDBModel(StateDBModel):
    sqlite = True


TestMemDBModel = StateDBModel.TestCase
TestMemDBModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestSQLiteStateDBModel = SQLiteStateDBModel.TestCase
TestSQLiteStateDBModel.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
