"""Task drivers: the protocol, the scripted `mock_driver` and the process driver `raw_exec`.

`default_drivers()` builds one instance of each, keyed by driver name. Drivers own
threads (raw_exec's log pump and exit watcher, mock_driver's output timer), so whoever
builds them calls `close()` on each when done. This module itself has no threads and
no locks. Owner: the Client (or whoever builds an AllocRunner) creates the drivers and
shares them between every task runner of the node.
"""

from __future__ import annotations

from allocrunner.drivers._common import DEFAULT_KILL_SIGNAL, signal_number
from allocrunner.drivers.base import (
    TASK_STATE_EXITED,
    TASK_STATE_RUNNING,
    TASK_STATE_UNKNOWN,
    Driver,
    ExitResult,
    TaskConfig,
    TaskHandle,
    TaskStatus,
)
from allocrunner.drivers.mock import MockDriver
from allocrunner.drivers.raw_exec import RawExecDriver

__all__ = [
    "DEFAULT_KILL_SIGNAL",
    "TASK_STATE_EXITED",
    "TASK_STATE_RUNNING",
    "TASK_STATE_UNKNOWN",
    "Driver",
    "ExitResult",
    "MockDriver",
    "RawExecDriver",
    "TaskConfig",
    "TaskHandle",
    "TaskStatus",
    "default_drivers",
    "signal_number",
]


def default_drivers(raw_exec_state_dir: str | None = None) -> dict[str, Driver]:
    """One fresh instance of every built-in driver, keyed by its name.

    `raw_exec_state_dir` is where raw_exec's spawner lives (its lock, socket and the
    tasks' exit records); a `Client` or `AllocRunner` passes one under its data dir, so
    each node's tasks are kept by that node's own spawner."""
    drivers: list[Driver] = [MockDriver(), RawExecDriver(state_dir=raw_exec_state_dir)]
    return {driver.name: driver for driver in drivers}
