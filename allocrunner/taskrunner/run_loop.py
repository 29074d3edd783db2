"""The run loop of one task: from start to dead, on the task runner's run thread.

Nomad's loop (client/allocrunner/taskrunner), one step after another:

    wait for the start gate → prestart hooks → driver start → Started → poststart hooks
    → wait for the exit → Terminated → exited hooks → restart policy
    → Restarting: wait the delay, loop  |  Not Restarting / success / Killed: dead
    → park until killed or force-restarted → run complete → stop hooks

While it waits (on the task, a restart delay, the shutdown delay, or parked) it serves
the requests other threads leave in the `TaskMailbox`: a kill (the kill token), a
restart of the running instance or of the parked task, an allocation update (the update
hooks). The loop leaves early in one way only: the place that notices raises `_Shutdown`
(return at once, leaving the task as it is) or `_Done` (the task will not start again:
it goes dead); every other return means "carry on".

Threads: one at a time. A `TaskRunLoop` is used only by its TaskRunner's run thread,
which alone owns the restart tracker, the restart requests it took, the error of the
last stop and the outcome of a first start made ahead (`start_first`, on the thread
that began the run, which then hands it all over to the thread that goes on).
Everything it shares with other threads goes through the TaskRunner's parts: the
`TaskStateCell` (state out), the mailbox and the kill / shutdown tokens (requests in),
`TaskControl` (the driver task) and `TaskHookPhases`. Locks: none of its own; it holds
none while calling a hook, a driver, the state DB or a callback. Owner: each TaskRunner
creates one and calls `run()` from its own `run()`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NoReturn, Protocol

from allocrunner._locking import calls_out, confined, immutable
from allocrunner._sync import CancelToken
from allocrunner.drivers.base import Driver, ExitResult, TaskHandle
from allocrunner.durations import format_duration
from allocrunner.errors import DriverError
from allocrunner.structs import Allocation, Task, TaskEvent, effective_restart_policy
from allocrunner.structs.status import TASK_DEAD, TASK_PENDING
from allocrunner.structs.task_state import (
    EVENT_NOT_RESTARTING,
    EVENT_RESTARTING,
    EVENT_SKIPPING_SHUTDOWN_DELAY,
    EVENT_WAITING_SHUTDOWN_DELAY,
)
from allocrunner.taskrunner.hook_phases import TaskHookPhases
from allocrunner.taskrunner.lifecycle import (
    RUN_THREAD,
    RestartRequest,
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

__all__ = ["StartGate", "TaskRunLoop"]

log = logging.getLogger("allocrunner.taskrunner")


class StartGate(Protocol):
    """A lifecycle gate: open once the task may start (see runner/lifecycle.py)."""

    def wait_open(self, cancel: CancelToken, timeout: float | None = None) -> bool: ...

    def is_open(self) -> bool: ...


class _LoopExit(Exception):
    """Leaves the run loop early: raised where the loop notices, caught in `run`."""


class _Shutdown(_LoopExit):
    """The agent shuts down: `run()` returns at once and leaves the task as it is."""


class _Done(_LoopExit):
    """The task will not start again: it goes dead (and parks, unless poststop)."""


class TaskRunLoop:
    """Not thread-safe; owned by one TaskRunner and used only by its run thread (see the
    module docstring)."""

    _label = immutable()
    _cell = immutable()
    _mailbox = immutable()
    _control = immutable()
    _hooks = immutable()
    _current = immutable()
    _start_gate = immutable()
    _kill_token = immutable()
    _shutdown_token = immutable()
    _tracker = confined(RUN_THREAD)
    _kill_error = confined(RUN_THREAD)
    _consumed = confined(RUN_THREAD)
    _early = confined(RUN_THREAD)

    def __init__(
        self,
        label: str,
        tracker: RestartTracker,
        *,
        cell: TaskStateCell,
        mailbox: TaskMailbox,
        control: TaskControl,
        hooks: TaskHookPhases,
        current: Callable[[], tuple[Allocation, Task]],
        start_gate: StartGate | None,
        kill_token: CancelToken,
        shutdown_token: CancelToken,
    ) -> None:
        self._label = label
        self._cell = cell
        self._mailbox = mailbox
        self._control = control
        self._hooks = hooks
        self._current = current
        self._start_gate = start_gate
        self._kill_token = kill_token
        self._shutdown_token = shutdown_token
        self._tracker = tracker
        self._kill_error = ""
        self._consumed: list[RestartRequest] = []
        # The outcome of a first start made by `start_first` and not yet taken up by
        # `_main`: whether the task started, or the exception that start raised.
        self._early: bool | BaseException | None = None

    def __repr__(self) -> str:
        return self._label

    def _alloc(self) -> Allocation:
        return self._current()[0]

    def _task(self) -> Task:
        return self._current()[1]

    @calls_out
    def _emit_event(self, event: TaskEvent) -> None:
        self._cell.publish(event=event)

    @calls_out
    def _update_state(self, state: str, event: TaskEvent | None = None) -> None:
        self._cell.publish(state=state, event=event)

    # --- the loop ---------------------------------------------------------------------

    # The two loops below catch their control-flow exceptions with try/except, not
    # `contextlib.suppress`: a running task's thread sits inside both for the task's
    # whole life, and a `suppress` would keep three objects alive per block meanwhile.

    @calls_out
    def run(self) -> None:
        """Run, park and run again until the task is dead for good; then stop hooks."""
        try:
            if not self._cell.state().is_dead():
                self._run_until_dead()
            else:
                self._control.clear_handle()
                if self._cell.local().run_complete:
                    self._hooks.stop()
                    return
            try:
                while not self._task().is_poststop():
                    self._park()
                    self._run_until_dead()
            except _Done:
                pass
            self._cell.update_local(lambda local: local.with_run_complete(True))
            self._hooks.stop()
        except _Shutdown:
            pass

    @calls_out
    def _run_until_dead(self) -> None:
        try:  # noqa: SIM105 (not `suppress`: see above)
            self._main()
        except _Done:
            pass
        self._kill_leftover()
        self._update_state(TASK_DEAD)

    @calls_out
    def _main(self) -> NoReturn:
        """The start / wait / restart loop, until the task will not start again. Its
        first start may have been made already by `start_first`: its outcome is taken
        up here, as if this thread had just made it."""
        early, self._early = self._early, None
        while True:
            if early is None:
                started = self._start_turn()
            elif isinstance(early, BaseException):
                raise early
            else:
                started, early = early, None
            if started:
                self._wait_started()
            restart, delay = self._decide_restart()
            self.complete_requests()
            if not restart:
                raise _Done()
            self._sleep(delay, interrupt_on_kill=True)

    @calls_out
    def start_first(self) -> None:
        """Make the first start of a task that has never run (the gate, prestart, the
        driver start, poststart) on this thread, for `run()` to go on from on another:
        its outcome (the task started, or failed to start, or the loop is to be left)
        is kept for `_main`, which acts on it as if it had just made that start itself.
        Nothing is done if the task is not pending or its start gate is not open now
        (the start would wait): `run()` then makes the start. Called by the thread that
        opened the mailbox, before `run()` goes on on another (`TaskRunner.start_first`
        and `continue_run`)."""
        try:
            if self._cell.state().state != TASK_PENDING:
                return
            if self._start_gate is not None and not self._start_gate.is_open():
                return
            self._early = self._start_turn(gate_open=True)
        except BaseException as err:  # raised again by _main, on the run thread
            self._early = err

    @calls_out
    def _start_turn(self, *, gate_open: bool = False) -> bool:
        """The start half of one turn of the loop: True if the task started. With
        `gate_open` the caller has just seen the start gate open, so it is not waited
        on again."""
        self._raise_if_stopped()
        if self._should_shutdown():
            raise _Done()
        if not gate_open:
            self._wait_gate()
        return self._start_task()

    @calls_out
    def _start_task(self) -> bool:
        """Prestart, start, poststart: True if the task started; a failure to start
        goes to the tracker."""
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
            return False
        self._hooks.poststart()
        return True

    @calls_out
    def _wait_started(self) -> None:
        """Wait for the started task's exit and record it."""
        result = self._wait_task()
        if result is not None:
            self._emit_event(terminated_event(result))
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
        alloc = self._alloc()
        if alloc.client_terminal():
            return True
        return alloc.server_terminal() and not self._task().is_poststop()

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
        delay = self._task().shutdown_delay
        if delay <= 0:
            return
        if self._alloc().desired_transition.no_shutdown_delay:
            text = "Skipping shutdown_delay because the allocation asked to skip it"
            self._emit_event(
                TaskEvent(EVENT_SKIPPING_SHUTDOWN_DELAY, message=text, display_message=text)
            )
            return
        text = f"Waiting for shutdown_delay of {format_duration(delay)} before killing the task."
        self._update_state(
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

    def complete_requests(self) -> None:
        """Set `done` of the restart requests this thread took (they are acted on)."""
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
            self._emit_event(killed_event(self._kill_error))
            return False, 0.0
        if state == NOT_RESTARTING:
            event = TaskEvent(
                EVENT_NOT_RESTARTING,
                message=reason,
                display_message=reason,
                fails_task=True,
                details={"restart_reason": reason},
            )
            self._update_state(TASK_DEAD, event)
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
            self._update_state(TASK_PENDING, event)
        return True, delay

    @calls_out
    def _sleep(self, delay: float, *, interrupt_on_kill: bool, skip_delay: bool = False) -> None:
        """Wait `delay` seconds serving updates (cut short when the allocation asks to
        skip the shutdown delay, with `skip_delay`)."""
        deadline = time.monotonic() + delay
        while True:
            inbox = self._mailbox.look()
            self._raise_if_stopped(on_kill=interrupt_on_kill)
            if skip_delay and self._alloc().desired_transition.no_shutdown_delay:
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
        self.complete_requests()
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
