"""TaskRunner: runs one task of an allocation through its driver, from pending to dead.

The run loop (Nomad's, client/allocrunner/taskrunner):

    wait for the start gate → prestart hooks → driver start → Started → poststart hooks
    → wait for the exit → Terminated → exited hooks → restart policy
    → Restarting: wait the delay, loop  |  Not Restarting / success / Killed: dead
    → park until killed or force-restarted → run complete → stop hooks

The loop leaves early in one way only: the place that notices raises `_Shutdown`
(return from `run()` at once, leaving the task as it is) or `_Done` (the task will not
start again: it goes dead); every other return means "carry on".

This module holds the run loop and the public facade; the parts live beside it:
`state.TaskStateCell` (the published TaskState / LocalState and their persistence) and
`lifecycle` (`TaskControl`: start, kill, restart, signal of the driver task;
`TaskMailbox`: the requests other threads leave for the run thread, and the phase of
`run()`).

Threads. `run()` is called on exactly one thread (the AllocRunner's
``task-<id8>-<name>``); that thread alone starts, stops, waits on and destroys the
driver task while it runs, owns the RestartTracker and runs every hook phase, so hooks
are serialised. Every other method is safe from any thread and never blocks on the
task, except as documented: `kill`, `restart` and `force_restart` ask the run thread
and wait for it to act; `update` stores the allocation and wakes the run thread, which
runs the update hooks; `shutdown` makes the run thread return and leave the task
running; `signal` and `latest_stats` call the thread-safe driver directly.

Locks: ``TaskRunner._alloc_lock`` (RW) guards the allocation and the task definition;
the cell and the mailbox each have their own (see their modules). None is held while
calling a hook, a driver, the state DB or a callback, and none is held with another.
Owner: an AllocRunner creates one TaskRunner per task and runs it on its own thread.

The module is longer than most because the run loop is one concern whose steps
(prestart, start, wait, the restart decision, parking) share the run thread's
confined state: the restart tracker, the task env and the requests it took.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn, Protocol

from allocrunner._locking import calls_out, confined, guarded, immutable, make_rwlock
from allocrunner._sync import CancelToken, Event
from allocrunner.allocdir import AllocDir, TaskDir
from allocrunner.drivers.base import Driver, ExitResult, TaskHandle
from allocrunner.durations import format_duration
from allocrunner.errors import AllocRunnerError, DriverError, UnknownTaskError
from allocrunner.state import LocalState, StateDB
from allocrunner.structs import Allocation, Task, TaskEvent, TaskState, effective_restart_policy
from allocrunner.structs.status import TASK_DEAD, TASK_PENDING, TASK_RUNNING
from allocrunner.structs.task_state import (
    EVENT_KILLED,
    EVENT_NOT_RESTARTING,
    EVENT_RECEIVED,
    EVENT_RESTARTING,
    EVENT_RESTORE_FAILED,
    EVENT_SETUP_FAILURE,
    EVENT_SKIPPING_SHUTDOWN_DELAY,
    EVENT_WAITING_SHUTDOWN_DELAY,
)
from allocrunner.taskrunner.hook_phases import RUN_THREAD, TaskHookPhases
from allocrunner.taskrunner.hooks import TaskHook, default_hooks
from allocrunner.taskrunner.lifecycle import (
    KILL_BACKOFF_LIMIT,
    KILL_RETRIES,
    MSG_KILLED,
    MSG_STARTED,
    RestartRequest,
    RunPhase,
    TaskControl,
    TaskMailbox,
    killed_event,
    terminated_event,
)
from allocrunner.taskrunner.restarts import (
    KILLED,
    NOT_RESTARTING,
    RESTARTING,
    TERMINATED,
    RestartTracker,
)
from allocrunner.taskrunner.state import TaskStateCell

__all__ = [
    "KILL_BACKOFF_LIMIT",
    "KILL_RETRIES",
    "MSG_KILLED",
    "MSG_RECEIVED",
    "MSG_RESTORE_FAILED",
    "MSG_STARTED",
    "StartGate",
    "TaskRunner",
]

log = logging.getLogger("allocrunner.taskrunner")

MSG_RECEIVED = "Task received by client"
MSG_RESTORE_FAILED = "failed to restore task; it will be started again"
MSG_MISSING_TASK = "update missing task"


class StartGate(Protocol):
    """A lifecycle gate: open once the task may start (see runner/lifecycle.py)."""

    def wait_open(self, cancel: CancelToken, timeout: float | None = None) -> bool: ...


class _LoopExit(Exception):
    """Leaves the run loop early: raised where the loop notices, caught in `_run`."""


class _Shutdown(_LoopExit):
    """The agent shuts down: `run()` returns at once and leaves the task as it is."""


class _Done(_LoopExit):
    """The task will not start again: it goes dead (and parks, unless poststop)."""


class TaskRunner:
    """Thread-safe. Runs one task of an allocation; `run()` is called on exactly one
    thread, owned by the AllocRunner. See the module docstring for the contract."""

    _alloc_id = immutable()
    _name = immutable()
    _alloc_dir = immutable()
    _task_dir = immutable()
    _start_gate = immutable()
    _datacenter = immutable()
    _hooks = immutable()
    _kill_token = immutable()
    _shutdown_token = immutable()
    _finished = immutable()
    _shutdown_hooks_ran = immutable()
    _cell = immutable()
    _mailbox = immutable()
    _control = immutable()
    # Run-thread state: only the thread in run() touches these.
    _tracker = confined(RUN_THREAD)
    _kill_error = confined(RUN_THREAD)
    _consumed = confined(RUN_THREAD)

    # _alloc_lock guards: _alloc, _task
    _alloc_lock = immutable()
    _alloc = guarded("_alloc_lock")
    _task = guarded("_alloc_lock")

    def __init__(
        self,
        alloc: Allocation,
        task_name: str,
        *,
        alloc_dir: AllocDir,
        drivers: Mapping[str, Driver],
        state_db: StateDB,
        on_state_change: Callable[[], None],
        start_gate: StartGate | None = None,
        max_kill_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        kill_retry_base: float = 5.0,
        datacenter: str = "dc1",
        extra_hooks: Sequence[TaskHook] = (),
    ) -> None:
        group = alloc.group()
        if group is None:
            raise UnknownTaskError(
                f"allocation {alloc.id}: task group {alloc.task_group!r} not found in its job"
            )
        task = group.task(task_name)
        if task is None:
            names = ", ".join(t.name for t in group.tasks) or "none"
            raise UnknownTaskError(
                f"allocation {alloc.id}: group {group.name!r} has no task {task_name!r} "
                f"(tasks: {names})"
            )
        if max_kill_timeout < 0:
            raise ValueError(f"max_kill_timeout must not be negative, got {max_kill_timeout}")
        if kill_retry_base < 0:
            raise ValueError(f"kill_retry_base must not be negative, got {kill_retry_base}")
        assert alloc.job is not None  # alloc.group() found the group in it
        self._alloc_id = alloc.id
        self._name = task_name
        self._alloc_dir = alloc_dir
        self._task_dir: TaskDir = alloc_dir.new_task_dir(task_name)
        self._start_gate = start_gate
        self._datacenter = datacenter
        self._kill_token = CancelToken()
        self._shutdown_token = CancelToken()
        self._finished = Event()  # run() returned, or never will
        self._shutdown_hooks_ran = Event()

        self._alloc_lock = make_rwlock("TaskRunner._alloc_lock")
        self._alloc = alloc
        self._task = task

        initial = alloc.task_states.get(task_name) or TaskState()
        received = TaskEvent(EVENT_RECEIVED, message=MSG_RECEIVED, display_message=MSG_RECEIVED)
        self._cell = TaskStateCell(
            alloc.id, task_name, state_db, initial.with_event(received), on_state_change
        )
        self._mailbox = TaskMailbox(task_name)
        self._hooks = TaskHookPhases(
            repr(self),
            (*default_hooks(), *extra_hooks),
            cell=self._cell,
            current=self._current,
            alloc_dir=alloc_dir,
            task_dir=self._task_dir,
            datacenter=datacenter,
            kill_token=self._kill_token,
            shutdown_token=self._shutdown_token,
        )
        self._control = TaskControl(
            alloc.id,
            task_name,
            drivers=drivers,
            cell=self._cell,
            mailbox=self._mailbox,
            task=self.task,
            kill_token=self._kill_token,
            shutdown_token=self._shutdown_token,
            finished=self._finished,
            max_kill_timeout=float(max_kill_timeout),
            kill_retry_base=float(kill_retry_base),
        )
        self._tracker = RestartTracker(
            effective_restart_policy(alloc.job, group, task),
            alloc.job.type,
            task.lifecycle,
            clock=clock,
        )
        self._kill_error = ""
        self._consumed: list[RestartRequest] = []

    # --- identity and views ---------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def alloc_id(self) -> str:
        return self._alloc_id

    @property
    def task_dir(self) -> TaskDir:
        return self._task_dir

    def alloc(self) -> Allocation:
        """The latest allocation this runner was given."""
        with self._alloc_lock.read():
            return self._alloc

    def task(self) -> Task:
        """The current task definition (from the latest allocation)."""
        with self._alloc_lock.read():
            return self._task

    def _current(self) -> tuple[Allocation, Task]:
        """The latest allocation and its definition of the task, read together."""
        with self._alloc_lock.read():
            return self._alloc, self._task

    def is_leader(self) -> bool:
        return self.task().leader

    def is_sidecar(self) -> bool:
        return self.task().is_sidecar()

    def is_poststop(self) -> bool:
        return self.task().is_poststop()

    def is_prestart(self) -> bool:
        return self.task().is_prestart()

    def is_poststart(self) -> bool:
        return self.task().is_poststart()

    def is_main(self) -> bool:
        return self.task().is_main()

    def task_state(self) -> TaskState:
        """The current state: an immutable snapshot (read lock only, no side effects)."""
        return self._cell.state()

    def local_state(self) -> LocalState:
        """The current client-only state (hook progress, handle, run complete)."""
        return self._cell.local()

    def is_running(self) -> bool:
        """True while a driver task is attached (started or recovered)."""
        return self._cell.handle() is not None

    def is_parked(self) -> bool:
        """True while `run()` holds a dead task, waiting for a kill or a force restart."""
        return self._mailbox.is_parked()

    def wait(self, timeout: float | None = None) -> bool:
        """True once `run()` has returned (at once if killed before it ever started)."""
        return self._finished.wait(timeout)

    def __repr__(self) -> str:
        return f"<TaskRunner {self._alloc_id[:8]}/{self._name}>"

    # --- events and state -----------------------------------------------------------

    @calls_out
    def emit_event(self, event: TaskEvent) -> None:
        """Append `event`, persist, and notify the AllocRunner."""
        self._cell.publish(event=event)

    @calls_out
    def append_event(self, event: TaskEvent) -> None:
        """Append `event` and persist, without notifying."""
        self._cell.publish(event=event, notify=False)

    @calls_out
    def update_state(self, state: str, event: TaskEvent | None = None) -> None:
        """Move to `state` (appending `event` first, if any), persist, notify."""
        if state not in (TASK_PENDING, TASK_RUNNING, TASK_DEAD):
            raise ValueError(f"unknown task state {state!r}")
        self._cell.publish(state=state, event=event)

    # --- requests from other threads --------------------------------------------------

    @calls_out
    def kill(self, event: TaskEvent | None = None, timeout: float | None = None) -> bool:
        """Kill the task for good and wait (up to `timeout`) for `run()` to return.

        `event` (e.g. Killing) is recorded first. The run thread does the killing; a
        runner killed before `run()` started never starts. True if `run()` finished.
        """
        return self._control.kill(event, timeout)

    @calls_out
    def mark_failed_kill(self, reason: str) -> None:
        """The allocation could not be set up: fail the task and make it not run."""
        self.emit_event(
            TaskEvent(
                EVENT_SETUP_FAILURE,
                message=reason,
                display_message=reason,
                fails_task=True,
                details={"kill_reason": reason},
            )
        )
        self._control.cancel_kill("setup failed")

    @calls_out
    def restart(self, event: TaskEvent, failure: bool = False) -> None:
        """Restart the running task: record `event`, stop it and let the restart policy
        start it again (at once, uncounted, unless `failure`). Waits until the old
        instance has stopped. TaskNotRunningError unless the task is running."""
        self._control.restart(event, failure, force=False)

    @calls_out
    def force_restart(self, event: TaskEvent, failure: bool = False) -> None:
        """Like `restart`, but also restarts a dead task whose `run()` is still going
        (parked). TaskNotRunningError for a pending task or once `run()` completed."""
        self._control.restart(event, failure, force=True)

    @calls_out
    def signal(self, event: TaskEvent, sig: str) -> None:
        """Record `event` and deliver `sig` to the running task. TaskNotRunningError
        without a task; driver errors (e.g. an unknown signal) propagate."""
        self._control.signal(event, sig)

    @calls_out
    def latest_stats(self) -> dict[str, float] | None:
        """Resource usage of the running task, or None when there is none."""
        return self._control.latest_stats()

    @calls_out
    def update(self, alloc: Allocation) -> None:
        """Take a new version of the allocation; never blocks.

        The allocation is stored and the run thread woken, which runs the update hooks
        unless the allocation is terminal. A task missing from the new allocation gets
        a failing Killed event at once (written with the task's next change) and is
        killed by the run thread (before `run()`: by `run()`, or by the first `kill()`
        or `shutdown()`), as Nomad kills it from a goroutine of its own.
        """
        if alloc.id != self._alloc_id:
            raise ValueError(f"update for allocation {alloc.id} sent to {self._alloc_id}")
        group = alloc.group()
        task = group.task(self._name) if group is not None else None
        if task is None:
            event = TaskEvent(
                EVENT_KILLED,
                message=MSG_MISSING_TASK,
                display_message=f"Task killed: {MSG_MISSING_TASK}",
                fails_task=True,
                details={"kill_reason": MSG_MISSING_TASK},
            )
            self._control.kill_soon(event, MSG_MISSING_TASK)
            return
        with self._alloc_lock.write():
            self._alloc = alloc
            self._task = task
        if not alloc.terminal():
            self._mailbox.post_update()

    @calls_out
    def shutdown(self, timeout: float | None = None) -> bool:
        """Graceful agent shutdown: `run()` returns leaving the task running; then the
        shutdown hooks run and the local state is saved. True if `run()` returned."""
        preempted = self._mailbox.preempt()
        self._shutdown_token.cancel("shutdown")
        if preempted:
            self._finished.set()
        if not self._finished.wait(timeout):
            return False
        if self._shutdown_hooks_ran.set():
            self._hooks.shutdown()
            self._cell.persist_all()
        return True

    # --- restore ----------------------------------------------------------------------

    @calls_out
    def restore(self) -> None:
        """Adopt the stored state before `run()`; re-attach to a stored driver task.

        A task that was running is recovered through its driver and never started a
        second time; if that fails, it gets a `Failed Restoring Task` event, goes back
        to pending and is started again by the normal flow.
        """
        if self._mailbox.phase() is not RunPhase.NEW:
            raise AllocRunnerError(f"task {self._name!r}: restore() must come before run()")
        local, stored = self._cell.stored()
        handle = local.task_handle if local is not None else None
        recovered = handle is not None and self._control.recover(handle)
        if local is not None and not recovered:
            local = local.with_task_handle(None)
        state = self._cell.adopt(stored, local)
        lost = handle is not None and not recovered
        if lost and not state.is_dead() and not self.alloc().terminal():
            event = TaskEvent(
                EVENT_RESTORE_FAILED, message=MSG_RESTORE_FAILED, display_message=MSG_RESTORE_FAILED
            )
            self.update_state(TASK_PENDING, event)
        elif lost:
            self._cell.persist_all()

    # --- run ------------------------------------------------------------------------

    @calls_out
    def run(self) -> None:
        """Run the task for its whole life; returns when it is dead for good (killed,
        or finished and parked until killed), or at once on shutdown."""
        if not self._mailbox.open():
            self._finished.wait()  # preempted: the killing thread finishes the runner
            return
        try:
            self._run()
        except BaseException as err:
            log.exception("task %s: run loop failed", self)
            with contextlib.suppress(Exception):
                text = f"internal error in the task runner: {err!r}"
                event = TaskEvent(
                    EVENT_SETUP_FAILURE, message=text, display_message=text, fails_task=True
                )
                self.update_state(TASK_DEAD, event)
            raise
        finally:
            self._mailbox.close()
            self._complete_requests()
            self._finished.set()

    @calls_out
    def _run(self) -> None:
        """Run, park and run again until the task is dead for good; then stop hooks."""
        with contextlib.suppress(_Shutdown):
            if not self._cell.state().is_dead():
                self._run_until_dead()
            else:
                self._control.clear_handle()
                if self._cell.local().run_complete:
                    self._hooks.stop()
                    return
            with contextlib.suppress(_Done):
                while not self.is_poststop():
                    self._park()
                    self._run_until_dead()
            self._cell.update_local(lambda local: local.with_run_complete(True))
            self._hooks.stop()

    @calls_out
    def _run_until_dead(self) -> None:
        with contextlib.suppress(_Done):
            self._main()
        self._kill_leftover()
        self.update_state(TASK_DEAD)

    @calls_out
    def _main(self) -> NoReturn:
        """The start / wait / restart loop, until the task will not start again."""
        while True:
            self._raise_if_stopped()
            if self._should_shutdown():
                raise _Done()
            self._wait_gate()
            self._run_once()
            restart, delay = self._decide_restart()
            self._complete_requests()
            if not restart:
                raise _Done()
            self._sleep(delay, interrupt_on_kill=True)

    @calls_out
    def _run_once(self) -> None:
        """Prestart, start and wait for the exit; a failure to start goes to the tracker."""
        try:
            if not self._hooks.prestart():
                raise self._stop_exit()
            self._raise_if_stopped()
            alloc, task = self._current()
            self._control.start(task, lambda: self._hooks.task_config(alloc, task))
        except _LoopExit:
            raise
        except Exception as err:
            log.info("task %s: failed to start: %s", self, err)
            self._tracker.set_start_error(err)
            return
        self._hooks.poststart()
        result = self._wait_task()
        if result is not None:
            self.emit_event(terminated_event(result))
            self._tracker.set_exit_result(result)
        self._control.clear_handle()
        self._hooks.exited(result)

    def _raise_if_stopped(self, *, on_kill: bool = True) -> None:
        if self._shutdown_token.cancelled():
            raise _Shutdown()
        if on_kill and self._kill_token.cancelled():
            raise _Done()

    def _stop_exit(self) -> _LoopExit:
        """Why a wait cut short by the kill or the shutdown token ended."""
        return _Shutdown() if self._shutdown_token.cancelled() else _Done()

    def _should_shutdown(self) -> bool:
        """The allocation is terminal: a non-poststop task must not start again."""
        alloc = self.alloc()
        if alloc.client_terminal():
            return True
        return alloc.server_terminal() and not self.is_poststop()

    @calls_out
    def _wait_gate(self) -> None:
        if self._start_gate is None:
            return
        cancel = CancelToken.any_of(self._kill_token, self._shutdown_token)
        try:
            opened = self._start_gate.wait_open(cancel)
        finally:
            cancel.cancel("done")
        self._raise_if_stopped()
        if not opened:
            raise _Done()

    @calls_out
    def _run_update_hooks(self) -> None:
        self._mailbox.take_update()
        self._hooks.update()

    # --- waiting on the task ----------------------------------------------------------

    @calls_out
    def _wait_task(self) -> ExitResult | None:
        """Wait for the task to exit, serving kill, restart and update requests."""
        handle = self._cell.handle()
        assert handle is not None, "waiting on a task that has no handle"
        driver = self._control.driver_of(handle)
        while True:
            inbox = self._mailbox.look()
            self._raise_if_stopped(on_kill=False)
            if self._kill_token.cancelled():
                result = self._handle_kill(driver, handle)
                self._tracker.set_killed()
                return result
            if inbox.restart is not None:
                if self._take_request(inbox.restart, handle.task_id):
                    return self._restart_task(driver, handle, inbox.restart)
                continue
            if inbox.update:
                self._run_update_hooks()
                continue
            result = self._wait_exit(driver, handle.task_id, inbox.wake)
            if result is not None:
                self._note_late_restart(handle.task_id)
                return result

    @calls_out
    def _wait_exit(self, driver: Driver, task_id: str, wake: CancelToken) -> ExitResult | None:
        """The task's exit, or None once the kill, shutdown or `wake` token fires."""
        cancel = CancelToken.any_of(self._kill_token, self._shutdown_token, wake)
        try:
            return driver.wait(task_id, cancel)
        except DriverError as err:
            log.warning("task %s: waiting on %s failed: %s", self, task_id, err)
            return ExitResult(err=f"waiting on the task failed: {err}")
        finally:
            cancel.cancel("done")

    def _note_late_restart(self, task_id: str) -> None:
        """A restart asked for the instance just as it exited counts as its cause."""
        req = self._mailbox.look().restart
        if req is not None and self._take_request(req, task_id):
            self._tracker.set_restart_triggered(req.failure)

    @calls_out
    def _restart_task(
        self, driver: Driver, handle: TaskHandle, req: RestartRequest
    ) -> ExitResult | None:
        self._hooks.pre_kill(handle)
        result = self._stop_task(driver, handle)
        self._tracker.set_restart_triggered(req.failure)
        if self._kill_token.cancelled():
            self._tracker.set_killed()
        return result

    @calls_out
    def _handle_kill(self, driver: Driver, handle: TaskHandle) -> ExitResult | None:
        """Kill the running task for good: pre-kill hooks, shutdown delay, stop."""
        self._hooks.pre_kill(handle)
        self._shutdown_delay()
        return self._stop_task(driver, handle)

    @calls_out
    def _shutdown_delay(self) -> None:
        delay = self.task().shutdown_delay
        if delay <= 0:
            return
        if self.alloc().desired_transition.no_shutdown_delay:
            text = "Skipping shutdown_delay because the allocation asked to skip it"
            self.emit_event(
                TaskEvent(EVENT_SKIPPING_SHUTDOWN_DELAY, message=text, display_message=text)
            )
            return
        text = f"Waiting for shutdown_delay of {format_duration(delay)} before killing the task."
        self.update_state(
            TASK_PENDING,
            TaskEvent(EVENT_WAITING_SHUTDOWN_DELAY, message=text, display_message=text),
        )
        self._sleep(delay, interrupt_on_kill=False, skip_delay=True)

    @calls_out
    def _stop_task(self, driver: Driver, handle: TaskHandle) -> ExitResult | None:
        """Stop the task and collect its exit; a shutdown meanwhile leaves the loop."""
        outcome = self._control.kill_task(driver, handle, self._shutdown_token)
        if outcome.interrupted:
            raise _Shutdown()
        self._kill_error = outcome.error
        return outcome.result

    @calls_out
    def _kill_leftover(self) -> None:
        """Kill a task still attached when the loop ended (a recovered task whose
        allocation became terminal while the agent was down)."""
        handle = self._cell.handle()
        if handle is None:
            return
        outcome = self._control.kill_leftover(handle)
        if outcome.interrupted:
            raise _Shutdown()
        self._hooks.exited(outcome.result)

    def _take_request(self, req: RestartRequest, target: str | None) -> bool:
        """Consume `req` if it is for `target` (it is completed after the decision)."""
        if not self._mailbox.take_restart(req, target):
            return False
        self._consumed.append(req)
        return True

    def _complete_requests(self) -> None:
        consumed, self._consumed = self._consumed, []
        for req in consumed:
            req.done.set()

    # --- restart decision, delays, parking --------------------------------------------

    @calls_out
    def _decide_restart(self) -> tuple[bool, float]:
        alloc, task = self._current()
        group = alloc.group()
        if alloc.job is not None and group is not None:
            self._tracker.set_policy(effective_restart_policy(alloc.job, group, task))
        state, delay, reason = self._tracker.get_state()
        if state == KILLED:
            self.emit_event(killed_event(self._kill_error))
            return False, 0.0
        if state == NOT_RESTARTING:
            event = TaskEvent(
                EVENT_NOT_RESTARTING,
                message=reason,
                display_message=reason,
                fails_task=True,
                details={"restart_reason": reason},
            )
            self.update_state(TASK_DEAD, event)
            return False, 0.0
        if state == TERMINATED:
            return False, 0.0
        if state == RESTARTING:
            event = TaskEvent(
                EVENT_RESTARTING,
                message=reason,
                display_message=f"Task restarting in {format_duration(delay)}",
                details={"restart_delay": format_duration(delay), "restart_reason": reason},
            )
            self.update_state(TASK_PENDING, event)
        return True, delay

    @calls_out
    def _sleep(self, delay: float, *, interrupt_on_kill: bool, skip_delay: bool = False) -> None:
        """Wait `delay` seconds serving updates (cut short when the allocation asks to
        skip the shutdown delay, with `skip_delay`)."""
        deadline = time.monotonic() + delay
        while True:
            inbox = self._mailbox.look()
            self._raise_if_stopped(on_kill=interrupt_on_kill)
            if skip_delay and self.alloc().desired_transition.no_shutdown_delay:
                return
            if inbox.update:
                self._run_update_hooks()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            tokens = [self._shutdown_token, inbox.wake]
            if interrupt_on_kill:
                tokens.append(self._kill_token)
            self._wait_any(tokens, remaining)

    @calls_out
    def _park(self) -> None:
        """Dead, waiting to be killed or force-restarted (Nomad's ALLOC_RESTART);
        returns when the task is to run again."""
        self._mailbox.set_parked(True)
        try:
            while True:
                inbox = self._mailbox.look()
                self._raise_if_stopped()
                if inbox.restart is not None:
                    if self._take_request(inbox.restart, None) and self._restart_parked(
                        inbox.restart
                    ):
                        return
                    continue
                if inbox.update:
                    self._run_update_hooks()
                    continue
                self._wait_any([self._kill_token, self._shutdown_token, inbox.wake], None)
        finally:
            self._mailbox.set_parked(False)

    @calls_out
    def _restart_parked(self, req: RestartRequest) -> bool:
        """Apply a force restart to the parked task; True once its delay has passed."""
        self._tracker.set_restart_triggered(req.failure)
        restart, delay = self._decide_restart()
        self._complete_requests()
        if restart:
            self._sleep(delay, interrupt_on_kill=True)
        return restart

    @staticmethod
    @calls_out
    def _wait_any(tokens: list[CancelToken], timeout: float | None) -> None:
        cancel = CancelToken.any_of(*tokens)
        try:
            cancel.wait(timeout)
        finally:
            cancel.cancel("done")
