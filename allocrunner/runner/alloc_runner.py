"""AllocRunner: runs one allocation (a task group) on this node.

The static allocation the server sent (`alloc()`) is kept apart from the dynamic
runtime state (`alloc_state()`). The runtime state is an immutable `AllocState`
snapshot: one writer (the state-handler thread) builds a new one from the task
runners' states (`client_state.compute_state`) and publishes it under the write side
of `_state_lock`; readers take the current snapshot under the read side and can never
see it change. The runner composes its parts and runs the allocation's lifecycle
(run, update, restart, signal, destroy, shutdown); the parts live in their modules:
the task runners and what is done to all of them at once (sibling rules, kill order,
per-task actions) in a `TaskSet` (`task_set`); the state handler, where task states,
updates and health verdicts fan in, in `state_handler`; the published state in a
`ClientState` (`client_state`); state DB writes fenced against destroy in an
`AllocPersister` (`persistence`); what a restore makes of a crash in `recovery`; the
alloc hooks, sorted by phase once at construction, in an `AllocHooks` (`hooks`). What
is left here is one concern, the orchestration of one allocation's lifecycle (its run
split between two threads by `launch` included), so it stays one module although it
runs past 600 lines.

Threads of a running allocation (named, owned by `_threads`, joined on teardown):

- ``alloc-<id8>``: `run()` (or the caller's thread): prerun hooks, then it runs the
  first task runner itself and waits for the others, then postrun hooks. Started by
  `launch` instead, a fresh single-task allocation whose start never waits has that
  thread's work up to waiting on its task done by the launching thread (a Client's
  builder, which starts hundreds in a row): the thread is started after it, and
  takes the run up from there (`TaskRunner.start_first`, `continue_run`).
- none for the state handler (`StateHandler`): its passes run on the process's
  state-pass service (`state_passes`, a few ``alloc-state-pool-<n>`` threads shared
  by every allocation). Task runners kick it after every state change; each pass
  applies the pending alloc update, the sibling rules, drives the lifecycle
  coordinator and publishes the state. It makes one last pass after the tasks exit,
  so listeners always see the terminal state. A fresh run (`_starts_fresh`) leaves
  the first pass to the kick of its first task event, which comes within its start,
  and opens the lifecycle gates on this thread instead: a first pass at once would
  only publish the state the runner was built with, and it was a third of the state
  passes a start makes (with their hand-offs between threads). A launched start holds
  the handler's passes until it is made (`PassKick.hold`) and its driver handle is
  committed (`TaskRunner.settle_start`), and so makes one, on the launching thread
  (`PassKick.release`). A launching thread that begins several launches before it
  finishes them (`begin_launch`, `finish_launch`) waits once for all their
  handles.
- ``task-<id8>-<name>``: one per task runner but the first.
- none for the health watcher of a service or system job (`HealthHook`): it steps on
  the process's one ``health-watches`` thread (`health_watches`).
- transient: ``destroy-<id8>`` and ``shutdown-<id8>``.

No thread is started to stop or kill tasks, nor for a timer: a stop update, a sibling
rule, a destroy or the group's max_run_duration (`max_run_duration_hook`, a deadline
the state handler waits on, kept for batch and sysbatch jobs only) asks the state
handler, whose passes run the pre-kill hooks once and ask each task's run thread, wave
by wave, to kill its task (`task_set.KillSequence`); only the tasks no run thread
watches (a destroy before `run()`, or after a shutdown) are killed on the destroy
thread. The group's shutdown_delay (`shutdown_delay_hook`) holds that kill on the
state handler, which keeps publishing meanwhile. Restarting or shutting down every
task posts each request first and then waits for each, on the caller's thread.

Locks (ranks in LOCK_ORDER), all created here: ``_destroyed_lock`` guards the
destroy/shutdown/run flags, and is lent to the `AllocPersister` (`persistence`) for
its destroyed flag and count of state DB writes in flight; ``_state_lock`` (RW) is
lent to the `ClientState` (`client_state`), where it guards the published state and
what it is computed from (forced client status, deployment status, the acknowledged
state); ``_alloc_lock`` (RW) guards the server allocation. None is held while calling
a hook, a task runner, the state DB or a callback, and none is held while taking
another.

Owner: the embedder (a `Client`, a test) builds it and calls its public methods from
any thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import NamedTuple

from allocrunner._checkpoints import checkpoint
from allocrunner._hooks import NamedHook
from allocrunner._locking import (
    calls_out,
    guarded,
    immutable,
    make_lock,
    make_rwlock,
    thread_safe,
)
from allocrunner._sync import CancelToken, Event, Kick, ThreadGroup
from allocrunner.allocdir import AllocDir
from allocrunner.allocwatcher import (
    NOOP_PREV_ALLOC,
    NoopPrevAlloc,
    PrevAllocMigrator,
    PrevAllocWatcher,
)
from allocrunner.broadcaster import AllocBroadcaster, AllocListener
from allocrunner.config import ClientConfig
from allocrunner.drivers import default_drivers
from allocrunner.drivers.base import Driver
from allocrunner.errors import AllocRunnerError, HookErrors
from allocrunner.runner.client_state import (
    UPDATE_NONE,
    UPDATE_TYPICAL,
    UPDATE_URGENT,
    ClientState,
    client_view,
)
from allocrunner.runner.health import HealthHook
from allocrunner.runner.hooks import (
    AllocDirHook,
    AllocHooks,
    DiskMigrationHook,
    UpstreamAllocsHook,
)
from allocrunner.runner.lifecycle import TaskCoordinator
from allocrunner.runner.max_run_duration_hook import DESCRIPTION as RUN_DEADLINE_PASSED
from allocrunner.runner.max_run_duration_hook import MaxRunDurationHook, may_have_deadline
from allocrunner.runner.persistence import AllocPersister
from allocrunner.runner.recovery import prepare_restore
from allocrunner.runner.shutdown_delay_hook import GroupShutdownDelayHook
from allocrunner.runner.state_handler import (
    StateHandler,
    StateUpdater,
    never_due,
    nothing_due,
)
from allocrunner.runner.state_passes import PassKick
from allocrunner.runner.task_set import TaskSet, task_group_of
from allocrunner.state import NoopDB, StateDB
from allocrunner.structs import (
    EVENT_SIGNALING,
    TASK_PENDING,
    Allocation,
    AllocState,
    TaskEvent,
)
from allocrunner.structs.frozen import shallow_frozen
from allocrunner.structs.status import CLIENT_TERMINAL
from allocrunner.taskrunner import TaskRunner

__all__ = [
    "JOIN_TIMEOUT",
    "UPDATE_NONE",
    "UPDATE_TYPICAL",
    "UPDATE_URGENT",
    "AllocRunner",
    "PendingLaunch",
    "StateUpdater",
]

log = logging.getLogger("allocrunner.runner")

JOIN_TIMEOUT = 30.0


def _id8(alloc_id: str) -> str:
    return alloc_id[:8]


class _Launched(NamedTuple):
    """Immutable. What `AllocRunner.launch` made of the start, for the allocation's
    thread: the task runner it began (None: none was, as the agent shuts down), or the
    error the start raised; and whether the state handler's passes are held until
    `finish_launch` releases them."""

    first: TaskRunner | None
    error: BaseException | None = None
    held: bool = False


class PendingLaunch(NamedTuple):
    """Immutable. What `AllocRunner.begin_launch` left for `finish_launch`: whether the
    run starts afresh, and what the launching thread made of the start (None: it made
    none, and the allocation's thread makes the whole run)."""

    fresh: bool
    launched: _Launched | None


@thread_safe
class _HandlerCalls:
    """Thread-safe. What the state handler calls back on its runner (`RunnerCalls`):
    one object per allocation instead of four bound methods. It keeps only the runner,
    never rebound, and calls what the handler's workers may call."""

    __slots__ = ("_runner",)

    def __init__(self, runner: AllocRunner) -> None:
        self._runner = runner

    def current_alloc(self) -> Allocation:
        return self._runner.alloc()

    def apply_update(self, alloc: Allocation) -> None:
        self._runner._apply_update(alloc)

    def pre_kill(self) -> None:
        self._runner._pre_kill_phase()

    def kill_hold(self) -> float | None:
        return self._runner._shutdown_delay.hold_until()


class AllocRunner:
    """Thread-safe. Runs the task group of one allocation through its whole lifecycle.

    `run()` may be called once (or `start()` to run it on an owned thread). `update`,
    `destroy` and `shutdown` never block; `alloc()` and `alloc_state()` take only read
    locks and return immutable values.
    """

    # _alloc_lock guards: _alloc
    _alloc_lock = immutable()
    _alloc = guarded("_alloc_lock")
    # _state_lock: lent to _client_state, which guards its fields with it
    _state_lock = immutable()
    _client_state = immutable()
    # _destroyed_lock guards: _run_started, _destroy_launched, _shutdown_launched
    # (and is lent to _persister)
    _destroyed_lock = immutable()
    _run_started = guarded("_destroyed_lock")
    _destroy_launched = guarded("_destroyed_lock")
    _shutdown_launched = guarded("_destroyed_lock")
    _persister = immutable()

    _id = immutable()
    _config = immutable()
    _state_db = immutable()
    _prev_watcher = immutable()
    _prev_migrator = immutable()
    _drivers = immutable()
    _owned_drivers = immutable()
    _alloc_dir = immutable()
    _tasks = immutable()
    _coordinator = immutable()
    _broadcaster = immutable()
    _hooks = immutable()
    _run_deadline = immutable()
    _shutdown_delay = immutable()
    _threads = immutable()
    _state_kick = immutable()
    _handler = immutable()
    _tasks_exited = immutable()
    _prerun_cancel = immutable()
    _run_done = immutable()
    _destroyed_event = immutable()
    _shutdown_event = immutable()
    _finish_destroy = immutable()  # set by restore(): run() destroys instead

    def __init__(
        self,
        alloc: Allocation,
        config: ClientConfig,
        *,
        state_db: StateDB | None = None,
        state_updater: StateUpdater | None = None,
        prev_watcher: PrevAllocWatcher | None = None,
        prev_migrator: PrevAllocMigrator | None = None,
        drivers: Mapping[str, Driver] | None = None,
    ) -> None:
        group = task_group_of(alloc)
        self._id = alloc.id
        self._config = config
        self._state_db: StateDB = state_db if state_db is not None else NoopDB()
        self._prev_watcher: PrevAllocWatcher = (
            prev_watcher if prev_watcher is not None else NOOP_PREV_ALLOC
        )
        self._prev_migrator: PrevAllocMigrator = (
            prev_migrator if prev_migrator is not None else NOOP_PREV_ALLOC
        )
        # Drivers built here are owned (and closed on destroy or shutdown) by this runner;
        # drivers passed in belong to the caller, who shares them between runners.
        owned = default_drivers(str(config.raw_exec_state_dir())) if drivers is None else {}
        self._owned_drivers: tuple[Driver, ...] = tuple(owned.values())
        # A Client's runners share its map (a FrozenDict already) instead of a copy each.
        given = drivers if drivers is not None else owned
        self._drivers: Mapping[str, Driver] = shallow_frozen(given)
        self._alloc_dir = AllocDir(config.alloc_dir, alloc.id)

        self._alloc_lock = make_rwlock("AllocRunner._alloc_lock")
        self._alloc = alloc
        self._state_lock = make_rwlock("AllocRunner._state_lock")
        self._destroyed_lock = make_lock("AllocRunner._destroyed_lock")
        self._run_started = False
        self._destroy_launched = False
        self._shutdown_launched = False
        self._persister = AllocPersister(alloc.id, self._state_db, lock=self._destroyed_lock)

        self._threads = ThreadGroup(f"alloc-{_id8(alloc.id)}")
        self._state_kick = PassKick(label=alloc.id)
        self._tasks_exited = Kick()
        self._prerun_cancel = CancelToken()
        self._run_done = Event()
        self._destroyed_event = Event()
        self._shutdown_event = Event()
        self._finish_destroy = Event()
        self._broadcaster = AllocBroadcaster()
        self._coordinator = TaskCoordinator(group.tasks)
        self._tasks = TaskSet(
            alloc.id,
            [self._new_task_runner(alloc, task.name) for task in group.tasks],
            max_kill_timeout=config.max_kill_timeout,
        )
        self._client_state = ClientState(self._state_lock, alloc, self._tasks.states())
        # Only a batch or sysbatch job can have a max_run_duration (and a job's type
        # never changes): any other allocation keeps no deadline, and no hook for it.
        self._run_deadline: MaxRunDurationHook | None = (
            MaxRunDurationHook(
                alloc,
                state_db=self._state_db,
                persister=self._persister,
                on_exceeded=self._on_run_deadline,
                kick=self._state_kick,
            )
            if may_have_deadline(alloc)
            else None
        )
        deadline = self._run_deadline
        self._shutdown_delay = GroupShutdownDelayHook(self.alloc, kick=self._state_kick)
        self._handler = StateHandler(
            alloc.id,
            kick=self._state_kick,
            client_state=self._client_state,
            tasks=self._tasks,
            coordinator=self._coordinator,
            broadcaster=self._broadcaster,
            state_updater=state_updater,
            persister=self._persister,
            runner=_HandlerCalls(self),
            wake_at=deadline.due if deadline is not None else never_due,
            fire_due=deadline.fire if deadline is not None else nothing_due,
        )
        health = HealthHook(
            alloc,
            listen=self.listen,
            health=self._handler,
        )
        hooks: list[NamedHook] = []
        if deadline is not None:
            hooks.append(deadline)  # first: the deadline runs while the prerun waits
        hooks.append(AllocDirHook(self._alloc_dir))
        # Nothing to wait for or migrate (most allocations): no hook for either.
        if not isinstance(self._prev_watcher, NoopPrevAlloc):
            hooks.append(UpstreamAllocsHook(self._prev_watcher))
        if not isinstance(self._prev_migrator, NoopPrevAlloc):
            hooks.append(DiskMigrationHook(self._prev_migrator, self._alloc_dir))
        hooks += (health, self._shutdown_delay)
        self._hooks = AllocHooks.of(hooks)

    def _new_task_runner(self, alloc: Allocation, name: str) -> TaskRunner:
        return TaskRunner(
            alloc,
            name,
            alloc_dir=self._alloc_dir,
            drivers=self._drivers,
            state_db=self._state_db,
            on_state_change=self._state_kick,
            start_gate=self._coordinator.gate(name),
            max_kill_timeout=self._config.max_kill_timeout,
            kill_retry_base=self._config.kill_retry_base,
            node_vars=self._config.task_node_vars(),
            artifact_allow_local=self._config.artifact_allow_local,
        )

    # --- identity and views -----------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def alloc_dir(self) -> AllocDir:
        """The allocation's directory (built by `run()`)."""
        return self._alloc_dir

    def alloc(self) -> Allocation:
        """The allocation as the server last sent it (static; no client fields updated)."""
        with self._alloc_lock.read():
            return self._alloc

    def alloc_state(self) -> AllocState:
        """The current runtime state: an immutable snapshot; takes only a read lock."""
        return self._client_state.current()

    def client_alloc(self) -> Allocation:
        """The allocation with its client fields (status, task states, health) filled."""
        return client_view(self.alloc(), self.alloc_state())

    def listen(self) -> AllocListener:
        """A latest-only listener on the client view of this allocation."""
        return self._broadcaster.listen()

    def task_runner(self, name: str) -> TaskRunner:
        """The task runner of task `name`; UnknownTaskError if there is none."""
        return self._tasks.runner(name)

    def task_names(self) -> list[str]:
        return self._tasks.names()

    def is_waiting(self) -> bool:
        """True while waiting for the previous allocation to finish."""
        return self._prev_watcher.is_waiting()

    def is_migrating(self) -> bool:
        """True while moving the previous allocation's data in."""
        return self._prev_migrator.is_migrating()

    def latest_stats(self) -> dict[str, dict[str, float]]:
        """Resource usage of each running task, by task name."""
        return self._tasks.latest_stats()

    # --- restore ----------------------------------------------------------------------

    @calls_out
    def restore(self) -> None:
        """Load the persisted state of every task before `run()` (agent restart). A crash
        never fails the allocation (`recovery`): an interrupted destroy is finished by
        `run()`, and a missing alloc dir is built again when no task had started."""
        interrupted = prepare_restore(
            self._state_db, self._id, self._alloc_dir, self._tasks.names()
        )
        status = self._state_db.deployment_status(self._id)
        if self._run_deadline is not None and self._run_deadline.restore():
            self._client_state.set_timed_out(RUN_DEADLINE_PASSED)
        for tr in self._tasks:
            tr.restore()  # re-attached, so that a destroy can stop them
        states = self._tasks.states()
        self._coordinator.restore(states)
        self._client_state.restore(self.alloc(), states, status)
        if interrupted:
            self._finish_destroy.set()

    # --- run --------------------------------------------------------------------------

    def start(self) -> None:
        """Run the allocation on an owned thread named ``alloc-<id8>``."""
        self._threads.spawn(f"alloc-{_id8(self._id)}", self.run)

    @calls_out
    def launch(self) -> None:
        """`start()` for a caller that starts allocations by the hundred on a few
        threads (the Client's builders). An allocation that starts afresh with one task
        whose start never waits (`TaskRunner.starts_at_once`) makes that start here,
        on the calling thread: the state DB write, the prerun hooks, the task's
        prestart hooks, driver start and poststart hooks, and the state pass that
        reports them once the task's driver handle is committed; only then is its
        ``alloc-<id8>`` thread started, to wait on the task and go on from there. So a
        thousand starts are made by a few threads, each warm from the last, instead of
        a thousand new ones. Any other allocation starts as `start()` does.

        `begin_launch` and `finish_launch` are its two halves, for a caller that
        begins several launches before it finishes them: their driver handles are then
        committed together, in one transaction, instead of one each.

        Returns once that thread is started. If it cannot be (no thread can be
        started), the task is killed and the run is ended on this thread, and the
        error is raised: nothing is left running that no thread watches."""
        pending = self.begin_launch()
        if pending is not None:
            self.finish_launch(pending)

    @calls_out
    def begin_launch(self) -> PendingLaunch | None:
        """The first half of `launch`: the start, its task's driver handle queued for
        the state DB but not waited for. What is left for `finish_launch`, or None
        when nothing is (the allocation started as by `start()`, or is not to run).
        Until `finish_launch`, the allocation reports nothing and acts on no request
        (its state passes are held): the caller finishes it on this thread soon after,
        having begun at most a few others meanwhile."""
        first = self._tasks.first()
        if len(self._tasks) != 1 or not first.starts_at_once():
            self.start()
            return None
        fresh = self._begin_run()
        if fresh is None:
            return None
        # Not fresh (restored, after a previous allocation, or terminal): the whole run
        # is made on its thread, as by `start()`.
        return PendingLaunch(fresh, self._launch_first(first) if fresh else None)

    @calls_out
    def finish_launch(self, pending: PendingLaunch) -> None:
        """The second half of `launch`, on the thread that began it: wait for the
        commit of what the start stored (after the first of several, the others find
        theirs committed), make the one state pass that reports the start, and start
        the ``alloc-<id8>`` thread. Raises as `launch` does."""
        fresh, launched = pending
        if launched is not None:
            self._settle_launch(launched)
        try:
            self._threads.spawn(f"alloc-{_id8(self._id)}", self._finish_run, fresh, launched)
        except BaseException:
            self._prerun_cancel.cancel("no thread for the allocation")
            self._handler.request_kill("the allocation's thread could not be started")
            self._finish_run(fresh, launched)
            raise

    @calls_out
    def _launch_first(self, first: TaskRunner) -> _Launched:
        """What a fresh `run()` does up to waiting on its one task, for `launch`: what
        came of it, for the thread that goes on (`_run`). Never raises: an error is
        kept for that thread to raise, as `run()` would have.

        The state handler's passes are held meanwhile (`PassKick.hold`): nothing here
        waits, and the task's events and states come in several steps, each of which
        would otherwise wake a pool worker for a pass the next step makes stale. They
        stay held until `finish_launch` has the driver handle committed
        (`_settle_launch`); its one pass then reports them all."""
        held = self._state_kick.hold()
        try:
            self._set_up(fresh=True)
            if self._is_shutting_down():
                return _Launched(first=None, held=held)
            first.start_first()
        except BaseException as err:  # raised again by _run, on the allocation's thread
            return _Launched(first=None, error=err, held=held)
        return _Launched(first=first, held=held)

    @calls_out
    def _settle_launch(self, launched: _Launched) -> None:
        """Wait for the commit of what the launched start stored (a driver handle must
        be in the state DB before its task is reported running), then release the held
        passes with one pass."""
        try:
            self._tasks.first().settle_start()
        finally:
            if launched.held:
                self._state_kick.release()

    @calls_out
    def run(self) -> None:
        """Run the allocation: prerun hooks, tasks, postrun hooks. Blocks until done.

        Returns at once if destroy() or shutdown() came first, or once it launched the
        destroy `restore()` found interrupted.
        """
        fresh = self._begin_run()
        if fresh is None:
            return
        self._finish_run(fresh, None)

    @calls_out
    def _begin_run(self) -> bool | None:
        """The start of `run()`: whether it starts afresh (`_starts_fresh`), its state
        handler started; None if it is not to run (destroyed or shut down first)."""
        if self._finish_destroy.is_set():
            self.destroy()
        with self._destroyed_lock:
            if self._run_started:
                raise AllocRunnerError(f"allocation {self._id}: run() called twice")
            self._run_started = True
            skip = self._destroy_launched or self._shutdown_launched
        if skip:
            self._run_done.set()
            return None
        fresh = self._starts_fresh()
        try:
            self._handler.start(first_pass=not fresh)
        except BaseException:
            self._run_done.set()
            raise
        return fresh

    @calls_out
    def _finish_run(self, fresh: bool, launched: _Launched | None) -> None:
        """The rest of `run()`, after `_begin_run` (and `launch`'s start, if it made one)."""
        try:
            self._run(fresh, launched)
        finally:
            # The state handler's last pass publishes the final state before wait()
            # returns, so nobody who waited can read a stale alloc_state().
            self._handler.finish()
            self._handler.wait_finished()
            self._run_done.set()

    def _starts_fresh(self) -> bool:
        """True for a run whose first task event surely comes within its start: the
        allocation should run, every task is pending (none started before a restore),
        and there is no previous allocation to wait for or migrate from. Its state
        handler then makes its first pass on that event's kick rather than at once (a
        pass that would publish the state it was built with), and this thread opens
        the lifecycle gates that pass would have opened. Anything else that can hold
        the run up before a task event (the arming of a max_run_duration) kicks a pass
        itself."""
        if not isinstance(self._prev_watcher, NoopPrevAlloc):
            return False
        if not isinstance(self._prev_migrator, NoopPrevAlloc):
            return False
        if not self._should_run():
            return False
        return all(state.state == TASK_PENDING for state in self._tasks.states().values())

    @calls_out
    def _run(self, fresh: bool, launched: _Launched | None) -> None:
        if launched is None:
            self._set_up(fresh)
            if self._is_shutting_down():
                return
            self._run_tasks()
        elif launched.error is not None:
            raise launched.error
        elif launched.first is not None:
            self._run_task(launched.first, started=True)
        if self._is_shutting_down():
            return
        self._soft_phase(self._hooks.postrun)

    @calls_out
    def _set_up(self, fresh: bool) -> None:
        """Open the gates of a fresh run, write the allocation, run the prerun hooks."""
        if fresh:
            self._coordinator.task_state_updated(self._tasks.states())
        self._persister.put_allocation(self.alloc())
        if self._should_run():
            self._prerun()

    @calls_out
    def _prerun(self) -> None:
        try:
            self._hooks.prerun(self._prerun_cancel)
        except Exception as err:
            if self._is_shutting_down() or self._prerun_cancel.cancelled():
                # A stop or destroy that cancelled the prerun kills the tasks instead;
                # only a real setup failure fails them.
                return
            reason = f"prerun failed: {err}"
            log.warning("allocation %s: %s", self._id, reason)
            for tr in self._tasks:
                tr.mark_failed_kill(reason)

    @calls_out
    def _run_tasks(self) -> None:
        """The first task runs on this thread, the others on their own, so a running
        single-task allocation costs this thread and nothing else."""
        others = self._tasks.others()
        for tr in others:
            self._threads.spawn(f"task-{_id8(self._id)}-{tr.name}", self._run_task, tr)
        self._run_task(self._tasks.first())
        while not all(tr.wait(0) for tr in others):
            self._tasks_exited.wait()

    @calls_out
    def _run_task(self, tr: TaskRunner, *, started: bool = False) -> None:
        """Run `tr` (or, `started` by `launch`, go on from its first start)."""
        try:
            if started:
                tr.continue_run()
            else:
                tr.run()
        finally:
            self._tasks_exited.kick()
            self._state_kick.kick()

    @calls_out
    def _soft_phase(self, phase: Callable[[], None]) -> None:
        """Run a hook phase whose failures are logged, never fatal."""
        try:
            phase()
        except HookErrors as group:
            for err in group.exceptions:
                log.warning("allocation %s: %s", self._id, err)

    @calls_out
    def _pre_kill_phase(self) -> None:
        """The alloc hooks' pre-kill phase, for the state handler's kill."""
        self._soft_phase(self._hooks.pre_kill)

    def _should_run(self) -> bool:
        """False for an allocation that is already terminal (e.g. restored after a stop)."""
        if self.alloc().terminal():
            return False
        return self.alloc_state().client_status not in CLIENT_TERMINAL

    def wait(self, timeout: float | None = None) -> bool:
        """True once `run()` has returned (or will never run: destroyed first)."""
        return self._run_done.wait(timeout)

    # --- state ------------------------------------------------------------------------

    def acknowledge_state(self, state: AllocState) -> None:
        """Record the state the server has acknowledged (drives `update_priority`)."""
        self._client_state.acknowledge(state)

    def update_priority(self, alloc: Allocation) -> str:
        """How urgently the client view `alloc` should go to the server, compared with
        the last acknowledged state (Nomad's GetUpdatePriority): "urgent" for a new
        client status (or a first report of failure), "typical" for any other change,
        "none" when the server already has it."""
        return self._client_state.priority(alloc)

    def set_client_status(self, status: str) -> None:
        """Force the client status (e.g. failed after a failed restore)."""
        self._client_state.force_status(status)
        self._state_kick.kick()

    # --- updates ----------------------------------------------------------------------

    def update(self, alloc: Allocation) -> None:
        """Queue a newer version of the allocation; never blocks.

        Kept in a one-slot mailbox: an update older (lower alloc_modify_index) than the
        pending or the applied one is dropped, as is any update after `run()` returned.
        A stop/evict update also cancels a prerun still waiting on a previous alloc.
        """
        if alloc.id != self._id:
            raise AllocRunnerError(f"update for allocation {alloc.id} sent to runner {self._id}")
        if self._run_done.is_set():
            return
        with self._alloc_lock.read():
            applied = self._alloc.alloc_modify_index
        if alloc.alloc_modify_index < applied:
            log.debug("allocation %s: dropping stale update %d", self._id, alloc.alloc_modify_index)
            return
        if self._handler.offer(alloc):
            if alloc.server_terminal():
                self._prerun_cancel.cancel("allocation stopped")
            self._state_kick.kick()

    @calls_out
    def _apply_update(self, alloc: Allocation) -> None:
        with self._alloc_lock.write():
            old = self._alloc
            if alloc.alloc_modify_index < old.alloc_modify_index:
                return
            self._alloc = alloc
        stopping = not old.terminal() and alloc.terminal()
        self._persister.put_allocation(alloc)
        if not alloc.terminal():
            self._soft_phase(lambda: self._hooks.update(alloc))
        for tr in self._tasks:
            tr.update(alloc)
        if stopping:
            # This is the state handler's thread: its pass drives the kill (the tasks'
            # run threads kill them, wave by wave) and keeps publishing meanwhile.
            self._handler.request_kill()

    # --- killing, restarts and signals -------------------------------------------------

    @calls_out
    def _on_run_deadline(self) -> bool:
        """The group's max_run_duration passed (on the state handler's thread): the
        allocation will end complete with Nomad's description; its poststop tasks are
        killed first, so they never start, then every task as a stop kills them. False
        (nothing done) during an agent shutdown."""
        if self._is_shutting_down():
            return False
        self._client_state.set_timed_out(RUN_DEADLINE_PASSED)
        self._prerun_cancel.cancel(RUN_DEADLINE_PASSED)
        for tr in self._tasks:
            if tr.is_poststop():
                self._tasks.request_kill(tr, RUN_DEADLINE_PASSED)
        self._handler.request_kill(RUN_DEADLINE_PASSED)
        return True

    @calls_out
    def _kill_tasks(self) -> None:
        """Pre-kill hooks, then kill every live task (leader, mains, sidecars) and wait
        for them, on the caller's thread: for a destroy whose state handler is not
        there (never ran) or has not killed them (a shutdown came first)."""
        self._pre_kill_phase()
        self._tasks.kill_all()

    def restart_task(self, name: str, event: TaskEvent) -> None:
        """Restart one running task (TaskNotRunningError if it is not running)."""
        tr = self.task_runner(name)
        self._refuse_if_terminal("restart")
        tr.restart(event, failure=False)

    def restart_running(self, event: TaskEvent) -> None:
        """Restart every running task; tasks that are not running are skipped. The
        failures of the others are raised together (`TaskErrors`)."""
        self._refuse_if_terminal("restart")
        self._tasks.each_concurrently("restart", lambda tr: tr.request_restart(event))

    def restart_all(self, event: TaskEvent) -> None:
        """Restart every task, re-running dead prestart/poststart tasks in lifecycle
        order. The failures of the tasks are raised together (`TaskErrors`)."""
        self._refuse_if_terminal("restart")
        self._coordinator.restart()
        try:
            self._tasks.each_concurrently(
                "restart", lambda tr: tr.request_restart(event, force=True)
            )
        finally:
            self._state_kick.kick()

    def signal_task(self, name: str, sig: str) -> None:
        """Send `sig` to task `name` ("" for every running task; the failures of those
        are raised together, `TaskErrors`)."""
        event = TaskEvent(
            EVENT_SIGNALING, message=f"Task being sent signal {sig}", details={"signal": sig}
        )
        if name:
            self.task_runner(name).signal(event, sig)
            return
        self._tasks.each("signal", lambda tr: tr.signal(event, sig))

    def _refuse_if_terminal(self, what: str) -> None:
        if not self._should_run():
            raise AllocRunnerError(f"allocation {self._id} is terminal: cannot {what} its tasks")

    # --- persistence, destroy and shutdown ---------------------------------------------

    def persist_state(self) -> None:
        """Write the allocation to the state DB, unless it was destroyed (no resurrection)."""
        self._persister.put_allocation(self.alloc())

    def destroy(self) -> None:
        """Kill the tasks, run postrun and destroy hooks, remove the alloc dir and the
        alloc's state. Idempotent; returns at once (see `wait_destroyed`)."""
        with self._destroyed_lock:
            if self._destroy_launched:
                return
            self._destroy_launched = True
            run_started = self._run_started
            shutdown_in_flight = self._shutdown_launched and not self._shutdown_event.is_set()
        checkpoint("alloc.destroy.launch")
        self._prerun_cancel.cancel("allocation destroyed")
        self._threads.spawn(
            f"destroy-{_id8(self._id)}", self._do_destroy, run_started, shutdown_in_flight
        )

    @calls_out
    def _do_destroy(self, run_started: bool, shutdown_in_flight: bool) -> None:
        self._shutdown_delay.cancel("allocation destroyed")
        # Durable first: an agent killed from here on finishes this destroy on restore.
        self._persister.mark_destroying()
        if shutdown_in_flight:
            self._shutdown_event.wait()
        if run_started:
            # The state handler kills the tasks (pre-kill hooks first) and returns
            # once they are all done, before run() does: so no pre-kill hook or task
            # event comes after the destroy hooks below.
            self._handler.request_kill()
            self._run_done.wait()
            if not self._handler.kill_begun():
                self._kill_tasks()  # tasks a shutdown left running
        else:
            self._kill_tasks()
            self._handler.publish(self._tasks.states())
            self._run_done.set()
        self._soft_phase(self._hooks.destroy)
        checkpoint("alloc.destroy.delete")
        self._persister.delete()
        self._broadcaster.close()
        self._close_owned_drivers()
        self._shutdown_event.set()
        self._destroyed_event.set()

    def is_destroyed(self) -> bool:
        return self._destroyed_event.is_set()

    def wait_destroyed(self, timeout: float | None = None) -> bool:
        """True once destroy has finished."""
        return self._destroyed_event.wait(timeout)

    def on_destroyed(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call `callback` once destroy has finished (at once if it has), on the
        destroying thread; returns a function that withdraws it. The garbage collector
        waits on this and on its own stop together, without polling."""
        return self._destroyed_event.on_set(callback)

    def shutdown(self) -> None:
        """Graceful agent shutdown: stop watching the tasks but leave them running, with
        their state saved for `restore()`. Idempotent; returns at once."""
        with self._destroyed_lock:
            if self._destroy_launched or self._shutdown_launched:
                return
            self._shutdown_launched = True
            run_started = self._run_started
        self._prerun_cancel.cancel("agent shutting down")
        self._threads.spawn(f"shutdown-{_id8(self._id)}", self._do_shutdown, run_started)

    @calls_out
    def _do_shutdown(self, run_started: bool) -> None:
        self._shutdown_delay.agent_shutdown()
        self._tasks.each_concurrently("shutdown", lambda tr: tr.request_shutdown())
        if run_started:
            self._run_done.wait()
            self._soft_phase(self._hooks.shutdown)
            self._handler.wait_finished()
        else:
            self._run_done.set()
        self._close_owned_drivers()
        self._shutdown_event.set()

    @calls_out
    def _close_owned_drivers(self) -> None:
        """Stop the threads of drivers this runner built (their tasks keep running)."""
        for driver in self._owned_drivers:
            driver.close()

    def _is_shutting_down(self) -> bool:
        with self._destroyed_lock:
            return self._shutdown_launched

    def wait_shutdown(self, timeout: float | None = None) -> bool:
        """True once shutdown (or destroy) has finished."""
        return self._shutdown_event.wait(timeout)

    def close(self, timeout: float = JOIN_TIMEOUT) -> bool:
        """Join every thread of this runner (after destroy or shutdown finished)."""
        return self._threads.join(timeout)

    def __repr__(self) -> str:
        return f"<AllocRunner {self._id}>"
