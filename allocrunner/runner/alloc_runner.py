"""AllocRunner: runs one allocation (a task group) on this node.

The static allocation the server sent (`alloc()`) is kept apart from the dynamic
runtime state (`alloc_state()`). The runtime state is an immutable `AllocState`
snapshot: one writer (the state-handler thread) builds a new one from the task
runners' states and publishes it under the write side of `_state_lock`; readers take
the current snapshot under the read side and can never see it change.

Threads of a running allocation (named, owned by `_threads`, joined on teardown):

- ``alloc-<id8>``: `run()` (or the caller's thread): prerun hooks, then it runs the
  first task runner itself and waits for the others, then postrun hooks.
- ``alloc-state-<id8>``: the state handler. It applies alloc updates from the one-slot
  mailbox, and task runners kick it after every state change; each pass applies the
  sibling rules, drives the lifecycle coordinator, publishes the state, calls
  `state_updater` and sends the client view on the broadcaster. It runs one last
  pass after the tasks exit, so listeners always see the terminal state.
- ``task-<id8>-<name>``: one per task runner but the first.
- ``health-<id8>``: the health watcher of a service or system job (HealthHook).
- transient: ``destroy-<id8>``, ``shutdown-<id8>``, ``stop-<id8>`` (kills on a stop
  update) and ``kill-<id8>-<name>`` / ``each-<id8>-<name>`` (one call per task at once).

Locks (ranks in LOCK_ORDER): ``_destroyed_lock`` guards the destroy/shutdown/run
flags; ``_state_lock`` (RW) guards the published state and what it is computed from
(forced client status, deployment status); ``_alloc_lock`` (RW) guards the server
allocation. None is held while calling a hook, a task runner, the state DB or a
callback, and none is held while taking another.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock, make_rwlock
from allocrunner._sync import CancelToken, Kick, LatestValue, ThreadGroup
from allocrunner.allocdir import AllocDir
from allocrunner.allocwatcher import NoopPrevAlloc
from allocrunner.broadcaster import AllocBroadcaster, AllocListener
from allocrunner.config import ClientConfig
from allocrunner.drivers import default_drivers
from allocrunner.durations import format_duration
from allocrunner.errors import (
    AllocRunnerError,
    BroadcasterClosed,
    TaskNotRunningError,
    UnknownTaskError,
)
from allocrunner.runner.health import HealthHook
from allocrunner.runner.hooks import (
    AllocDirHook,
    DiskMigrationHook,
    UpstreamAllocsHook,
    run_phase,
)
from allocrunner.runner.lifecycle import TaskCoordinator
from allocrunner.state import NoopDB
from allocrunner.structs import (
    CLIENT_FAILED,
    CLIENT_PENDING,
    EVENT_KILLING,
    EVENT_LEADER_DEAD,
    EVENT_MAIN_DEAD,
    EVENT_SIBLING_FAILED,
    EVENT_SIGNALING,
    Allocation,
    AllocDeploymentStatus,
    AllocState,
    FrozenDict,
    TaskEvent,
    TaskState,
    client_status_from_task_states,
    utcnow,
)
from allocrunner.structs.status import CLIENT_TERMINAL
from allocrunner.taskrunner import TaskRunner

log = logging.getLogger("allocrunner.runner")

StateUpdater = Callable[[Allocation], None]

JOIN_TIMEOUT = 30.0

UPDATE_NONE = "none"
UPDATE_TYPICAL = "typical"
UPDATE_URGENT = "urgent"


def _id8(alloc_id: str) -> str:
    return alloc_id[:8]


def _client_view(alloc: Allocation, state: AllocState) -> Allocation:
    """The allocation with its client fields taken from the runtime state."""
    return attrs.evolve(
        alloc,
        client_status=state.client_status,
        client_description=state.client_description,
        task_states=state.task_states,
        deployment_status=state.deployment_status,
    )


class AllocRunner:
    """Thread-safe. Runs the task group of one allocation through its whole lifecycle.

    `run()` may be called once (or `start()` to run it on an owned thread). `update`,
    `destroy` and `shutdown` never block; `alloc()` and `alloc_state()` take only read
    locks and return immutable values.
    """

    # _alloc_lock guards: _alloc
    _alloc_lock = immutable()
    _alloc = guarded("_alloc_lock")
    # _state_lock guards: _state, _forced_status, _deployment_status, _acknowledged
    _state_lock = immutable()
    _state = guarded("_state_lock")
    _acknowledged = guarded("_state_lock")
    _forced_status = guarded("_state_lock")
    _deployment_status = guarded("_state_lock")
    # _destroyed_lock guards: _run_started, _destroy_launched, _shutdown_launched,
    # _destroyed, _persists_in_flight
    _destroyed_lock = immutable()
    _run_started = guarded("_destroyed_lock")
    _destroy_launched = guarded("_destroyed_lock")
    _shutdown_launched = guarded("_destroyed_lock")
    _destroyed = guarded("_destroyed_lock")
    _persists_in_flight = guarded("_destroyed_lock")

    _id = immutable()
    _config = immutable()
    _state_db = immutable()
    _state_updater = immutable()
    _prev_watcher = immutable()
    _prev_migrator = immutable()
    _drivers = immutable()
    _owned_drivers = immutable()
    _alloc_dir = immutable()
    _tasks = immutable()
    _coordinator = immutable()
    _broadcaster = immutable()
    _hooks = immutable()
    _health_hook = immutable()
    _threads = immutable()
    _state_kick = immutable()
    _tasks_exited = immutable()
    _updates = immutable()
    _prerun_cancel = immutable()
    _run_done = immutable()
    _tasks_done = immutable()
    _handler_done = immutable()
    _destroyed_event = immutable()
    _shutdown_event = immutable()
    _persists_drained = immutable()
    _restored = immutable()

    def __init__(
        self,
        alloc: Allocation,
        config: ClientConfig,
        *,
        state_db: Any = None,
        state_updater: StateUpdater | None = None,
        prev_watcher: Any = None,
        prev_migrator: Any = None,
        drivers: Mapping[str, Any] | None = None,
    ) -> None:
        group = alloc.group()
        if group is None:
            have = ", ".join(g.name for g in alloc.job.task_groups) if alloc.job else "no job"
            raise AllocRunnerError(
                f"allocation {alloc.id}: task group {alloc.task_group!r} not found in its job "
                f"(groups: {have or 'none'})"
            )
        if not group.tasks:
            raise AllocRunnerError(f"allocation {alloc.id}: task group {group.name!r} has no tasks")
        self._id = alloc.id
        self._config = config
        self._state_db = state_db if state_db is not None else NoopDB()
        self._state_updater = state_updater
        noop = NoopPrevAlloc()
        self._prev_watcher = prev_watcher if prev_watcher is not None else noop
        self._prev_migrator = prev_migrator if prev_migrator is not None else noop
        # Drivers built here are owned (and closed on destroy or shutdown) by this runner;
        # drivers passed in belong to the caller, who shares them between runners.
        self._owned_drivers = () if drivers is not None else tuple(default_drivers().values())
        self._drivers = (
            dict(drivers) if drivers is not None else {d.name: d for d in self._owned_drivers}
        )
        self._alloc_dir = AllocDir(config.alloc_dir, alloc.id)

        self._alloc_lock = make_rwlock("AllocRunner._alloc_lock")
        self._alloc = alloc
        self._state_lock = make_rwlock("AllocRunner._state_lock")
        self._destroyed_lock = make_lock("AllocRunner._destroyed_lock")
        self._run_started = False
        self._destroy_launched = False
        self._shutdown_launched = False
        self._destroyed = False
        self._persists_in_flight = 0
        self._restored = threading.Event()

        self._threads = ThreadGroup(f"alloc-{_id8(alloc.id)}")
        self._state_kick = Kick()
        self._tasks_exited = Kick()
        self._updates: LatestValue[Allocation] = LatestValue()
        self._prerun_cancel = CancelToken()
        self._run_done = threading.Event()
        self._tasks_done = threading.Event()
        self._handler_done = threading.Event()
        self._destroyed_event = threading.Event()
        self._shutdown_event = threading.Event()
        self._persists_drained = threading.Event()
        self._persists_drained.set()
        self._broadcaster = AllocBroadcaster()
        self._coordinator = TaskCoordinator(group.tasks)

        kick = self._task_state_changed
        self._tasks = {
            task.name: TaskRunner(
                alloc,
                task.name,
                alloc_dir=self._alloc_dir,
                drivers=self._drivers,
                state_db=self._state_db,
                on_state_change=kick,
                start_gate=self._coordinator.gate(task.name),
                max_kill_timeout=config.max_kill_timeout,
                kill_retry_base=config.kill_retry_base,
            )
            for task in group.tasks
        }
        self._health_hook = HealthHook(
            alloc,
            listen=self.listen,
            set_health=self._set_health,
            has_health=self._has_health,
            clear_health=self._clear_health,
        )
        self._hooks = (
            AllocDirHook(self._alloc_dir),
            UpstreamAllocsHook(self._prev_watcher),
            DiskMigrationHook(self._prev_migrator, self._alloc_dir),
            self._health_hook,
        )
        self._forced_status = ""
        self._acknowledged: AllocState | None = None
        self._deployment_status = alloc.deployment_status
        self._state = self._compute_state(alloc, self._task_states(), "", alloc.deployment_status)

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
        with self._state_lock.read():
            return self._state

    def client_alloc(self) -> Allocation:
        """The allocation with its client fields (status, task states, health) filled."""
        return _client_view(self.alloc(), self.alloc_state())

    def listen(self) -> AllocListener:
        """A latest-only listener on the client view of this allocation."""
        return self._broadcaster.listen()

    def task_runner(self, name: str) -> TaskRunner:
        """The task runner of task `name`; UnknownTaskError if there is none."""
        try:
            return self._tasks[name]
        except KeyError:
            raise UnknownTaskError(
                f"allocation {self._id} has no task {name!r} (tasks: {', '.join(self._tasks)})"
            ) from None

    def task_names(self) -> list[str]:
        return list(self._tasks)

    def is_waiting(self) -> bool:
        """True while waiting for the previous allocation to finish."""
        return bool(self._prev_watcher.is_waiting())

    def is_migrating(self) -> bool:
        """True while moving the previous allocation's data in."""
        return bool(self._prev_migrator.is_migrating())

    def latest_stats(self) -> dict[str, dict[str, float]]:
        """Resource usage of each running task, by task name."""
        stats: dict[str, dict[str, float]] = {}
        for name, tr in self._tasks.items():
            usage = tr.latest_stats()
            if usage:
                stats[name] = usage
        return stats

    # --- restore ----------------------------------------------------------------------

    @calls_out
    def restore(self) -> None:
        """Load the persisted state of every task before `run()` (agent restart)."""
        if not Path(self._alloc_dir.path).is_dir():
            raise FileNotFoundError(
                f"allocation {self._id}: alloc dir {self._alloc_dir.path} does not exist"
            )
        status = self._state_db.deployment_status(self._id)
        for tr in self._tasks.values():
            tr.restore()
        states = self._task_states()
        self._coordinator.restore(states)
        alloc = self.alloc()
        with self._state_lock.write():
            if status is not None:
                self._deployment_status = status
            self._state = self._compute_state(
                alloc, states, self._forced_status, self._deployment_status, self._state
            )
        self._restored.set()

    # --- run --------------------------------------------------------------------------

    def start(self) -> None:
        """Run the allocation on an owned thread named ``alloc-<id8>``."""
        self._threads.spawn(f"alloc-{_id8(self._id)}", self.run)

    @calls_out
    def run(self) -> None:
        """Run the allocation: prerun hooks, tasks, postrun hooks. Blocks until done.

        Returns at once if destroy() or shutdown() came first.
        """
        with self._destroyed_lock:
            if self._run_started:
                raise AllocRunnerError(f"allocation {self._id}: run() called twice")
            self._run_started = True
            skip = self._destroy_launched or self._shutdown_launched
        if skip:
            self._run_done.set()
            return
        try:
            self._threads.spawn(f"alloc-state-{_id8(self._id)}", self._handle_task_states)
        except BaseException:
            self._run_done.set()
            raise
        try:
            self._run()
        finally:
            # The state handler's last pass publishes the final state before wait()
            # returns, so nobody who waited can read a stale alloc_state().
            self._tasks_done.set()
            self._state_kick.kick()
            self._handler_done.wait()
            self._run_done.set()

    def _run(self) -> None:
        self._state_kick.kick()
        self._persist_alloc(self.alloc())

        if self._should_run():
            try:
                run_phase(self._hooks, "prerun", self._prerun_cancel, policy="stop_first")
            except Exception as err:
                if self._is_shutting_down():
                    return
                if not self._prerun_cancel.cancelled():
                    # A stop or destroy that cancelled the prerun kills the tasks
                    # instead; only a real setup failure fails them.
                    reason = f"prerun failed: {err}"
                    log.warning("allocation %s: %s", self._id, reason)
                    for tr in self._tasks.values():
                        tr.mark_failed_kill(reason)
        if self._is_shutting_down():
            return

        # The first task runs on this thread, the others on their own, so a running
        # single-task allocation costs this thread, the state handler and nothing else.
        first, *others = self._tasks.values()
        for tr in others:
            self._threads.spawn(f"task-{_id8(self._id)}-{tr.name}", self._run_task, tr)
        self._run_task(first)
        while not all(tr.wait(0) for tr in others):
            self._tasks_exited.wait()

        if self._is_shutting_down():
            return
        try:
            run_phase(self._hooks, "postrun")
        except Exception as err:
            log.warning("allocation %s: %s", self._id, err)

    def _run_task(self, tr: TaskRunner) -> None:
        try:
            tr.run()
        finally:
            self._tasks_exited.kick()
            self._state_kick.kick()

    def _should_run(self) -> bool:
        """False for an allocation that is already terminal (e.g. restored after a stop)."""
        if self.alloc().terminal():
            return False
        return self.alloc_state().client_status not in CLIENT_TERMINAL

    def wait(self, timeout: float | None = None) -> bool:
        """True once `run()` has returned (or will never run: destroyed first)."""
        return self._run_done.wait(timeout)

    # --- task state fan-in --------------------------------------------------------------

    def _task_state_changed(self) -> None:
        """Notify-only: a task runner published a new state."""
        self._state_kick.kick()

    def _task_states(self) -> dict[str, TaskState]:
        return {name: tr.task_state() for name, tr in self._tasks.items()}

    @calls_out
    def _handle_task_states(self) -> None:
        """The state handler: applies queued alloc updates, then a state pass, on
        every kick; one last pass once every task has exited."""
        try:
            while True:
                self._state_kick.wait()
                done = self._tasks_done.is_set()
                if done:
                    # Updates that arrive after the last task exited are dropped, as
                    # in Nomad.
                    self._updates.close()
                update = self._updates.poll()
                if update is not None:
                    self._apply_update(update)
                self._state_pass(done)
                if done:
                    return
        finally:
            self._handler_done.set()

    def _state_pass(self, done: bool) -> None:
        states = self._task_states()
        kill_event = self._sibling_kill_event(states)
        live = [
            tr
            for name, tr in self._tasks.items()
            if not tr.is_poststop() and not states[name].is_dead()
        ]
        if live:
            if kill_event is None and self._only_sidecars_live(live):
                kill_event = TaskEvent(
                    EVENT_MAIN_DEAD,
                    message="Main tasks in the group died",
                    display_message="Main tasks in the group died",
                )
            if kill_event is not None and not done:
                for tr in live:
                    tr.emit_event(kill_event)
                self._kill_tasks()
                states = self._task_states()
        else:
            # Every non-poststop task is dead: release the runners parked for a restart.
            for tr in self._tasks.values():
                if not tr.is_poststop() and not tr.wait(0):
                    tr.kill(None, timeout=0)
        self._coordinator.task_state_updated(states)
        self._publish(states)

    def _sibling_kill_event(self, states: Mapping[str, TaskState]) -> TaskEvent | None:
        event: TaskEvent | None = None
        for name, tr in self._tasks.items():
            state = states[name]
            if tr.is_poststop() or not state.is_dead():
                continue
            if state.failed:
                if event is None:
                    event = TaskEvent(
                        EVENT_SIBLING_FAILED,
                        message=f"Task's sibling {name!r} failed",
                        display_message=f"Task's sibling {name!r} failed",
                        details={"failed_sibling": name},
                    )
            elif tr.is_leader():
                event = TaskEvent(
                    EVENT_LEADER_DEAD,
                    message="Leader Task in Group dead",
                    display_message="Leader Task in Group dead",
                )
        return event

    def _only_sidecars_live(self, live: list[TaskRunner]) -> bool:
        has_sidecars = any(tr.is_sidecar() for tr in self._tasks.values())
        return has_sidecars and all(tr.is_sidecar() for tr in live)

    def _publish(self, states: Mapping[str, TaskState]) -> None:
        alloc = self.alloc()
        with self._state_lock.write():
            previous = self._state
            state = self._compute_state(
                alloc, states, self._forced_status, self._deployment_status, previous
            )
            changed = state != previous
            self._state = state
            # A verdict computed here (failed in a deployment → unhealthy) is kept.
            self._deployment_status = state.deployment_status
        client = _client_view(alloc, state)
        if changed and self._state_updater is not None:
            try:
                self._state_updater(client)
            except Exception:
                log.exception("allocation %s: state updater failed", self._id)
        with contextlib.suppress(BroadcasterClosed):
            self._broadcaster.send(client)

    @staticmethod
    def _compute_state(
        alloc: Allocation,
        states: Mapping[str, TaskState],
        forced: str,
        deployment: AllocDeploymentStatus | None,
        previous: AllocState | None = None,
    ) -> AllocState:
        """Nomad's clientAlloc: the client status from task states (a forced status
        wins); a terminal allocation stamps FinishedAt on every task, and a failed one in
        a deployment with no verdict yet is marked unhealthy. Stamps made for the
        `previous` state are kept, so an unchanged state publishes an equal value."""
        status, description = client_status_from_task_states(states)
        if forced:
            status, description = forced, description or forced
        if not status:
            status, description = CLIENT_PENDING, ""
        task_states = dict(states)
        if status in CLIENT_TERMINAL:
            now = utcnow()
            if (
                status == CLIENT_FAILED
                and alloc.deployment_id
                and (deployment is None or not deployment.has_health())
            ):
                deployment = AllocDeploymentStatus(healthy=False, timestamp=now)
            group = alloc.group()
            names = [t.name for t in group.tasks] if group else list(task_states)
            stamped = previous.task_states if previous is not None else {}
            for name in names:
                ts = task_states.get(name) or TaskState()
                if ts.finished_at is None:
                    earlier = stamped.get(name)
                    stamp = earlier.finished_at if earlier is not None else None
                    ts = attrs.evolve(ts, finished_at=stamp or now)
                task_states[name] = ts
        return AllocState(
            client_status=status,
            client_description=description,
            deployment_status=deployment,
            task_states=FrozenDict(task_states),
        )

    # --- health -----------------------------------------------------------------------

    def _has_health(self) -> bool:
        with self._state_lock.read():
            return self._deployment_status is not None and self._deployment_status.has_health()

    def _set_health(self, healthy: bool, events: Mapping[str, TaskEvent]) -> None:
        """Called by the health watcher (no lock held) with its one verdict."""
        status = AllocDeploymentStatus(healthy=healthy, timestamp=utcnow())
        with self._state_lock.write():
            self._deployment_status = status
        self._persist_deployment_status(status)
        if not healthy and not self.alloc().server_terminal():
            for name, event in events.items():
                tr = self._tasks.get(name)
                if tr is not None:
                    tr.append_event(event)
        self._state_kick.kick()

    def _clear_health(self) -> None:
        with self._state_lock.write():
            self._deployment_status = None
        self._persist_deployment_status(None)
        self._state_kick.kick()

    def acknowledge_state(self, state: AllocState) -> None:
        """Record the state the server has acknowledged (drives `update_priority`)."""
        with self._state_lock.write():
            self._acknowledged = state

    def update_priority(self, alloc: Allocation) -> str:
        """How urgently the client view `alloc` should go to the server, compared with
        the last acknowledged state (Nomad's GetUpdatePriority): "urgent" for a new
        client status (or a first report of failure), "typical" for any other change,
        "none" when the server already has it."""
        with self._state_lock.read():
            acked = self._acknowledged
        if acked is None:
            return UPDATE_URGENT if alloc.client_status == CLIENT_FAILED else UPDATE_TYPICAL
        if acked.client_status != alloc.client_status:
            return UPDATE_URGENT
        if (
            acked.client_description != alloc.client_description
            or acked.deployment_status != alloc.deployment_status
            or dict(acked.task_states) != dict(alloc.task_states)
        ):
            return UPDATE_TYPICAL
        return UPDATE_NONE

    def set_client_status(self, status: str) -> None:
        """Force the client status (e.g. failed after a failed restore)."""
        with self._state_lock.write():
            self._forced_status = status
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
        accepted = self._updates.offer(
            alloc,
            keep_pending=lambda pending, new: pending.alloc_modify_index > new.alloc_modify_index,
        )
        if accepted:
            if alloc.server_terminal():
                self._prerun_cancel.cancel("allocation stopped")
            self._state_kick.kick()

    def _apply_update(self, alloc: Allocation) -> None:
        with self._alloc_lock.write():
            old = self._alloc
            if alloc.alloc_modify_index < old.alloc_modify_index:
                return
            self._alloc = alloc
        stopping = not old.terminal() and alloc.terminal()
        self._persist_alloc(alloc)
        if not alloc.terminal():
            try:
                run_phase(self._hooks, "update", alloc)
            except Exception as err:
                log.warning("allocation %s: %s", self._id, err)
        for tr in self._tasks.values():
            tr.update(alloc)
        if stopping:
            # Killed on a thread of its own so the state handler keeps publishing the
            # Killing / Killed events while the tasks stop.
            self._threads.spawn(f"stop-{_id8(self._id)}", self._kill_tasks)

    # --- killing ----------------------------------------------------------------------

    def _kill_timeout(self, tr: TaskRunner) -> float:
        return min(tr.task().kill_timeout, self._config.max_kill_timeout)

    @calls_out
    def _kill_tasks(self) -> None:
        """Kill every live task: the leader first, then main tasks together, then
        sidecars together; poststop tasks are left alone (they run after)."""
        try:
            run_phase(self._hooks, "pre_kill")
        except Exception as err:
            log.warning("allocation %s: %s", self._id, err)
        leaders = [tr for tr in self._tasks.values() if tr.is_leader() and not tr.is_poststop()]
        mains = [
            tr
            for tr in self._tasks.values()
            if not tr.is_leader() and not tr.is_sidecar() and not tr.is_poststop()
        ]
        sidecars = [
            tr
            for tr in self._tasks.values()
            if not tr.is_leader() and tr.is_sidecar() and not tr.is_poststop()
        ]
        for wave in (leaders, mains, sidecars):
            self._kill_together(wave)

    def _kill_together(self, runners: list[TaskRunner]) -> None:
        if not runners:
            return
        if len(runners) == 1:
            self._kill_one(runners[0])
            return
        group = ThreadGroup(f"kill-{_id8(self._id)}")
        for tr in runners:
            group.spawn(f"kill-{_id8(self._id)}-{tr.name}", self._kill_one, tr)
        group.join()

    def _kill_one(self, tr: TaskRunner) -> None:
        state = tr.task_state()
        event = None
        if state.finished_at is None:
            timeout = self._kill_timeout(tr)
            text = f"Sent interrupt. Waiting {format_duration(timeout)} before force killing"
            event = TaskEvent(
                EVENT_KILLING,
                message=text,
                display_message=text,
                details={"kill_timeout": format_duration(timeout)},
            )
        with contextlib.suppress(TaskNotRunningError):
            tr.kill(event)

    # --- restarts and signals ----------------------------------------------------------

    def restart_task(self, name: str, event: TaskEvent) -> None:
        """Restart one running task (TaskNotRunningError if it is not running)."""
        tr = self.task_runner(name)
        self._refuse_if_terminal("restart")
        tr.restart(event, failure=False)

    def restart_running(self, event: TaskEvent) -> None:
        """Restart every running task; tasks that are not running are skipped."""
        self._refuse_if_terminal("restart")
        self._each_task_concurrently(lambda tr: tr.restart(event, failure=False))

    def restart_all(self, event: TaskEvent) -> None:
        """Restart every task, re-running dead prestart/poststart tasks in lifecycle order."""
        self._refuse_if_terminal("restart")
        self._coordinator.restart()
        self._each_task_concurrently(lambda tr: tr.force_restart(event, failure=False))
        self._state_kick.kick()

    def signal_task(self, name: str, sig: str) -> None:
        """Send `sig` to task `name` ("" for every running task)."""
        event = TaskEvent(
            EVENT_SIGNALING, message=f"Task being sent signal {sig}", details={"signal": sig}
        )
        if name:
            self.task_runner(name).signal(event, sig)
            return
        self._each_task(lambda tr: tr.signal(event, sig))

    def _each_task(self, action: Callable[[TaskRunner], None]) -> None:
        for tr in self._tasks.values():
            try:
                action(tr)
            except TaskNotRunningError:
                continue

    def _refuse_if_terminal(self, what: str) -> None:
        if not self._should_run():
            raise AllocRunnerError(f"allocation {self._id} is terminal: cannot {what} its tasks")

    # --- persistence ------------------------------------------------------------------

    def _begin_persist(self) -> bool:
        """Register a DB write in flight; False once destroy has marked the alloc gone.

        Destroy marks the alloc destroyed, waits for the writes in flight to drain and
        only then deletes its state, so no write can resurrect a destroyed alloc while
        no lock is held during I/O.
        """
        with self._destroyed_lock:
            if self._destroyed:
                return False
            self._persists_in_flight += 1
            self._persists_drained.clear()
            return True

    def _end_persist(self) -> None:
        with self._destroyed_lock:
            self._persists_in_flight -= 1
            if self._persists_in_flight == 0:
                self._persists_drained.set()

    @calls_out
    def _persist_alloc(self, alloc: Allocation) -> None:
        if not self._begin_persist():
            return
        try:
            self._state_db.put_allocation(alloc)
        except Exception:
            log.exception("allocation %s: persisting failed", self._id)
        finally:
            self._end_persist()

    @calls_out
    def _persist_deployment_status(self, status: AllocDeploymentStatus | None) -> None:
        if not self._begin_persist():
            return
        try:
            self._state_db.put_deployment_status(self._id, status)
        except Exception:
            log.exception("allocation %s: persisting deployment status failed", self._id)
        finally:
            self._end_persist()

    def persist_state(self) -> None:
        """Write the allocation to the state DB, unless it was destroyed (no resurrection)."""
        self._persist_alloc(self.alloc())

    # --- destroy and shutdown ---------------------------------------------------------

    def destroy(self) -> None:
        """Kill the tasks, run postrun and destroy hooks, remove the alloc dir and the
        alloc's state. Idempotent; returns at once (see `wait_destroyed`)."""
        with self._destroyed_lock:
            if self._destroyed or self._destroy_launched:
                return
            self._destroy_launched = True
            run_started = self._run_started
            shutdown_in_flight = self._shutdown_launched and not self._shutdown_event.is_set()
        self._prerun_cancel.cancel("allocation destroyed")
        self._threads.spawn(
            f"destroy-{_id8(self._id)}", self._do_destroy, run_started, shutdown_in_flight
        )

    def _do_destroy(self, run_started: bool, shutdown_in_flight: bool) -> None:
        if shutdown_in_flight:
            self._shutdown_event.wait()
        self._kill_tasks()
        self._state_kick.kick()
        if run_started:
            self._run_done.wait()
        else:
            self._publish(self._task_states())
            self._run_done.set()
        try:
            run_phase(self._hooks, "destroy")
        except Exception as err:
            log.warning("allocation %s: %s", self._id, err)
        with self._destroyed_lock:
            self._destroyed = True
        self._persists_drained.wait()
        try:
            self._state_db.delete_allocation(self._id)
        except Exception:
            log.exception("allocation %s: deleting its state failed", self._id)
        self._broadcaster.close()
        self._close_owned_drivers()
        self._shutdown_event.set()
        self._destroyed_event.set()

    def is_destroyed(self) -> bool:
        return self._destroyed_event.is_set()

    def wait_destroyed(self, timeout: float | None = None) -> bool:
        """True once destroy has finished."""
        return self._destroyed_event.wait(timeout)

    def shutdown(self) -> None:
        """Graceful agent shutdown: stop watching the tasks but leave them running, with
        their state saved for `restore()`. Idempotent; returns at once."""
        with self._destroyed_lock:
            if self._destroyed or self._destroy_launched or self._shutdown_launched:
                return
            self._shutdown_launched = True
            run_started = self._run_started
        self._prerun_cancel.cancel("agent shutting down")
        self._threads.spawn(f"shutdown-{_id8(self._id)}", self._do_shutdown, run_started)

    def _do_shutdown(self, run_started: bool) -> None:
        self._each_task_concurrently(lambda tr: tr.shutdown())
        if run_started:
            self._run_done.wait()
            try:
                run_phase(self._hooks, "shutdown")
            except Exception as err:
                log.warning("allocation %s: %s", self._id, err)
            self._handler_done.wait()
        else:
            self._run_done.set()
        self._close_owned_drivers()
        self._shutdown_event.set()

    @calls_out
    def _close_owned_drivers(self) -> None:
        """Stop the threads of drivers this runner built (their tasks keep running)."""
        for driver in self._owned_drivers:
            driver.close()

    def _each_task_concurrently(self, action: Callable[[TaskRunner], Any]) -> None:
        """Run `action` on every task runner at once; TaskNotRunningError is ignored."""
        errors: list[BaseException] = []

        def guarded_action(tr: TaskRunner) -> None:
            try:
                action(tr)
            except TaskNotRunningError:
                pass
            except Exception as err:
                errors.append(err)

        group = ThreadGroup(f"each-{_id8(self._id)}")
        for tr in self._tasks.values():
            group.spawn(f"each-{_id8(self._id)}-{tr.name}", guarded_action, tr)
        group.join()
        if errors:
            raise errors[0]

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
