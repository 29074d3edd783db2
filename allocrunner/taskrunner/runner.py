"""TaskRunner: runs one task of an allocation through its driver, from pending to dead.

This module holds the public facade; the parts it builds and wires live beside it:

- `state.TaskStateCell`: the published TaskState / LocalState and their persistence;
- `lifecycle`: `TaskControl` (start, kill, restart, signal of the driver task) and
  `TaskMailbox` (the requests other threads leave for the run thread, and the phase
  of `run()`);
- `hook_phases.TaskHookPhases`: the task hooks, bound to their phases once, and what
  each phase is told and what its failures mean;
- `run_loop.TaskRunLoop`: the run loop itself (start, wait, restart, park), with the
  state only the run thread touches.

Threads. `run()` is called on exactly one thread (the AllocRunner's
``task-<id8>-<name>``), or is split between two by `start_first` (the task's first
start, on a thread that starts many) and `continue_run` (the rest, on the thread that
then owns the run; the first hands its confined state over before the second begins);
the run thread alone starts, stops, waits on and destroys the driver task while it
runs, owns the RestartTracker and runs every hook phase but shutdown, so hooks are
serialised. Every other method is safe from any thread and never blocks on the task,
except as documented: `kill`, `restart` and `force_restart` ask the run thread and
wait for it to act; `update` stores the allocation and wakes the run thread, which
runs the update hooks; `shutdown` makes the run thread return and leave the task
running, then runs the shutdown hooks on the caller's thread; `signal` and
`latest_stats` call the thread-safe driver directly.

Locks: ``TaskRunner._alloc_lock`` (a mutex: each hold reads or swaps two fields) guards
the allocation and the task definition;
the cell and the mailbox each have their own (see their modules). None is held while
calling a hook, a driver, the state DB or a callback, and none is held with another.
Owner: an AllocRunner creates one TaskRunner per task and runs it on its own thread.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from allocrunner._locking import calls_out, guarded, hand_over, immutable, make_lock
from allocrunner._sync import CancelToken, Event
from allocrunner.allocdir import AllocDir, TaskDir
from allocrunner.drivers.base import Driver
from allocrunner.errors import AllocRunnerError, UnknownTaskError
from allocrunner.state import LocalState, StateDB
from allocrunner.structs import Allocation, Task, TaskEvent, TaskState, effective_restart_policy
from allocrunner.structs.status import TASK_DEAD, TASK_PENDING, TASK_RUNNING
from allocrunner.structs.task_state import (
    EVENT_KILLED,
    EVENT_RECEIVED,
    EVENT_RESTORE_FAILED,
    EVENT_SETUP_FAILURE,
)
from allocrunner.taskrunner.hook_phases import TaskHookPhases
from allocrunner.taskrunner.hooks import TaskHook, default_hooks
from allocrunner.taskrunner.lifecycle import (
    KILL_BACKOFF_LIMIT,
    KILL_RETRIES,
    MSG_KILLED,
    MSG_STARTED,
    RunPhase,
    TaskControl,
    TaskMailbox,
)
from allocrunner.taskrunner.restarts import RestartTracker
from allocrunner.taskrunner.run_loop import StartGate, TaskRunLoop
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


def _nothing() -> None:
    """A wait that is over at once."""


class TaskRunner:
    """Thread-safe. Runs one task of an allocation; `run()` is called on exactly one
    thread, owned by the AllocRunner. See the module docstring for the contract.

    `node_vars` are the node's interpolation variables (`ClientConfig.task_node_vars`:
    ``node.unique.id``, ``attr.<key>``, ``meta.<key>``, …), fixed for the runner's life;
    the task's config may reference them, its environment never holds them."""

    _alloc_id = immutable()
    _name = immutable()
    _task_dir = immutable()
    _hooks = immutable()
    _kill_token = immutable()
    _shutdown_token = immutable()
    _finished = immutable()
    _shutdown_hooks_ran = immutable()
    _cell = immutable()
    _mailbox = immutable()
    _control = immutable()
    _loop = immutable()

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
        artifact_allow_local: bool = False,
        node_vars: Mapping[str, str] | None = None,
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
        self._task_dir: TaskDir = alloc_dir.new_task_dir(task_name)
        self._kill_token = CancelToken()
        self._shutdown_token = CancelToken()
        self._finished = Event()  # run() returned, or never will
        self._shutdown_hooks_ran = Event()

        self._alloc_lock = make_lock("TaskRunner._alloc_lock")
        self._alloc = alloc
        self._task = task

        initial = alloc.task_states.get(task_name) or TaskState()
        received = TaskEvent(EVENT_RECEIVED, message=MSG_RECEIVED, display_message=MSG_RECEIVED)
        self._cell = TaskStateCell(
            alloc.id, task_name, state_db, initial.with_event(received), on_state_change
        )
        self._mailbox = TaskMailbox(task_name)
        current = self._current  # bound once: the hooks and the loop share it
        self._hooks = TaskHookPhases(
            repr(self),
            (
                *default_hooks(self, artifact_allow_local=artifact_allow_local, task=task),
                *extra_hooks,
            ),
            cell=self._cell,
            current=current,
            alloc_dir=alloc_dir,
            task_dir=self._task_dir,
            datacenter=datacenter,
            kill_token=self._kill_token,
            shutdown_token=self._shutdown_token,
            node_vars=node_vars,
        )
        self._control = TaskControl(
            alloc.id,
            task_name,
            drivers=drivers,
            cell=self._cell,
            mailbox=self._mailbox,
            current=current,
            kill_token=self._kill_token,
            shutdown_token=self._shutdown_token,
            finished=self._finished,
            max_kill_timeout=float(max_kill_timeout),
            kill_retry_base=float(kill_retry_base),
        )
        tracker = RestartTracker(
            effective_restart_policy(alloc.job, group, task),
            alloc.job.type,
            task.lifecycle,
            clock=clock,
        )
        self._loop = TaskRunLoop(
            repr(self),
            tracker,
            cell=self._cell,
            mailbox=self._mailbox,
            control=self._control,
            hooks=self._hooks,
            current=current,
            start_gate=start_gate,
            kill_token=self._kill_token,
            shutdown_token=self._shutdown_token,
        )

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
        with self._alloc_lock:
            return self._alloc

    def task(self) -> Task:
        """The current task definition (from the latest allocation)."""
        with self._alloc_lock:
            return self._task

    def _current(self) -> tuple[Allocation, Task]:
        """The latest allocation and its definition of the task, read together."""
        with self._alloc_lock:
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
    def emit_kill_reason(self, event: TaskEvent) -> bool:
        """Record why the task is about to be killed (a sibling rule's event) and notify,
        unless it is already dead or killed: a reason seen in an older state must not
        land after the task's last event. True if recorded."""
        return self._control.note_kill_reason(event)

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
    def request_restart(
        self, event: TaskEvent, failure: bool = False, *, force: bool = False
    ) -> Callable[[], object]:
        """`restart` (or, with `force`, `force_restart`) without the wait: the request is
        left for the run thread and what is returned waits until it acted. Lets one
        thread restart several tasks at once."""
        done = self._control.post_restart(event, failure, force)
        return _nothing if done is None else done.wait

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
        with self._alloc_lock:
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

    @calls_out
    def request_shutdown(self) -> Callable[[], bool]:
        """`shutdown` without the wait: `run()` is told to return, and what is returned
        waits for it and runs the shutdown hooks. Lets one thread shut several tasks
        down at once."""
        self.shutdown(timeout=0)
        return self.shutdown

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
        self._run_opened(self._mailbox.open())

    def starts_at_once(self) -> bool:
        """True if the task's start never waits but for its driver's start, and that
        start does not wait either: no artifact to fetch, no template to render, and a
        driver that says so (`TaskControl.starts_at_once`)."""
        task = self.task()
        if task.artifacts or task.templates:
            return False
        return self._control.starts_at_once(task)

    @calls_out
    def start_first(self) -> None:
        """Begin `run()` on this thread and make the task's first start here (the
        prestart hooks, the driver start, the poststart hooks), unless its start gate
        is closed (`TaskRunLoop.start_first`); `continue_run()` must follow, on the
        thread that is to wait on the task. For a caller that starts many tasks on a
        few threads, each start made by a thread that has just made another; `run()`
        on one thread does the same as the two.

        The start's driver handle is queued for the state DB without waiting for its
        commit (`TaskStateCell.defer_commit`): the caller reports the task running only
        after `settle_start`."""
        if self._mailbox.open():
            self._cell.defer_commit()
            self._loop.start_first()
        self._hooks.hand_over(self._loop)

    @calls_out
    def settle_start(self) -> None:
        """Return once what `start_first` stored is committed (with whatever else is
        queued): before the start is reported running. Idempotent."""
        self._cell.settle_commit()

    @calls_out
    def continue_run(self) -> None:
        """The rest of `run()` after `start_first`, on the thread that runs the task
        from now on."""
        self._run_opened(self._mailbox.adopt())

    @calls_out
    def _run_opened(self, opened: bool) -> None:
        """`run()` once the mailbox was opened (or adopted) on this thread, the run
        thread; not `opened`, the runner was preempted."""
        if not opened:
            self._finished.wait()  # preempted: the killing thread finishes the runner
            return
        try:
            self._loop.run()
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
            self._loop.complete_requests()
            hand_over(self._hooks)  # the shutdown hooks run on the caller of shutdown()
            self._finished.set()
