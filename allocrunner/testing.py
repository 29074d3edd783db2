"""Public helpers for testing code that uses allocrunner.

- `wait_for(check, timeout)`: poll until `check()` stops raising AssertionError;
  on timeout re-raise the last failure, so the message names the condition.
- `assert_stays(check, duration)`: `check()` must keep passing for `duration`.
- `ThreadLeakCheck`: fails when a test leaves new threads running.
- `lock_violations()`: violations of the lock discipline recorded in check mode.
- Mock jobs and allocations built the way a scheduler would place them.

Threads: none of its own; `wait_for` and `assert_stays` poll on the caller's thread.
Locks: none. Owner: test code (this package's suite and embedders' tests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from allocrunner import _locking
from allocrunner.structs import (
    Allocation,
    Job,
    Lifecycle,
    RestartPolicy,
    Task,
    TaskGroup,
    new_allocation,
)

__all__ = [
    "ThreadLeakCheck",
    "assert_stays",
    "lifecycle",
    "lock_violations",
    "mock_alloc",
    "mock_job",
    "mock_task",
    "wait_for",
]

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.005) -> T:
    """Poll `check` until it returns without raising AssertionError; return its value.

    After `timeout` seconds the last AssertionError is raised again, prefixed with how
    long was waited, so the failure explains which condition never became true.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError as err:
            if time.monotonic() >= deadline:
                raise AssertionError(f"condition not met within {timeout}s: {err}") from err
        time.sleep(interval)


def assert_stays(check: Callable[[], object], duration: float, interval: float = 0.005) -> None:
    """Assert that `check` keeps passing (raises nothing) for `duration` seconds."""
    deadline = time.monotonic() + duration
    while True:
        check()
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def lock_violations() -> list[BaseException]:
    """Return and clear the lock-discipline violations recorded so far (check mode)."""
    return list(_locking.take_violations())


class ThreadLeakCheck:
    """Not thread-safe; owned by one test. Snapshot threads, then fail on new survivors."""

    def __init__(self) -> None:
        self._before = set(threading.enumerate())

    def leaked(self, grace: float = 5.0) -> list[threading.Thread]:
        """Threads started since construction still alive after `grace` seconds."""
        deadline = time.monotonic() + grace
        while True:
            extra = [t for t in threading.enumerate() if t not in self._before and t.is_alive()]
            if not extra or time.monotonic() >= deadline:
                return extra
            time.sleep(0.01)


def mock_task(
    name: str = "web",
    *,
    driver: str = "mock_driver",
    config: Mapping[str, Any] | None = None,
    **fields: Any,
) -> Task:
    """A task for tests; mock_driver running for 10 s unless `config` says otherwise."""
    return Task(name=name, driver=driver, config=config or {"run_for": "10s"}, **fields)


def mock_job(
    *tasks: Task,
    job_id: str = "mock-job",
    job_type: str = "service",
    group: str = "web",
    restart_policy: RestartPolicy | None = None,
    **group_fields: Any,
) -> Job:
    """A one-group job for tests (one mock task by default), with a no-restart policy
    unless another is given so that failures are final and tests stay fast."""
    if restart_policy is None:
        restart_policy = RestartPolicy(attempts=0, interval=600.0, delay=0.0, mode="fail")
    tg = TaskGroup(
        name=group,
        tasks=tasks or (mock_task(),),
        restart_policy=restart_policy,
        **group_fields,
    )
    return Job(id=job_id, name=job_id, type=job_type, task_groups=(tg,))


def mock_alloc(*tasks: Task, job: Job | None = None, **job_fields: Any) -> Allocation:
    """An allocation of `job` (or of `mock_job(*tasks, **job_fields)`), index 0."""
    job = job or mock_job(*tasks, **job_fields)
    return new_allocation(job, job.task_groups[0].name)


def lifecycle(hook: str, sidecar: bool = False) -> Lifecycle:
    """Shorthand for `Lifecycle(hook, sidecar)`."""
    return Lifecycle(hook=hook, sidecar=sidecar)
