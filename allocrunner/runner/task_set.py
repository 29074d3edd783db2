"""The task runners of one allocation and what the alloc runner does to all of them.

`TaskSet` holds one `TaskRunner` per task of the group, in the group's order, and
knows the group rules that concern several tasks at once:

- the sibling rules (`kill_event`): a failed task kills the others (`Sibling Task
  Failed`), a dead leader kills the others (`Leader Task Dead`), and once only
  sidecars are left they are killed (`Main Tasks Dead`); poststop tasks are left out;
- the kill order (`kill_all`): the leader first, then the main tasks together, then
  the sidecars together; poststop tasks are left alone (they run after);
- per-task actions on every task (`each`, `each_concurrently`): a task that is not
  running is skipped, and every other failure is kept, so several failures come out
  together as one exception group (`TaskErrors` when they are all library errors).

Threads: its methods run on the caller's thread (the alloc runner's state handler,
its stop/destroy/shutdown threads, API callers). `kill_all` and `each_concurrently`
start one transient thread per task (``kill-<id8>-<name>``, ``each-<id8>-<name>``)
and join them before returning. Locks: none of its own; the set never changes after
construction and task runners are thread-safe, so no lock is held while calling
them. Owner: the AllocRunner builds it and is its only caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

from allocrunner._checkpoints import checkpoint
from allocrunner._locking import calls_out, immutable
from allocrunner._sync import Fifo, ThreadGroup
from allocrunner.durations import format_duration
from allocrunner.errors import AllocRunnerError, TaskNotRunningError, UnknownTaskError
from allocrunner.structs import (
    EVENT_KILLING,
    EVENT_LEADER_DEAD,
    EVENT_MAIN_DEAD,
    EVENT_SIBLING_FAILED,
    Allocation,
    FrozenDict,
    TaskEvent,
    TaskGroup,
    TaskState,
)
from allocrunner.taskrunner import TaskRunner

__all__ = ["TaskErrors", "TaskSet", "task_errors", "task_group_of"]

TaskAction = Callable[[TaskRunner], object]


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

    def live(self, states: Mapping[str, TaskState]) -> list[TaskRunner]:
        """The runners of tasks not dead in `states`, poststop tasks aside."""
        return [
            tr
            for name, tr in self._runners.items()
            if not tr.is_poststop() and not states[name].is_dead()
        ]

    def kill_event(self, states: Mapping[str, TaskState]) -> TaskEvent | None:
        """Why the live tasks of `states` must be killed, or None if they may run on."""
        event = self._sibling_kill_event(states)
        if event is None and self._only_sidecars_live(self.live(states)):
            event = TaskEvent(
                EVENT_MAIN_DEAD,
                message="Main tasks in the group died",
                display_message="Main tasks in the group died",
            )
        return event

    def _sibling_kill_event(self, states: Mapping[str, TaskState]) -> TaskEvent | None:
        event: TaskEvent | None = None
        for name, tr in self._runners.items():
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
        if not live:
            return False
        has_sidecars = any(tr.is_sidecar() for tr in self._runners.values())
        return has_sidecars and all(tr.is_sidecar() for tr in live)

    @calls_out
    def release_parked(self) -> None:
        """Every non-poststop task is dead: release the runners parked for a restart."""
        for tr in self._runners.values():
            if not tr.is_poststop() and not tr.wait(0):
                tr.kill(None, timeout=0)

    # --- killing ----------------------------------------------------------------------

    @calls_out
    def kill_all(self) -> None:
        """Kill every live task: the leader first, then main tasks together, then
        sidecars together; poststop tasks are left alone (they run after)."""
        runners = [tr for tr in self._runners.values() if not tr.is_poststop()]
        leaders = [tr for tr in runners if tr.is_leader()]
        mains = [tr for tr in runners if not tr.is_leader() and not tr.is_sidecar()]
        sidecars = [tr for tr in runners if not tr.is_leader() and tr.is_sidecar()]
        for label, wave in (("leader", leaders), ("mains", mains), ("sidecars", sidecars)):
            checkpoint("tasks.kill_wave", label)
            self._kill_together(wave)

    @calls_out
    def _kill_together(self, runners: list[TaskRunner]) -> None:
        if not runners:
            return
        if len(runners) == 1:
            self._kill_one(runners[0])
            return
        group = ThreadGroup(f"kill-{self._alloc_id[:8]}")
        for tr in runners:
            group.spawn(f"kill-{self._alloc_id[:8]}-{tr.name}", self._kill_one, tr)
        group.join()

    @calls_out
    def _kill_one(self, tr: TaskRunner) -> None:
        event = None
        if tr.task_state().finished_at is None:
            timeout = min(tr.task().kill_timeout, self._max_kill_timeout)
            text = f"Sent interrupt. Waiting {format_duration(timeout)} before force killing"
            event = TaskEvent(
                EVENT_KILLING,
                message=text,
                display_message=text,
                details={"kill_timeout": format_duration(timeout)},
            )
        checkpoint("tasks.kill_one", tr.name)
        with contextlib.suppress(TaskNotRunningError):
            tr.kill(event)

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
    def each_concurrently(self, what: str, action: TaskAction) -> None:
        """Run `action` on every task runner at once (a thread each) and wait for all;
        a task that is not running is skipped; the other failures are raised
        together, in task order, as one exception group."""
        outcomes: Fifo[tuple[str, Exception]] = Fifo()

        def attempt(tr: TaskRunner) -> None:
            try:
                action(tr)
            except TaskNotRunningError:
                pass
            except Exception as err:
                outcomes.put((tr.name, err))

        group = ThreadGroup(f"each-{self._alloc_id[:8]}")
        for tr in self._runners.values():
            group.spawn(f"each-{self._alloc_id[:8]}-{tr.name}", attempt, tr)
        group.join()
        failed = dict(outcomes.drain())
        if failed:
            ordered = [(name, failed[name]) for name in self._runners if name in failed]
            raise task_errors(what, ordered)
