"""Stress: kill / restart / force_restart / signal / update / task_state / events from
many threads against running task runners, with forced thread switches.

Runners use mock_driver tasks that exit and restart on their own, and raw_exec tasks
(real processes). For a bounded time worker threads hit random runners with every
public operation; only the documented errors may surface (TaskNotRunningError, and
DriverError from signalling a task that is exiting). Observers check the snapshot
invariants throughout. Then every runner is killed from several threads at once: all
must finish in time, dead, with the newest state in the DB, and no thread, process or
lock violation may be left (the harness checks threads and the lock discipline).
"""

from __future__ import annotations

import os
import random
import threading
import time
import traceback

import attrs
import pytest

from allocrunner._sync import ThreadGroup
from allocrunner.allocdir import AllocDir
from allocrunner.drivers._process import children_of
from allocrunner.drivers.mock import MockDriver
from allocrunner.drivers.raw_exec import RawExecDriver
from allocrunner.errors import DriverError, TaskNotRunningError
from allocrunner.state import MemDB
from allocrunner.structs import RestartPolicy, TaskEvent, TaskState
from allocrunner.structs.task_state import EVENT_RESTART_SIGNAL, EVENT_SIGNALING, MAX_EVENTS
from allocrunner.taskrunner import TaskRunner
from allocrunner.testing import mock_alloc, mock_task, wait_for

pytestmark = pytest.mark.stress

DURATION = 2.5
MAX_OPS = 4_000
WORKERS = 6
OBSERVERS = 2

POLICY = RestartPolicy(attempts=10_000, interval=3600.0, delay=0.005, mode="fail")



def live_children() -> set[int]:
    return {child.pid for child in children_of(os.getpid())}


class Failures:
    """Thread-safe. Unexpected errors and broken invariants seen by any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[str] = []

    def add(self, text: str) -> None:
        with self._lock:
            self.items.append(text)


def check_snapshot(st: TaskState) -> None:
    assert st.state in ("pending", "running", "dead"), st.state
    assert len(st.events) <= MAX_EVENTS
    if st.state == "running":
        assert st.started_at is not None
    if st.restarts:
        assert st.last_restart is not None


def build_runners(root: str, drivers: dict, db: MemDB, kicks: list[int]) -> list[TaskRunner]:
    tasks = [
        mock_task("flap", config={"run_for": "15ms", "exit_code": 1}),
        mock_task("steady", config={"run_for": "60s", "kill_after": "5ms"}),
        mock_task("quick", config={"run_for": "2ms"}),
        mock_task(
            "proc",
            driver="raw_exec",
            config={"command": "/bin/sh", "args": ["-c", "exec sleep 60"]},
            kill_timeout=1.0,
        ),
        mock_task(
            "proc2",
            driver="raw_exec",
            config={"command": "/bin/sh", "args": ["-c", "sleep 0.05; exit 3"]},
            kill_timeout=1.0,
        ),
    ]
    alloc = mock_alloc(*tasks, job_type="service", restart_policy=POLICY)
    alloc_dir = AllocDir(root, alloc.id)
    alloc_dir.build()

    def kick() -> None:
        kicks[0] += 1  # notify-only; the count is informational

    return [
        TaskRunner(
            alloc,
            t.name,
            alloc_dir=alloc_dir,
            drivers=drivers,
            state_db=db,
            on_state_change=kick,
            max_kill_timeout=1.0,
            kill_retry_base=0.01,
        )
        for t in tasks
    ]


def test_concurrent_operations_on_running_task_runners(tmp_path, fast_switching) -> None:
    children_before = live_children()
    db = MemDB()
    mock = MockDriver()
    raw = RawExecDriver()
    drivers = {"mock_driver": mock, "raw_exec": raw}
    kicks = [0]
    runners = build_runners(str(tmp_path / "allocs"), drivers, db, kicks)
    run_threads = ThreadGroup("stress-task-runs")
    workers = ThreadGroup("stress-workers")
    failures = Failures()
    deadline = time.monotonic() + DURATION
    ops_left = [MAX_OPS]
    ops_lock = threading.Lock()
    index = [1]

    def take_op() -> bool:
        with ops_lock:
            if ops_left[0] <= 0 or time.monotonic() >= deadline:
                return False
            ops_left[0] -= 1
            return True

    def next_index() -> int:
        with ops_lock:
            index[0] += 1
            return index[0]

    done_ops: dict[int, int] = {}

    def count(op: int) -> None:
        with ops_lock:
            done_ops[op] = done_ops.get(op, 0) + 1

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while take_op():
                tr = rng.choice(runners)
                op = rng.randrange(8)
                try:
                    if op == 0:
                        tr.restart(TaskEvent(EVENT_RESTART_SIGNAL, message="stress"))
                    elif op == 1:
                        tr.force_restart(
                            TaskEvent(EVENT_RESTART_SIGNAL, message="stress"),
                            failure=rng.random() < 0.2,
                        )
                    elif op == 2:
                        tr.signal(TaskEvent(EVENT_SIGNALING), rng.choice(["SIGHUP", "SIGUSR1"]))
                    elif op == 3:
                        alloc = tr.alloc()
                        tr.update(attrs.evolve(alloc, alloc_modify_index=next_index()))
                    elif op == 4:
                        tr.emit_event(TaskEvent("Driver", message=f"stress {seed}"))
                    elif op == 5:
                        tr.latest_stats()
                        tr.is_running()
                    else:
                        check_snapshot(tr.task_state())
                    count(op)
                except (TaskNotRunningError, DriverError):
                    pass
        except BaseException:
            failures.add(f"worker {seed}: {traceback.format_exc()}")

    def observer(seed: int) -> None:
        seen_failed: set[str] = set()
        restarts: dict[str, int] = {}
        try:
            while time.monotonic() < deadline:
                for tr in runners:
                    st = tr.task_state()
                    check_snapshot(st)
                    if tr.name in seen_failed:
                        assert st.failed, f"{tr.name}: failed went back to False"
                    if st.failed:
                        seen_failed.add(tr.name)
                    assert st.restarts >= restarts.get(tr.name, 0), f"{tr.name}: restarts fell"
                    restarts[tr.name] = st.restarts
                time.sleep(0.001)
        except BaseException:
            failures.add(f"observer {seed}: {traceback.format_exc()}")

    try:
        for tr in runners:
            run_threads.spawn(f"task-{tr.alloc_id[:8]}-{tr.name}", tr.run)
        wait_for(lambda: _assert_all_started(runners), timeout=10)
        for n in range(WORKERS):
            workers.spawn(f"stress-worker-{n}", worker, n)
        for n in range(OBSERVERS):
            workers.spawn(f"stress-observer-{n}", observer, 100 + n)
        assert workers.join(DURATION + 30), "workers did not finish: a deadlock?"
        assert not failures.items, "\n".join(failures.items)
        # the operations really ran against live tasks
        assert done_ops.get(0, 0) > 0, f"no restart succeeded: {done_ops}"
        assert done_ops.get(2, 0) > 0, f"no signal succeeded: {done_ops}"
        assert done_ops.get(3, 0) > 0, f"no update: {done_ops}"
        assert max(tr.task_state().restarts for tr in runners) > 0

        # kill everything from several threads at once
        results: dict[str, list[bool]] = {tr.name: [] for tr in runners}
        killers = ThreadGroup("stress-killers")
        for n in range(3):
            for tr in runners:
                killers.spawn(
                    f"killer-{n}-{tr.name}",
                    lambda tr=tr: results[tr.name].append(tr.kill(timeout=20)),
                )
        assert killers.join(30), "kills did not return"
        for tr in runners:
            assert results[tr.name] == [True, True, True], f"{tr.name}: {results[tr.name]}"
            st = tr.task_state()
            assert st.state == "dead", f"{tr.name} is {st.state}"
            assert not tr.is_running()
            local, stored = db.task_runner_state(tr.alloc_id, tr.name)
            assert stored == st, f"{tr.name}: the DB holds an older state"
            assert local is not None and local.run_complete
        assert run_threads.join(10), "run threads still alive"
    finally:
        for tr in runners:
            tr.kill(timeout=20)
        run_threads.join(20)
        mock.close()
        raw.close()
    wait_for(lambda: _assert_no_new_children(children_before), timeout=5)


def _assert_all_started(runners: list[TaskRunner]) -> None:
    for tr in runners:
        st = tr.task_state()
        assert st.started_at is not None, f"{tr.name} has not started: {st.state}"


def _assert_no_new_children(before: set[int]) -> None:
    left = live_children() - before
    assert not left, f"processes {sorted(left)} left running"
