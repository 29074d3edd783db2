"""The hook phases of one task: when each runs, what it is told, what its failures mean.

`TaskHookPhases` binds a task runner's hooks to a phase each time it runs that phase
(`hooks.bind_phase`, which decides once per hook class which phases it implements; a
running task holds no bound method for a phase that may never run), and runs them for
the run loop:

- prestart stops at the first failure. A hook recorded as done in the task's
  LocalState is skipped and its env re-applied; what a hook hands back is merged
  into the task env and, when it changed, recorded and written at once, unless the
  result is `redoable`: such records join the task's state together at the end of
  the phase (or with the next record written at once) and reach the state DB with
  the task's next write. The events a prestart hook emits are written with its record
  or the task's next write, whichever comes first: an agent that dies before then
  runs the hook again on restore, and it emits them again. Each hook is told the
  latest allocation and task and the env built so far (one immutable request serves
  the next hook too while none of these changed). A kill or a shutdown meanwhile cuts
  the phase short. A failure is recorded as a task event and raised for the restart
  policy.
- the soft phases (poststart, pre-kill, exited, update, stop, shutdown) run every
  hook; each failure is logged and recorded as a task event, never raised.

A failure becomes the event its hook chose (`HookEventError`) or a generic
`Task hook failed` event naming the hook. The env the last prestart built is the one
the task starts with (`task_config`) and the one later phases are told. Hooks are told
it over the node's interpolation variables (``node.*``, ``attr.*``, ``meta.*``), and
the driver config is interpolated against the same overlay; the variables never join
the env the task gets.

Threads: the task runner's run thread, which runs every phase but one, so hooks are
serialised; the caller of `TaskRunner.shutdown()` runs the shutdown phase once the
run thread has returned. Locks: none. The task's handle and hook progress are read
from the `TaskStateCell`, the allocation and task through the runner's `current`
callable (the runner's own lock, released before any hook is called). Owner: each
TaskRunner creates one and runs its shutdown phase; the runner's `TaskRunLoop` runs
every other phase.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, cast

from allocrunner._hooks import run_phase
from allocrunner._locking import calls_out, confined, hand_over, immutable
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir, TaskDir, TaskPaths
from allocrunner.drivers.base import ExitResult, TaskConfig, TaskHandle
from allocrunner.errors import HookError, HookErrors
from allocrunner.state import HookState, LocalState
from allocrunner.structs import Allocation, Task, TaskEvent
from allocrunner.structs.frozen import EMPTY, FrozenDict, merge_into, shallow_frozen
from allocrunner.structs.task_state import EVENT_HOOK_FAILED
from allocrunner.taskrunner.env import (
    HOST_ENV_DRIVERS,
    host_env,
    interpolate_config,
    interpolation_scope,
)
from allocrunner.taskrunner.hooks import (
    COLLECT_ALL,
    STOP_AT_FIRST,
    BoundHook,
    HookEventError,
    HookList,
    HookRequest,
    PrestartResult,
    bind_phase,
    phase_label,
)
from allocrunner.taskrunner.lifecycle import RUN_THREAD
from allocrunner.taskrunner.state import TaskStateCell

__all__ = ["TaskHookPhases", "driver_task_config", "hook_error_event"]

log = logging.getLogger("allocrunner.taskrunner")

_NO_RESULT = PrestartResult()
_NO_STATE = HookState()


def _with_hooks(states: dict[str, HookState], local: LocalState) -> LocalState:
    return local.with_hooks(states)


class _Stopped(Exception):
    """Raised between two prestart hooks once a kill or a shutdown came."""


def hook_error_event(err: HookError) -> TaskEvent:
    """The task event that records `err`: the one its hook chose, else a generic one."""
    cause = err.__cause__
    if isinstance(cause, HookEventError):
        return cause.event
    text = f"{err.hook}: {cause if cause is not None else err}"
    return TaskEvent(EVENT_HOOK_FAILED, message=text, display_message=text)


# The draws of driver-id suffixes: a generator of its own, seeded from os.urandom once
# and again in a forked child, so a program that seeds `random` never repeats an id.
_SUFFIXES = random.Random()
os.register_at_fork(after_in_child=_SUFFIXES.seed)


def _start_suffix() -> str:
    """Eight hex digits that tell one start of a task from its others in its driver
    task id, as in Nomad's. Drawn from `_SUFFIXES`, not `secrets`: the id must be
    unique, not secret, and `os.urandom` is a system call, during which another of a
    thousand starting threads takes the GIL."""
    return f"{_SUFFIXES.getrandbits(32):08x}"


class _PrestartRequests:
    """Not thread-safe; owned by one run of `TaskHookPhases.prestart`, which makes and
    uses it on its thread. The request each prestart hook is told, and the redoable
    hook records the run keeps back (`add_progress`, `take_progress`). Nomad builds a
    request for every hook, from the latest allocation and task and the env built so
    far; a request is immutable, so the one built for a hook is told again to the next
    while none of those changed and the hook recorded nothing before (most hooks hand
    back no env): seven hooks run on every start, and building a request takes a copy
    of the env each time."""

    cancel = immutable()
    _current = immutable()
    _make = immutable()
    _last = confined(RUN_THREAD)
    _progress = confined(RUN_THREAD)

    def __init__(
        self,
        current: Callable[[], tuple[Allocation, Task]],
        make: Callable[..., HookRequest],
        cancel: CancelToken,
    ) -> None:
        self.cancel = cancel
        self._current = current
        self._make = make
        self._last: HookRequest | None = None
        # Hook states recorded in this run and not yet in the cell (name -> state).
        self._progress: dict[str, HookState] = {}

    def add_progress(self, name: str, state: HookState) -> None:
        """Hook `name` recorded `state`; it joins the cell with the next `take_progress`."""
        self._progress[name] = state

    def take_progress(self) -> dict[str, HookState]:
        """The hook states recorded since the last call (and forget them)."""
        progress, self._progress = self._progress, {}
        return progress

    def env_changed(self) -> None:
        """The env was added to: the next hook is told a request built afresh."""
        self._last = None

    def build(self, env: dict[str, str], previous: HookState | None) -> HookRequest:
        """The request for a hook whose recorded progress is `previous`."""
        alloc, task = self._current()
        last = self._last
        if (
            last is not None
            and previous is None
            and last.previous is None
            and last.alloc is alloc
            and last.task is task
        ):
            return last
        request = self._make(self.cancel, (alloc, task), env=env, previous=previous)
        self._last = request
        return request


class TaskHookPhases:
    """Not thread-safe; owned by one TaskRunner. Runs the hook phases of its task (see
    the module docstring) on the run thread, and the shutdown phase on the caller of
    `shutdown()` once the run thread has returned."""

    _label = immutable()
    _hooks = immutable()
    _cell = immutable()
    _current = immutable()
    _alloc_dir = immutable()
    _task_dir = immutable()
    _datacenter = immutable()
    _node_vars = immutable()
    _kill_token = immutable()
    _shutdown_token = immutable()
    _env = confined(RUN_THREAD)

    def __init__(
        self,
        label: str,
        hooks: Sequence[object],
        *,
        cell: TaskStateCell,
        current: Callable[[], tuple[Allocation, Task]],
        alloc_dir: AllocDir,
        task_dir: TaskDir,
        datacenter: str,
        kill_token: CancelToken,
        shutdown_token: CancelToken,
        node_vars: Mapping[str, str] | None = None,
    ) -> None:
        self._label = label
        self._hooks = HookList(hooks)
        self._cell = cell
        self._current = current
        self._alloc_dir = alloc_dir
        self._task_dir = task_dir
        self._datacenter = datacenter
        self._node_vars: FrozenDict[str, str] = shallow_frozen(node_vars or EMPTY)
        self._kill_token = kill_token
        self._shutdown_token = shutdown_token
        self._env: FrozenDict[str, str] = FrozenDict()

    def __repr__(self) -> str:
        return self._label

    def hand_over(self, *more: object) -> None:
        """The run thread gives up what it confines here, in the hooks and in `more`,
        for the run to go on on another thread (`_locking.hand_over`)."""
        hand_over(self, *self._hooks.hooks, *more)

    @property
    def env(self) -> FrozenDict[str, str]:
        """The task env built by the last prestart that completed."""
        return self._env

    # --- prestart ---------------------------------------------------------------------

    @calls_out
    def prestart(self) -> bool:
        """Run the prestart hooks; False if a kill or a shutdown cut them short. A
        failure is recorded as a task event and raised as a HookError."""
        _alloc, task = self._current()
        env: dict[str, str] = host_env() if task.driver in HOST_ENV_DRIVERS else {}
        local = self._cell.local()
        cancel = CancelToken.any_of(self._kill_token, self._shutdown_token)
        requests = _PrestartRequests(self._current, self._prestart_request, cancel)
        try:
            run_phase(
                bind_phase(self._hooks.hooks, "prestart"),
                phase_label("prestart"),
                lambda bound: self._prestart_one(bound, local, env, requests),
                policy=STOP_AT_FIRST,
            )
        except HookError as err:
            self._keep_progress(requests)  # before the failure's event is written
            if cancel.cancelled():
                return False
            self.emit_event(hook_error_event(err))
            raise
        finally:
            cancel.cancel("prestart over")
            self._keep_progress(requests)
        self._env = FrozenDict(env)
        return True

    def _keep_progress(self, requests: _PrestartRequests) -> None:
        """Put the redoable records the phase kept back into the task's state, for its
        next write to carry."""
        progress = requests.take_progress()
        if progress:
            self._cell.note_local(partial(_with_hooks, progress))

    def _prestart_one(
        self,
        bound: BoundHook,
        local: LocalState,
        env: dict[str, str],
        requests: _PrestartRequests,
    ) -> None:
        """Run one prestart hook (or re-apply the env of a done one) into `env`; `local`
        is the hook progress as it was when the phase began."""
        previous = local.hook(bound.name)
        if previous is not None and previous.prestart_done:
            if previous.env:
                merge_into(env, previous.env)
                requests.env_changed()
            return
        result = cast("PrestartResult | None", bound.method(requests.build(env, previous)))
        if result is None:
            if previous is None:  # nothing recorded before, nothing to record now
                if requests.cancel.cancelled():
                    raise _Stopped()
                return
            result = _NO_RESULT
        if result.env:
            merge_into(env, result.env)
            requests.env_changed()
        state = result.hook_state()
        if state != (previous or _NO_STATE):
            # A redoable record waits for the end of the phase or a record written at
            # once, which takes the ones before it along.
            requests.add_progress(bound.name, state)
            if not result.redoable or result.data is not EMPTY:
                self._cell.update_local(partial(_with_hooks, requests.take_progress()))
        if requests.cancel.cancelled():
            raise _Stopped()

    # --- the soft phases --------------------------------------------------------------

    @calls_out
    def poststart(self) -> None:
        self._run_soft("poststart")

    @calls_out
    def pre_kill(self, handle: TaskHandle) -> None:
        self._run_soft("pre_kill", handle=handle)

    @calls_out
    def exited(self, result: ExitResult | None) -> None:
        self._run_soft("exited", result=result)

    @calls_out
    def update(self) -> None:
        """Tell the hooks of the updated allocation, unless it is terminal."""
        alloc, _task = self._current()
        if not alloc.terminal():
            self._run_soft("update")

    @calls_out
    def stop(self) -> None:
        self._run_soft("stop")

    @calls_out
    def shutdown(self) -> None:
        """The agent shuts down; the hooks are told with a token that never fires."""
        self._run_soft("shutdown", cancel=CancelToken())

    @calls_out
    def _run_soft(self, phase: str, *, cancel: CancelToken | None = None, **fields: Any) -> None:
        """Run `phase` on every hook; failures are logged and recorded, never raised."""
        hooks = bind_phase(self._hooks.hooks, phase)
        if not hooks:
            return
        fields.setdefault("handle", self._cell.handle())
        req = self._request(cancel or self._kill_token, env=self._env, **fields)
        try:
            run_phase(hooks, phase_label(phase), lambda hook: hook.method(req), policy=COLLECT_ALL)
        except HookErrors as group:
            for err in group.exceptions:
                log.warning("task %s: %s", self, err)
                if isinstance(err, HookError):
                    self.emit_event(hook_error_event(err))

    # --- what the hooks and the driver are told ---------------------------------------

    @calls_out
    def emit_event(self, event: TaskEvent) -> None:
        self._cell.publish(event=event)

    def _request(
        self,
        cancel: CancelToken,
        current: tuple[Allocation, Task] | None = None,
        *,
        emit_event: Callable[[TaskEvent], None] | None = None,
        **fields: Any,
    ) -> HookRequest:
        """A request for a hook: of `current` (the allocation and task; read now when
        None), told `fields`, with the env given in them over the node variables; its
        events go to `emit_event` (default: written at once, `emit_event`)."""
        alloc, task = self._current() if current is None else current
        env = interpolation_scope(fields.pop("env", {}), self._node_vars)
        return HookRequest(
            alloc=alloc,
            task=task,
            alloc_dir=self._alloc_dir,
            task_dir=self._task_dir,
            cancel=cancel,
            emit_event=self.emit_event if emit_event is None else emit_event,
            env=env,
            datacenter=self._datacenter,
            node_vars=self._node_vars,
            **fields,
        )

    def _prestart_request(
        self, cancel: CancelToken, current: tuple[Allocation, Task], **fields: Any
    ) -> HookRequest:
        """A prestart hook's request, whose events the task's next write carries."""
        return self._request(cancel, current, emit_event=self._cell.record, **fields)

    def task_config(self, alloc: Allocation, task: Task) -> TaskConfig:
        """What the driver starts: `task` of `alloc` with the env prestart built."""
        return driver_task_config(
            f"{alloc.id}/{task.name}/{_start_suffix()}",
            alloc,
            task,
            self._task_dir.paths(),
            self._env,
            interpolation_scope(self._env, self._node_vars),
        )


def driver_task_config(
    task_id: str,
    alloc: Allocation,
    task: Task,
    paths: TaskPaths,
    env: Mapping[str, str],
    scope: Mapping[str, str],
) -> TaskConfig:
    """What a driver is given to start `task` of `alloc` as `task_id`: the environment
    `env`, the task's config interpolated against `scope` (the env over the node's
    interpolation variables), its directories `paths`, its log settings and resources."""
    return TaskConfig(
        id=task_id,
        alloc_id=alloc.id,
        name=task.name,
        driver_config=interpolate_config(task.config, scope),
        env=env,
        user=task.user,
        task_dir=paths.task_dir,
        alloc_dir=paths.alloc_dir,
        local_dir=paths.local_dir,
        secrets_dir=paths.secrets_dir,
        logs_dir=paths.logs_dir,
        log_max_files=task.logs.max_files,
        log_max_file_size_mb=task.logs.max_file_size_mb,
        logs_disabled=task.logs.disabled,
        resources=task.resources,
    )
