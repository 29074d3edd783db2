"""TaskRunner benchmarks: what the run loop adds on top of the driver, and the cost of
reading and recording task state.

1. A mock_driver task's whole life through a TaskRunner (construct, prestart hooks,
   start, wait, Terminated, exited and stop hooks, every state change persisted to a
   MemDB) against the same task driven by hand (MockDriver start + wait + destroy).
   Goal: the whole life under 1 ms per task.
2. task_state(): uncontended, and with 4 reader threads while the run thread keeps
   publishing, against a bare RWLock read acquire + release measured the same way.
   Goal: within 1.5x of the bare read lock.
3. emit_event() (build the new state, publish it, persist it, notify) against the
   MemDB write of a TaskState alone. Informative.

Runs with the lock check off; alloc dirs go under a temporary directory.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["ALLOCRUNNER_LOCKCHECK"] = "0"  # production locks, before allocrunner loads
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tempfile
import threading
import time

from allocrunner import _locking
from allocrunner._locking import RWLock
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir
from allocrunner.drivers import MockDriver, TaskConfig
from allocrunner.state import MemDB
from allocrunner.structs import Lifecycle, TaskEvent, TaskState
from allocrunner.taskrunner import TaskRunner
from allocrunner.testing import mock_alloc, mock_task
from benchmarks import Table, interleaved_ns_per_op

assert not _locking.CHECK, "benchmarks run with the lock check off"

LIVES = 1_000
ROUNDS = 4


def _noop() -> None:
    pass


def _lives(root: str) -> tuple[float, float]:
    """Seconds per task life through a TaskRunner and by hand (best of ROUNDS)."""
    driver = MockDriver()
    # A poststop task returns from run() as soon as it is dead (no parking), so one
    # thread can drive lives back to back.
    alloc = mock_alloc(
        mock_task("bench", config={"run_for": "0s"}, lifecycle=Lifecycle(hook="poststop")),
        job_type="batch",
    )
    alloc_dir = AllocDir(root, alloc.id)
    alloc_dir.build()
    task_dir = alloc_dir.new_task_dir("bench")
    task_dir.build()
    drivers = {"mock_driver": driver}
    db = MemDB()
    runner_best = manual_best = float("inf")
    try:
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(LIVES):
                tr = TaskRunner(
                    alloc,
                    "bench",
                    alloc_dir=alloc_dir,
                    drivers=drivers,
                    state_db=db,
                    on_state_change=_noop,
                )
                tr.run()
            runner_best = min(runner_best, (time.perf_counter() - start) / LIVES)
            assert tr.task_state().successful(), tr.task_state()

            start = time.perf_counter()
            for i in range(LIVES):
                config = TaskConfig(
                    id=f"{alloc.id}/bench/{i}",
                    alloc_id=alloc.id,
                    name="bench",
                    driver_config={"run_for": "0s"},
                    task_dir=str(task_dir.dir),
                    logs_dir=str(task_dir.logs_dir),
                )
                handle = driver.start(config)
                driver.wait(handle.task_id, CancelToken())
                driver.destroy(handle.task_id)
            manual_best = min(manual_best, (time.perf_counter() - start) / LIVES)
    finally:
        driver.close()
    return runner_best, manual_best


def _reads(root: str) -> dict[str, float]:
    driver = MockDriver()
    alloc = mock_alloc(mock_task("bench", config={"run_for": "60s"}))
    alloc_dir = AllocDir(root, alloc.id)
    alloc_dir.build()
    tr = TaskRunner(
        alloc,
        "bench",
        alloc_dir=alloc_dir,
        drivers={"mock_driver": driver},
        state_db=MemDB(),
        on_state_change=_noop,
    )
    run = threading.Thread(target=tr.run, name="bench-task-run")
    run.start()
    bare = RWLock("bench")
    value = TaskState()

    def bare_read(n: int) -> None:
        lock = bare
        for _ in range(n):
            with lock.read():
                _ = value

    def task_state(n: int) -> None:
        read = tr.task_state
        for _ in range(n):
            read()

    def loop(n: int) -> None:
        for _ in range(n):
            pass

    results: dict[str, float] = {}
    try:
        while tr.task_state().state != "running":
            time.sleep(0.001)
        quiet = interleaved_ns_per_op(
            {"bare": bare_read, "task_state": task_state}, 100_000, 7, overhead=loop
        )
        results.update({f"{k} quiet": v for k, v in quiet.items()})

        stop = threading.Event()

        def reader(fn) -> None:
            while not stop.is_set():
                fn(1_000)

        def writer() -> None:
            # a state change every millisecond, like a busy task's events
            while not stop.is_set():
                tr.append_event(TaskEvent("Driver", message="tick"))
                # the same number of write-side holds as the publish + persist above
                for _ in range(3):
                    with bare.write():
                        pass
                time.sleep(0.001)

        threads = [threading.Thread(target=writer, name="bench-writer")]
        threads += [
            threading.Thread(target=reader, args=(fn,), name=f"bench-reader-{i}")
            for i, fn in enumerate((bare_read, task_state, bare_read, task_state))
        ]
        for t in threads:
            t.start()
        try:
            busy = interleaved_ns_per_op(
                {"bare": bare_read, "task_state": task_state}, 20_000, 7, overhead=loop
            )
        finally:
            stop.set()
            for t in threads:
                t.join()
        results.update({f"{k} busy": v for k, v in busy.items()})

        db = MemDB()
        states = [TaskState().with_event(TaskEvent("Driver", message=str(i))) for i in range(2)]

        def db_put(n: int) -> None:
            for i in range(n):
                db.put_task_state(alloc.id, "bench", states[i & 1])

        def emit(n: int) -> None:
            for i in range(n):
                tr.emit_event(TaskEvent("Driver", message=str(i)))

        writes = interleaved_ns_per_op({"db_put": db_put, "emit": emit}, 5_000, 5)
        results.update(writes)
    finally:
        tr.kill(timeout=10)
        run.join(10)
        driver.close()
    return results


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-taskrunner-") as root:
        runner, manual = _lives(root)
        reads = _reads(root)
    table = Table("TaskRunner")
    table.add(
        "mock task life through a TaskRunner",
        runner,
        manual,
        unit="s",
        goal="< 1 ms per task",
        ok=runner < 1e-3,
        baseline_name="driver by hand",
    )
    for load in ("quiet", "busy"):
        measured = reads[f"task_state {load}"]
        baseline = reads[f"bare {load}"]
        table.add(
            f"task_state() ({load})",
            measured,
            baseline,
            goal="<= 1.5x bare read lock",
            ok=measured <= 1.5 * baseline,
            baseline_name="bare RWLock read",
        )
    table.add(
        "emit_event() incl. persist",
        reads["emit"],
        reads["db_put"],
        baseline_name="MemDB put alone",
    )
    table.print()


if __name__ == "__main__":
    main()
