"""Alloc runner hooks: one typed protocol per phase, the hooks sorted by phase, and
the built-in hooks.

A hook is a small object with a `name` and any of the phase methods below (Nomad's
order of calls): ``prerun(cancel)`` → [``update(alloc)``]* → ``pre_kill()`` →
``postrun()`` → ``destroy()``; or ``shutdown()`` on a graceful agent shutdown. Each
phase is a protocol (`Prerun`, `Update`, `PreKill`, `Postrun`, `Destroy`,
`Shutdown`); `AllocHooks.of` sorts an allocation's hooks by the protocols they
implement once, when the runner is built, and its methods run one phase each through
the shared phase runner (`allocrunner._hooks`): prerun stops at the first failure
(later hooks depend on earlier ones); every other phase runs all hooks and raises
every failure together (`HookErrors`).

Threads: phases run on the alloc runner's threads (see `alloc_runner`), one phase of
a hook at a time. Locks: none here; phases are callouts and run with no lock held.
Owner: the AllocRunner builds the hooks and its `AllocHooks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import attrs

from allocrunner._hooks import NamedHook, Policy
from allocrunner._hooks import run_phase as _run_hooks
from allocrunner._locking import calls_out
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir
from allocrunner.allocwatcher import PrevAllocMigrator, PrevAllocWatcher
from allocrunner.structs import Allocation
from allocrunner.taskrunner.hooks import implements

__all__ = [
    "PHASE_LABELS",
    "AllocDirHook",
    "AllocHook",
    "AllocHooks",
    "Destroy",
    "DiskMigrationHook",
    "Postrun",
    "PreKill",
    "Prerun",
    "Shutdown",
    "Update",
    "UpstreamAllocsHook",
    "run_phase",
]

log = logging.getLogger("allocrunner.runner")

PHASE_LABELS: Mapping[str, str] = {
    "prerun": "pre-run",
    "update": "update",
    "pre_kill": "pre-kill",
    "postrun": "post-run",
    "destroy": "destroy",
    "shutdown": "shutdown",
}


@runtime_checkable
class Prerun(NamedHook, Protocol):
    """Sets the allocation up before its tasks run; `cancel` fires on stop/destroy."""

    def prerun(self, cancel: CancelToken) -> None: ...


@runtime_checkable
class Update(NamedHook, Protocol):
    """Takes in a new (non-terminal) version of the allocation."""

    def update(self, alloc: Allocation) -> None: ...


@runtime_checkable
class PreKill(NamedHook, Protocol):
    """Runs before the tasks are killed."""

    def pre_kill(self) -> None: ...


@runtime_checkable
class Postrun(NamedHook, Protocol):
    """Runs once every task has exited."""

    def postrun(self) -> None: ...


@runtime_checkable
class Destroy(NamedHook, Protocol):
    """Frees what the hook holds when the allocation is destroyed."""

    def destroy(self) -> None: ...


@runtime_checkable
class Shutdown(NamedHook, Protocol):
    """Stops the hook's work on a graceful agent shutdown (the tasks keep running)."""

    def shutdown(self) -> None: ...


_PHASES: tuple[type, ...] = (Prerun, Update, PreKill, Postrun, Destroy, Shutdown)

# Hook classes in order -> the positions of the hooks of each of `_PHASES`: every
# allocation started sorts its hooks, almost always of one of a few class sequences.
# Written without a lock, as `implements`' cache is: a dict item assignment is atomic,
# and two threads that race compute the same plan. Cleared when it grows past
# `_PLANS_MAX` (hooks of classes made at run time, as some tests make them).
_PLANS: dict[tuple[type, ...], tuple[tuple[int, ...], ...]] = {}
_PLANS_MAX = 256


def _pick(ordered: tuple[NamedHook, ...], positions: tuple[int, ...]) -> tuple[Any, ...]:
    """The hooks at `positions` of `ordered`: those of one phase, by its plan (so each
    implements that phase's protocol, which `implements` decided when it was made)."""
    return tuple(map(ordered.__getitem__, positions))


def _plan(ordered: tuple[NamedHook, ...]) -> tuple[tuple[int, ...], ...]:
    """The positions in `ordered` of the hooks of each of `_PHASES`; TypeError for a
    hook that implements none."""
    for hook in ordered:
        if not any(implements(hook, phase) for phase in _PHASES):
            raise TypeError(f"alloc hook {hook!r} implements no phase")
    return tuple(
        tuple(i for i, hook in enumerate(ordered) if implements(hook, phase)) for phase in _PHASES
    )


_NO_PLAN: tuple[tuple[int, ...], ...] = ((),) * len(_PHASES)


@attrs.frozen
class AllocHooks:
    """Immutable. An allocation's hooks sorted by phase (each phase's hooks in hook
    order); each method runs one phase with no lock held. It keeps the hooks and the
    shared plan of their classes, and picks a phase's hooks when that phase runs: each
    phase runs once or twice in an allocation's life, and six tuples kept per
    allocation cost more than picking them then."""

    _ordered: tuple[Any, ...] = ()
    _plan: tuple[tuple[int, ...], ...] = _NO_PLAN

    @classmethod
    def of(cls, hooks: Iterable[NamedHook]) -> AllocHooks:
        """Sort `hooks` by the phases they implement; TypeError for a hook with none."""
        ordered = tuple(hooks)
        classes = tuple(map(type, ordered))
        plan = _PLANS.get(classes)
        if plan is None:
            plan = _plan(ordered)
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.clear()
            _PLANS[classes] = plan
        return cls(ordered, plan)

    @property
    def prerun_hooks(self) -> tuple[Prerun, ...]:
        return _pick(self._ordered, self._plan[0])

    @property
    def update_hooks(self) -> tuple[Update, ...]:
        return _pick(self._ordered, self._plan[1])

    @property
    def pre_kill_hooks(self) -> tuple[PreKill, ...]:
        return _pick(self._ordered, self._plan[2])

    @property
    def postrun_hooks(self) -> tuple[Postrun, ...]:
        return _pick(self._ordered, self._plan[3])

    @property
    def destroy_hooks(self) -> tuple[Destroy, ...]:
        return _pick(self._ordered, self._plan[4])

    @property
    def shutdown_hooks(self) -> tuple[Shutdown, ...]:
        return _pick(self._ordered, self._plan[5])

    @calls_out
    def prerun(self, cancel: CancelToken) -> None:
        """Stops at the first failure (a HookError)."""
        _run_hooks(
            self.prerun_hooks,
            PHASE_LABELS["prerun"],
            lambda hook: hook.prerun(cancel),
            policy=Policy.STOP_AT_FIRST,
        )

    @calls_out
    def update(self, alloc: Allocation) -> None:
        _run_hooks(
            self.update_hooks,
            PHASE_LABELS["update"],
            lambda hook: hook.update(alloc),
            policy=Policy.COLLECT_ALL,
        )

    @calls_out
    def pre_kill(self) -> None:
        _run_hooks(
            self.pre_kill_hooks,
            PHASE_LABELS["pre_kill"],
            lambda hook: hook.pre_kill(),
            policy=Policy.COLLECT_ALL,
        )

    @calls_out
    def postrun(self) -> None:
        _run_hooks(
            self.postrun_hooks,
            PHASE_LABELS["postrun"],
            lambda hook: hook.postrun(),
            policy=Policy.COLLECT_ALL,
        )

    @calls_out
    def destroy(self) -> None:
        _run_hooks(
            self.destroy_hooks,
            PHASE_LABELS["destroy"],
            lambda hook: hook.destroy(),
            policy=Policy.COLLECT_ALL,
        )

    @calls_out
    def shutdown(self) -> None:
        _run_hooks(
            self.shutdown_hooks,
            PHASE_LABELS["shutdown"],
            lambda hook: hook.shutdown(),
            policy=Policy.COLLECT_ALL,
        )


_PHASE_RUNNERS: Mapping[str, Callable[..., None]] = {
    "prerun": AllocHooks.prerun,
    "update": AllocHooks.update,
    "pre_kill": AllocHooks.pre_kill,
    "postrun": AllocHooks.postrun,
    "destroy": AllocHooks.destroy,
    "shutdown": AllocHooks.shutdown,
}


@calls_out
def run_phase(hooks: Iterable[NamedHook], phase: str, *args: Any) -> None:
    """Run one phase over hooks not sorted yet (`AllocHooks.of`), under its policy."""
    runner = _PHASE_RUNNERS.get(phase)
    if runner is None:
        raise ValueError(f"unknown alloc hook phase {phase!r} (phases: {', '.join(PHASE_LABELS)})")
    runner(AllocHooks.of(hooks), *args)


class AllocHook:
    """Not thread-safe; owned by the AllocRunner, which serialises each hook's phases."""

    name: ClassVar[str] = "hook"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class AllocDirHook(AllocHook):
    """Builds the alloc dir before anything runs and removes it on destroy."""

    name = "alloc_dir"

    def __init__(self, alloc_dir: AllocDir) -> None:
        self._alloc_dir = alloc_dir

    @calls_out
    def prerun(self, cancel: CancelToken) -> None:
        self._alloc_dir.build()

    @calls_out
    def destroy(self) -> None:
        self._alloc_dir.destroy()


class UpstreamAllocsHook(AllocHook):
    """Blocks until the previous allocation is terminal (cancelled by destroy/shutdown)."""

    name = "await_previous_allocations"

    def __init__(self, watcher: PrevAllocWatcher) -> None:
        self._watcher = watcher

    @calls_out
    def prerun(self, cancel: CancelToken) -> None:
        self._watcher.wait(cancel)


class DiskMigrationHook(AllocHook):
    """Moves the previous allocation's sticky data into this alloc dir.

    A failed migration is soft, as in Nomad: the alloc dir is rebuilt empty and the
    allocation runs without the old data. A cancelled one fails the prerun.
    """

    name = "migrate_disk"

    def __init__(self, migrator: PrevAllocMigrator, alloc_dir: AllocDir) -> None:
        self._migrator = migrator
        self._alloc_dir = alloc_dir

    @calls_out
    def prerun(self, cancel: CancelToken) -> None:
        try:
            self._migrator.migrate(cancel, self._alloc_dir)
        except Exception as err:
            if cancel.cancelled():
                raise
            log.warning("migrating data from the previous allocation failed: %s", err)
            self._alloc_dir.destroy()
            self._alloc_dir.build()
