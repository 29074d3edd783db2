"""Start, kill, restart and signal of one task, and the mailbox between its callers
and its run thread.

While `run()` is going, its thread alone starts, waits on and stops the driver task.
Other threads ask it through a `TaskMailbox` and wait for it to act: a restart posts a
`RestartRequest` and waits for its `done` event; an allocation update posts "update
pending" (the run thread then runs the update hooks); a kill cancels the kill token,
which every wait of the run thread includes. Each post also cancels the mailbox's wake
token, which those waits include too, so a wait that began before the post ends.

A task is stopped for good along one path, `TaskControl._kill_and_record` (stop →
Terminated → Killed → detach the handle), taken in three places: by the run thread for
a task still attached when its loop ended; by a kill that comes before `run()` (no
run thread will ever stop the task); by a kill after `shutdown()` (the run thread has
returned and left the task running).

`signal` and `latest_stats` call the driver from the caller's thread with no lock
held: the driver is thread-safe, and a task that went away meanwhile turns into
`TaskNotRunningError`.

Threads: any. `start`, `recover`, `kill_task`, `kill_leftover` and `clear_handle` are
called by the run thread (or by `restore()` before it, or by the thread that kills
before `run()` or after `shutdown()`, when there is no run thread). Lock:
``TaskMailbox._lock`` guards the run phase, the run thread's identity and whether it
is parked, the pending restart and update, and the wake token; `TaskControl` has no
lock (immutable fields and set-once events). Owner: each TaskRunner creates one of
each and delegates its kill, restart, signal and update to them; its run loop
(`run_loop.TaskRunLoop`) takes the requests and starts and stops the task through them.

The module is a little over the usual size because it is one concern: the mailbox,
the requests it carries and the control that posts and serves them are one protocol (a
request posted here ends with its `done` set, whoever drops or acts on it), and
splitting them would scatter that promise over several files.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable, Mapping

import attrs

from allocrunner._checkpoints import checkpoint
from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken, Event
from allocrunner.drivers.base import TASK_STATE_EXITED, Driver, ExitResult, TaskConfig, TaskHandle
from allocrunner.errors import AllocRunnerError, DriverError, TaskNotRunningError
from allocrunner.state import LocalState
from allocrunner.structs import Allocation, Task, TaskEvent, TaskState
from allocrunner.structs.frozen import shallow_frozen
from allocrunner.structs.status import TASK_DEAD, TASK_RUNNING
from allocrunner.structs.task_state import (
    EVENT_DRIVER_FAILURE,
    EVENT_FAILED_VALIDATION,
    EVENT_KILLED,
    EVENT_STARTED,
    EVENT_TERMINATED,
)
from allocrunner.taskrunner.state import TaskStateCell

__all__ = [
    "KILL_BACKOFF_LIMIT",
    "KILL_RETRIES",
    "MSG_KILLED",
    "MSG_STARTED",
    "RUN_THREAD",
    "Inbox",
    "KillOutcome",
    "RestartRequest",
    "RunPhase",
    "TaskControl",
    "TaskMailbox",
    "killed_event",
    "terminated_event",
]

log = logging.getLogger("allocrunner.taskrunner")

RUN_THREAD = "task-run"
"""The tag (`confined`) of the fields only a task runner's run thread touches."""

KILL_RETRIES = 5
"""How many times a failed stop is tried in all (Nomad's killFailureLimit)."""
KILL_BACKOFF_LIMIT = 120.0
"""The longest pause between two stop attempts (Nomad's killBackoffLimit)."""

MSG_STARTED = "Task started by client"
MSG_KILLED = "Task successfully killed"


# --- events ---------------------------------------------------------------------------


def terminated_event(result: ExitResult) -> TaskEvent:
    """The Terminated event of a task that exited with `result`."""
    text = f"Exit Code: {result.exit_code}"
    if result.signal:
        text += f", Signal: {result.signal}"
    if result.oom_killed:
        text += ", OOM Killed"
    if result.err:
        text += f", Exit Message: {result.err!r}"
    details = {"exit_code": str(result.exit_code), "signal": str(result.signal)}
    if result.oom_killed:
        details["oom_killed"] = "true"
    if result.err:
        details["exit_message"] = result.err
    return TaskEvent(
        EVENT_TERMINATED,
        message=result.err or "",
        display_message=text,
        exit_code=result.exit_code,
        signal=result.signal,
        details=details,
    )


def killed_event(kill_error: str = "") -> TaskEvent:
    """The Killed event of a task stopped for good (with the stop's error, if any)."""
    if kill_error:
        text = f"Task killed with error: {kill_error}"
        return TaskEvent(
            EVENT_KILLED, message=text, display_message=text, details={"kill_error": kill_error}
        )
    return TaskEvent(EVENT_KILLED, message=MSG_KILLED, display_message=MSG_KILLED)


def _killed(state: TaskState) -> bool:
    """True once the task's Killed event is recorded: it was killed for good."""
    return any(e.type == EVENT_KILLED for e in state.events)


def _over(state: TaskState) -> bool:
    """True once the task is dead or killed: it will not run again, and nothing but its
    own end is recorded on it any more."""
    return state.is_dead() or _killed(state)


@attrs.frozen
class _RestartTarget:
    """Immutable. What a restart found: whether there is anything to restart, and the
    running instance (None for a dead task parked for a restart)."""

    restartable: bool
    target: str | None = None


def _restart_target(state: TaskState, local: LocalState, force: bool) -> _RestartTarget:
    handle = local.task_handle
    if _killed(state):
        return _RestartTarget(False)
    if state.state == TASK_RUNNING and handle is not None:
        return _RestartTarget(True, handle.task_id)
    if force and state.state == TASK_DEAD and not local.run_complete:
        return _RestartTarget(True)
    return _RestartTarget(False)


def _failure_event(kind: str, text: str, detail: str) -> TaskEvent:
    return TaskEvent(kind, message=text, display_message=text, details={detail: text})


# --- the mailbox ----------------------------------------------------------------------


class RunPhase(enum.Enum):
    """Where a task runner's `run()` is."""

    NEW = "new"  # not called yet
    RUNNING = "running"  # its thread takes requests
    PREEMPTED = "preempted"  # killed or shut down before it was called: it returns at once
    ENDED = "ended"  # it returned


@attrs.frozen
class RestartRequest:
    """Immutable. A restart of the running instance `target` (a driver task id), or of a
    dead, parked task (`target` None). `done` is set once the run thread acted on it,
    or once it was dropped (superseded, stale, withdrawn, or the run ended)."""

    target: str | None
    failure: bool
    done: Event = attrs.field(eq=False, factory=Event)


@attrs.frozen
class Inbox:
    """Immutable. What the run thread found in the mailbox at one look; `wake` is
    cancelled by the next post."""

    restart: RestartRequest | None
    update: bool
    wake: CancelToken


class TaskMailbox:
    """Thread-safe. The requests other threads leave for the run thread, and the phase of
    `run()` that decides whether a run thread is there to take them.

    Invariant (under `_lock`): at most one restart request is pending, and every
    request posted ends with its `done` set; once the phase leaves NEW or RUNNING no
    request is accepted and none is pending; `_reader` is the run thread's ident
    exactly while RUNNING; each post cancels the wake token and replaces it.
    """

    _name = immutable()
    _lock = immutable()
    _phase = guarded("_lock")
    _reader = guarded("_lock")
    _parked = guarded("_lock")
    _restart = guarded("_lock")
    _update = guarded("_lock")
    _wake = guarded("_lock")

    def __init__(self, task_name: str) -> None:
        self._name = task_name
        self._lock = make_lock("TaskMailbox._lock")
        self._phase = RunPhase.NEW
        self._reader: int | None = None
        self._parked = False
        self._restart: RestartRequest | None = None
        self._update = False
        self._wake = CancelToken()

    # --- the run phase ----------------------------------------------------------------

    def open(self) -> bool:
        """`run()` begins on this thread: True if it is to run, False if preempted.
        AllocRunnerError if `run()` was called before."""
        with self._lock:
            phase = self._phase
            if phase is RunPhase.NEW:
                self._phase = RunPhase.RUNNING
                self._reader = threading.get_ident()
        if phase in (RunPhase.RUNNING, RunPhase.ENDED):
            raise AllocRunnerError(f"task {self._name!r}: run() called twice")
        return phase is RunPhase.NEW

    def adopt(self) -> bool:
        """`run()`, begun by `open` on another thread, goes on on this one, which is
        the run thread from now on: True if it is to run, False if it was preempted."""
        with self._lock:
            if self._phase is not RunPhase.RUNNING:
                return False
            self._reader = threading.get_ident()
        return True

    def preempt(self) -> bool:
        """Close the mailbox before `run()`; True if this call did (its caller then
        finishes the runner, which will never run)."""
        return self._close(RunPhase.NEW, RunPhase.PREEMPTED)

    def close(self) -> None:
        """`run()` is over: refuse further requests and release the pending one."""
        self._close(RunPhase.RUNNING, RunPhase.ENDED)

    def _close(self, expected: RunPhase, phase: RunPhase) -> bool:
        with self._lock:
            if self._phase is not expected:
                return False
            self._phase = phase
            self._reader = None
            self._parked = False
            self._update = False
            pending, self._restart = self._restart, None
        if pending is not None:
            pending.done.set()
        return True

    def phase(self) -> RunPhase:
        with self._lock:
            return self._phase

    def on_run_thread(self) -> bool:
        """True when called by the run thread (e.g. from one of its hooks)."""
        with self._lock:
            return self._reader == threading.get_ident()

    def set_parked(self, parked: bool) -> None:
        with self._lock:
            self._parked = parked and self._phase is RunPhase.RUNNING

    def is_parked(self) -> bool:
        with self._lock:
            return self._parked

    # --- posting ----------------------------------------------------------------------

    def post_restart(self, target: str | None, failure: bool) -> RestartRequest:
        """Leave a restart of `target` for the run thread; a request for the same target
        is joined (a failure wins), one for another is superseded. TaskNotRunningError
        once the run is over."""
        with self._lock:
            if self._phase not in (RunPhase.NEW, RunPhase.RUNNING):
                raise TaskNotRunningError(f"task {self._name!r} is not running (run complete)")
            old = req = self._restart
            if req is None or req.target != target:
                req = RestartRequest(target, failure)
            elif failure and not req.failure:
                req = attrs.evolve(req, failure=True)
            self._restart = req
            self._kick_locked()
        if old is not None and old.target != target:
            old.done.set()
        return req

    def post_update(self) -> None:
        """Tell the run thread that the allocation changed (it runs the update hooks)."""
        with self._lock:
            if self._phase in (RunPhase.NEW, RunPhase.RUNNING):
                self._update = True
                self._kick_locked()

    @requires("_lock")
    def _kick_locked(self) -> None:
        """Wake the run thread (notify-only)."""
        old, self._wake = self._wake, CancelToken()
        old.cancel("mailbox changed")

    # --- taking (the run thread) ------------------------------------------------------

    def look(self) -> Inbox:
        with self._lock:
            return Inbox(self._restart, self._update, self._wake)

    def take_update(self) -> bool:
        """Consume the pending update; True if there was one."""
        with self._lock:
            pending, self._update = self._update, False
        return pending

    def take_restart(self, req: RestartRequest, target: str | None) -> bool:
        """Consume `req` if it is still pending and for `target` (the caller then sets
        its `done` once it acted); a request for another target is dropped."""
        with self._lock:
            if self._restart is not req:
                return False
            self._restart = None
        if req.target != target:
            req.done.set()
            return False
        return True

    def withdraw(self, req: RestartRequest) -> None:
        """Drop `req` if it is still pending."""
        self._drop(lambda pending: pending is req)

    def drop_restart_of(self, task_id: str) -> None:
        """Drop a pending restart of the instance `task_id`: it has stopped, and what
        runs next is the restart policy's call."""
        self._drop(lambda pending: pending.target == task_id)

    def _drop(self, match: Callable[[RestartRequest], bool]) -> None:
        with self._lock:
            pending = self._restart
            if pending is None or not match(pending):
                return
            self._restart = None
        pending.done.set()


# --- the driver task ------------------------------------------------------------------


@attrs.frozen
class KillOutcome:
    """Immutable. How a stop ended: the task's exit (None if it could not be had), the
    error of a stop that never succeeded ("" if none), and whether the wait was cut
    short by its cancel token (the task is then left as it is)."""

    result: ExitResult | None = None
    error: str = ""
    interrupted: bool = False


def _kill_backoff(attempt: int, base: float) -> float:
    return min(4.0**attempt * base, KILL_BACKOFF_LIMIT)


def _exited(driver: Driver, task_id: str) -> bool:
    """True if the task has exited, or the driver no longer knows it (another runner of
    the same task, e.g. after a restore, already stopped and forgot it)."""
    try:
        return driver.inspect(task_id).state == TASK_STATE_EXITED
    except DriverError:
        return True
    except Exception:
        return False


class TaskControl:
    """Thread-safe. Starts, stops, restarts and signals one task through its driver, and
    turns kill / restart / signal calls from any thread into work for the run thread
    (see the module docstring)."""

    _alloc_id = immutable()
    _name = immutable()
    _drivers = immutable()
    _cell = immutable()
    _mailbox = immutable()
    _current = immutable()
    _kill_token = immutable()
    _shutdown_token = immutable()
    _finished = immutable()
    _reaped = immutable()
    _reap_done = immutable()
    _max_kill_timeout = immutable()
    _kill_retry_base = immutable()

    def __init__(
        self,
        alloc_id: str,
        task_name: str,
        *,
        drivers: Mapping[str, Driver],
        cell: TaskStateCell,
        mailbox: TaskMailbox,
        current: Callable[[], tuple[Allocation, Task]],
        kill_token: CancelToken,
        shutdown_token: CancelToken,
        finished: Event,
        max_kill_timeout: float,
        kill_retry_base: float,
    ) -> None:
        self._alloc_id = alloc_id
        self._name = task_name
        self._drivers = shallow_frozen(drivers)  # the client's map, shared
        self._cell = cell
        self._mailbox = mailbox
        self._current = current  # the runner's (allocation, task), read together
        self._kill_token = kill_token
        self._shutdown_token = shutdown_token
        self._finished = finished
        self._reaped = Event()  # set by the one kill that stops a task left running
        self._reap_done = Event()  # set once that kill has stopped and recorded it
        self._max_kill_timeout = max_kill_timeout
        self._kill_retry_base = kill_retry_base

    def __repr__(self) -> str:
        return f"<TaskControl {self._alloc_id[:8]}/{self._name}>"

    # --- kill -------------------------------------------------------------------------

    @calls_out
    def kill(self, event: TaskEvent | None, timeout: float | None) -> bool:
        """Record `event`, kill the task for good and wait (up to `timeout`) for `run()`
        to return; True if it did. A hook killing its own task does not wait."""
        if event is not None:
            self.note_kill_reason(event)
        self.cancel_kill("killed")
        if self._mailbox.on_run_thread():
            return False  # the run loop acts once the hook returns
        finished = self._finished.wait(timeout)
        if finished and self._shutdown_token.cancelled():
            self._stop_left_running()
        return finished

    @calls_out
    def note_kill_reason(self, event: TaskEvent) -> bool:
        """Record `event` (Killing, a sibling rule's reason) unless the task is over
        (dead, or its Killed recorded): a reason decided on an older state must not
        land after the task's last event. True if recorded."""
        return self._cell.publish_if(event, lambda state, _local: not _over(state))

    @calls_out
    def cancel_kill(self, reason: str) -> None:
        """Cancel the kill token; before `run()`, also finish the runner here and now."""
        preempted = self._mailbox.preempt()
        self._kill_token.cancel(reason)
        if preempted:
            self._finish_unstarted()

    @calls_out
    def kill_soon(self, event: TaskEvent, reason: str) -> None:
        """Record `event` (written with the next change) and cancel the kill token; the
        run thread, or the first kill or shutdown before `run()`, does the rest. Never
        blocks: the event is not written and nothing waits here."""
        self._cell.record(event)
        self._kill_token.cancel(reason)

    @calls_out
    def _finish_unstarted(self) -> None:
        """Killed before `run()`: stop a recovered task if any, then go dead for good."""
        try:
            handle = self._cell.handle()
            stopped = (
                handle is None
                or not self._kill_and_record(handle, self._shutdown_token).interrupted
            )
            if stopped:  # else a shutdown came meanwhile: the task is left as it is
                self._go_dead()
        finally:
            self._finished.set()

    @calls_out
    def _stop_left_running(self) -> None:
        """A kill after `shutdown()`: the run thread has returned and left the task as
        it was, so the first kill to come here stops it (if it runs) and records it
        dead (if it is not: a task that had not started never will); any other kill
        waits until it has, so that no kill returns while the task is still being
        stopped and recorded."""
        if not self._reaped.set():
            checkpoint("task.reap.wait", self._name)
            self._reap_done.wait()
            return
        try:
            handle = self._cell.handle()
            if handle is not None:
                checkpoint("task.reap", self._name)
                self._kill_and_record(handle, CancelToken())
            if not self._cell.state().is_dead():
                self._go_dead()
        finally:
            self._reap_done.set()

    @calls_out
    def kill_leftover(self, handle: TaskHandle) -> KillOutcome:
        """For the run thread: stop a task still attached when its loop ended (e.g. a
        recovered task whose allocation became terminal while the agent was down).
        A shutdown cuts the wait short and leaves the task attached."""
        return self._kill_and_record(handle, self._shutdown_token)

    @calls_out
    def _kill_and_record(self, handle: TaskHandle, cancel: CancelToken) -> KillOutcome:
        """Stop the task, record Terminated (if its exit is known) and Killed (if the
        runner is being killed), then detach it. Nothing is recorded, and the task stays
        attached, if `cancel` cut the stop short."""
        try:
            driver = self.driver_of(handle)
        except DriverError as err:
            outcome = KillOutcome(error=str(err))
        else:
            outcome = self.kill_task(driver, handle, cancel)
            if outcome.interrupted:
                return outcome
        if outcome.result is not None:
            self._cell.publish(event=terminated_event(outcome.result))
        if self._kill_token.cancelled():
            self._cell.publish(event=killed_event(outcome.error))
        self.clear_handle()
        return outcome

    @calls_out
    def _go_dead(self) -> None:
        self._cell.publish(state=TASK_DEAD)
        self._cell.update_local(lambda local: local.with_run_complete(True))

    @calls_out
    def kill_task(self, driver: Driver, handle: TaskHandle, cancel: CancelToken) -> KillOutcome:
        """Stop the task (its kill signal, then force after the kill timeout), retrying a
        failed stop with backoff, and collect its exit. Waiting gives up once `cancel`
        is cancelled."""
        failure = self._stop(driver, handle.task_id, cancel)
        if failure is not None:
            return failure
        try:
            result = driver.wait(handle.task_id, cancel)
        except DriverError as err:
            log.warning("task %s: collecting the exit of %s failed: %s", self, handle.task_id, err)
            return KillOutcome()
        return KillOutcome(result=result, interrupted=result is None)

    @calls_out
    def _stop(self, driver: Driver, task_id: str, cancel: CancelToken) -> KillOutcome | None:
        """None once the task is stopped (or found exited), else how trying failed."""
        _, task = self._current()
        timeout = min(task.kill_timeout, self._max_kill_timeout)
        error = ""
        for attempt in range(KILL_RETRIES):
            try:
                driver.stop(task_id, timeout, task.kill_signal)
                return None
            except Exception as err:
                log.warning("task %s: stopping %s failed: %s", self, task_id, err)
                if _exited(driver, task_id):
                    return None
                error = str(err)
            last = attempt + 1 == KILL_RETRIES
            if not last and cancel.wait(_kill_backoff(attempt, self._kill_retry_base)):
                return KillOutcome(interrupted=True)
        return KillOutcome(error=error)

    # --- restart and signal -----------------------------------------------------------

    @calls_out
    def restart(self, event: TaskEvent, failure: bool, force: bool) -> None:
        """Record `event` and have the run thread stop the running task, for the restart
        policy to start it again (at once and uncounted, unless `failure`); with
        `force`, a dead parked task runs again too. Waits until the run thread acted.
        TaskNotRunningError when there is nothing to restart."""
        done = self.post_restart(event, failure, force)
        if done is not None:
            done.wait()

    @calls_out
    def post_restart(self, event: TaskEvent, failure: bool, force: bool) -> Event | None:
        """`restart` without the wait: the event set once the run thread acted, or None
        when there is nothing to wait for (asked by a hook on the run thread)."""
        if self._mailbox.phase() not in (RunPhase.NEW, RunPhase.RUNNING):
            raise TaskNotRunningError(f"task {self._name!r} is not running (run complete)")
        state, local = self._cell.snapshot()
        found = _restart_target(state, local, force)
        if not found.restartable:
            raise TaskNotRunningError(f"task {self._name!r} is not running ({state.state})")
        checkpoint("task.restart.post", self._name)
        # The event is recorded only if the task is still what was found: a stop that
        # came meanwhile leaves nothing to restart and nothing to record.
        still = self._cell.publish_if(
            event, lambda state, local: _restart_target(state, local, force) == found
        )
        if not still:
            raise TaskNotRunningError(f"task {self._name!r} stopped before it could restart")
        target = found.target
        req = self._mailbox.post_restart(target, failure)
        if target is not None and self._attached_id() != target:
            # The instance stopped while the request was being posted: the run thread
            # may not look for it any more, and nothing is left to restart.
            self._mailbox.withdraw(req)
        if self._mailbox.on_run_thread():
            return None  # asked by a hook: the run loop acts once the hook returns
        return req.done

    def _attached_id(self) -> str | None:
        handle = self._cell.handle()
        return None if handle is None else handle.task_id

    @calls_out
    def signal(self, event: TaskEvent, sig: str) -> None:
        """Record `event` and deliver `sig` to the running task. TaskNotRunningError
        without a task; driver errors (e.g. an unknown signal) propagate."""
        handle = self._cell.handle()
        if handle is None:
            raise TaskNotRunningError(f"task {self._name!r} is not running")
        attached = self._cell.publish_if(
            event, lambda state, local: local.task_handle == handle and not _over(state)
        )
        if not attached:
            raise TaskNotRunningError(f"task {self._name!r} stopped before it could be signalled")
        try:
            self.driver_of(handle).signal(handle.task_id, sig)
        except DriverError as err:
            if self._attached_id() != handle.task_id:
                raise TaskNotRunningError(
                    f"task {self._name!r} stopped before it could be signalled"
                ) from err
            raise

    @calls_out
    def latest_stats(self) -> dict[str, float] | None:
        """Resource usage of the running task, or None when there is none."""
        handle = self._cell.handle()
        if handle is None:
            return None
        try:
            return dict(self.driver_of(handle).stats(handle.task_id))
        except Exception:
            return None

    # --- start, recover, detach -------------------------------------------------------

    def driver_of(self, handle: TaskHandle) -> Driver:
        driver = self._drivers.get(handle.driver)
        if driver is None:
            raise DriverError(f"driver {handle.driver!r} is not available on this node")
        return driver

    def starts_at_once(self, task: Task) -> bool:
        """True if `task`'s driver says a start of it never waits (its optional
        ``starts_at_once(driver_config)``; a driver that does not have it is never
        assumed to)."""
        probe = getattr(self._drivers.get(task.driver), "starts_at_once", None)
        return probe is not None and bool(probe(task.config))

    @calls_out
    def start(self, task: Task, config: Callable[[], TaskConfig]) -> None:
        """Start `task` through its driver with `config()` (or adopt a recovered task)
        and record Started; a failure is recorded as an event and raised."""
        if self._cell.handle() is not None:
            self._cell.publish(state=TASK_RUNNING)
            return
        driver = self._drivers.get(task.driver)
        if driver is None:
            available = ", ".join(sorted(self._drivers)) or "none"
            text = (
                f"driver {task.driver!r} (task {task.name!r}) is not available on this "
                f"node; available drivers: {available}"
            )
            self._cell.publish(event=_failure_event(EVENT_DRIVER_FAILURE, text, "driver_error"))
            raise DriverError(text, recoverable=False)
        try:
            built = config()
            driver.validate_config(built)
        except Exception as err:
            text = f"failed to validate the {task.driver} config of task {task.name!r}: {err}"
            event = _failure_event(EVENT_FAILED_VALIDATION, text, "validation_error")
            self._cell.publish(event=event)
            raise DriverError(text, recoverable=False) from err
        try:
            handle = driver.start(built)
        except Exception as err:
            text = f"failed to start task {task.name!r}: {err}"
            self._cell.publish(event=_failure_event(EVENT_DRIVER_FAILURE, text, "driver_error"))
            raise
        started = TaskEvent(EVENT_STARTED, message=MSG_STARTED, display_message=MSG_STARTED)
        self._cell.publish(state=TASK_RUNNING, event=started, handle=handle)

    @calls_out
    def recover(self, handle: TaskHandle) -> bool:
        """Re-attach to a task started before the agent restarted; False if it is gone."""
        try:
            self.driver_of(handle).recover(handle)
        except Exception as err:
            log.warning("task %s: re-attaching to %s failed: %s", self, handle.task_id, err)
            return False
        return True

    @calls_out
    def clear_handle(self) -> None:
        """Forget the attached task (destroying it in the driver) and record that. A
        restart asked for this instance has nothing left to restart: its caller goes."""
        handle = self._cell.handle()
        if handle is None:
            return
        try:
            self.driver_of(handle).destroy(handle.task_id, force=True)
        except Exception as err:
            log.warning("task %s: destroying driver task %s failed: %s", self, handle.task_id, err)
        self._cell.publish(handle=None, notify=False)
        self._mailbox.drop_restart_of(handle.task_id)
