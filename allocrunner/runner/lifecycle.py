"""The task lifecycle coordinator: which tasks of a group may start, and when.

Tasks fall into six stages by their `lifecycle` block: prestart-ephemeral,
prestart-sidecar, main (no lifecycle), poststart-ephemeral, poststart-sidecar and
poststop. The coordinator is a small state machine over the task states the alloc
runner reports:

    init → prestart → main → poststart → wait_alloc → poststop

- init is left once every task is pending (a fresh or restarted group);
- prestart is left when there are no prestart tasks, or every ephemeral prestart
  task completed successfully and every prestart sidecar is running;
- main is left when there are no main tasks or none is pending any more;
- poststart is left when there are no poststart tasks or every ephemeral poststart
  task is dead;
- wait_alloc lasts until the group is done;
- from any state, once every non-poststop task is dead the group is done and the
  machine jumps to poststop, which it never leaves (short of `restart()`).

Each state opens a fixed set of stage gates and closes the others (`GATES_BY_STATE`);
a task runner waits on its stage's gate before starting its task. A gate is a flag
and a wake-up signal, not a thread: opening it wakes every waiter at once.

Threads: none of its own; the AllocRunner's state passes drive it (and the
allocation's own thread once, at the start of a fresh run, whose first pass waits for
a task event: the machine only moves forward, so a snapshot older than a pass's cannot
undo what the pass did) and each task runner's run thread waits on its gate. Locks:
the gates share the coordinator's lock, which guards the current state and every
gate's flag. The module's cache of stage layouts (`_stage_layout`) takes no lock: each
entry is one immutable value, set or read in a single step, and a race only computes
an equal layout twice. Owner: the AllocRunner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import monotonic
from types import MappingProxyType

from allocrunner._locking import Mutex, calls_out, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken
from allocrunner.errors import UnknownTaskError
from allocrunner.structs import TASK_DEAD, TASK_PENDING, TASK_RUNNING, Task, TaskState

__all__ = [
    "COORDINATOR_STATES",
    "GATES_BY_STATE",
    "STAGES",
    "Gate",
    "TaskCoordinator",
    "task_stage",
]

STAGE_PRESTART_EPHEMERAL = "prestart-ephemeral"
STAGE_PRESTART_SIDECAR = "prestart-sidecar"
STAGE_MAIN = "main"
STAGE_POSTSTART_EPHEMERAL = "poststart-ephemeral"
STAGE_POSTSTART_SIDECAR = "poststart-sidecar"
STAGE_POSTSTOP = "poststop"
STAGES = (
    STAGE_PRESTART_EPHEMERAL,
    STAGE_PRESTART_SIDECAR,
    STAGE_MAIN,
    STAGE_POSTSTART_EPHEMERAL,
    STAGE_POSTSTART_SIDECAR,
    STAGE_POSTSTOP,
)

STATE_INIT = "init"
STATE_PRESTART = "prestart"
STATE_MAIN = "main"
STATE_POSTSTART = "poststart"
STATE_WAIT_ALLOC = "wait_alloc"
STATE_POSTSTOP = "poststop"
COORDINATOR_STATES = (
    STATE_INIT,
    STATE_PRESTART,
    STATE_MAIN,
    STATE_POSTSTART,
    STATE_WAIT_ALLOC,
    STATE_POSTSTOP,
)

# The stages whose gates are open in each state; every other gate is closed.
GATES_BY_STATE: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        STATE_INIT: frozenset(),
        STATE_PRESTART: frozenset({STAGE_PRESTART_EPHEMERAL, STAGE_PRESTART_SIDECAR}),
        STATE_MAIN: frozenset({STAGE_PRESTART_SIDECAR, STAGE_MAIN}),
        STATE_POSTSTART: frozenset(
            {
                STAGE_PRESTART_SIDECAR,
                STAGE_MAIN,
                STAGE_POSTSTART_EPHEMERAL,
                STAGE_POSTSTART_SIDECAR,
            }
        ),
        STATE_WAIT_ALLOC: frozenset({STAGE_PRESTART_SIDECAR, STAGE_MAIN, STAGE_POSTSTART_SIDECAR}),
        STATE_POSTSTOP: frozenset({STAGE_POSTSTOP}),
    }
)

_PENDING = TaskState()


def task_stage(task: Task) -> str:
    """The lifecycle stage of `task` (a task with no lifecycle hook is main)."""
    if task.is_prestart():
        return STAGE_PRESTART_SIDECAR if task.is_sidecar() else STAGE_PRESTART_EPHEMERAL
    if task.is_poststart():
        return STAGE_POSTSTART_SIDECAR if task.is_sidecar() else STAGE_POSTSTART_EPHEMERAL
    if task.is_poststop():
        return STAGE_POSTSTOP
    return STAGE_MAIN


_Layout = tuple[Mapping[str, str], Mapping[str, tuple[str, ...]]]

# The stage layouts of the task lists seen last, by the list's identity (with the list,
# so that its id is not reused while it is kept): every allocation of a job shares its
# group's task list, so its coordinators share two read-only maps instead of making
# them again, two more objects each for the collector to walk. Bounded; a race only
# computes an equal layout twice.
_LAYOUTS: dict[int, tuple[Sequence[Task], _Layout]] = {}
_LAYOUTS_MAX = 64


def _stage_layout(tasks: Sequence[Task]) -> _Layout:
    """Task name -> stage, and stage -> task names (only stages present) of `tasks`,
    validated: each a Task, no name repeated."""
    cached = _LAYOUTS.get(id(tasks))
    if cached is not None and cached[0] is tasks:
        return cached[1]
    stage_of: dict[str, str] = {}
    by_stage: dict[str, list[str]] = {}
    for index, task in enumerate(tasks):
        if not isinstance(task, Task):
            raise TypeError(
                f"TaskCoordinator: tasks[{index}] must be a Task, got {type(task).__name__}"
            )
        if task.name in stage_of:
            raise ValueError(f"TaskCoordinator: tasks[{index}].name {task.name!r} is repeated")
        stage = task_stage(task)
        stage_of[task.name] = stage
        by_stage.setdefault(stage, []).append(task.name)
    layout: _Layout = (
        MappingProxyType(stage_of),
        MappingProxyType({s: tuple(n) for s, n in by_stage.items()}),
    )
    if isinstance(tasks, tuple):  # a list could change under the cache
        if len(_LAYOUTS) >= _LAYOUTS_MAX:
            _LAYOUTS.clear()
        _LAYOUTS[id(tasks)] = (tasks, layout)
    return layout


class Gate:
    """Thread-safe. Whether the tasks of one lifecycle stage may start.

    Task runners block in `wait_open`; the coordinator opens and closes the gate.
    Opening wakes every waiter; closing only stops later waiters from passing (a task
    that already passed keeps running). The wake-up signal is a `CancelToken` that is
    cancelled when the gate opens and replaced when it closes, so that a waiter can
    sleep on "gate opened or caller cancelled" at once without polling.

    A gate made by a `TaskCoordinator` shares the coordinator's lock, so that the
    coordinator moves all its gates in one step; a gate made alone has its own.
    """

    # _lock guards: _open, _opened
    _lock = immutable()
    _open = guarded("_lock")
    _opened = guarded("_lock")  # cancelled while the gate is open; replaced on close
    stage = immutable()

    def __init__(self, stage: str = "", *, lock: Mutex | None = None) -> None:
        self.stage = stage
        self._lock = lock if lock is not None else make_lock("TaskCoordinator._lock")
        self._open = False
        self._opened = CancelToken()

    def is_open(self) -> bool:
        """True while the gate is open."""
        with self._lock:
            return self._open

    def open(self) -> None:
        """Open the gate and wake every waiter."""
        with self._lock:
            self._open_locked()

    def close(self) -> None:
        """Close the gate; waiters from now on block until it opens again."""
        with self._lock:
            self._close_locked()

    @requires("_lock")
    def _open_locked(self) -> None:
        if not self._open:
            self._open = True
            self._opened.cancel("gate opened")  # notify-only kick

    @requires("_lock")
    def _close_locked(self) -> None:
        if self._open:
            self._open = False
            self._opened = CancelToken()

    @calls_out
    def wait_open(self, cancel: CancelToken, timeout: float | None = None) -> bool:
        """Block until the gate is open: True once it is; False as soon as `cancel` is
        cancelled (cancellation wins over an open gate) or `timeout` seconds pass."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            if cancel.cancelled():
                return False
            with self._lock:
                if self._open:
                    return True
                opened = self._opened
            remaining = None
            if deadline is not None:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    return False
            CancelToken.any_of(cancel, opened).wait(remaining)

    def __repr__(self) -> str:
        return f"<Gate {self.stage or '?'}>"


class TaskCoordinator:
    """Thread-safe. Opens and closes the lifecycle gates of one task group.

    The alloc runner reports every change of task states through
    `task_state_updated`; the coordinator advances its state machine until it is
    stable and then sets every gate at once. Waiters that wake for a gate that closed
    again in the same step simply wait on (no task slips through a transient opening).
    Opening and closing gates are notify-only, so they happen under the lock.
    """

    # _lock guards: _state, and the flag and signal of every gate in _gates
    _lock = immutable()
    _state = guarded("_lock")
    _stage_of = immutable()  # task name -> stage
    _tasks_by_stage = immutable()  # stage -> task names (only stages present)
    _gates = immutable()  # stage -> Gate (only stages present)

    def __init__(self, tasks: Sequence[Task]) -> None:
        stage_of, by_stage = _stage_layout(tasks)
        self._lock = make_lock("TaskCoordinator._lock")
        self._stage_of = stage_of
        self._tasks_by_stage = by_stage
        self._gates = MappingProxyType({s: Gate(s, lock=self._lock) for s in by_stage})
        self._state = STATE_INIT

    # --- queries ----------------------------------------------------------------------

    def gate(self, task_name: str) -> Gate:
        """The gate of the stage `task_name` belongs to."""
        try:
            return self._gates[self._stage_of[task_name]]
        except KeyError:
            raise UnknownTaskError(
                f"TaskCoordinator.gate: no task named {task_name!r} "
                f"(tasks: {', '.join(self._stage_of) or 'none'})"
            ) from None

    def stage_of(self, task_name: str) -> str:
        """The lifecycle stage of task `task_name`."""
        try:
            return self._stage_of[task_name]
        except KeyError:
            raise UnknownTaskError(f"TaskCoordinator: no task named {task_name!r}") from None

    def stage(self) -> str:
        """The current state of the machine (one of `COORDINATOR_STATES`)."""
        with self._lock:
            return self._state

    def open_stages(self) -> frozenset[str]:
        """The stages (present in this group) whose gates are open now."""
        with self._lock:
            return frozenset(s for s, g in self._gates.items() if g._open)

    # --- transitions ------------------------------------------------------------------

    def task_state_updated(self, states: Mapping[str, TaskState]) -> None:
        """Advance the machine on new task states until it is stable, then set the gates.

        A task missing from `states` counts as pending; names of unknown tasks are
        ignored.
        """
        with self._lock:
            self._advance_locked(states)

    def restore(self, states: Mapping[str, TaskState]) -> None:
        """Place the machine for tasks restored after an agent restart.

        Restored tasks are seldom all pending, so init is skipped: the machine enters
        prestart and advances from there on `states`.
        """
        with self._lock:
            self._state = STATE_PRESTART
            self._advance_locked(states)

    def restart(self) -> None:
        """Go back to init (all gates closed) so the group restarts in lifecycle order."""
        with self._lock:
            self._state = STATE_INIT
            self._apply_gates_locked()

    @requires("_lock")
    def _advance_locked(self, states: Mapping[str, TaskState]) -> None:
        while True:
            following = self._next_state_locked(states)
            if following == self._state:
                break
            self._state = following
        self._apply_gates_locked()

    @requires("_lock")
    def _apply_gates_locked(self) -> None:
        allowed = GATES_BY_STATE[self._state]
        for stage, gate in self._gates.items():
            if stage in allowed:
                gate._open_locked()
            else:
                gate._close_locked()

    @requires("_lock")
    def _next_state_locked(self, states: Mapping[str, TaskState]) -> str:
        if self._alloc_done(states):
            return STATE_POSTSTOP
        state = self._state
        if state == STATE_INIT:
            return STATE_PRESTART if self._init_done(states) else state
        if state == STATE_PRESTART:
            return STATE_MAIN if self._prestart_done(states) else state
        if state == STATE_MAIN:
            return STATE_POSTSTART if self._main_done(states) else state
        if state == STATE_POSTSTART:
            return STATE_WAIT_ALLOC if self._poststart_done(states) else state
        return state  # wait_alloc and poststop leave only when the alloc is done

    # --- conditions (pure; read only immutable fields) --------------------------------

    # Mostly plain loops: a state pass tests several of these, a thousand starting
    # allocations make three passes each, and a generator costs a call per task.

    def _states_of(self, states: Mapping[str, TaskState], stage: str) -> list[TaskState]:
        get = states.get
        return [get(name, _PENDING) for name in self._tasks_by_stage.get(stage, ())]

    def _init_done(self, states: Mapping[str, TaskState]) -> bool:
        get = states.get
        return all(get(name, _PENDING).state == TASK_PENDING for name in self._stage_of)

    def _prestart_done(self, states: Mapping[str, TaskState]) -> bool:
        for state in self._states_of(states, STAGE_PRESTART_EPHEMERAL):
            if not state.successful():
                return False
        for state in self._states_of(states, STAGE_PRESTART_SIDECAR):
            if state.state != TASK_RUNNING:
                return False
        return True

    def _main_done(self, states: Mapping[str, TaskState]) -> bool:
        return all(state.state != TASK_PENDING for state in self._states_of(states, STAGE_MAIN))

    def _poststart_done(self, states: Mapping[str, TaskState]) -> bool:
        for state in self._states_of(states, STAGE_POSTSTART_EPHEMERAL):
            if state.state != TASK_DEAD:
                return False
        return True

    def _alloc_done(self, states: Mapping[str, TaskState]) -> bool:
        get = states.get
        for name, stage in self._stage_of.items():
            if stage != STAGE_POSTSTOP and get(name, _PENDING).state != TASK_DEAD:
                return False
        return True

    def __repr__(self) -> str:
        return f"<TaskCoordinator tasks={len(self._stage_of)}>"
