"""TaskState and TaskEvent: the runtime record of one task, with Nomad's event strings.

A `TaskState` is the frozen snapshot a task runner publishes: each change (a new
event, a new state) makes a new one through `with_event` / `with_state`, which apply
Nomad's bookkeeping (sticky `failed`, restart count, start and finish times, the
newest `MAX_EVENTS` events). Every time is an aware UTC datetime.

No threads, no locks; immutable values and pure functions, built by the task runner
and its hooks, stored by the state DBs, encoded by the codec.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs

from allocrunner.structs.evolve import evolve
from allocrunner.structs.frozen import EMPTY, FrozenDict, frozen_map, frozen_tuple
from allocrunner.structs.status import TASK_DEAD, TASK_PENDING, TASK_RUNNING

# Task event types (Nomad's TaskEvent.Type strings).
EVENT_RECEIVED = "Received"
EVENT_SETUP = "Task Setup"
EVENT_SETUP_FAILURE = "Setup Failure"
EVENT_DRIVER_FAILURE = "Driver Failure"
EVENT_FAILED_VALIDATION = "Failed Validation"
EVENT_STARTED = "Started"
EVENT_TERMINATED = "Terminated"
EVENT_KILLING = "Killing"
EVENT_KILLED = "Killed"
EVENT_RESTARTING = "Restarting"
EVENT_NOT_RESTARTING = "Not Restarting"
EVENT_RESTART_SIGNAL = "Restart Signaled"
EVENT_SIGNALING = "Signaling"
EVENT_DOWNLOADING_ARTIFACTS = "Downloading Artifacts"
EVENT_ARTIFACT_DOWNLOAD_FAILED = "Failed Artifact Download"
EVENT_SIBLING_FAILED = "Sibling Task Failed"
EVENT_LEADER_DEAD = "Leader Task Dead"
EVENT_MAIN_DEAD = "Main Tasks Dead"
EVENT_HOOK_FAILED = "Task hook failed"
EVENT_HOOK_MESSAGE = "Task hook message"
EVENT_RESTORE_FAILED = "Failed Restoring Task"
EVENT_DRIVER_MESSAGE = "Driver"
EVENT_WAITING_SHUTDOWN_DELAY = "Waiting for shutdown delay"
EVENT_SKIPPING_SHUTDOWN_DELAY = "Skipping shutdown delay"
EVENT_RECONNECTED = "Reconnected"
EVENT_DISK_EXCEEDED = "Disk Resources Exceeded"
EVENT_ALLOC_UNHEALTHY = "Alloc Unhealthy"

MSG_BUILDING_TASK_DIR = "Building Task Directory"

MAX_EVENTS = 10


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"time {value!r} must be timezone-aware (UTC)")
    return value


@attrs.frozen
class TaskEvent:
    """Immutable. One entry of a task's event log (Nomad's TaskEvent)."""

    type: str
    time: datetime | None = attrs.field(factory=utcnow, converter=_aware)
    message: str = ""
    display_message: str = ""
    exit_code: int = 0
    signal: int = 0
    fails_task: bool = False
    details: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)

    def with_details(self, **details: Any) -> TaskEvent:
        """A copy with extra string details (Nomad's TaskEvent.Details)."""
        merged = dict(self.details)
        merged.update({k: str(v) for k, v in details.items()})
        return attrs.evolve(self, details=merged)


@attrs.frozen
class TaskState:
    """Immutable. The runtime state of one task (Nomad's TaskState).

    `failed` is sticky; `restarts` and `last_restart` follow `Restarting` events;
    `events` keeps the newest `MAX_EVENTS`.
    """

    state: str = TASK_PENDING
    failed: bool = False
    restarts: int = 0
    last_restart: datetime | None = attrs.field(default=None, converter=_aware)
    started_at: datetime | None = attrs.field(default=None, converter=_aware)
    finished_at: datetime | None = attrs.field(default=None, converter=_aware)
    events: tuple[TaskEvent, ...] = attrs.field(default=(), converter=frozen_tuple)

    def successful(self) -> bool:
        """Dead and not failed (Nomad's TaskState.Successful)."""
        return self.state == TASK_DEAD and not self.failed

    def is_running(self) -> bool:
        return self.state == TASK_RUNNING

    def is_dead(self) -> bool:
        return self.state == TASK_DEAD

    def last_event(self) -> TaskEvent | None:
        return self.events[-1] if self.events else None

    def with_event(self, event: TaskEvent) -> TaskState:
        """A copy with `event` appended and its effects applied (failed, restarts)."""
        events = (*self.events, event)[-MAX_EVENTS:]
        changes: dict[str, Any] = {"events": events}
        if event.fails_task:
            changes["failed"] = True
        if event.type == EVENT_RESTARTING:
            changes["restarts"] = self.restarts + 1
            changes["last_restart"] = event.time
        return evolve(self, **changes)

    def with_state(self, state: str, now: datetime | None = None) -> TaskState:
        """A copy moved to `state`, stamping started_at / finished_at as Nomad does."""
        if state == self.state:
            return self
        now = now or utcnow()
        changes: dict[str, Any] = {"state": state}
        if state == TASK_RUNNING:
            changes["started_at"] = now
        elif state == TASK_DEAD and self.finished_at is None:
            changes["finished_at"] = now
        return evolve(self, **changes)


__all__ = [
    "EVENT_ALLOC_UNHEALTHY",
    "EVENT_ARTIFACT_DOWNLOAD_FAILED",
    "EVENT_DISK_EXCEEDED",
    "EVENT_DOWNLOADING_ARTIFACTS",
    "EVENT_DRIVER_FAILURE",
    "EVENT_DRIVER_MESSAGE",
    "EVENT_FAILED_VALIDATION",
    "EVENT_HOOK_FAILED",
    "EVENT_HOOK_MESSAGE",
    "EVENT_KILLED",
    "EVENT_KILLING",
    "EVENT_LEADER_DEAD",
    "EVENT_MAIN_DEAD",
    "EVENT_NOT_RESTARTING",
    "EVENT_RECEIVED",
    "EVENT_RECONNECTED",
    "EVENT_RESTARTING",
    "EVENT_RESTART_SIGNAL",
    "EVENT_RESTORE_FAILED",
    "EVENT_SETUP",
    "EVENT_SETUP_FAILURE",
    "EVENT_SIBLING_FAILED",
    "EVENT_SIGNALING",
    "EVENT_SKIPPING_SHUTDOWN_DELAY",
    "EVENT_STARTED",
    "EVENT_TERMINATED",
    "EVENT_WAITING_SHUTDOWN_DELAY",
    "MAX_EVENTS",
    "MSG_BUILDING_TASK_DIR",
    "TaskEvent",
    "TaskState",
    "utcnow",
]
