"""Task hooks, the one phase runner that calls them, and the built-in hooks.

A task hook is a small object with a `name` and any of these phase methods, each
taking a `HookRequest` (Nomad's task-runner hook interfaces):

- ``prestart(req) -> PrestartResult | None``: before every start. A result marked
  `done` is recorded (with its `data` and `env`) in the task's LocalState; later
  starts, also after an agent restart, skip the hook and re-apply its env. It is
  written to the state DB at once, as Nomad writes after every prestart hook, unless
  it is also `redoable` (see `PrestartResult`).
- ``poststart(req)``: after the task started; ``req.handle`` is its handle.
- ``pre_kill(req)``: before the task is stopped (killed or restarted).
- ``exited(req)``: after every exit; ``req.result`` is the exit result.
- ``update(req)``: the allocation was updated (never for a terminal one).
- ``stop(req)``: the task will not run again (the run loop finished for good).
- ``shutdown(req)``: the agent shuts down gracefully and leaves the task running.

Each phase is a protocol (`Prestart`, `Poststart`, `PreKill`, `Exited`, `Update`,
`Stop`, `Shutdown`). `run_phase` calls one phase on every hook that implements it, in
order and with no lock held, through the shared phase runner (`allocrunner._hooks`)
under an explicit error policy: prestart stops at the first failure (later hooks
depend on earlier ones, and the restart policy decides what happens next); every
other phase runs all hooks and raises every failure together. Each failure is a
`HookError` naming the hook and chained (``raise … from``) to the original error,
whose recoverability it keeps.

Threads: phases run on the task runner's threads, one phase of a hook at a time.
Locks: none here; phases are callouts. Owner: each TaskRunner builds its hooks
(`default_hooks`); its `TaskHookPhases` (hook_phases.py) binds them to their phases
once (`bind_phase`) and runs each phase.

Built-ins, in order: `ValidateHook`, `TaskDirHook`, `LogsHook`, `DispatchPayloadHook`
(in `dispatch_hook`, which builds on this module), `EnvHook`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeGuard, TypeVar, runtime_checkable

import attrs

from allocrunner._hooks import NamedHook, Policy
from allocrunner._hooks import run_phase as _run_hooks
from allocrunner._locking import calls_out
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir, TaskDir
from allocrunner.drivers._common import signal_number
from allocrunner.drivers.base import ExitResult, TaskHandle
from allocrunner.errors import DriverError
from allocrunner.state import HookState
from allocrunner.structs import Allocation, Task, TaskEvent
from allocrunner.structs.frozen import EMPTY, FrozenDict, frozen_map, plain_dict
from allocrunner.structs.task_state import (
    EVENT_FAILED_VALIDATION,
    EVENT_SETUP,
    MSG_BUILDING_TASK_DIR,
)
from allocrunner.taskrunner.env import nomad_env, task_env

if TYPE_CHECKING:
    from allocrunner.taskrunner.template_watch import TemplateLifecycle

__all__ = [
    "COLLECT_ALL",
    "DONE",
    "DONE_REDOABLE",
    "PHASES",
    "STOP_AT_FIRST",
    "BoundHook",
    "EnvHook",
    "Exited",
    "HookEventError",
    "HookList",
    "HookRequest",
    "LogsHook",
    "Policy",
    "Poststart",
    "PreKill",
    "Prestart",
    "PrestartResult",
    "Shutdown",
    "Stop",
    "TaskDirHook",
    "TaskHook",
    "Update",
    "ValidateHook",
    "bind_phase",
    "default_hooks",
    "phase_label",
    "run_phase",
]

PHASES = ("prestart", "poststart", "pre_kill", "exited", "update", "stop", "shutdown")
STOP_AT_FIRST = Policy.STOP_AT_FIRST
COLLECT_ALL = Policy.COLLECT_ALL

_LABELS: Mapping[str, str] = {"pre_kill": "pre-kill"}


class TaskHook:
    """Not thread-safe; owned by one TaskRunner, which calls its phases one at a time.

    Subclasses set `name` and define the phases they need (see the module docstring).
    """

    name: ClassVar[str] = "hook"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@attrs.frozen
class HookRequest:
    """Immutable. What a hook phase is told about the task.

    `env` is what a hook may interpolate or render with: the task environment built
    so far (prestart) or the one the task runs with (later phases), over the node's
    interpolation variables `node_vars` (``node.unique.id``, ``attr.<key>``,
    ``meta.<key>``, …; `env.interpolation_scope`). Only the env a prestart hook hands
    back joins the task's environment, so node variables never reach the process.
    `cancel` fires when the work should stop early (the task is killed, or, in
    prestart, the agent shuts down). `emit_event` records a task event (in prestart,
    the state DB gets it with the hook's own record or the task's next write).
    """

    alloc: Allocation
    task: Task
    alloc_dir: AllocDir
    task_dir: TaskDir
    cancel: CancelToken
    emit_event: Callable[[TaskEvent], None]
    env: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    previous: HookState | None = None
    handle: TaskHandle | None = None
    result: ExitResult | None = None
    datacenter: str = ""
    node_vars: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)


@attrs.frozen
class PrestartResult:
    """Immutable. What a prestart hook hands back: env for the task, private data, and
    whether it is done for good (then skipped on every later start).

    `redoable` says that running the hook again would cost little and change nothing
    (it is idempotent, and it made nothing that a second run would make twice): its
    record then reaches the state DB with the task's next write instead of a write of
    its own, at the latest with the driver handle of the task's start, which is
    committed before the task is seen running. An agent that dies before that write
    runs the hook again on restore. A result with `data` (a resource the hook must
    find again) is written at once whatever it says."""

    env: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    data: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    done: bool = False
    redoable: bool = False

    def hook_state(self) -> HookState:
        """What is recorded: the env only of a done hook (the only env ever re-applied;
        a hook that is not done runs again and hands its env back afresh)."""
        if self.data is EMPTY and (self.env is EMPTY or not self.done):
            # Most hooks hand back no data and no env to keep: one of two shared values.
            return _DONE_STATE if self.done else _NOT_DONE_STATE
        return HookState(
            prestart_done=self.done, data=self.data, env=self.env if self.done else EMPTY
        )


DONE = PrestartResult(done=True)
"""The result of a hook that is done for good and hands back nothing (shared)."""
DONE_REDOABLE = PrestartResult(done=True, redoable=True)
"""`DONE` of a hook whose second run would cost little and change nothing, such as
one that found nothing to do (shared): written with the task's next write."""
_DONE_STATE = HookState(prestart_done=True)
_NOT_DONE_STATE = HookState()


class HookEventError(Exception):
    """A hook failure that carries the task event to record for it (instead of a
    generic "Task hook failed") and whether a restart may help."""

    def __init__(self, message: str, event: TaskEvent, *, recoverable: bool = False) -> None:
        super().__init__(message)
        self.event = event
        self.recoverable = recoverable


@runtime_checkable
class Prestart(NamedHook, Protocol):
    """Prepares every start; may hand back env and data (see `PrestartResult`)."""

    def prestart(self, req: HookRequest) -> PrestartResult | None: ...


@runtime_checkable
class Poststart(NamedHook, Protocol):
    """Runs after the task started."""

    def poststart(self, req: HookRequest) -> None: ...


@runtime_checkable
class PreKill(NamedHook, Protocol):
    """Runs before the task is stopped (killed or restarted)."""

    def pre_kill(self, req: HookRequest) -> None: ...


@runtime_checkable
class Exited(NamedHook, Protocol):
    """Runs after every exit of the task."""

    def exited(self, req: HookRequest) -> None: ...


@runtime_checkable
class Update(NamedHook, Protocol):
    """Takes in an updated (non-terminal) allocation."""

    def update(self, req: HookRequest) -> None: ...


@runtime_checkable
class Stop(NamedHook, Protocol):
    """Runs once the task will not run again."""

    def stop(self, req: HookRequest) -> None: ...


@runtime_checkable
class Shutdown(NamedHook, Protocol):
    """Runs on a graceful agent shutdown (the task keeps running)."""

    def shutdown(self, req: HookRequest) -> None: ...


@attrs.frozen
class HookList:
    """Immutable. A task's hooks in order, each bound to a phase only while that phase
    runs (`bind_phase`): most phases never run in a task's life, and a running task
    should not hold a bound method and a `BoundHook` per hook and phase for them, each
    one more object for the cyclic garbage collector to walk. Which phases each hook's
    class implements is decided when the list is made, so a method added to a hook
    later is never bound."""

    hooks: tuple[object, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        for hook in self.hooks:
            cls = type(hook)
            if cls not in _PRIMED:
                for protocol in _PHASE_PROTOCOLS:
                    implements(hook, protocol)
                _PRIMED.add(cls)


@attrs.frozen
class BoundHook:
    """Immutable. One hook with its method of one phase."""

    hook: NamedHook
    method: Callable[[HookRequest], object]

    @property
    def name(self) -> str:
        return self.hook.name


# (hook class, phase protocol) -> whether the class implements it. A runtime protocol
# check costs a walk over the protocol's members; hooks define their phase methods on
# the class, so one check per class is enough. Written without a lock: a dict item
# assignment is atomic, and two threads that race compute the same answer.
_IMPLEMENTS: dict[tuple[type, type], bool] = {}
_P = TypeVar("_P")


def implements(hook: object, phase: type[_P]) -> TypeGuard[_P]:
    """`isinstance(hook, phase)` for a runtime phase protocol, decided once per class."""
    key = (type(hook), phase)
    known = _IMPLEMENTS.get(key)
    if known is None:
        known = isinstance(hook, phase)
        _IMPLEMENTS[key] = known
    return known


_PHASE_PROTOCOLS: tuple[type, ...] = (Prestart, Poststart, PreKill, Exited, Update, Stop, Shutdown)

# Hook classes `implements` has decided every phase protocol for: a task's hook list is
# made for every task started, always of the same few classes. Written without a lock,
# as `_IMPLEMENTS` is: a set add is atomic, and a class is added only once decided.
_PRIMED: set[type] = set()


def bind_phase(hooks: Sequence[object], phase: str) -> list[BoundHook]:
    """The hooks of `hooks` that implement `phase`, in order, each with its method;
    ValueError for an unknown phase."""
    match phase:
        case "prestart":
            return [BoundHook(h, h.prestart) for h in hooks if implements(h, Prestart)]
        case "poststart":
            return [BoundHook(h, h.poststart) for h in hooks if implements(h, Poststart)]
        case "pre_kill":
            return [BoundHook(h, h.pre_kill) for h in hooks if implements(h, PreKill)]
        case "exited":
            return [BoundHook(h, h.exited) for h in hooks if implements(h, Exited)]
        case "update":
            return [BoundHook(h, h.update) for h in hooks if implements(h, Update)]
        case "stop":
            return [BoundHook(h, h.stop) for h in hooks if implements(h, Stop)]
        case "shutdown":
            return [BoundHook(h, h.shutdown) for h in hooks if implements(h, Shutdown)]
    raise ValueError(f"unknown task hook phase {phase!r} (phases: {', '.join(PHASES)})")


def phase_label(phase: str) -> str:
    """How `phase` is named in errors and logs (e.g. "pre-kill")."""
    return _LABELS.get(phase, phase)


@calls_out
def run_phase(
    hooks: Sequence[Any],
    phase: str,
    call: Callable[[Any, Callable[..., Any]], Any],
    *,
    policy: Policy,
) -> None:
    """Run `phase` on every hook that implements it, through ``call(hook, method)``.

    STOP_AT_FIRST raises the first failure as a HookError; COLLECT_ALL runs every hook
    and raises a HookErrors group of all failures. Either way each HookError is
    chained to the original error and keeps its recoverability.
    """
    _run_hooks(
        bind_phase(hooks, phase),
        phase_label(phase),
        lambda bound: call(bound.hook, bound.method),
        policy=policy,
    )


def _validation_error(task: Task, message: str) -> HookEventError:
    text = f"task {task.name!r}: {message}"
    event = TaskEvent(
        EVENT_FAILED_VALIDATION,
        message=text,
        display_message=text,
        details={"validation_error": text},
    )
    return HookEventError(text, event, recoverable=False)


class ValidateHook(TaskHook):
    """Refuses a task that cannot run: no name or driver, a config or env that is not
    a mapping of the right types, a negative kill timeout, an unknown kill signal."""

    name = "validate"

    def prestart(self, req: HookRequest) -> None:
        task = req.task
        if not isinstance(task.name, str) or not task.name:
            raise _validation_error(task, "name: missing task name")
        if not isinstance(task.driver, str) or not task.driver:
            raise _validation_error(task, "driver: missing driver name")
        if not isinstance(task.config, Mapping):
            raise _validation_error(
                task, f"config: must be a mapping, not {type(task.config).__name__}"
            )
        for key in task.config:
            if not isinstance(key, str):
                raise _validation_error(task, f"config: key {key!r} is not a string")
        for key, value in task.env.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                raise _validation_error(task, f"env: invalid variable name {key!r}")
            if not isinstance(value, str):
                raise _validation_error(
                    task, f"env[{key!r}]: must be a string, not {type(value).__name__}"
                )
        if task.kill_timeout < 0:
            raise _validation_error(
                task, f"kill_timeout: must not be negative ({task.kill_timeout})"
            )
        if task.shutdown_delay < 0:
            raise _validation_error(
                task, f"shutdown_delay: must not be negative ({task.shutdown_delay})"
            )
        if task.kill_signal:
            try:
                signal_number(task.kill_signal)
            except DriverError as err:
                raise _validation_error(task, f"kill_signal: {err}") from err


class TaskDirHook(TaskHook):
    """Builds the task's directories once (a `Task Setup` event says so)."""

    name = "task_dir"

    @calls_out
    def prestart(self, req: HookRequest) -> PrestartResult:
        req.emit_event(
            TaskEvent(
                EVENT_SETUP, message=MSG_BUILDING_TASK_DIR, display_message=MSG_BUILDING_TASK_DIR
            )
        )
        req.task_dir.build()
        return DONE_REDOABLE  # building the directories again finds them built


class LogsHook(TaskHook):
    """Makes sure the shared logs dir exists and the task's rotation settings are sane
    (the runner passes them to the driver in the TaskConfig)."""

    name = "logs"

    @calls_out
    def prestart(self, req: HookRequest) -> None:
        logs = req.task.logs
        if logs.max_files < 1:
            raise _validation_error(
                req.task, f"logs.max_files: must be at least 1 ({logs.max_files})"
            )
        if logs.max_file_size_mb < 1:
            raise _validation_error(
                req.task, f"logs.max_file_size_mb: must be at least 1 ({logs.max_file_size_mb})"
            )
        if not os.path.isdir(req.task_dir.logs_dir):  # built with the alloc dir, as a rule
            os.makedirs(req.task_dir.logs_dir, exist_ok=True)


class EnvHook(TaskHook):
    """Builds the task environment: Nomad's NOMAD_* variables (the allocation's port
    variables among them), NOMAD_META_*, then the task's own ``env``, interpolated
    against them and the node variables (which are not exported). Rebuilt at every
    start, so an updated job's env applies to the next start."""

    name = "env"

    def prestart(self, req: HookRequest) -> PrestartResult:
        paths = req.task_dir.paths()
        env = nomad_env(
            req.alloc,
            req.task,
            alloc_dir=paths.alloc_dir,
            local_dir=paths.local_dir,
            secrets_dir=paths.secrets_dir,
            datacenter=req.datacenter,
            node_vars=req.node_vars,
        )
        scope = plain_dict(req.env)
        scope.update(env)
        try:
            env.update(task_env(req.task, scope))
        except ValueError as err:
            raise _validation_error(req.task, str(err)) from err
        return PrestartResult(env=env)


def default_hooks(
    lifecycle: TemplateLifecycle | None = None,
    *,
    artifact_allow_local: bool = False,
    task: Task | None = None,
) -> list[TaskHook]:
    """Fresh instances of the built-in hooks, in Nomad's order. With `lifecycle` (the
    task runner) the template hook re-renders source templates while the task runs and
    applies their change_mode; `artifact_allow_local` lets artifacts be local files.

    With `task`, the hooks that could never act for it are left out: the dispatch
    payload hook for a task without a ``dispatch_payload`` block, the artifact hook for
    one without artifacts, the template hook for one without templates (Nomad adds its
    template hook only to a task with templates). None of those three blocks changes
    for a running allocation: a job whose group changed gets new allocations (the
    scheduler's destructive update), and only an unchanged group's allocations take a
    new job version in place. Every allocation pays for the hooks it holds, on every
    phase and in memory, so a thousand plain tasks are cheaper without them."""
    # These import this module.
    from allocrunner.taskrunner.artifact_hook import ArtifactHook
    from allocrunner.taskrunner.dispatch_hook import DispatchPayloadHook
    from allocrunner.taskrunner.template_hook import TemplateHook

    hooks: list[TaskHook] = [ValidateHook(), TaskDirHook(), LogsHook()]
    if task is None or task.dispatch_payload:
        hooks.append(DispatchPayloadHook())
    hooks.append(EnvHook())
    if task is None or task.artifacts:
        hooks.append(ArtifactHook(allow_local=artifact_allow_local))
    if task is None or task.templates:
        hooks.append(TemplateHook(lifecycle=lifecycle))
    return hooks
