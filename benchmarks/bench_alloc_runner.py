"""AllocRunner benchmarks: the cost of alloc_state() and one runner's throughput.

- alloc_state(), uncontended and with 4 reader threads plus a task state change every
  1 ms, against (a) a bare RWLock read acquire+release measured the same way and (b) a
  Nomad-style deep copy of the same state (what Go's AllocState() returns).
  Goals: within 1.5x of the bare read lock; at least 30x faster than the deep copy.
- Throughput of single-mock-task allocations run start → complete → destroyed, and
  the threads a running alloc costs (goal: at most 3 while running, 0 after destroy).
"""

from __future__ import annotations

import os

os.environ.pop("ALLOCRUNNER_LOCKCHECK", None)

import statistics
import tempfile
import threading
import time

import attrs

from allocrunner import _locking
from allocrunner.config import ClientConfig
from allocrunner.drivers import default_drivers
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.state import NoopDB
from allocrunner.structs import AllocState, TaskEvent, new_allocation
from allocrunner.testing import mock_job, mock_task

assert not _locking.CHECK, "benchmarks run with the lock check off"


def _per_call_ns(fn, n: int = 200_000, repeats: int = 5) -> float:
    best = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        best.append((time.perf_counter_ns() - start) / n)
    return statistics.median(best)


def deep_copy_state(state: AllocState) -> AllocState:
    """What Go's AllocState() does: copy every task state and every event."""
    tasks = {}
    for name, ts in state.task_states.items():
        events = tuple(attrs.evolve(e, details=dict(e.details)) for e in ts.events)
        tasks[name] = attrs.evolve(ts, events=events)
    deployment = state.deployment_status
    if deployment is not None:
        deployment = attrs.evolve(deployment)
    return attrs.evolve(state, task_states=tasks, deployment_status=deployment)


def _row(name: str, value: float, base: float, goal: str, ok: bool, unit: str = "ns") -> None:
    ratio = value / base if base else float("inf")
    verdict = "PASS" if ok else "MISS"
    print(
        f"  {name:<46} {value:>10.0f} {unit:<4} base {base:>10.0f} {unit:<4} "
        f"ratio {ratio:>7.2f}x  goal {goal:<14} {verdict}"
    )


def _contended(read, change, seconds: float = 1.0) -> float:
    """ns per read() with 4 reader threads while change() runs every 1 ms."""
    stop = threading.Event()
    counts = [0] * 4

    def reader(i: int) -> None:
        n = 0
        while not stop.is_set():
            for _ in range(100):
                read()
            n += 100
        counts[i] = n

    def writer() -> None:
        while not stop.is_set():
            change()
            time.sleep(0.001)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return seconds * 4 * 1e9 / max(1, sum(counts))


def bench_alloc_state(config: ClientConfig, drivers) -> None:
    job = mock_job(*(mock_task(f"t{i}") for i in range(10)))
    ar = AllocRunner(new_allocation(job, "web"), config, state_db=NoopDB(), drivers=drivers)
    ar.start()
    deadline = time.monotonic() + 10
    while ar.alloc_state().client_status != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    tr = ar.task_runner("t0")
    for i in range(8):
        tr.emit_event(TaskEvent("Driver", message=f"event {i}"))
    time.sleep(0.1)

    lock = _locking.make_rwlock("AllocRunner._state_lock")

    def bare_read() -> None:
        with lock.read():
            pass

    state = ar.alloc_state()
    bare = _per_call_ns(bare_read)
    ours = _per_call_ns(ar.alloc_state)
    deep = _per_call_ns(lambda: deep_copy_state(state), n=2_000)
    print("alloc_state(), uncontended (10 tasks):")
    _row("alloc_state() vs bare read lock", ours, bare, "<= 1.5x", ours <= 1.5 * bare)
    print(
        f"  {'deep copy / alloc_state()':<46} {deep:>10.0f} ns   "
        f"speed-up {deep / ours:>7.1f}x  goal >= 30x         "
        f"{'PASS' if deep >= 30 * ours else 'MISS'}"
    )

    seq = [0]

    def change_task_state() -> None:
        seq[0] += 1
        tr.emit_event(TaskEvent("Driver", message=f"tick {seq[0]}"))

    def change_bare() -> None:
        with lock.write():
            seq[0] += 1

    bare_c = _contended(bare_read, change_bare)
    ours_c = _contended(ar.alloc_state, change_task_state)
    print("alloc_state(), 4 readers + a task state change every 1 ms:")
    _row("alloc_state() vs bare read lock", ours_c, bare_c, "<= 1.5x", ours_c <= 1.5 * bare_c)
    ar.destroy()
    ar.wait_destroyed(30)
    ar.close()


def bench_throughput(config: ClientConfig, drivers) -> None:
    job = mock_job(mock_task("t", config={"run_for": "0s"}), job_type="batch")
    baseline_threads = threading.active_count()

    # Threads while one single-task alloc runs.
    long_job = mock_job(mock_task("t", config={"run_for": "10s"}))
    ar = AllocRunner(new_allocation(long_job, "web"), config, state_db=NoopDB(), drivers=drivers)
    ar.start()
    deadline = time.monotonic() + 10
    while ar.alloc_state().client_status != "running" and time.monotonic() < deadline:
        time.sleep(0.005)
    running_threads = threading.active_count() - baseline_threads
    ar.destroy()
    ar.wait_destroyed(30)
    ar.close()
    after_threads = threading.active_count() - baseline_threads

    n = 200
    start = time.perf_counter()
    for _ in range(n):
        ar = AllocRunner(new_allocation(job, "web"), config, state_db=NoopDB(), drivers=drivers)
        ar.start()
        ar.wait(30)
        ar.destroy()
        ar.wait_destroyed(30)
        ar.close()
    elapsed = time.perf_counter() - start
    print("One runner's throughput (1 mock task, start → complete → destroyed):")
    print(
        f"  {'allocations per second':<46} {n / elapsed:>10.1f} /s  "
        f"({elapsed / n * 1e3:.2f} ms each)"
    )
    print(
        f"  {'threads while running':<46} {running_threads:>10d}      goal <= 3        "
        f"{'PASS' if running_threads <= 3 else 'MISS'}"
    )
    print(
        f"  {'threads after destroy':<46} {after_threads:>10d}      goal == 0        "
        f"{'PASS' if after_threads == 0 else 'MISS'}"
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="allocrunner-bench-") as tmp:
        config = ClientConfig.for_data_dir(tmp)
        drivers = default_drivers()
        try:
            bench_alloc_state(config, drivers)
            bench_throughput(config, drivers)
        finally:
            for driver in drivers.values():
                close = getattr(driver, "close", None)
                if close:
                    close()


if __name__ == "__main__":
    main()
