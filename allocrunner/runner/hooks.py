"""Alloc runner hooks and the one phase runner that calls them.

A hook is a small object with a `name` and any of the phase methods below; the
runner calls each phase through `run_phase`, with no lock held, and with an explicit
error policy: `prerun` stops at the first failure (later hooks depend on earlier
ones); every other phase runs all hooks and reports every failure together.

Phases (Nomad's order of calls): prerun(cancel) → [update(alloc)]* → pre_kill() →
postrun() → destroy(); or shutdown() on a graceful agent shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from allocrunner._locking import calls_out
from allocrunner._sync import CancelToken
from allocrunner.errors import HookError, HookErrors

log = logging.getLogger("allocrunner.runner")

PHASE_LABELS = {
    "prerun": "pre-run",
    "update": "update",
    "pre_kill": "pre-kill",
    "postrun": "post-run",
    "destroy": "destroy",
    "shutdown": "shutdown",
}


class AllocHook:
    """Not thread-safe on its own; the AllocRunner serialises each hook's phases."""

    name: ClassVar[str] = "hook"


@calls_out
def run_phase(
    hooks: Sequence[Any],
    phase: str,
    *args: Any,
    policy: Literal["stop_first", "collect_all"] = "collect_all",
) -> None:
    """Call `phase(*args)` on every hook that has it, in order.

    stop_first raises the first failure as a HookError; collect_all runs every hook
    and raises a HookErrors group of all failures.
    """
    label = PHASE_LABELS.get(phase, phase)
    errors: list[HookError] = []
    for hook in hooks:
        method = getattr(hook, phase, None)
        if method is None:
            continue
        try:
            method(*args)
        except Exception as err:
            wrapped = HookError(hook.name, label, str(err) or type(err).__name__)
            wrapped.__cause__ = err
            if policy == "stop_first":
                raise wrapped from err
            log.warning("%s", wrapped)
            errors.append(wrapped)
    if errors:
        raise HookErrors(f"{label} hooks failed", errors)


class AllocDirHook(AllocHook):
    """Builds the alloc dir before anything runs and removes it on destroy."""

    name = "alloc_dir"

    def __init__(self, alloc_dir: Any) -> None:
        self._alloc_dir = alloc_dir

    def prerun(self, cancel: CancelToken) -> None:
        self._alloc_dir.build()

    def destroy(self) -> None:
        self._alloc_dir.destroy()


class UpstreamAllocsHook(AllocHook):
    """Blocks until the previous allocation is terminal (cancelled by destroy/shutdown)."""

    name = "await_previous_allocations"

    def __init__(self, watcher: Any) -> None:
        self._watcher = watcher

    def prerun(self, cancel: CancelToken) -> None:
        self._watcher.wait(cancel)


class DiskMigrationHook(AllocHook):
    """Moves the previous allocation's sticky data into this alloc dir.

    A failed migration is soft, as in Nomad: the alloc dir is rebuilt empty and the
    allocation runs without the old data. A cancelled one fails the prerun.
    """

    name = "migrate_disk"

    def __init__(self, migrator: Any, alloc_dir: Any) -> None:
        self._migrator = migrator
        self._alloc_dir = alloc_dir

    def prerun(self, cancel: CancelToken) -> None:
        try:
            self._migrator.migrate(cancel, self._alloc_dir)
        except Exception as err:
            if cancel.cancelled():
                raise
            log.warning("migrating data from the previous allocation failed: %s", err)
            self._alloc_dir.destroy()
            self._alloc_dir.build()
