"""The alloc runner's state handler: where task states, alloc updates and health
verdicts fan in, and the runtime state is published from.

The handler makes a pass whenever the runner's state kick (a `PassKick`) is kicked:
task runners kick it after every change of their state and the runner after anything
else that changes the state. Passes run on the threads of the process's state-pass
service (`state_passes`), never two of one allocation at once, so a running allocation
costs no thread here. After each pass the handler tells the service when its next
deadline is: one an alloc hook keeps (`wake_at`: max_run_duration) or the end of a
hold on the kill (`kill_hold`: the group shutdown_delay); the service makes a pass
then, so timers cost no thread either. Each pass:

1. applies the alloc update pending in the one-slot mailbox (through the runner,
   which runs the update hooks, pushes it down to the task runners and, for a stop,
   asks for the tasks to be killed: `request_kill`), then lets the due deadlines
   fire (`fire_due`; the max_run_duration one asks for the kill);
2. drives the kill of the tasks once one was asked for (by a stop, a destroy, a
   sibling rule or max_run_duration): the alloc's pre-kill hooks run once, the kill
   waits while `kill_hold` says so (publishing meanwhile), then a `KillSequence`
   asks the run thread of each task, wave by wave (leader, main tasks, sidecars), to kill it,
   moving to the next wave once the current one is dead; nothing here waits for a
   task, and no thread is started for it: each task's run thread kills its task;
3. applies the sibling rules of the `TaskSet` (recording their event on the live
   tasks once, and asking for the kill), or releases task runners parked for a
   restart once every task is dead;
4. drives the lifecycle coordinator with the task states (poststop tasks start once
   every other task is dead);
5. publishes the new runtime state (`ClientState`) and, when it changed, calls the
   state updater; the client view goes to the broadcaster either way.

After `finish()` (every task has exited) the mailbox is closed, so later updates are
dropped, as in Nomad, and the handler makes one last pass, so listeners always see
the terminal state. Health verdicts of the health watcher come in through
`set_health` / `clear_health`, are persisted and kick a pass.

Threads: the passes run on the service's ``alloc-state-pool-<n>`` workers, one pass of
this handler at a time (`start` adds it, with a first pass at once or on the first
kick; the pass after `finish()` removes it and sets the event `wait_finished` waits
for); `offer`, `request_kill` and the health calls come from other threads; the kill
sequence and the sibling and pre-kill flags are confined to the pass workers (the
``alloc-state-`` prefix), which never run two passes of one handler together.
Locks: none of its own; the `ClientState` takes the runner's state lock, and nothing
here holds a lock while calling out. Owner: the AllocRunner builds it and is its only
caller.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from allocrunner._checkpoints import checkpoint
from allocrunner._locking import calls_out, confined, immutable
from allocrunner._sync import Event, LatestValue
from allocrunner.broadcaster import AllocBroadcaster
from allocrunner.errors import BroadcasterClosed
from allocrunner.runner.client_state import ClientState, client_view
from allocrunner.runner.lifecycle import TaskCoordinator
from allocrunner.runner.persistence import AllocPersister
from allocrunner.runner.state_passes import PASSES, PassKick, StatePasses
from allocrunner.runner.task_set import KillSequence, TaskSet
from allocrunner.structs import Allocation, AllocDeploymentStatus, TaskEvent, TaskState, utcnow

__all__ = ["RunnerCalls", "StateHandler", "StateUpdater", "never_due", "nothing_due"]

log = logging.getLogger("allocrunner.runner")

StateUpdater = Callable[[Allocation], None]


def never_due() -> float | None:
    """The deadline of a handler that keeps none (the default `wake_at`/`kill_hold`)."""
    return None


def nothing_due(now: float) -> None:
    """Nothing falls due for a handler that keeps no deadline (the default `fire_due`)."""
    del now


class RunnerCalls(Protocol):
    """What a handler asks of its runner, as one object (rather than a bound method
    each, which a running allocation would keep as that many more objects)."""

    def current_alloc(self) -> Allocation:
        """The allocation as the server last sent it."""
        ...

    def apply_update(self, alloc: Allocation) -> None:
        """Apply the update `alloc` (update hooks, task runners, a stop's kill)."""
        ...

    def pre_kill(self) -> None:
        """Run the alloc's pre-kill hooks (once, before the tasks are killed)."""
        ...

    def kill_hold(self) -> float | None:
        """Until when (monotonic) the kill waits, if it must (the shutdown_delay)."""
        ...


class StateHandler:
    """Thread-safe. The state handler of one allocation (module docstring)."""

    _alloc_id = immutable()
    _kick = immutable()
    _passes = immutable()
    _updates = immutable()
    _tasks_done = immutable()
    _finished = immutable()
    _client_state = immutable()
    _tasks = immutable()
    _coordinator = immutable()
    _broadcaster = immutable()
    _state_updater = immutable()
    _persister = immutable()
    _runner = immutable()
    _kill_asked = immutable()  # set once a kill of the tasks was asked for
    _kill_reason = immutable()  # LatestValue[str]: the Killing display message, if any
    _kill_begun = immutable()  # set once this handler began killing the tasks
    _kill = immutable()
    _wake_at = immutable()
    _fire_due = immutable()
    # On the service's workers, all named alloc-state-pool-<n>; passes never overlap.
    _sibling_fired = confined("alloc-state", prefix="alloc-state-")
    _pre_kill_ran = confined("alloc-state", prefix="alloc-state-")

    def __init__(
        self,
        alloc_id: str,
        *,
        kick: PassKick,
        client_state: ClientState,
        tasks: TaskSet,
        coordinator: TaskCoordinator,
        broadcaster: AllocBroadcaster,
        state_updater: StateUpdater | None,
        persister: AllocPersister,
        runner: RunnerCalls,
        wake_at: Callable[[], float | None] = never_due,
        fire_due: Callable[[float], None] = nothing_due,
        passes: StatePasses | None = None,
    ) -> None:
        self._alloc_id = alloc_id
        self._kick = kick
        self._passes = passes if passes is not None else PASSES
        self._updates: LatestValue[Allocation] = LatestValue()
        self._tasks_done = Event()
        self._finished = Event()
        self._client_state = client_state
        self._tasks = tasks
        self._coordinator = coordinator
        self._broadcaster = broadcaster
        self._state_updater = state_updater
        self._persister = persister
        self._runner = runner
        self._kill_asked = Event()
        self._kill_reason: LatestValue[str] = LatestValue()
        self._kill_begun = Event()
        self._kill = KillSequence(tasks)
        self._wake_at = wake_at
        self._fire_due = fire_due
        self._sibling_fired = False
        self._pre_kill_ran = False

    # --- the mailbox and the thread ----------------------------------------------------

    def offer(self, alloc: Allocation) -> bool:
        """Put `alloc` in the one-slot mailbox unless the pending update is newer or the
        mailbox is closed; True if taken. Does not kick (the caller does)."""
        return self._updates.offer(
            alloc,
            keep_pending=lambda pending, new: pending.alloc_modify_index > new.alloc_modify_index,
        )

    def request_kill(self, display_message: str = "") -> None:
        """Ask for every task to be killed, in order, by the next pass; the Killing
        events carry `display_message` if the kill had not begun. Notify-only."""
        if display_message:
            self._kill_reason.offer(display_message)
        self._kill_asked.set()
        self._kick.kick()

    def kill_begun(self) -> bool:
        """True once a pass began killing the tasks (after the pre-kill hooks and any
        hold they asked for)."""
        return self._kill_begun.is_set()

    def finish(self) -> None:
        """Every task has exited: make the last pass. Notify-only."""
        self._tasks_done.set()
        self._kick.kick()

    @calls_out
    def wait_finished(self, timeout: float | None = None) -> bool:
        """True once the last pass is over (only after `run` was started)."""
        checkpoint("state.await_final")
        return self._finished.wait(timeout)

    def start(self, *, first_pass: bool = True) -> None:
        """Have the state-pass service run this handler's passes from now on: a pass
        runs on every kick and one last pass after `finish()`; the first runs at once,
        or, without `first_pass`, on the first kick (the caller knows one comes soon:
        until then the state published at construction is the current one), unless an
        update or a kill was asked for before: its kick came while the service did not
        know this handler yet, and a pass at once takes it, as a first pass would."""
        self._passes.add(self._kick, self._step, self._finished.set, first_pass=first_pass)
        if first_pass:
            return
        # After the add: whatever is asked for from here on kicks a handler it knows.
        if self._updates.peek() is not None or self._kill_asked.is_set():
            self._kick.kick()

    @calls_out
    def _step(self) -> tuple[bool, float | None]:
        """One pass, on a worker of the service: (finished, the monotonic time of the
        next deadline or None)."""
        done = self._tasks_done.is_set()
        if done:
            self._updates.close()
            checkpoint("state.final_pass")
        update = self._updates.poll()
        if update is not None:
            self._runner.apply_update(update)
        if not done:
            self._fire_due(time.monotonic())
        self._state_pass(done)
        if done:
            return True, None
        return False, self._next_due()

    def _next_due(self) -> float | None:
        """The monotonic time of the next deadline or of the end of the kill's hold
        (None: none)."""
        due = self._wake_at()
        if self._pre_kill_ran and not self._kill.begun():
            hold = self._runner.kill_hold()
            if hold is not None and (due is None or hold < due):
                due = hold
        if due is None or math.isinf(due):
            return None
        return due

    @calls_out
    def _state_pass(self, done: bool) -> None:
        states = self._tasks.states()
        tasks = self._tasks.definitions()
        if not done:
            self._drive_kill(states)
        live = self._tasks.live(states, tasks)
        if live:
            kill_event = self._tasks.kill_event(states, tasks, live)
            if kill_event is not None and not done and not self._sibling_fired:
                self._sibling_fired = True
                checkpoint("state.sibling_kill")
                for tr in live:
                    # Not recorded on a task killed since the snapshot.
                    tr.emit_kill_reason(kill_event)
                self._kill_asked.set()
                self._drive_kill(states)
        else:
            self._tasks.release_parked()
        self._coordinator.task_state_updated(states)
        self.publish(states)

    @calls_out
    def _drive_kill(self, states: Mapping[str, TaskState]) -> None:
        """Once a kill was asked for: run the pre-kill hooks (once) and move the kill
        sequence on (`states` is this pass's snapshot)."""
        if not self._kill_asked.is_set():
            return
        if not self._pre_kill_ran:
            self._pre_kill_ran = True
            self._runner.pre_kill()
        if not self._kill.begun():
            hold = self._runner.kill_hold()
            if hold is not None and hold > time.monotonic():
                return  # the wait on the kick ends when the hold does
            self._kill_begun.set()
        self._kill.begin(states, self._kill_reason.peek() or "")

    @calls_out
    def publish(self, states: Mapping[str, TaskState]) -> None:
        """Publish the state computed from `states`; tell the updater if it changed,
        and the broadcaster's listeners in any case."""
        alloc = self._runner.current_alloc()
        state, changed = self._client_state.publish(alloc, states)
        client = client_view(alloc, state)
        if changed and self._state_updater is not None:
            try:
                self._state_updater(client)
            except Exception:
                log.exception("allocation %s: state updater failed", self._alloc_id)
        with contextlib.suppress(BroadcasterClosed):
            self._broadcaster.send(client)

    # --- health verdicts ---------------------------------------------------------------

    def has_health(self) -> bool:
        return self._client_state.has_health()

    @calls_out
    def set_health(self, healthy: bool, events: Mapping[str, TaskEvent]) -> None:
        """The health watcher's one verdict (no lock held); an unhealthy verdict of a
        running allocation records `events` on their tasks."""
        status = AllocDeploymentStatus(healthy=healthy, timestamp=utcnow())
        self._client_state.set_deployment_status(status)
        self._persister.put_deployment_status(status)
        if not healthy and not self._runner.current_alloc().server_terminal():
            for name, event in events.items():
                tr = self._tasks.get(name)
                if tr is not None:
                    tr.append_event(event)
        self._kick.kick()

    @calls_out
    def clear_health(self) -> None:
        """Forget the verdict (the allocation joined another deployment)."""
        self._client_state.set_deployment_status(None)
        self._persister.put_deployment_status(None)
        self._kick.kick()
