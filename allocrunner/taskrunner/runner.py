"""TaskRunner: runs one task of an allocation through its driver, from pending to dead.

The run loop (Nomad's, client/allocrunner/taskrunner):

    wait for the start gate → prestart hooks → driver start → Started → poststart hooks
    → wait for the exit → Terminated → exited hooks → restart policy
    → Restarting: wait the delay, loop  |  Not Restarting / success / Killed: dead
    → park until killed or force-restarted → run complete → stop hooks

Ownership and threads. `run()` is called on exactly one thread (the AllocRunner's
``task-<id8>-<name>``); that thread alone starts, stops, waits on and destroys the
driver task, owns the RestartTracker, and runs every hook phase, so hooks are
serialised. Every other method is safe from any thread and never touches the task:
`kill`, `restart` and `force_restart` post a request, wake the run thread and wait
for it to act; `update` stores the allocation and wakes the run thread, which runs
the update hooks; `shutdown` makes the run thread return and leave the task running.
The one exception is `signal` (and `latest_stats`), which call the driver from the
caller's thread with no lock held: the driver is thread-safe, and a task that went
away meanwhile turns into `TaskNotRunningError`.

State. The task state is an immutable `TaskState`; writers build a new one and
publish it under the write side of ``TaskRunner._state_lock``; `task_state()` reads it
under the read side and has no side effects. Each publication bumps a version;
persistence runs with no lock held, one writer at a time: whoever finds nobody
writing becomes the writer and writes the newest state, and a caller whose version
is not yet written waits for the writer's next round. So the database never ends
with an older state than the newest one, and a change is durable when the call that
made it returns. `on_state_change()` (notify-only) follows every published change.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from allocrunner._locking import calls_out, confined, guarded, immutable, make_rwlock, requires
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir, TaskDir
from allocrunner.drivers.base import (
    TASK_STATE_EXITED,
    Driver,
    ExitResult,
    TaskConfig,
    TaskHandle,
)
from allocrunner.durations import format_duration
from allocrunner.errors import (
    AllocRunnerError,
    DriverError,
    HookError,
    HookErrors,
    TaskNotRunningError,
    UnknownTaskError,
)
from allocrunner.state import HookState, LocalState, StateDB
from allocrunner.structs import Allocation, Task, TaskEvent, TaskState, effective_restart_policy
from allocrunner.structs.frozen import FrozenDict
from allocrunner.structs.status import TASK_DEAD, TASK_PENDING, TASK_RUNNING
from allocrunner.structs.task_state import (
    EVENT_DRIVER_FAILURE,
    EVENT_FAILED_VALIDATION,
    EVENT_HOOK_FAILED,
    EVENT_KILLED,
    EVENT_NOT_RESTARTING,
    EVENT_RECEIVED,
    EVENT_RESTARTING,
    EVENT_RESTORE_FAILED,
    EVENT_SETUP_FAILURE,
    EVENT_SKIPPING_SHUTDOWN_DELAY,
    EVENT_STARTED,
    EVENT_TERMINATED,
    EVENT_WAITING_SHUTDOWN_DELAY,
)
from allocrunner.taskrunner.env import HOST_ENV_DRIVERS, host_env, interpolate_config
from allocrunner.taskrunner.hooks import (
    COLLECT_ALL,
    PHASES,
    STOP_AT_FIRST,
    HookEventError,
    HookRequest,
    PrestartResult,
    TaskHook,
    default_hooks,
    run_phase,
)
from allocrunner.taskrunner.restarts import (
    KILLED,
    NOT_RESTARTING,
    RESTARTING,
    TERMINATED,
    RestartTracker,
)

__all__ = ["KILL_BACKOFF_LIMIT", "KILL_RETRIES", "StartGate", "TaskRunner"]

log = logging.getLogger("allocrunner.taskrunner")

KILL_RETRIES = 5
"""How many times a failed stop is tried in all (Nomad's killFailureLimit)."""
KILL_BACKOFF_LIMIT = 120.0
"""The longest pause between two stop attempts (Nomad's killBackoffLimit)."""

RUN_THREAD = "task-run"

MSG_RECEIVED = "Task received by client"
MSG_STARTED = "Task started by client"
MSG_KILLED = "Task successfully killed"
MSG_RESTORE_FAILED = "failed to restore task; it will be started again"


class StartGate(Protocol):
    """A lifecycle gate: open once the task may start (see runner/lifecycle.py)."""

    def wait_open(self, cancel: CancelToken, timeout: float | None = None) -> bool: ...


class _Stop:
    """Immutable. Why a phase of the run loop ended early."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_SHUTDOWN = _Stop("shutdown")  # return from run() at once, leave the task as it is
_DONE = _Stop("done")  # the task will not start again: go dead


_KEEP: Any = object()  # "leave the handle as it is"
_NO_RESULT = PrestartResult()


class _Interrupted(Exception):
    """Prestart was cut short by a kill or a shutdown."""


@attrs.frozen
class _RestartRequest:
    """Immutable. A pending restart: of the running instance `target` (a task id), or
    of a dead, parked task (`target` None). `done` fires once the run thread acted."""

    target: str | None
    failure: bool
    done: CancelToken = attrs.field(eq=False)


def _next_state(base: TaskState, state: str | None, event: TaskEvent | None) -> TaskState:
    """`base` with `event` appended, then moved to `state` (either may be None)."""
    new = base
    if event is not None:
        new = new.with_event(event)
    if state is not None:
        new = new.with_state(state)
    return new


def _kill_backoff(attempt: int, base: float) -> float:
    return min(4.0**attempt * base, KILL_BACKOFF_LIMIT)


def _terminated_event(result: ExitResult) -> TaskEvent:
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


class TaskRunner:
    """Thread-safe. Runs one task of an allocation; `run()` is called on exactly one
    thread, owned by the AllocRunner. See the module docstring for the contract."""

    _alloc_id = immutable()
    _name = immutable()
    _alloc_dir = immutable()
    _task_dir = immutable()
    _drivers = immutable()
    _state_db = immutable()
    _on_state_change = immutable()
    _start_gate = immutable()
    _max_kill_timeout = immutable()
    _clock = immutable()
    _kill_retry_base = immutable()
    _datacenter = immutable()
    _hooks = immutable()
    _kill_token = immutable()
    _shutdown_token = immutable()
    _finished = immutable()
    # Run-thread state: only the thread in run() touches these (or, for a runner
    # killed before run() started, the thread that kills it, as no run thread exists).
    _tracker = confined(RUN_THREAD)
    _env = confined(RUN_THREAD)
    _kill_error = confined(RUN_THREAD)
    _consumed = confined(RUN_THREAD)
    _phases = immutable()

    # _alloc_lock guards: _alloc, _task
    _alloc_lock = immutable()
    _alloc = guarded("_alloc_lock")
    _task = guarded("_alloc_lock")

    # _state_lock guards: _state, _local, _handle, the versions and the requests
    _state_lock = immutable()
    _state = guarded("_state_lock")
    _local = guarded("_state_lock")
    _handle = guarded("_state_lock")
    _state_version = guarded("_state_lock")
    _local_version = guarded("_state_lock")
    _saved_state_version = guarded("_state_lock")
    _saved_local_version = guarded("_state_lock")
    _persisting = guarded("_state_lock")
    _persist_round = guarded("_state_lock")
    _restart_req = guarded("_state_lock")
    _update_pending = guarded("_state_lock")
    _wake = guarded("_state_lock")
    _run_called = guarded("_state_lock")
    _run_thread = guarded("_state_lock")
    _preempted = guarded("_state_lock")
    _reaping = guarded("_state_lock")
    _parked = guarded("_state_lock")
    _shutdown_hooks_ran = guarded("_state_lock")

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
        self._alloc_id = alloc.id
        self._name = task_name
        self._alloc_dir = alloc_dir
        self._task_dir: TaskDir = alloc_dir.new_task_dir(task_name)
        self._drivers = dict(drivers)
        self._state_db = state_db
        self._on_state_change = on_state_change
        self._start_gate = start_gate
        self._max_kill_timeout = float(max_kill_timeout)
        self._clock = clock
        self._kill_retry_base = float(kill_retry_base)
        self._datacenter = datacenter
        self._hooks: tuple[TaskHook, ...] = (*default_hooks(), *extra_hooks)
        self._phases = frozenset(
            phase for hook in self._hooks for phase in PHASES if hasattr(hook, phase)
        )
        self._kill_token = CancelToken()
        self._shutdown_token = CancelToken()
        self._finished = CancelToken()
        assert alloc.job is not None  # alloc.group() found the group in it
        self._tracker = RestartTracker(
            effective_restart_policy(alloc.job, group, task),
            alloc.job.type,
            task.lifecycle,
            clock=clock,
        )

        self._alloc_lock = make_rwlock("TaskRunner._alloc_lock")
        self._alloc = alloc
        self._task = task

        self._state_lock = make_rwlock("TaskRunner._state_lock")
        initial = alloc.task_states.get(task_name) or TaskState()
        received = TaskEvent(EVENT_RECEIVED, message=MSG_RECEIVED, display_message=MSG_RECEIVED)
        self._state: TaskState = initial.with_event(received)
        self._local = LocalState()
        self._handle: TaskHandle | None = None
        self._state_version = 0
        self._local_version = 0
        self._saved_state_version = 0
        self._saved_local_version = 0
        self._persisting = False
        self._persist_round: CancelToken | None = None
        self._restart_req: _RestartRequest | None = None
        self._update_pending = False
        self._wake = CancelToken()
        self._run_called = False
        self._run_thread: int | None = None
        self._preempted = False
        self._reaping = False
        self._parked = False
        self._shutdown_hooks_ran = False
        self._env: FrozenDict[str, str] = FrozenDict()
        self._kill_error = ""
        self._consumed: list[_RestartRequest] = []

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
        with self._state_lock.read():
            return self._state

    def local_state(self) -> LocalState:
        """The current client-only state (hook progress, handle, run complete)."""
        with self._state_lock.read():
            return self._local

    def is_running(self) -> bool:
        """True while a driver task is attached (started or recovered)."""
        with self._state_lock.read():
            return self._handle is not None

    def is_parked(self) -> bool:
        """True while `run()` holds a dead task, waiting for a kill or a force restart."""
        with self._state_lock.read():
            return self._parked

    def wait(self, timeout: float | None = None) -> bool:
        """True once `run()` has returned (at once if killed before it ever started)."""
        return self._finished.wait(timeout)

    def __repr__(self) -> str:
        return f"<TaskRunner {self._alloc_id[:8]}/{self._name}>"

    # --- events and state ---------------------------------------------------------------

    def emit_event(self, event: TaskEvent) -> None:
        """Append `event`, persist, and notify the AllocRunner."""
        self._publish(event=event)

    def append_event(self, event: TaskEvent) -> None:
        """Append `event` and persist, without notifying."""
        self._publish(event=event, notify=False)

    def update_state(self, state: str, event: TaskEvent | None = None) -> None:
        """Move to `state` (appending `event` first, if any), persist, notify."""
        if state not in (TASK_PENDING, TASK_RUNNING, TASK_DEAD):
            raise ValueError(f"unknown task state {state!r}")
        self._publish(state=state, event=event)

    @calls_out
    def _publish(
        self,
        *,
        state: str | None = None,
        event: TaskEvent | None = None,
        notify: bool = True,
        handle: Any = _KEEP,
    ) -> None:
        # The new snapshots are built outside the write side, so that readers are never
        # held up by the building; the swap retries if another writer came first.
        while True:
            with self._state_lock.read():
                base, base_local = self._state, self._local
            new = _next_state(base, state, event)
            new_local = base_local if handle is _KEEP else base_local.with_task_handle(handle)
            with self._state_lock.write():
                if self._state is not base or self._local is not base_local:
                    continue
                changed = new is not base or handle is not _KEEP
                if new is not base:
                    self._state = new
                    self._state_version += 1
                if handle is not _KEEP:
                    self._handle = handle
                    self._local = new_local
                    self._local_version += 1
                versions = (self._state_version, self._local_version)
                break
        if not changed:
            return
        self._persist(versions)
        if notify:
            self._on_state_change()

    @requires("_state_lock", write=True)
    def _apply_locked(self, state: str | None, event: TaskEvent | None) -> bool:
        new = _next_state(self._state, state, event)
        if new is self._state:
            return False
        self._state = new
        self._state_version += 1
        return True

    @calls_out
    def _update_local(self, change: Callable[[LocalState], LocalState]) -> None:
        with self._state_lock.write():
            new = change(self._local)
            if new == self._local:
                return
            self._local = new
            self._local_version += 1
            versions = (self._state_version, self._local_version)
        self._persist(versions)

    @calls_out
    def _persist(self, versions: tuple[int, int]) -> None:
        """Make the DB hold at least `versions` (state, local) of this task's entries.

        One writer at a time; a caller that finds a writer busy waits for its round to
        end and checks again, becoming the writer itself if nobody is."""
        want_state, want_local = versions
        while True:
            with self._state_lock.write():
                if self._saved_state_version >= want_state and (
                    self._saved_local_version >= want_local
                ):
                    return
                if self._persisting:
                    if self._persist_round is None:
                        self._persist_round = CancelToken()
                    round_done = self._persist_round
                    lead = False
                else:
                    self._persisting = True
                    lead = True
                    state, state_version = self._state, self._state_version
                    local, local_version = self._local, self._local_version
                    write_state = state_version > self._saved_state_version
                    write_local = local_version > self._saved_local_version
            if not lead:
                round_done.wait()
                continue
            try:
                if write_state:
                    self._state_db.put_task_state(self._alloc_id, self._name, state)
                if write_local:
                    self._state_db.put_task_local_state(self._alloc_id, self._name, local)
            except Exception as err:
                log.warning("task %s: persisting task state failed: %s", self, err)
            finally:
                with self._state_lock.write():
                    self._saved_state_version = max(self._saved_state_version, state_version)
                    self._saved_local_version = max(self._saved_local_version, local_version)
                    self._persisting = False
                    finished_round = self._persist_round
                    self._persist_round = None
                    if finished_round is not None:
                        finished_round.cancel("persisted")  # notify-only

    # --- restore --------------------------------------------------------------------

    @calls_out
    def restore(self) -> None:
        """Adopt the stored state before `run()`; re-attach to a stored driver task.

        A task that was running is recovered through its driver and never started a
        second time; if that fails, it gets a `Failed Restoring Task` event, goes back
        to pending and is started again by the normal flow.
        """
        with self._state_lock.read():
            if self._run_called or self._preempted:
                raise AllocRunnerError(f"task {self._name!r}: restore() must come before run()")
        local, stored = self._state_db.task_runner_state(self._alloc_id, self._name)
        handle = local.task_handle if local is not None else None
        recovered = False
        if handle is not None:
            driver = self._drivers.get(handle.driver)
            try:
                if driver is None:
                    raise DriverError(f"driver {handle.driver!r} is not available on this node")
                driver.recover(handle)
                recovered = True
            except Exception as err:
                log.warning("task %s: re-attaching to %s failed: %s", self, handle.task_id, err)
        with self._state_lock.write():
            if stored is not None:
                self._state = stored
                self._state_version += 1
            if local is not None:
                self._local = local if recovered else local.with_task_handle(None)
                self._local_version += 1
            self._handle = handle if recovered else None
            state = self._state
        lost = handle is not None and not recovered
        if lost and not state.is_dead() and not self.alloc().terminal():
            self.update_state(
                TASK_PENDING,
                TaskEvent(
                    EVENT_RESTORE_FAILED,
                    message=MSG_RESTORE_FAILED,
                    display_message=MSG_RESTORE_FAILED,
                ),
            )
        elif lost:
            self._persist_now()

    @calls_out
    def _persist_now(self) -> None:
        with self._state_lock.write():
            self._local_version += 1
            self._state_version += 1
            versions = (self._state_version, self._local_version)
        self._persist(versions)

    # --- run ------------------------------------------------------------------------

    @calls_out
    def run(self) -> None:
        """Run the task for its whole life; returns when it is dead for good (killed,
        or finished and parked until killed), or at once on shutdown."""
        with self._state_lock.write():
            if self._run_called:
                raise AllocRunnerError(f"task {self._name!r}: run() called twice")
            self._run_called = True
            self._run_thread = threading.get_ident()
            preempted = self._preempted
        if preempted:
            self._finished.wait()
            return
        try:
            self._run()
        except BaseException as err:
            log.exception("task %s: run loop failed", self)
            with contextlib.suppress(Exception):
                text = f"internal error in the task runner: {err!r}"
                self.update_state(
                    TASK_DEAD,
                    TaskEvent(
                        EVENT_SETUP_FAILURE, message=text, display_message=text, fails_task=True
                    ),
                )
            raise
        finally:
            self._end_run()

    @calls_out
    def _end_run(self) -> None:
        with self._state_lock.write():
            req = self._restart_req
            self._restart_req = None
            self._parked = False
            self._run_thread = None  # its ident may be reused by a later thread
        if req is not None:
            req.done.cancel("run ended")
        self._complete_requests()
        self._finished.cancel("run returned")

    @calls_out
    def _run(self) -> None:
        dead = self.task_state().is_dead()
        if dead:
            self._clear_handle()
            if self.local_state().run_complete:
                self._soft_phase("stop")
                return
        while True:
            if not dead:
                if self._main() is _SHUTDOWN:
                    return
                if self._clean_up_leftover_handle() is _SHUTDOWN:
                    return
                self.update_state(TASK_DEAD)
            dead = False
            if self.is_poststop():
                break
            outcome = self._park()
            if outcome is _SHUTDOWN:
                return
            if outcome is _DONE:
                break
        self._update_local(lambda local: local.with_run_complete(True))
        self._soft_phase("stop")

    @calls_out
    def _main(self) -> _Stop:
        """The start/wait/restart loop; _DONE when the task will not start again."""
        while True:
            if self._shutdown_token.cancelled():
                return _SHUTDOWN
            if self._kill_token.cancelled() or self._should_shutdown():
                return _DONE
            stop = self._wait_gate()
            if stop is not None:
                return stop
            start_error: BaseException | None = None
            try:
                self._prestart()
            except _Interrupted:
                continue
            except Exception as err:
                start_error = err
            if start_error is None:
                if self._shutdown_token.cancelled():
                    return _SHUTDOWN
                if self._kill_token.cancelled():
                    return _DONE
                try:
                    self._start()
                except Exception as err:
                    start_error = err
            if start_error is not None:
                log.info("task %s: failed to start: %s", self, start_error)
                self._tracker.set_start_error(start_error)
            else:
                self._soft_phase("poststart", handle=self._current_handle())
                stop, result = self._wait_task()
                if stop is _SHUTDOWN:
                    return _SHUTDOWN
                if result is not None:
                    self.emit_event(_terminated_event(result))
                    self._tracker.set_exit_result(result)
                self._clear_handle()
                self._soft_phase("exited", result=result)
            restart, delay = self._decide_restart()
            self._complete_requests()
            if not restart:
                return _DONE
            stop = self._sleep(delay, interrupt_on_kill=True)
            if stop is not None:
                return stop

    def _should_shutdown(self) -> bool:
        """The allocation is terminal: a non-poststop task must not start again."""
        alloc = self.alloc()
        if alloc.client_terminal():
            return True
        return alloc.server_terminal() and not self.is_poststop()

    @calls_out
    def _wait_gate(self) -> _Stop | None:
        if self._start_gate is None:
            return None
        cancel = CancelToken.any_of(self._kill_token, self._shutdown_token)
        try:
            opened = self._start_gate.wait_open(cancel)
        finally:
            cancel.cancel("done")
        if opened and not (self._kill_token.cancelled() or self._shutdown_token.cancelled()):
            return None
        if self._shutdown_token.cancelled():
            return _SHUTDOWN
        return _DONE

    # --- prestart and start ------------------------------------------------------------

    def _request(self, cancel: CancelToken, **fields: Any) -> HookRequest:
        with self._alloc_lock.read():
            alloc, task = self._alloc, self._task
        return HookRequest(
            alloc=alloc,
            task=task,
            alloc_dir=self._alloc_dir,
            task_dir=self._task_dir,
            cancel=cancel,
            emit_event=self.emit_event,
            datacenter=self._datacenter,
            **fields,
        )

    @calls_out
    def _prestart(self) -> None:
        """Run the prestart hooks: skip the done ones (re-applying their env), record
        what changed. Raises _Interrupted on kill/shutdown, else the hook's error."""
        task = self.task()
        env: dict[str, str] = host_env() if task.driver in HOST_ENV_DRIVERS else {}
        local = self.local_state()
        cancel = CancelToken.any_of(self._kill_token, self._shutdown_token)

        def invoke(hook: TaskHook, method: Callable[[HookRequest], Any]) -> None:
            previous = local.hook(hook.name)
            if previous is not None and previous.prestart_done:
                env.update(previous.env)
                return
            result = method(self._request(cancel, env=FrozenDict(env), previous=previous))
            if result is None:
                result = _NO_RESULT
            env.update(result.env)
            state = result.hook_state()
            if state != (previous or HookState()):
                self._update_local(lambda current: current.with_hook(hook.name, state))
            if cancel.cancelled():
                raise _Interrupted()

        try:
            run_phase(self._hooks, "prestart", invoke, policy=STOP_AT_FIRST)
        except HookError as err:
            if cancel.cancelled():
                raise _Interrupted() from err
            self.emit_event(self._hook_error_event(err))
            raise
        finally:
            cancel.cancel("prestart over")
        self._env = FrozenDict(env)

    @staticmethod
    def _hook_error_event(err: HookError) -> TaskEvent:
        cause = err.__cause__
        if isinstance(cause, HookEventError):
            return cause.event
        text = f"{err.hook}: {cause if cause is not None else err}"
        return TaskEvent(EVENT_HOOK_FAILED, message=text, display_message=text)

    def _task_config(self, alloc: Allocation, task: Task) -> TaskConfig:
        td = self._task_dir
        return TaskConfig(
            id=f"{alloc.id}/{task.name}/{secrets.token_hex(4)}",
            alloc_id=alloc.id,
            name=task.name,
            driver_config=interpolate_config(task.config, self._env),
            env=self._env,
            user=task.user,
            task_dir=str(td.dir),
            alloc_dir=str(td.shared_alloc_dir),
            local_dir=str(td.local_dir),
            secrets_dir=str(td.secrets_dir),
            logs_dir=str(td.logs_dir),
            log_max_files=task.logs.max_files,
            log_max_file_size_mb=task.logs.max_file_size_mb,
            resources=task.resources,
        )

    @calls_out
    def _start(self) -> None:
        """Start the task through its driver (or adopt a recovered one)."""
        if self._current_handle() is not None:
            self.update_state(TASK_RUNNING)
            return
        with self._alloc_lock.read():
            alloc, task = self._alloc, self._task
        driver = self._drivers.get(task.driver)
        if driver is None:
            available = ", ".join(sorted(self._drivers)) or "none"
            text = (
                f"driver {task.driver!r} (task {task.name!r}) is not available on this "
                f"node; available drivers: {available}"
            )
            self.emit_event(
                TaskEvent(
                    EVENT_DRIVER_FAILURE,
                    message=text,
                    display_message=text,
                    details={"driver_error": text},
                )
            )
            raise DriverError(text, recoverable=False)
        try:
            config = self._task_config(alloc, task)
            driver.validate_config(config)
        except Exception as err:
            text = f"failed to validate the {task.driver} config of task {task.name!r}: {err}"
            self.emit_event(
                TaskEvent(
                    EVENT_FAILED_VALIDATION,
                    message=text,
                    display_message=text,
                    details={"validation_error": text},
                )
            )
            raise DriverError(text, recoverable=False) from err
        try:
            handle = driver.start(config)
        except Exception as err:
            text = f"failed to start task {task.name!r}: {err}"
            self.emit_event(
                TaskEvent(
                    EVENT_DRIVER_FAILURE,
                    message=text,
                    display_message=text,
                    details={"driver_error": text},
                )
            )
            raise
        self._publish(
            state=TASK_RUNNING,
            event=TaskEvent(EVENT_STARTED, message=MSG_STARTED, display_message=MSG_STARTED),
            handle=handle,
        )

    def _current_handle(self) -> TaskHandle | None:
        with self._state_lock.read():
            return self._handle

    def _driver_of(self, handle: TaskHandle) -> Driver:
        driver = self._drivers.get(handle.driver)
        if driver is None:
            raise DriverError(f"driver {handle.driver!r} is not available on this node")
        return driver

    @calls_out
    def _clear_handle(self) -> None:
        """Forget the driver task (destroying it in the driver) and record that."""
        handle = self._current_handle()
        if handle is None:
            return
        try:
            self._driver_of(handle).destroy(handle.task_id, force=True)
        except Exception as err:
            log.warning("task %s: destroying driver task %s failed: %s", self, handle.task_id, err)
        self._publish(handle=None, notify=False)
        # A restart asked for this instance after its exit was seen has nothing left
        # to restart: let its caller go (the policy decides what runs next).
        with self._state_lock.read():
            req = self._restart_req
        if req is not None and req.target == handle.task_id:
            self._take_request(req, None)

    # --- waiting on the task -------------------------------------------------------------

    @calls_out
    def _wait_task(self) -> tuple[_Stop | None, ExitResult | None]:
        """Wait for the task to exit, serving kill, restart and update requests."""
        handle = self._current_handle()
        assert handle is not None, "waiting on a task that has no handle"
        driver = self._driver_of(handle)
        task_id = handle.task_id
        while True:
            with self._state_lock.read():
                wake = self._wake
                req = self._restart_req
                update = self._update_pending
            if self._shutdown_token.cancelled():
                return _SHUTDOWN, None
            if self._kill_token.cancelled():
                result = self._handle_kill(driver, handle)
                self._tracker.set_killed()
                return None, result
            if req is not None:
                if not self._take_request(req, task_id):
                    continue
                self._soft_phase("pre_kill", handle=handle)
                result = self._kill_task(driver, handle)
                self._tracker.set_restart_triggered(req.failure)
                if self._kill_token.cancelled():
                    self._tracker.set_killed()
                return None, result
            if update:
                self._run_update_hooks()
                continue
            cancel = CancelToken.any_of(self._kill_token, self._shutdown_token, wake)
            try:
                result = driver.wait(task_id, cancel)
            except DriverError as err:
                log.warning("task %s: waiting on %s failed: %s", self, task_id, err)
                result = ExitResult(err=f"waiting on the task failed: {err}")
            finally:
                cancel.cancel("done")
            if result is None:
                continue
            with self._state_lock.read():
                req = self._restart_req
            if req is not None and self._take_request(req, task_id):
                self._tracker.set_restart_triggered(req.failure)
            return None, result

    @calls_out
    def _take_request(self, req: _RestartRequest, target: str | None) -> bool:
        """Consume `req` if it is for `target`; drop it (waking its waiter) otherwise."""
        with self._state_lock.write():
            if self._restart_req is not req:
                return False
            self._restart_req = None
        if req.target != target:
            req.done.cancel("stale restart request")
            return False
        self._consumed.append(req)
        return True

    def _complete_requests(self) -> None:
        consumed, self._consumed = self._consumed, []
        for req in consumed:
            req.done.cancel("restart handled")

    @calls_out
    def _handle_kill(self, driver: Driver, handle: TaskHandle) -> ExitResult | None:
        """Kill the running task for good: pre-kill hooks, shutdown delay, stop."""
        self._soft_phase("pre_kill", handle=handle)
        delay = self.task().shutdown_delay
        if delay > 0:
            if self.alloc().desired_transition.no_shutdown_delay:
                text = "Skipping shutdown_delay because the allocation asked to skip it"
                self.emit_event(
                    TaskEvent(EVENT_SKIPPING_SHUTDOWN_DELAY, message=text, display_message=text)
                )
            else:
                text = (
                    f"Waiting for shutdown_delay of {format_duration(delay)} "
                    "before killing the task."
                )
                self.update_state(
                    TASK_PENDING,
                    TaskEvent(EVENT_WAITING_SHUTDOWN_DELAY, message=text, display_message=text),
                )
                if self._sleep(delay, interrupt_on_kill=False, skip_delay=True) is _SHUTDOWN:
                    return None
        return self._kill_task(driver, handle)

    @calls_out
    def _kill_task(
        self, driver: Driver, handle: TaskHandle, cancel: CancelToken | None = None
    ) -> ExitResult | None:
        """Stop the task (its kill signal, then force after the kill timeout), retrying
        failed stops with backoff; its exit result, or None if it could not be had.
        Waiting gives up when `cancel` (by default the shutdown token) is cancelled."""
        cancel = cancel if cancel is not None else self._shutdown_token
        task = self.task()
        timeout = min(task.kill_timeout, self._max_kill_timeout)
        task_id = handle.task_id
        self._kill_error = ""
        error: Exception | None = None
        for attempt in range(KILL_RETRIES):
            try:
                driver.stop(task_id, timeout, task.kill_signal)
                error = None
                break
            except Exception as err:
                error = err
                log.warning("task %s: stopping %s failed: %s", self, task_id, err)
                if self._exited(driver, task_id):
                    error = None
                    break
                if attempt + 1 < KILL_RETRIES and cancel.wait(
                    _kill_backoff(attempt, self._kill_retry_base)
                ):
                    return None
        if error is not None:
            self._kill_error = str(error)
            return None
        try:
            return driver.wait(task_id, cancel)
        except DriverError as err:
            log.warning("task %s: collecting the exit of %s failed: %s", self, task_id, err)
            return None

    @staticmethod
    def _exited(driver: Driver, task_id: str) -> bool:
        """True if the task has exited, or the driver no longer knows it (another
        runner of the same task, e.g. after a restore, already stopped and forgot it)."""
        try:
            return driver.inspect(task_id).state == TASK_STATE_EXITED
        except DriverError:
            return True
        except Exception:
            return False

    @calls_out
    def _clean_up_leftover_handle(self) -> _Stop | None:
        """Kill a task still attached when the loop ended (a recovered task whose
        allocation became terminal while the agent was down)."""
        handle = self._current_handle()
        if handle is None:
            return None
        try:
            driver = self._driver_of(handle)
        except DriverError:
            self._clear_handle()
            return None
        result = self._kill_task(driver, handle)
        if self._shutdown_token.cancelled():
            return _SHUTDOWN
        if result is not None:
            self.emit_event(_terminated_event(result))
        if self._kill_token.cancelled():
            self.emit_event(self._killed_event())
        self._clear_handle()
        self._soft_phase("exited", result=result)
        return None

    # --- restart decision, delays, parking ------------------------------------------

    @calls_out
    def _decide_restart(self) -> tuple[bool, float]:
        with self._alloc_lock.read():
            alloc, task = self._alloc, self._task
        group = alloc.group()
        if alloc.job is not None and group is not None:
            self._tracker.set_policy(effective_restart_policy(alloc.job, group, task))
        state, delay, reason = self._tracker.get_state()
        if state == KILLED:
            self.emit_event(self._killed_event())
            return False, 0.0
        if state == NOT_RESTARTING:
            self.update_state(
                TASK_DEAD,
                TaskEvent(
                    EVENT_NOT_RESTARTING,
                    message=reason,
                    display_message=reason,
                    fails_task=True,
                    details={"restart_reason": reason},
                ),
            )
            return False, 0.0
        if state == TERMINATED:
            return False, 0.0
        if state == RESTARTING:
            text = f"Task restarting in {format_duration(delay)}"
            self.update_state(
                TASK_PENDING,
                TaskEvent(
                    EVENT_RESTARTING,
                    message=reason,
                    display_message=text,
                    details={"restart_delay": format_duration(delay), "restart_reason": reason},
                ),
            )
            return True, delay
        return True, delay

    def _killed_event(self) -> TaskEvent:
        if self._kill_error:
            text = f"Task killed with error: {self._kill_error}"
            return TaskEvent(
                EVENT_KILLED,
                message=text,
                display_message=text,
                details={"kill_error": self._kill_error},
            )
        return TaskEvent(EVENT_KILLED, message=MSG_KILLED, display_message=MSG_KILLED)

    @calls_out
    def _sleep(
        self, delay: float, *, interrupt_on_kill: bool, skip_delay: bool = False
    ) -> _Stop | None:
        """Wait `delay` seconds serving updates; _SHUTDOWN / _DONE if interrupted."""
        deadline = time.monotonic() + delay
        while True:
            with self._state_lock.read():
                wake = self._wake
                update = self._update_pending
            if self._shutdown_token.cancelled():
                return _SHUTDOWN
            if interrupt_on_kill and self._kill_token.cancelled():
                return _DONE
            if skip_delay and self.alloc().desired_transition.no_shutdown_delay:
                return None
            if update:
                self._run_update_hooks()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            tokens = [self._shutdown_token, wake]
            if interrupt_on_kill:
                tokens.append(self._kill_token)
            cancel = CancelToken.any_of(*tokens)
            try:
                cancel.wait(remaining)
            finally:
                cancel.cancel("done")

    @calls_out
    def _park(self) -> _Stop | None:
        """Dead, waiting to be killed or force-restarted (Nomad's ALLOC_RESTART).
        None when restarted (run the task again), else _DONE / _SHUTDOWN."""
        with self._state_lock.write():
            self._parked = True
        try:
            while True:
                with self._state_lock.read():
                    wake = self._wake
                    req = self._restart_req
                    update = self._update_pending
                if self._shutdown_token.cancelled():
                    return _SHUTDOWN
                if self._kill_token.cancelled():
                    return _DONE
                if req is not None:
                    if not self._take_request(req, None):
                        continue
                    self._tracker.set_restart_triggered(req.failure)
                    restart, delay = self._decide_restart()
                    self._complete_requests()
                    if not restart:
                        continue
                    return self._sleep(delay, interrupt_on_kill=True)
                if update:
                    self._run_update_hooks()
                    continue
                cancel = CancelToken.any_of(self._kill_token, self._shutdown_token, wake)
                try:
                    cancel.wait()
                finally:
                    cancel.cancel("done")
        finally:
            with self._state_lock.write():
                self._parked = False

    # --- hooks other than prestart -----------------------------------------------------

    @calls_out
    def _soft_phase(self, phase: str, **fields: Any) -> None:
        """Run a phase whose failures are reported (event + log), never fatal."""
        if phase not in self._phases:
            return
        cancel = self._kill_token if phase != "shutdown" else CancelToken()
        if "handle" not in fields:
            fields["handle"] = self._current_handle()
        req = self._request(cancel, env=self._env, **fields)
        try:
            run_phase(self._hooks, phase, lambda _hook, method: method(req), policy=COLLECT_ALL)
        except HookErrors as group:
            for err in group.exceptions:
                log.warning("task %s: %s", self, err)
                if isinstance(err, HookError):
                    self.emit_event(self._hook_error_event(err))

    @calls_out
    def _run_update_hooks(self) -> None:
        with self._state_lock.write():
            self._update_pending = False
        if self.alloc().terminal():
            return
        self._soft_phase("update")

    # --- requests from other threads ---------------------------------------------------

    @requires("_state_lock", write=True)
    def _kick_locked(self) -> None:
        """Wake the run thread (notify-only)."""
        old = self._wake
        self._wake = CancelToken()
        old.cancel("kick")

    @calls_out
    def kill(self, event: TaskEvent | None = None, timeout: float | None = None) -> bool:
        """Kill the task for good and wait (up to `timeout`) for `run()` to return.

        `event` (e.g. Killing) is recorded first. The run thread does the killing; a
        runner killed before `run()` started never starts. True if `run()` finished.
        """
        if event is not None:
            self.emit_event(event)
        self._cancel_kill("killed")
        if self._on_run_thread():
            return False  # a hook killing its own task: the run loop acts once it returns
        finished = self._finished.wait(timeout)
        if finished and self._shutdown_token.cancelled():
            self._stop_left_running()
        return finished

    @calls_out
    def _stop_left_running(self) -> None:
        """A kill after shutdown(): the run thread is gone and left the task running,
        so the caller's thread stops it (once, however many callers race here)."""
        with self._state_lock.write():
            handle = self._handle
            claim = handle is not None and not self._reaping
            if claim:
                self._reaping = True
        if handle is None or not claim:
            return
        result = self._kill_task(self._driver_of(handle), handle, cancel=CancelToken())
        if result is not None:
            self.emit_event(_terminated_event(result))
        self.emit_event(self._killed_event())
        self._clear_handle()
        self.update_state(TASK_DEAD)
        self._update_local(lambda local: local.with_run_complete(True))

    def _on_run_thread(self) -> bool:
        with self._state_lock.read():
            return self._run_thread == threading.get_ident()

    @calls_out
    def _cancel_kill(self, reason: str) -> None:
        with self._state_lock.write():
            preempt = not self._run_called and not self._preempted
            if preempt:
                self._preempted = True
        self._kill_token.cancel(reason)
        if preempt:
            self._finish_unstarted()

    @calls_out
    def _finish_unstarted(self) -> None:
        """Killed before `run()`: kill a recovered task if any, then go dead for good."""
        handle = self._current_handle()
        try:
            if handle is not None:
                driver = self._driver_of(handle)
                result = self._kill_task(driver, handle)
                if result is not None:
                    self.emit_event(_terminated_event(result))
                self.emit_event(self._killed_event())
                self._clear_handle()
            self.update_state(TASK_DEAD)
            self._update_local(lambda local: local.with_run_complete(True))
        finally:
            self._finished.cancel("killed before run")

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
        self._cancel_kill("setup failed")

    @calls_out
    def restart(self, event: TaskEvent, failure: bool = False) -> None:
        """Restart the running task: record `event`, stop it and let the restart policy
        start it again (at once, uncounted, unless `failure`). Waits until the old
        instance has stopped. TaskNotRunningError unless the task is running."""
        self._request_restart(event, failure, force=False)

    @calls_out
    def force_restart(self, event: TaskEvent, failure: bool = False) -> None:
        """Like `restart`, but also restarts a dead task whose `run()` is still going
        (parked). TaskNotRunningError for a pending task or once `run()` completed."""
        self._request_restart(event, failure, force=True)

    @calls_out
    def _request_restart(self, event: TaskEvent, failure: bool, force: bool) -> None:
        with self._state_lock.write():
            state = self._state
            handle = self._handle
            if self._finished.cancelled() or self._preempted:
                raise TaskNotRunningError(f"task {self._name!r} is not running (run complete)")
            if state.state == TASK_RUNNING and handle is not None:
                target: str | None = handle.task_id
            elif force and state.state == TASK_DEAD and not self._local.run_complete:
                target = None
            else:
                raise TaskNotRunningError(f"task {self._name!r} is not running ({state.state})")
            req = self._restart_req
            if req is None or req.target != target:
                if req is not None:
                    req.done.cancel("superseded")
                req = _RestartRequest(target, failure, CancelToken())
            elif failure and not req.failure:
                req = attrs.evolve(req, failure=True)
            self._restart_req = req
            self._apply_locked(None, event)
            self._kick_locked()
            versions = (self._state_version, self._local_version)
        self._persist(versions)
        self._on_state_change()
        if self._on_run_thread():
            return  # asked by a hook: the run loop acts on it once the hook returns
        waiter = CancelToken.any_of(req.done, self._finished)
        try:
            waiter.wait()
        finally:
            waiter.cancel("done")

    @calls_out
    def signal(self, event: TaskEvent, sig: str) -> None:
        """Record `event` and deliver `sig` to the running task. TaskNotRunningError
        without a task; driver errors (e.g. an unknown signal) propagate."""
        handle = self._current_handle()
        if handle is None:
            raise TaskNotRunningError(f"task {self._name!r} is not running")
        self.emit_event(event)
        try:
            self._driver_of(handle).signal(handle.task_id, sig)
        except DriverError as err:
            current = self._current_handle()
            if current is None or current.task_id != handle.task_id:
                raise TaskNotRunningError(
                    f"task {self._name!r} stopped before it could be signalled"
                ) from err
            raise

    @calls_out
    def latest_stats(self) -> dict[str, float] | None:
        """Resource usage of the running task, or None when there is none."""
        handle = self._current_handle()
        if handle is None:
            return None
        try:
            return dict(self._driver_of(handle).stats(handle.task_id))
        except Exception:
            return None

    def update(self, alloc: Allocation) -> None:
        """Take a new version of the allocation; never blocks.

        Update hooks then run on the run thread, unless the allocation is terminal. A
        task missing from the new allocation is killed with a failing Killed event.
        """
        if alloc.id != self._alloc_id:
            raise ValueError(f"update for allocation {alloc.id} sent to {self._alloc_id}")
        group = alloc.group()
        task = group.task(self._name) if group is not None else None
        if task is None:
            text = "update missing task"
            self.emit_event(
                TaskEvent(
                    EVENT_KILLED,
                    message=text,
                    display_message=f"Task killed: {text}",
                    fails_task=True,
                    details={"kill_reason": text},
                )
            )
            self._cancel_kill(text)
            return
        with self._alloc_lock.write():
            self._alloc = alloc
            self._task = task
        if alloc.terminal():
            return
        with self._state_lock.write():
            self._update_pending = True
            self._kick_locked()

    @calls_out
    def shutdown(self, timeout: float | None = None) -> bool:
        """Graceful agent shutdown: `run()` returns leaving the task running; then the
        shutdown hooks run and the local state is saved. True if `run()` returned."""
        with self._state_lock.write():
            preempt = not self._run_called and not self._preempted
            if preempt:
                self._preempted = True
        self._shutdown_token.cancel("shutdown")
        if preempt:
            self._finished.cancel("shut down before run")
        if not self._finished.wait(timeout):
            return False
        with self._state_lock.write():
            first = not self._shutdown_hooks_ran
            self._shutdown_hooks_ran = True
        if first:
            self._soft_phase("shutdown")
            self._persist_now()
        return True
