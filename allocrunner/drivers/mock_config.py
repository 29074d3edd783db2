"""The mock driver's config: parsed, checked, and kept per distinct value.

`parse_mock_config` turns a mock_driver config (the keys `allocrunner.drivers.mock`
describes) into an immutable `MockSpec`, with a `DriverError` that names the key for a
bad value. Each distinct config is parsed once: a task runner has its driver validate a
config and then start it, and the allocations of one job share it.

Threads: any; it keeps no state but the parsed specs, in a `functools.lru_cache`,
which is safe to call from every thread (two threads that race may each parse the
same config; both get an equal spec). Locks: none of its own, and the driver calls it
holding none. Owner: used by the mock driver and by the checks of example job files.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs

from allocrunner.drivers._common import check_keys, get_bool, get_duration, get_int, get_str
from allocrunner.drivers.base import ExitResult
from allocrunner.errors import DriverError

__all__ = ["NAME", "MockOutput", "MockSpec", "parse_mock_config"]

NAME = "mock_driver"

_KNOWN_KEYS = frozenset(
    {
        "run_for",
        "exit_code",
        "exit_signal",
        "exit_err_msg",
        "start_error",
        "start_error_recoverable",
        "start_block_for",
        "kill_after",
        "signal_error",
        "stdout_string",
        "stdout_repeat",
        "stdout_repeat_duration",
        "stderr_string",
        "stderr_repeat",
        "stderr_repeat_duration",
        # Nomad keys this driver accepts but has no use for
        "plugin_exit_after",
        "driver_ip",
        "driver_advertise",
        "driver_port_map",
        "exec_command",
    }
)


@attrs.frozen
class MockOutput:
    """Immutable. One stream's scripted output: `text` once, then `repeat` more times."""

    stream: str
    text: str = ""
    repeat: int = 0
    interval: float = 0.0


@attrs.frozen
class MockSpec:
    """Immutable. A mock task's driver config, parsed and checked."""

    run_for: float = 0.0
    exit_code: int = 0
    exit_signal: int = 0
    exit_err_msg: str = ""
    start_error: str = ""
    start_error_recoverable: bool = False
    start_block_for: float = 0.0
    kill_after: float = 0.0
    signal_error: str = ""
    stdout: MockOutput = MockOutput("stdout")
    stderr: MockOutput = MockOutput("stderr")

    def exit_result(self) -> ExitResult:
        return ExitResult(
            exit_code=self.exit_code,
            signal=self.exit_signal,
            err=self.exit_err_msg or None,
        )


def parse_mock_config(config: Mapping[str, Any]) -> MockSpec:
    """Parse a mock_driver config; DriverError naming the key for a bad value.

    Each distinct config is parsed once: `validate_config` and `start` parse the same
    config, and the allocations of one job share it. The specs are kept by the config's
    items in key order, each with its value's type (so that ``True`` and ``1``, equal
    in Python, are told apart: only one of them is a valid integer); a spec is
    immutable, so sharing it is safe, and a config that fails is not kept, so it
    raises every time. A config that cannot be kept so (an unhashable value) is parsed
    afresh."""
    try:
        items = tuple(sorted([(key, type(value), value) for key, value in config.items()]))
        hash(items)
    except TypeError:
        return _parse(config)
    return _parse_items(items)


@functools.lru_cache(maxsize=256)
def _parse_items(items: tuple[tuple[str, type, Any], ...]) -> MockSpec:
    return _parse({key: value for key, _, value in items})


def _parse(config: Mapping[str, Any]) -> MockSpec:
    check_keys(NAME, config, _KNOWN_KEYS)
    outputs = {}
    for stream in ("stdout", "stderr"):
        repeat = get_int(NAME, config, f"{stream}_repeat")
        if repeat < 0:
            raise DriverError(f"invalid {NAME} config: {stream}_repeat must not be negative")
        outputs[stream] = MockOutput(
            stream=stream,
            text=get_str(NAME, config, f"{stream}_string"),
            repeat=repeat,
            interval=get_duration(NAME, config, f"{stream}_repeat_duration"),
        )
    return MockSpec(
        run_for=get_duration(NAME, config, "run_for"),
        exit_code=get_int(NAME, config, "exit_code"),
        exit_signal=get_int(NAME, config, "exit_signal"),
        exit_err_msg=get_str(NAME, config, "exit_err_msg"),
        start_error=get_str(NAME, config, "start_error"),
        start_error_recoverable=get_bool(NAME, config, "start_error_recoverable"),
        start_block_for=get_duration(NAME, config, "start_block_for"),
        kill_after=get_duration(NAME, config, "kill_after"),
        signal_error=get_str(NAME, config, "signal_error"),
        stdout=outputs["stdout"],
        stderr=outputs["stderr"],
    )
