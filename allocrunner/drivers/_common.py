"""Helpers shared by the drivers: signal names, driver-config checks, wall-clock stamps."""

from __future__ import annotations

import signal as _signal
from collections.abc import Mapping
from typing import Any

from allocrunner.drivers.base import (
    TASK_STATE_EXITED,
    TASK_STATE_RUNNING,
    ExitResult,
    TaskConfig,
    TaskStatus,
)
from allocrunner.durations import parse_duration
from allocrunner.errors import DriverError

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
