"""The rules of an allocation's health: which allocations are watched and with what
parameters (`health_params`), and the tracker that turns client views and clock
readings into a verdict (`HealthTracker`). Pure logic; the hook that runs a watch on a
thread of its own is `allocrunner.runner.health`.

Threads: none; a `HealthTracker` is owned by the one watch thread that feeds it.
Locks: none. Owner: `HealthHook` (health.py), which re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import attrs

from allocrunner._locking import confined
from allocrunner.durations import format_duration
from allocrunner.runner.lifecycle import (
    STAGE_POSTSTART_EPHEMERAL,
    STAGE_POSTSTOP,
    STAGE_PRESTART_EPHEMERAL,
    task_stage,
)
from allocrunner.structs import (
    CLIENT_FAILED,
    DESIRED_TERMINAL,
    EVENT_ALLOC_UNHEALTHY,
    JOB_SERVICE,
    JOB_SYSTEM,
    TASK_RUNNING,
    Allocation,
    MigrateStrategy,
    TaskEvent,
    TaskGroup,
    TaskState,
    UpdateStrategy,
)

__all__ = [
    "HEALTH_CHECK_CHECKS",
    "HEALTH_CHECK_MANUAL",
    "HEALTH_CHECK_TASK_STATES",
    "HEALTH_JOB_TYPES",
    "MSG_EXITED",
    "MSG_FAILED",
    "MSG_NOT_COMPLETED",
    "MSG_NOT_LONG_ENOUGH",
    "MSG_NOT_RUNNING",
    "STOPPED",
    "HealthParams",
    "HealthTracker",
    "HealthVerdict",
    "health_params",
]

HEALTH_JOB_TYPES = frozenset({JOB_SERVICE, JOB_SYSTEM})
HEALTH_CHECK_CHECKS = "checks"
HEALTH_CHECK_TASK_STATES = "task_states"
HEALTH_CHECK_MANUAL = "manual"
_UPDATE_HEALTH_CHECKS = (HEALTH_CHECK_CHECKS, HEALTH_CHECK_TASK_STATES, HEALTH_CHECK_MANUAL)
_MIGRATE_HEALTH_CHECKS = (HEALTH_CHECK_CHECKS, HEALTH_CHECK_TASK_STATES)

MSG_FAILED = "Unhealthy because of failed task"
MSG_EXITED = "Task exited before the allocation became healthy"
MSG_NOT_COMPLETED = "Task did not complete by the healthy deadline"
MSG_NOT_RUNNING = "Task not running by the healthy deadline"
MSG_NOT_LONG_ENOUGH = "Task not running for min_healthy_time of {} by the healthy deadline"

_PENDING = TaskState()


@attrs.frozen
class HealthParams:
    """Immutable. What one watch waits for, in seconds."""

    deployment: bool
    min_healthy_time: float
    healthy_deadline: float


@attrs.frozen
class HealthVerdict:
    """Immutable. The outcome of a watch: healthy or not, and why (per task)."""

    healthy: bool
    events: Mapping[str, TaskEvent] = attrs.field(factory=dict)
    reason: str = ""


def _check_strategy(
    strategy: UpdateStrategy | MigrateStrategy, path: str, allowed: tuple[str, ...]
) -> None:
    durations = {
        "min_healthy_time": strategy.min_healthy_time,
        "healthy_deadline": strategy.healthy_deadline,
    }
    for field, value in durations.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{path}.{field}: must be a non-negative number of seconds")
    if strategy.health_check not in allowed:
        raise ValueError(
            f"{path}.health_check: {strategy.health_check!r} is not one of {', '.join(allowed)}"
        )


def health_params(alloc: Allocation) -> HealthParams | None:
    """The parameters of a health watch of `alloc`, or None when it is not watched.

    Raises ValueError naming the field for an allocation without a job or group, or a
    strategy with a negative duration or an unknown health_check.
    """
    job = alloc.job
    if job is None:
        raise ValueError(f"allocation {alloc.id}: Allocation.job is missing")
    group = alloc.group()
    if group is None:
        raise ValueError(
            f"allocation {alloc.id}: Allocation.task_group {alloc.task_group!r} "
            f"not found in job {job.id!r}"
        )
    if job.type not in HEALTH_JOB_TYPES:
        return None
    if alloc.deployment_id:
        if group.update is not None:
            strategy, path = group.update, f"Job.TaskGroups[{group.name}].update"
        else:
            strategy, path = job.update, "Job.update"
        # A deployment with no (or an empty) update strategy leaves health to the operator.
        if strategy is None or strategy.max_parallel == 0:
            return None
        _check_strategy(strategy, path, _UPDATE_HEALTH_CHECKS)
        if strategy.health_check == HEALTH_CHECK_MANUAL:
            return None
        return HealthParams(
            True, float(strategy.min_healthy_time), float(strategy.healthy_deadline)
        )
    migrate = group.migrate if group.migrate is not None else MigrateStrategy()
    _check_strategy(migrate, f"Job.TaskGroups[{group.name}].migrate", _MIGRATE_HEALTH_CHECKS)
    return HealthParams(False, float(migrate.min_healthy_time), float(migrate.healthy_deadline))


_STOPPED = object()

STEPPER = "health-watches"
"""The name of the thread that steps the watches (`health_watches.THREAD_NAME`), or that
a thread stepping one acts as: a tracker's fields are confined to it."""


class HealthTracker:
    """Not thread-safe; owned by its watch's stepper: the ``health-watches`` thread, or a
    thread acting as it for one step (`health_watches`), one step at a time. Turns a
    sequence of client views of an allocation and clock readings into at most one
    verdict.

    Time is whatever the injected clock says; "running since" is when the tracker first
    saw a task running with its current `started_at`, so a restart (a new start time,
    or a pass through pending) starts the count again.
    """

    _states = confined("health watch", prefix=STEPPER)
    _started = confined("health watch", prefix=STEPPER)
    _running_since = confined("health watch", prefix=STEPPER)
    _ready_since = confined("health watch", prefix=STEPPER)
    _healthy_at = confined("health watch", prefix=STEPPER)

    def __init__(self, group: TaskGroup, params: HealthParams, start: float) -> None:
        self.params = params
        self.deadline = start + params.healthy_deadline
        self._tasks = tuple((t.name, task_stage(t)) for t in group.tasks)
        self._states: Mapping[str, TaskState] = {}
        self._started: dict[str, datetime | None] = {}  # task -> started_at of the timed run
        self._running_since: dict[str, float] = {}
        self._ready_since: float | None = None
        self._healthy_at: float | None = None

    def observe(self, view: Allocation, now: float) -> HealthVerdict | object | None:
        """Take a new client view seen at `now`. Returns an unhealthy verdict, the
        `STOPPED` marker when the allocation is being stopped, or None."""
        if view.desired_status in DESIRED_TERMINAL:
            return _STOPPED
        states = view.task_states
        self._states = states
        for name, _stage in self._tasks:
            state = states.get(name, _PENDING)
            if state.state == TASK_RUNNING:
                if name not in self._running_since or self._started.get(name) != state.started_at:
                    self._running_since[name] = now
                    self._started[name] = state.started_at
            else:
                self._running_since.pop(name, None)
                self._started.pop(name, None)
        ready = True
        for name, stage in self._tasks:
            if stage == STAGE_POSTSTOP:
                continue
            state = states.get(name, _PENDING)
            if stage == STAGE_POSTSTART_EPHEMERAL and state.successful():
                continue
            if state.failed:
                return self._unhealthy(now, f"task {name!r} failed")
            if state.finished_at is not None and stage != STAGE_PRESTART_EPHEMERAL:
                return self._unhealthy(now, f"task {name!r} exited")
            if stage == STAGE_PRESTART_EPHEMERAL:
                ready = ready and state.successful()
            else:
                ready = ready and state.state == TASK_RUNNING
        if view.client_status == CLIENT_FAILED:
            return HealthVerdict(False, {}, "the allocation failed")
        if not ready:
            self._ready_since = self._healthy_at = None
            return None
        if self._ready_since is None:
            self._ready_since = now
        anchor = max([self._ready_since, *self._running_since.values()])
        self._healthy_at = anchor + self.params.min_healthy_time
        return None

    def due(self, now: float) -> HealthVerdict | None:
        """The verdict a timer gives at `now`: healthy once the tasks ran long enough,
        unhealthy once the deadline passed (whichever came first); else None."""
        healthy_at = self._healthy_at
        if healthy_at is not None and healthy_at <= now and healthy_at <= self.deadline:
            return HealthVerdict(True, {}, "tasks running for min_healthy_time")
        if now >= self.deadline:
            return self._unhealthy(now, "healthy deadline reached", deadline=True)
        return None

    def next_wakeup(self) -> float:
        """The clock reading at which `due` may give a verdict."""
        if self._healthy_at is None:
            return self.deadline
        return min(self._healthy_at, self.deadline)

    def _unhealthy(self, now: float, reason: str, *, deadline: bool = False) -> HealthVerdict:
        events: dict[str, TaskEvent] = {}
        if self.params.deployment:
            for name, stage in self._tasks:
                message = self._why(name, stage, now, deadline)
                if message:
                    events[name] = TaskEvent(
                        EVENT_ALLOC_UNHEALTHY, message=message, display_message=message
                    )
        return HealthVerdict(False, events, reason)

    def _why(self, name: str, stage: str, now: float, deadline: bool) -> str:
        """Why task `name` kept the allocation from being healthy ("" if it did not)."""
        state = self._states.get(name)
        if stage == STAGE_POSTSTOP or state is None:
            return ""
        ephemeral = stage in (STAGE_PRESTART_EPHEMERAL, STAGE_POSTSTART_EPHEMERAL)
        if ephemeral and state.successful():
            return ""
        if state.failed:
            return MSG_FAILED
        if state.finished_at is not None and stage != STAGE_PRESTART_EPHEMERAL:
            return MSG_EXITED
        if not deadline:
            return ""
        if stage == STAGE_PRESTART_EPHEMERAL:
            return MSG_NOT_COMPLETED
        if state.state != TASK_RUNNING:
            return MSG_NOT_RUNNING
        since = self._running_since.get(name, now)
        if since + self.params.min_healthy_time > self.deadline:
            return MSG_NOT_LONG_ENOUGH.format(format_duration(self.params.min_healthy_time))
        return ""


STOPPED = _STOPPED
