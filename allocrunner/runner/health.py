"""The alloc health watcher: decides once whether a new allocation became healthy.

Deployments and migrations need to know whether an allocation came up well. For
service and system jobs the watcher follows the allocation's client view on the alloc
runner's broadcaster and reaches one verdict per watch:

- unhealthy as soon as a task fails, a task that should keep running exits (ephemeral
  prestart and poststart tasks may complete), or the client status is failed;
- healthy once every task that should be running (poststop tasks aside; ephemeral
  prestart tasks need only have completed successfully, a successful ephemeral
  poststart task no longer counts) has been running for `min_healthy_time` without a
  restart;
- unhealthy when `healthy_deadline` passes first.

The parameters come from the group's update strategy (else the job's) when the
allocation is part of a deployment, otherwise from its migrate strategy. Nothing is
watched for batch and sysbatch jobs, when health is already set, when the allocation is
stopping, or for a deployment whose update strategy is absent, empty or "manual".
Service checks are not consulted: "checks" and "task_states" both mean task states.

A watch is a thread named ``health-<id8>`` with its own listener. An update cancels
the watch and starts a new one for the new allocation (clearing the health first when
the deployment changed); postrun and shutdown stop it. Health is set once per watch, by
design: a later failure does not revise a verdict already given.

Locks: ``HealthHook._lock`` guards the hook's phase bookkeeping and the current watch
(a leaf: nothing else is taken under it, and it is never held while calling out).
Owner: the AllocRunner builds one HealthHook per allocation and runs its phases as
an alloc hook; the verdict goes back through the callbacks it was built with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_condition, make_lock
from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.broadcaster import AllocListener
from allocrunner.durations import format_duration
from allocrunner.errors import BroadcasterClosed
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
    "HEALTH_JOB_TYPES",
    "HealthHook",
    "HealthParams",
    "HealthTracker",
    "HealthVerdict",
    "health_params",
]

log = logging.getLogger("allocrunner.runner.health")

HEALTH_JOB_TYPES = frozenset({JOB_SERVICE, JOB_SYSTEM})
HEALTH_CHECK_CHECKS = "checks"
HEALTH_CHECK_TASK_STATES = "task_states"
HEALTH_CHECK_MANUAL = "manual"
_UPDATE_HEALTH_CHECKS = (HEALTH_CHECK_CHECKS, HEALTH_CHECK_TASK_STATES, HEALTH_CHECK_MANUAL)
_MIGRATE_HEALTH_CHECKS = (HEALTH_CHECK_CHECKS, HEALTH_CHECK_TASK_STATES)

# With a clock other than time.monotonic, real waits cannot be derived from clock
# readings, so the watcher re-reads the clock at least this often (seconds).
FOREIGN_CLOCK_POLL = 0.01
JOIN_TIMEOUT = 30.0

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


class HealthTracker:
    """Not thread-safe; owned by one watch thread. Turns a sequence of client views of
    an allocation and clock readings into at most one verdict.

    Time is whatever the injected clock says; "running since" is when the tracker first
    saw a task running with its current `started_at`, so a restart (a new start time,
    or a pass through pending) starts the count again.
    """

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


@attrs.frozen(eq=False)
class _Watch:
    """Immutable (its token and listener are thread-safe). One running watch."""

    alloc: Allocation
    params: HealthParams
    start: float
    cancel: CancelToken
    listener: AllocListener

    def stop(self) -> None:
        """Ask the watch to end; wakes it if it is waiting for a view. Notify-only."""
        self.cancel.cancel("health watch stopped")
        self.listener.close()


class HealthHook:
    """Thread-safe. The alloc runner hook that watches a new allocation's health.

    Hook phases (`prerun`, `update`, `postrun`, `shutdown`, `destroy`) may come from
    any thread and are serialised with each other; each stops the current watch and
    waits for its thread before going on, so at most one watch runs and a verdict of an
    old watch is always delivered before the next phase proceeds. `set_health` is called
    at most once per watch, from the watch thread, with no lock held; it must not call
    back into this hook.
    """

    name = "alloc_health_watcher"

    # _lock guards: _alloc, _ran_once, _stopped, _busy, _watch, _views_seen
    _lock = immutable()
    _idle = immutable()  # condition over _lock: a hook phase finished
    _alloc = guarded("_lock")
    _ran_once = guarded("_lock")  # prerun or update ran (a later prerun is a no-op)
    _stopped = guarded("_lock")  # postrun/shutdown/destroy ran: never watch again
    _busy = guarded("_lock")  # a hook phase is in progress
    _watch = guarded("_lock")
    _views_seen = guarded("_lock")
    _alloc_id = immutable()
    _watched_type = immutable()
    _listen = immutable()
    _set_health = immutable()
    _has_health = immutable()
    _clear_health = immutable()
    _clock = immutable()
    _poll = immutable()
    _threads = immutable()

    def __init__(
        self,
        alloc: Allocation,
        *,
        listen: Callable[[], AllocListener],
        set_health: Callable[[bool, Mapping[str, TaskEvent]], None],
        has_health: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
        clear_health: Callable[[], None] | None = None,
        poll_interval: float | None = None,
    ) -> None:
        if not isinstance(alloc, Allocation):
            raise TypeError(f"HealthHook: alloc must be an Allocation, got {type(alloc).__name__}")
        health_params(alloc)  # validate now: a bad strategy is a construction error
        if poll_interval is not None and poll_interval <= 0:
            raise ValueError("HealthHook: poll_interval must be positive")
        self._lock = make_lock("HealthHook._lock")
        self._idle = make_condition(self._lock)
        self._alloc = alloc
        self._ran_once = False
        self._stopped = False
        self._busy = False
        self._watch: _Watch | None = None
        self._views_seen = 0
        self._alloc_id = alloc.id
        self._watched_type = alloc.job is not None and alloc.job.type in HEALTH_JOB_TYPES
        self._listen = listen
        self._set_health = set_health
        self._has_health = has_health
        self._clear_health = clear_health
        self._clock = clock
        if poll_interval is None and clock is not time.monotonic:
            poll_interval = FOREIGN_CLOCK_POLL
        self._poll = poll_interval
        self._threads = ThreadGroup(f"health-{alloc.id[:8]}")

    # --- hook phases ------------------------------------------------------------------

    @calls_out
    def prerun(self, cancel: CancelToken | None = None) -> None:
        """Start watching, unless an update already did (or the hook was stopped)."""
        if not self._watched_type:
            return
        self._begin_phase()
        try:
            with self._lock:
                if self._ran_once or self._stopped:
                    return
                self._ran_once = True
                alloc = self._alloc
            self._start_watch(alloc)
        finally:
            self._end_phase()

    @calls_out
    def update(self, alloc: Allocation) -> None:
        """Restart the watch for a new version of the allocation; clear the health
        first (through `clear_health`) when its deployment changed."""
        if not isinstance(alloc, Allocation):
            raise TypeError(f"HealthHook.update: alloc must be an Allocation, got {alloc!r}")
        if alloc.id != self._alloc_id:
            raise ValueError(f"HealthHook.update: allocation {alloc.id} is not {self._alloc_id}")
        if not self._watched_type:
            with self._lock:
                self._alloc = alloc
            return
        health_params(alloc)  # validate before touching the running watch
        self._begin_phase()
        try:
            with self._lock:
                self._ran_once = True
                old, watch, self._watch = self._alloc, self._watch, None
                stopped = self._stopped
            self._stop_watch(watch)
            if stopped:
                with self._lock:
                    self._alloc = alloc
                return
            if alloc.deployment_id != old.deployment_id and self._clear_health is not None:
                self._clear_health()
            with self._lock:
                self._alloc = alloc
            self._start_watch(alloc)
        finally:
            self._end_phase()

    @calls_out
    def postrun(self) -> None:
        """Stop watching for good and wait for the watch thread."""
        self._begin_phase()
        try:
            with self._lock:
                self._stopped = True
                watch, self._watch = self._watch, None
            self._stop_watch(watch)
        finally:
            self._end_phase()

    @calls_out
    def shutdown(self) -> None:
        """Same as `postrun` (the agent is shutting down)."""
        self.postrun()

    @calls_out
    def destroy(self) -> None:
        """Same as `postrun` (the allocation is being destroyed)."""
        self.postrun()

    # --- diagnostics ------------------------------------------------------------------

    def watching(self) -> bool:
        """True while a watch thread is running."""
        with self._lock:
            watch = self._watch
        return watch is not None and bool(self._threads.alive())

    def views_seen(self) -> int:
        """How many client views the watches of this hook have taken in so far."""
        with self._lock:
            return self._views_seen

    # --- internals --------------------------------------------------------------------

    @calls_out
    def _begin_phase(self) -> None:
        with self._lock:
            while self._busy:
                self._idle.wait()
            self._busy = True

    def _end_phase(self) -> None:
        with self._lock:
            self._busy = False
            self._idle.notify_all()

    @calls_out
    def _start_watch(self, alloc: Allocation) -> None:
        """Start a watch of `alloc` if its health is to be watched (phase in progress)."""
        params = health_params(alloc)
        if params is None or alloc.server_terminal():
            return
        if self._has_health():
            return
        start = self._clock()
        listener = self._listen()
        watch = _Watch(alloc, params, start, CancelToken(), listener)
        with self._lock:
            self._watch = watch
        self._threads.spawn(f"health-{self._alloc_id[:8]}", self._run_watch, watch)

    @calls_out
    def _stop_watch(self, watch: _Watch | None) -> None:
        if watch is None:
            return
        watch.stop()
        if not self._threads.join(JOIN_TIMEOUT):
            log.warning(
                "allocation %s: health watch did not stop within %ss", self._alloc_id, JOIN_TIMEOUT
            )

    @calls_out
    def _run_watch(self, watch: _Watch) -> None:
        """Body of a watch thread: track until a verdict, then report it once."""
        try:
            verdict = self._track(watch)
        except Exception:
            log.exception("allocation %s: health watch failed", self._alloc_id)
            return
        finally:
            watch.listener.close()
        if verdict is None or watch.cancel.cancelled():
            return
        log.debug(
            "allocation %s: %s (%s)",
            self._alloc_id,
            "healthy" if verdict.healthy else "unhealthy",
            verdict.reason,
        )
        try:
            self._set_health(verdict.healthy, verdict.events)
        except Exception:
            log.exception("allocation %s: setting health failed", self._alloc_id)

    @calls_out
    def _track(self, watch: _Watch) -> HealthVerdict | None:
        group = watch.alloc.group()
        assert group is not None  # checked by health_params
        tracker = HealthTracker(group, watch.params, watch.start)
        clock = self._clock
        poll = self._poll
        while not watch.cancel.cancelled():
            now = clock()
            verdict = tracker.due(now)
            if verdict is not None:
                return verdict
            timeout = max(0.0, tracker.next_wakeup() - now)
            if poll is not None:
                timeout = min(timeout, poll)
            try:
                view = watch.listener.get(timeout=timeout)
            except TimeoutError:
                continue
            except BroadcasterClosed:
                return None
            outcome = tracker.observe(view, clock())
            with self._lock:
                self._views_seen += 1
            if outcome is _STOPPED:
                return None
            if isinstance(outcome, HealthVerdict):
                return outcome
        return None

    def __repr__(self) -> str:
        return f"<HealthHook alloc={self._alloc_id[:8]}>"
