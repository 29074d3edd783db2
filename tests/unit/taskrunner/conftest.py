"""Fixtures for TaskRunner tests: real alloc dirs under tmp_path, real drivers, a MemDB,
and a harness that runs each runner on its own named thread and always cleans up."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from allocrunner._locking import held_locks
from allocrunner._sync import ThreadGroup
from allocrunner.allocdir import AllocDir
from allocrunner.drivers.mock import MockDriver
from allocrunner.drivers.raw_exec import RawExecDriver
from allocrunner.state import LocalState, MemDB
from allocrunner.structs import Allocation, RestartPolicy, Task, TaskEvent, TaskState
from allocrunner.taskrunner import TaskRunner
from allocrunner.testing import mock_alloc, wait_for

NO_RESTARTS = RestartPolicy(attempts=0, interval=600.0, delay=0.0, mode="fail")


def alloc_of(
    *tasks: Task,
    job_type: str = "batch",
    restart_policy: RestartPolicy | None = None,
    **fields: Any,
) -> Allocation:
    """An allocation of one group holding `tasks` (no restarts unless a policy is given)."""
    return mock_alloc(
        *tasks, job_type=job_type, restart_policy=restart_policy or NO_RESTARTS, **fields
    )


def event_types(state: TaskState) -> list[str]:
    return [e.type for e in state.events]


def events_of(tr: TaskRunner, kind: str) -> list[TaskEvent]:
    return [e for e in tr.task_state().events if e.type == kind]


class RecordingDB(MemDB):
    """Thread-safe. A MemDB that counts task writes, checks that no lock is held while
    it is written, tracks how many writers are inside it at once, and can hold writers
    at a gate."""

    def __init__(self, alloc_id: str = "", task: str = "") -> None:
        super().__init__()
        self._task_key = (alloc_id, task)
        self._mutex = threading.Lock()
        self.state_writes = 0
        self.local_writes = 0
        self.inside = 0
        self.most_inside = 0
        self.locks_seen: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False

    def _enter(self) -> None:
        with self._mutex:
            self.locks_seen += held_locks()
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            fail, self.fail_next = self.fail_next, False
        self.gate.wait(10)
        if fail:
            with self._mutex:
                self.inside -= 1
            raise OSError("disk full")

    def _leave(self) -> None:
        with self._mutex:
            self.inside -= 1

    def put_task_state(self, alloc_id: str, task: str, state: TaskState) -> None:
        self._enter()
        try:
            super().put_task_state(alloc_id, task, state)
            with self._mutex:
                self.state_writes += 1
        finally:
            self._leave()

    def put_task_local_state(self, alloc_id: str, task: str, local: LocalState) -> None:
        self._enter()
        try:
            super().put_task_local_state(alloc_id, task, local)
            with self._mutex:
                self.local_writes += 1
        finally:
            self._leave()

    def stored(self) -> tuple[LocalState | None, TaskState | None]:
        """The entries of the task named at construction."""
        return self.task_runner_state(*self._task_key)


class Kicks:
    """Thread-safe. Counts on_state_change notifications."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __call__(self) -> None:
        with self._lock:
            self.count += 1


class Harness:
    """Not thread-safe; owned by one test. Builds runners and joins them at the end."""

    def __init__(self, root: str, drivers: Mapping[str, Any], db: MemDB) -> None:
        self.root = root
        self.drivers = dict(drivers)
        self.db = db
        self.kicks = Kicks()
        self.runners: list[TaskRunner] = []
        self.threads = ThreadGroup("test-taskrunner")

    def alloc_dir(self, alloc: Allocation) -> AllocDir:
        alloc_dir = AllocDir(self.root, alloc.id)
        alloc_dir.build()
        return alloc_dir

    def runner(
        self, alloc: Allocation, name: str | None = None, *, start: bool = True, **kwargs: Any
    ) -> TaskRunner:
        """A TaskRunner for task `name` (default: the group's first task)."""
        group = alloc.group()
        assert group is not None
        name = name or group.tasks[0].name
        kwargs.setdefault("drivers", self.drivers)
        kwargs.setdefault("state_db", self.db)
        kwargs.setdefault("on_state_change", self.kicks)
        kwargs.setdefault("kill_retry_base", 0.01)
        kwargs.setdefault("max_kill_timeout", 5.0)
        alloc_dir = kwargs.pop("alloc_dir", None) or self.alloc_dir(alloc)
        tr = TaskRunner(alloc, name, alloc_dir=alloc_dir, **kwargs)
        self.runners.append(tr)
        if start:
            self.start(tr)
        return tr

    def start(self, tr: TaskRunner) -> None:
        self.threads.spawn(f"task-{tr.alloc_id[:8]}-{tr.name}", tr.run)

    def close(self) -> None:
        for tr in self.runners:
            tr.kill(timeout=20)
        for tr in self.runners:
            assert tr.wait(20), f"{tr} did not finish"
        assert self.threads.join(20), "task runner threads still alive"


@pytest.fixture
def mock_driver() -> Iterator[MockDriver]:
    driver = MockDriver()
    yield driver
    driver.close()


@pytest.fixture
def raw_exec() -> Iterator[RawExecDriver]:
    driver = RawExecDriver()
    yield driver
    driver.close()


@pytest.fixture
def db() -> MemDB:
    return MemDB()


@pytest.fixture
def harness(tmp_path, mock_driver, raw_exec, db) -> Iterator[Harness]:
    h = Harness(str(tmp_path / "allocs"), {"mock_driver": mock_driver, "raw_exec": raw_exec}, db)
    try:
        yield h
    finally:
        h.close()


def wait_state(tr: TaskRunner, state: str, timeout: float = 10.0) -> TaskState:
    def check() -> TaskState:
        st = tr.task_state()
        assert st.state == state, f"{tr} is {st.state}, want {state}; events {event_types(st)}"
        return st

    return wait_for(check, timeout)


def wait_event(tr: TaskRunner, kind: str, count: int = 1, timeout: float = 10.0) -> TaskState:
    def check() -> TaskState:
        st = tr.task_state()
        seen = event_types(st).count(kind)
        assert seen >= count, f"{tr}: {seen} {kind!r} events, want {count}; {event_types(st)}"
        return st

    return wait_for(check, timeout)


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
