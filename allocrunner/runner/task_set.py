"""The task runners of one allocation and what the alloc runner does to all of them.

`TaskSet` holds one `TaskRunner` per task of the group, in the group's order, and
knows the group rules that concern several tasks at once:

- the sibling rules (`kill_event`): a failed task kills the others (`Sibling Task
  Failed`), a dead leader kills the others (`Leader Task Dead`), and once only
  sidecars are left they are killed (`Main Tasks Dead`); poststop tasks are left out;
- the kill order (`kill_waves`): the leader first, then the main tasks together,
  then the sidecars together; poststop tasks are left alone (they run after). The
  state handler walks it with a `KillSequence`, which asks each wave's run threads
  and moves on when the wave is dead; `kill_all` walks it on the caller's thread,
  waiting for each wave, for the tasks no run thread watches;
- per-task actions on every task (`each`, `each_concurrently`): a task that is not
  running is skipped, and every other failure is kept, so several failures come out
  together as one exception group (`TaskErrors` when they are all library errors).

Threads: none of its own, and it starts none: a task is killed, restarted or shut
down by its own run thread, and the methods here only ask it (`request_kill`) or, on
the caller's thread (the state handler, the destroy or shutdown thread, API callers),
ask every task first and then wait for each. A `KillSequence` is confined to the
state handler's thread. Locks: none of its own; the set never changes after
construction and task runners are thread-safe, so no lock is held while calling
them. Owner: the AllocRunner builds it (and, through its state handler, the
sequence) and is its only caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

from allocrunner._checkpoints import checkpoint
from allocrunner._locking import calls_out, confined, immutable
from allocrunner.durations import format_duration
from allocrunner.errors import AllocRunnerError, TaskNotRunningError, UnknownTaskError
from allocrunner.structs import (
    EVENT_KILLING,
    EVENT_LEADER_DEAD,
    EVENT_MAIN_DEAD,
    EVENT_SIBLING_FAILED,
    Allocation,
    FrozenDict,
    Task,
    TaskEvent,
    TaskGroup,
    TaskState,
)
from allocrunner.taskrunner import TaskRunner

__all__ = ["KillSequence", "TaskErrors", "TaskSet", "task_errors", "task_group_of"]

TaskAction = Callable[[TaskRunner], object]
# Leaves a request with a task runner; returns what waits for it to be served, if any.
PostAction = Callable[[TaskRunner], object]


class TaskErrors(AllocRunnerError, ExceptionGroup[Exception]):
    """An action on several tasks failed for some of them; `exceptions` holds each
    failure (with a note naming its task). It is an AllocRunnerError, so a caller that
    handles the library's errors handles it as it would one task's failure."""


def task_errors(what: str, failures: Sequence[tuple[str, Exception]]) -> ExceptionGroup[Exception]:
    """One exception group of `failures` (task name, error) of the action `what`:
    `TaskErrors` when every failure is a library error, else a plain ExceptionGroup
    (so an unexpected error is not taken for an expected one)."""
    errors: list[Exception] = []
    for name, err in failures:
        err.add_note(f"task {name!r}")
        errors.append(err)
    detail = "; ".join(f"task {name!r}: {err}" for name, err in failures)
    message = f"{what} failed for {len(failures)} task(s): {detail}"
    if all(isinstance(err, AllocRunnerError) for err in errors):
        return TaskErrors(message, errors)
    return ExceptionGroup(message, errors)


def task_group_of(alloc: Allocation) -> TaskGroup:
    """The allocation's task group; AllocRunnerError if it is missing or has no tasks."""
    group = alloc.group()
    if group is None:
        have = ", ".join(g.name for g in alloc.job.task_groups) if alloc.job else "no job"
        raise AllocRunnerError(
            f"allocation {alloc.id}: task group {alloc.task_group!r} not found in its job "
            f"(groups: {have or 'none'})"
        )
    if not group.tasks:
        raise AllocRunnerError(f"allocation {alloc.id}: task group {group.name!r} has no tasks")
    return group


class TaskSet:
    """Thread-safe. The task runners of one allocation, in the group's order; the set
    never changes after construction and each task runner is thread-safe."""

    _alloc_id = immutable()
    _runners = immutable()
    _max_kill_timeout = immutable()

    def __init__(
        self, alloc_id: str, runners: Sequence[TaskRunner], *, max_kill_timeout: float
    ) -> None:
        if not runners:
            raise AllocRunnerError(f"allocation {alloc_id}: no tasks to run")
        self._alloc_id = alloc_id
        self._runners: FrozenDict[str, TaskRunner] = FrozenDict((tr.name, tr) for tr in runners)
        self._max_kill_timeout = max_kill_timeout

    # --- lookup -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[TaskRunner]:
        return iter(self._runners.values())

    def __len__(self) -> int:
        return len(self._runners)

    def names(self) -> list[str]:
        return list(self._runners)

    def get(self, name: str) -> TaskRunner | None:
        return self._runners.get(name)

    def runner(self, name: str) -> TaskRunner:
        """The task runner of task `name`; UnknownTaskError if there is none."""
        try:
            return self._runners[name]
        except KeyError:
            raise UnknownTaskError(
                f"allocation {self._alloc_id} has no task {name!r} "
                f"(tasks: {', '.join(self._runners)})"
            ) from None

    def first(self) -> TaskRunner:
        return next(iter(self._runners.values()))

    def others(self) -> list[TaskRunner]:
        """Every task runner but the first."""
        return list(self._runners.values())[1:]

    def states(self) -> dict[str, TaskState]:
        """Each task's current state (each an immutable snapshot), by task name."""
        return {name: tr.task_state() for name, tr in self._runners.items()}

    @calls_out
    def latest_stats(self) -> dict[str, dict[str, float]]:
        """Resource usage of each running task, by task name."""
        stats: dict[str, dict[str, float]] = {}
        for name, tr in self._runners.items():
            usage = tr.latest_stats()
            if usage:
                stats[name] = usage
        return stats

    # --- sibling rules ----------------------------------------------------------------

    def definitions(self) -> dict[str, Task]:
        """Each task's current definition (from its runner's latest allocation), by task
        name: read once per runner, so that one state pass applies the sibling rules to
        one view of the tasks' roles."""
        return {name: tr.task() for name, tr in self._runners.items()}

    def live(self, states: Mapping[str, TaskState], tasks: Mapping[str, Task]) -> list[TaskRunner]:
        """The runners of tasks not dead in `states`, poststop tasks (by their
        definitions in `tasks`) aside."""
        return [
            tr
            for name, tr in self._runners.items()
            if not tasks[name].is_poststop() and not states[name].is_dead()
        ]

    def kill_event(
        self,
        states: Mapping[str, TaskState],
        tasks: Mapping[str, Task],
        live: list[TaskRunner],
    ) -> TaskEvent | None:
        """Why the live tasks of `states` must be killed, or None if they may run on;
        `tasks` holds the definitions (`definitions`) the roles are read from, and
        `live` is what `live(states, tasks)` gave."""
        event = self._sibling_kill_event(states, tasks)
        if event is None and self._only_sidecars_live(live, tasks):
            event = TaskEvent(
                EVENT_MAIN_DEAD,
                message="Main tasks in the group died",
                display_message="Main tasks in the group died",
            )
        return event

    def _sibling_kill_event(
        self, states: Mapping[str, TaskState], tasks: Mapping[str, Task]
    ) -> TaskEvent | None:
        event: TaskEvent | None = None
        for name in self._runners:
            state = states[name]
            task = tasks[name]
            if task.is_poststop() or not state.is_dead():
                continue
            if state.failed:
                if event is None:
                    event = TaskEvent(
                        EVENT_SIBLING_FAILED,
                        message=f"Task's sibling {name!r} failed",
                        display_message=f"Task's sibling {name!r} failed",
                        details={"failed_sibling": name},
                    )
            elif task.leader:
                event = TaskEvent(
                    EVENT_LEADER_DEAD,
                    message="Leader Task in Group dead",
                    display_message="Leader Task in Group dead",
                )
        return event

    def _only_sidecars_live(self, live: list[TaskRunner], tasks: Mapping[str, Task]) -> bool:
        if not live:
            return False
        has_sidecars = any(task.is_sidecar() for task in tasks.values())
        return has_sidecars and all(tasks[tr.name].is_sidecar() for tr in live)

    @calls_out
    def release_parked(self) -> None:
        """Every non-poststop task is dead: release the runners parked for a restart."""
        for tr in self._runners.values():
            if not tr.is_poststop() and not tr.wait(0):
                tr.kill(None, timeout=0)

    # --- killing ----------------------------------------------------------------------

    def kill_waves(self) -> list[tuple[str, tuple[TaskRunner, ...]]]:
        """The kill order, as labelled waves: the leader, then the main tasks, then the
        sidecars; empty waves and poststop tasks (they run after) are left out."""
        runners = [tr for tr in self._runners.values() if not tr.is_poststop()]
        waves = (
            ("leader", tuple(tr for tr in runners if tr.is_leader())),
            ("mains", tuple(tr for tr in runners if not tr.is_leader() and not tr.is_sidecar())),
            ("sidecars", tuple(tr for tr in runners if not tr.is_leader() and tr.is_sidecar())),
        )
        return [(label, wave) for label, wave in waves if wave]

    @calls_out
    def kill_all(self) -> None:
        """Kill every live task and wait for each: the leader first, then main tasks
        together, then sidecars together; poststop tasks are left alone (they run
        after). No thread of its own: each wave's kills are asked of the tasks' run
        threads at once, then waited for on the caller's thread. The run threads do the
        killing; only a task without one (never run, or left running by a shutdown) is
        stopped here."""
        for label, wave in self.kill_waves():
            checkpoint("tasks.kill_wave", label)
            for tr in wave:
                self.request_kill(tr)
            for tr in wave:
                with contextlib.suppress(TaskNotRunningError):
                    tr.kill(None)

    @calls_out
    def request_kill(self, tr: TaskRunner, display_message: str = "") -> None:
        """Record Killing (unless the task has finished) and ask its run thread to kill
        it; does not wait (but a task without a run thread is stopped here and now).
        `display_message` replaces the event's display message (why it is killed)."""
        event = None
        if tr.task_state().finished_at is None:
            timeout = min(tr.task().kill_timeout, self._max_kill_timeout)
            text = f"Sent interrupt. Waiting {format_duration(timeout)} before force killing"
            event = TaskEvent(
                EVENT_KILLING,
                message=text,
                display_message=display_message or text,
                details={"kill_timeout": format_duration(timeout)},
            )
        checkpoint("tasks.kill_one", tr.name)
        with contextlib.suppress(TaskNotRunningError):
            tr.kill(event, timeout=0)

    # --- actions on every task --------------------------------------------------------

    @calls_out
    def each(self, what: str, action: TaskAction) -> None:
        """Run `action` on every task runner in turn; a task that is not running is
        skipped; the other failures are raised together once all tasks were tried."""
        failures: list[tuple[str, Exception]] = []
        for name, tr in self._runners.items():
            try:
                action(tr)
            except TaskNotRunningError:
                continue
            except Exception as err:
                failures.append((name, err))
        if failures:
            raise task_errors(what, failures)

    @calls_out
    def each_concurrently(self, what: str, post: PostAction) -> None:
        """Act on every task at once, with no thread of its own: `post` leaves the
        request with each task runner without waiting and may return what waits for it
        to be served; once every task has its request, each of those waits runs in
        turn. A task that is not running is skipped; the other failures (of the post or
        of the wait) are raised together, in task order, as one exception group."""
        failed: dict[str, Exception] = {}
        waits: list[tuple[str, Callable[[], object]]] = []
        for name, tr in self._runners.items():
            try:
                wait = post(tr)
            except TaskNotRunningError:
                continue
            except Exception as err:
                failed[name] = err
                continue
            if callable(wait):
                waits.append((name, wait))
        for name, wait in waits:
            try:
                wait()
            except TaskNotRunningError:
                continue
            except Exception as err:
                failed[name] = err
        if failed:
            ordered = [(name, failed[name]) for name in self._runners if name in failed]
            raise task_errors(what, ordered)


class KillSequence:
    """Not thread-safe; owned by the state handler's passes (on ``alloc-state-pool-<n>``,
    one at a time), to which its fields are confined. Kills the tasks of one allocation in
    order (`TaskSet.kill_waves`) without a thread or a blocking wait of its own: `begin`
    asks the first wave's run threads to kill their tasks, and `advance`, called on
    every pass of the state handler (which task state changes kick), asks the next
    wave once every task of the current one is dead."""

    _tasks = immutable()
    _waves = confined("alloc-state", prefix="alloc-state-")
    _next = confined("alloc-state", prefix="alloc-state-")
    _asked = confined("alloc-state", prefix="alloc-state-")
    _display = confined("alloc-state", prefix="alloc-state-")

    def __init__(self, tasks: TaskSet) -> None:
        self._tasks = tasks
        self._waves: tuple[tuple[str, tuple[TaskRunner, ...]], ...] | None = None
        self._next = 0
        self._asked = False
        self._display = ""

    def begun(self) -> bool:
        return self._waves is not None

    @calls_out
    def begin(self, states: Mapping[str, TaskState], display_message: str = "") -> None:
        """Start the sequence (once; later calls do nothing but `advance`); the Killing
        events carry `display_message` when it is given."""
        if self._waves is None:
            self._waves = tuple(self._tasks.kill_waves())
            self._display = display_message
        self.advance(states)

    @calls_out
    def advance(self, states: Mapping[str, TaskState]) -> None:
        """Ask the current wave to die, and move on to the next while the current one
        is dead in `states` (a task dead there is dead for good: it was asked to die).
        A wave still alive is checked again on a later pass: the death of a task
        changes its state, which kicks the state handler."""
        waves = self._waves
        if waves is None:
            return
        while self._next < len(waves):
            label, wave = waves[self._next]
            if not self._asked:
                checkpoint("tasks.kill_wave", label)
                for tr in wave:
                    self._tasks.request_kill(tr, self._display)
                self._asked = True
            if not all(states[tr.name].is_dead() for tr in wave):
                return
            self._next += 1
            self._asked = False
