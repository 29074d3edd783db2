"""Helpers shared by the drivers: signal names, driver-config checks, task statuses and
`_TaskTable`, the table of a driver's tasks.

Threads and locks: the functions are pure. A `_TaskTable` has no lock of its own: it is
guarded by its driver's ``Driver._lock`` (the same lock guards the driver's task
records, so "is the old task still running?" and "replace it" are one step). Owner:
`MockDriver` and `RawExecDriver` each create one table.
"""

from __future__ import annotations

import signal as _signal
from collections.abc import Mapping
from typing import Any, Generic, Protocol, TypeVar

from allocrunner._guarded import guarded_dict
from allocrunner._locking import guarded, immutable, requires
from allocrunner.drivers.base import (
    TASK_STATE_EXITED,
    TASK_STATE_RUNNING,
    ExitResult,
    TaskConfig,
    TaskStatus,
)
from allocrunner.durations import parse_duration
from allocrunner.errors import DriverError, TaskExitedError

DEFAULT_KILL_SIGNAL = "SIGINT"
"""The signal a stop sends when the task names none (Nomad's default kill_signal)."""

_BY_NAME: dict[str, int] = {
    member.name: int(member.value)
    for member in _signal.Signals
    if member.name.startswith("SIG") and not member.name.startswith("SIG_")
}
_VALID_NUMBERS = frozenset(_signal.valid_signals())


def signal_number(name: str | int) -> int:
    """The number of a signal given as "SIGINT", "INT", "sigint" or "2".

    Raises DriverError naming the text for anything that is not a signal of this
    platform."""
    if isinstance(name, bool):
        raise DriverError(f"invalid signal {name!r}")
    if isinstance(name, int):
        number = name
    elif isinstance(name, str):
        text = name.strip()
        if text.lstrip("-").isdigit():
            number = int(text)
        else:
            upper = text.upper()
            if not upper.startswith("SIG"):
                upper = "SIG" + upper
            try:
                return _BY_NAME[upper]
            except KeyError:
                raise DriverError(f"unknown signal {name!r}") from None
    else:
        raise DriverError(f"invalid signal {name!r}: expected a name such as 'SIGINT'")
    if number <= 0 or number not in _VALID_NUMBERS:
        raise DriverError(f"unknown signal {name!r}")
    return number


def check_keys(driver: str, config: Mapping[str, Any], known: frozenset[str]) -> None:
    """DriverError naming the first key of `config` that the driver does not accept."""
    for key in config:
        if key not in known:
            raise DriverError(
                f"invalid {driver} config: unknown key {key!r} "
                f"(accepted: {', '.join(sorted(known))})"
            )


def get_str(driver: str, config: Mapping[str, Any], key: str, default: str = "") -> str:
    value = config.get(key, default)
    if not isinstance(value, str):
        raise DriverError(
            f"invalid {driver} config: {key} must be a string, not {type(value).__name__}"
        )
    return value


def get_bool(driver: str, config: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise DriverError(
            f"invalid {driver} config: {key} must be a boolean, not {type(value).__name__}"
        )
    return value


def get_int(driver: str, config: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = config.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DriverError(
            f"invalid {driver} config: {key} must be an integer, not {type(value).__name__}"
        )
    return value


def get_duration(driver: str, config: Mapping[str, Any], key: str) -> float:
    """Seconds from a Go duration string (absent or "" means 0)."""
    value = config.get(key, "")
    if value == "" or value is None:
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as err:
        raise DriverError(f"invalid {driver} config: {key}: {err}") from None


def task_status(
    config: TaskConfig,
    started_at: float | None,
    completed_at: float | None,
    result: ExitResult | None,
) -> TaskStatus:
    """What `inspect` reports for a task record: running until it has a result."""
    return TaskStatus(
        id=config.id,
        name=config.name,
        state=TASK_STATE_RUNNING if result is None else TASK_STATE_EXITED,
        started_at=started_at,
        completed_at=completed_at,
        exit_result=result,
    )


class _TaskRecord(Protocol):
    """What a `_TaskTable` needs of a driver's task record (its `_lock` is the driver's)."""

    @requires("_lock")
    def running_locked(self) -> bool:
        """True while the task has not exited (called with the driver lock held)."""
        ...


R = TypeVar("R", bound=_TaskRecord)


class _TaskTable(Generic[R]):
    """Thread-safe. The tasks a driver knows, by task id, and whether the driver is
    closed; guarded by the driver's lock.

    Invariant: at most one running task per id (a task id is reused only once its
    previous task has exited); once closed the table takes no task and every lookup
    raises `DriverError`. The map is a checked map changed in place (a copy per add or
    remove made starting or stopping N tasks O(N²)); nothing reads it but these
    methods. Every method requires ``lock``, the driver's ``Driver._lock``, which also
    guards the records' own state.
    """

    _lock = immutable()
    _driver = immutable()
    # _lock guards: _tasks (a checked map, changed in place), _closed
    _tasks = immutable()
    _closed = guarded("_lock")

    def __init__(self, driver: str, lock: Any) -> None:
        self._lock = lock
        self._driver = driver
        self._tasks: dict[str, R] = guarded_dict(lock)
        self._closed = False

    @requires("_lock")
    def get_locked(self, task_id: str) -> R:
        """The task `task_id`; DriverError if the driver is closed or the id unknown."""
        self._check_open_locked()
        task = self._tasks.get(task_id)
        if task is None:
            raise DriverError(f"{self._driver}: unknown task {task_id!r}")
        return task

    @requires("_lock")
    def get_live_locked(self, task_id: str) -> R:
        """As `get_locked`, but an unknown id (a task that exited and was destroyed) and
        a task that has exited raise TaskExitedError."""
        if not self._closed and task_id not in self._tasks:
            raise TaskExitedError(f"task {task_id!r} is not running")
        task = self.get_locked(task_id)
        if not task.running_locked():
            raise TaskExitedError(f"task {task_id!r} is not running")
        return task

    @requires("_lock")
    def contains_locked(self, task_id: str) -> bool:
        """True if the driver is open and knows `task_id`."""
        return not self._closed and task_id in self._tasks

    @requires("_lock")
    def check_addable_locked(self, task_id: str) -> None:
        """DriverError if the driver is closed or a task `task_id` is still running."""
        self._check_open_locked()
        old = self._tasks.get(task_id)
        if old is not None and old.running_locked():
            raise DriverError(f"{self._driver}: task {task_id!r} is already running")

    @requires("_lock")
    def add_locked(self, task_id: str, task: R) -> None:
        """Register `task` under `task_id`, replacing an exited one (see
        `check_addable_locked` for the errors)."""
        self.check_addable_locked(task_id)
        self._tasks[task_id] = task

    @requires("_lock")
    def remove_locked(self, task_id: str, task: R) -> bool:
        """Forget `task_id` if it is still `task`; True if it was."""
        if self._tasks.get(task_id) is not task:
            return False
        del self._tasks[task_id]
        return True

    @requires("_lock")
    def closed_locked(self) -> bool:
        return self._closed

    @requires("_lock")
    def close_locked(self) -> None:
        """Close the table for good; the records stay (running tasks keep running)."""
        self._closed = True

    @requires("_lock")
    def _check_open_locked(self) -> None:
        if self._closed:
            raise DriverError(f"{self._driver} is closed")
