"""The driver protocol: how a TaskRunner starts, waits on, stops and recovers a task.

A driver is shared by every task runner of a node and is thread-safe. A task is
named by `TaskConfig.id`. `start` returns a `TaskHandle`, which is plain data that
the state DB persists; after an agent restart `recover(handle)` re-attaches to the
task without starting it again, and `wait` still yields its real exit result.

No threads, no locks here: protocols and frozen value types only. Owner: implemented by
`mock`/`raw_exec`, called by the task runner (`taskrunner.lifecycle.TaskControl`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs

from allocrunner._sync import CancelToken
from allocrunner.structs.evolve import init_args
from allocrunner.structs.frozen import EMPTY, FrozenDict, frozen_map, plain_dict, thaw
from allocrunner.structs.job import Resources

TASK_STATE_RUNNING = "running"
TASK_STATE_EXITED = "exited"
TASK_STATE_UNKNOWN = "unknown"


@attrs.frozen
class TaskConfig:
    """Immutable. Everything a driver needs to start one task."""

    id: str
    alloc_id: str
    name: str
    driver_config: FrozenDict[str, Any] = attrs.field(default=EMPTY, converter=frozen_map)
    env: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    user: str = ""
    task_dir: str = ""
    alloc_dir: str = ""
    local_dir: str = ""
    secrets_dir: str = ""
    logs_dir: str = ""
    log_max_files: int = 10
    log_max_file_size_mb: int = 10
    resources: Resources = attrs.field(factory=Resources)
    # When above 0, the log file size limit in bytes, overriding log_max_file_size_mb
    # (small limits let tests exercise rotation).
    log_max_file_size_bytes: int = 0
    # The task's `logs { disabled = true }`: its stdout and stderr go to /dev/null and
    # no log file is written (Nomad's logmon hook, which then runs no logmon).
    logs_disabled: bool = False

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-compatible data, for persisting inside a TaskHandle."""
        data = init_args(self)
        data["driver_config"] = thaw(self.driver_config)
        data["env"] = plain_dict(self.env)
        data["resources"] = init_args(self.resources)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskConfig:
        fields = dict(data)
        fields["resources"] = Resources(**fields.get("resources", {}))
        return cls(**fields)


@attrs.frozen
class TaskHandle:
    """Immutable. Plain, persistable data naming a started task (Nomad's TaskHandle).

    `driver_state` is the driver's own JSON-compatible record (pid, status file, …).
    """

    driver: str
    config: TaskConfig
    state: str = TASK_STATE_RUNNING
    driver_state: FrozenDict[str, Any] = attrs.field(default=EMPTY, converter=frozen_map)
    version: int = 1

    @property
    def task_id(self) -> str:
        return self.config.id

    def to_json(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "config": self.config.to_json(),
            "state": self.state,
            "driver_state": thaw(self.driver_state),
            "version": self.version,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskHandle:
        return cls(
            driver=data["driver"],
            config=TaskConfig.from_json(data["config"]),
            state=data.get("state", TASK_STATE_RUNNING),
            driver_state=data.get("driver_state") or {},
            version=data.get("version", 1),
        )


@attrs.frozen
class ExitResult:
    """Immutable. How a task ended. Signalled tasks have exit_code 128+signal, as in Nomad."""

    exit_code: int = 0
    signal: int = 0
    oom_killed: bool = False
    err: str | None = None

    def successful(self) -> bool:
        return self.exit_code == 0 and self.signal == 0 and self.err is None


@attrs.frozen
class TaskStatus:
    """Immutable. What `inspect` reports about a task."""

    id: str
    name: str
    state: str
    started_at: float | None = None
    completed_at: float | None = None
    exit_result: ExitResult | None = None


@runtime_checkable
class Driver(Protocol):
    """Thread-safe. Runs tasks of one kind (mock_driver, raw_exec).

    Errors: `start` raises `DriverError` (its `recoverable` flag tells the restart
    policy whether a retry may help) or `RecoverableError`; a driver config it cannot
    accept raises `DriverError` whose message names the key (a "Failed Validation").
    The other methods raise `DriverError` for an unknown task id.
    """

    name: str

    def validate_config(self, config: TaskConfig) -> None:
        """Raise DriverError naming the bad key if `config.driver_config` is invalid."""
        ...

    def start(self, config: TaskConfig) -> TaskHandle:
        """Start the task; return once it is running."""
        ...

    def wait(self, task_id: str, cancel: CancelToken) -> ExitResult | None:
        """Block until the task exits (its result) or `cancel` is cancelled (None)."""
        ...

    def stop(self, task_id: str, timeout: float, signal: str = "") -> None:
        """Send `signal` (driver default when empty), then force-kill after `timeout`
        seconds if still running. Returns once the task is gone or force-killed."""
        ...

    def destroy(self, task_id: str, force: bool = False) -> None:
        """Forget the task and free its resources; `force` kills it first if running."""
        ...

    def inspect(self, task_id: str) -> TaskStatus:
        """The task's current status."""
        ...

    def signal(self, task_id: str, signal: str) -> None:
        """Deliver a signal (name such as "SIGHUP") to a running task."""
        ...

    def stats(self, task_id: str) -> dict[str, float]:
        """Resource usage of the task (may be empty)."""
        ...

    def recover(self, handle: TaskHandle) -> None:
        """Re-attach to a task started before an agent restart; DriverError if gone
        without a recorded exit and cannot be recovered."""
        ...

    def close(self) -> None:
        """Stop the driver's own threads; its tasks keep running. Idempotent."""
        ...
