"""`new_prev_watcher`: picks the watcher and migrator of an allocation, as Nomad's
client does, from what is known about the allocation it replaces.

Threads: none; it runs on the caller's thread and only reads the previous runners
(their allocation, state, directory and broadcaster), taking no lock of its own.
Locks: none. Owner: `Client` calls it when it places a replacement allocation, and
passes the pair to the new `AllocRunner`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, Unpack

import attrs

from allocrunner.allocdir import AllocDir
from allocrunner.allocwatcher.base import LOGGER_NAME, PrevAllocMigrator, PrevAllocWatcher
from allocrunner.allocwatcher.group import GroupPrevAllocWatcher
from allocrunner.allocwatcher.local import LocalPrevAlloc
from allocrunner.allocwatcher.noop import NOOP_PREV_ALLOC
from allocrunner.allocwatcher.remote import (
    FetchAlloc,
    FetchSnapshot,
    RemoteOptions,
    RemotePrevAlloc,
)
from allocrunner.structs import Allocation, AllocState

if TYPE_CHECKING:
    from allocrunner.broadcaster import AllocListener

__all__ = ["PrevAllocRunner", "new_prev_watcher"]

log = logging.getLogger(LOGGER_NAME)


class PrevAllocRunner(Protocol):
    """What a watcher needs from a previous allocation's runner on this node (an
    `AllocRunner` is one)."""

    @property
    def alloc_dir(self) -> AllocDir: ...

    def alloc(self) -> Allocation: ...

    def alloc_state(self) -> AllocState: ...

    def listen(self) -> AllocListener[Allocation]: ...


@attrs.frozen
class _RunnerView:
    """Immutable. What a local watcher needs from a previous runner."""

    alloc: Allocation
    alloc_dir: AllocDir
    listen: Callable[[], AllocListener[Allocation]]


def _runner_view(runner: PrevAllocRunner) -> _RunnerView:
    """The runner's allocation with its client fields filled from its current state."""
    alloc = runner.alloc()
    state = runner.alloc_state()
    client = attrs.evolve(
        alloc,
        client_status=state.client_status,
        client_description=state.client_description,
        task_states=state.task_states,
        deployment_status=state.deployment_status,
    )
    return _RunnerView(alloc=client, alloc_dir=runner.alloc_dir, listen=runner.listen)


def new_prev_watcher(
    alloc: Allocation,
    *,
    prev_runner: PrevAllocRunner | None = None,
    fetch_alloc: FetchAlloc | None = None,
    fetch_snapshot: FetchSnapshot | None = None,
    preempted_runners: Sequence[PrevAllocRunner] = (),
    **remote_options: Unpack[RemoteOptions],
) -> tuple[PrevAllocWatcher, PrevAllocMigrator]:
    """Pick the watcher and migrator for `alloc`, as Nomad's client does.

    - No previous allocation (and none preempted): `NoopPrevAlloc` for both.
    - `prev_runner` (the previous allocation's runner on this node; anything with
      `alloc()`, `alloc_state()`, `listen()` and `alloc_dir`): `LocalPrevAlloc`,
      sticky when the group's ephemeral disk is sticky or migrates.
    - Otherwise, with `fetch_alloc`: `RemotePrevAlloc`, migrating only when the disk
      migrates (`remote_options` go to its constructor).
    - Otherwise the previous allocation cannot be observed: `NoopPrevAlloc`.

    A replacement always waits for its previous allocation; data moves only with a
    sticky or migrating disk. Preempted runners are waited for too (not migrated).
    """
    noop = NOOP_PREV_ALLOC
    migrator = _prev_migrator(alloc, prev_runner, fetch_alloc, fetch_snapshot, remote_options)
    preempted = [
        LocalPrevAlloc(v.alloc, v.alloc_dir, v.listen, (), sticky=False)
        for v in map(_runner_view, preempted_runners)
    ]
    if migrator is None:
        migrator = noop
    if not preempted:
        return migrator, migrator
    watchers: list[PrevAllocWatcher] = [] if migrator is noop else [migrator]
    return GroupPrevAllocWatcher([*watchers, *preempted]), migrator


def _prev_migrator(
    alloc: Allocation,
    prev_runner: PrevAllocRunner | None,
    fetch_alloc: FetchAlloc | None,
    fetch_snapshot: FetchSnapshot | None,
    remote_options: RemoteOptions,
) -> PrevAllocMigrator | None:
    """The watcher-and-migrator of `alloc`'s previous allocation; None when there is
    none or it cannot be observed."""
    prev_id = alloc.previous_allocation
    if not prev_id:
        return None
    disk = _DiskPlan.of(alloc)
    if prev_runner is not None:
        view = _runner_view(prev_runner)
        if view.alloc.id != prev_id:
            raise ValueError(
                f"prev_runner runs allocation {view.alloc.id}, but {alloc.id} replaces {prev_id}"
            )
        return LocalPrevAlloc(
            view.alloc, view.alloc_dir, view.listen, disk.tasks, sticky=disk.sticky
        )
    if fetch_alloc is not None:
        return RemotePrevAlloc(
            prev_id,
            fetch_alloc,
            fetch_snapshot,
            tasks=disk.tasks,
            migrate=disk.migrate,
            **remote_options,
        )
    log.debug("previous allocation %s is not observable: not waiting", prev_id)
    return None


@attrs.frozen
class _DiskPlan:
    """Immutable. What moves from the previous allocation: the `local/` dirs of `tasks`
    and `alloc/data`, from a local runner when `sticky`, from a remote one when
    `migrate`."""

    tasks: tuple[str, ...]
    sticky: bool
    migrate: bool

    @classmethod
    def of(cls, alloc: Allocation) -> _DiskPlan:
        """The plan of `alloc`'s task group (nothing moves when it has none)."""
        group = alloc.group()
        if group is None:
            return cls(tasks=(), sticky=False, migrate=False)
        disk = group.ephemeral_disk
        return cls(
            tasks=tuple(t.name for t in group.tasks),
            sticky=disk is not None and disk.carries_data(),
            migrate=disk is not None and disk.migrate,
        )
