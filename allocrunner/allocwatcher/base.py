"""The two roles of a previous-allocation watcher, their errors, and what every
implementation shares.

A replacement allocation (one whose `previous_allocation` is set) must not start
before the allocation it replaces is terminal, and with a sticky (or migrating)
ephemeral disk it inherits that allocation's `alloc/data` and each task's `local/`:

- `PrevAllocWatcher.wait(cancel)` returns once the previous allocation is terminal
  (or gone); `PrevAllocMigrator.migrate(cancel, dest)` moves its data into `dest`.

Every blocking wait wakes when its `CancelToken` is cancelled (the local watcher at
once, through the token's callback; the remote one within its poll of the other
node, `POLL_INTERVAL` at the least) and then raises `PrevAllocWaitCancelled`, so an
allocation runner being shut down or destroyed is never stuck behind a previous
allocation that will never finish (Nomad #18129).

Threads: none of its own. `wait` and `migrate` run on the caller's thread (the
allocation runner's hooks); `is_waiting` / `is_migrating` may be asked from any thread.
Locks: `ActivityFlags._lock` (declared ``PrevAllocWatcher._lock``) guards the counters
of waits and migrations in progress and, in `RemotePrevAlloc`, the outcome of the last
wait; it is a leaf, held only to read or bump those fields. Owner: the implementations
in this package subclass `ActivityFlags`; `AllocRunner` and `Client` hold watchers
through the protocols.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

from allocrunner._locking import guarded, immutable, make_lock
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir
from allocrunner.errors import AllocRunnerError

__all__ = [
    "POLL_INTERVAL",
    "ActivityFlags",
    "PrevAllocMigrationError",
    "PrevAllocMigrator",
    "PrevAllocWaitCancelled",
    "PrevAllocWatcher",
    "UnknownAllocationError",
    "check_cancel",
]

POLL_INTERVAL = 0.05
"""Longest time a blocked wait goes without checking its cancel token (seconds)."""

LOGGER_NAME = "allocrunner.allocwatcher"
"""The one logger every watcher module writes to."""


# --- errors ------------------------------------------------------------------------------


class PrevAllocWaitCancelled(AllocRunnerError):
    """Waiting for (or migrating from) the previous allocation was cancelled."""

    def __init__(self, prev_alloc_id: str, reason: str | None) -> None:
        super().__init__(
            f"waiting for previous allocation {prev_alloc_id} cancelled: {reason or 'cancelled'}"
        )
        self.prev_alloc_id = prev_alloc_id
        self.reason = reason


class PrevAllocMigrationError(AllocRunnerError):
    """The previous allocation's data could not be migrated; the destination is unchanged."""


class UnknownAllocationError(AllocRunnerError, LookupError):
    """A fetch found no such allocation (or may not see it): there is nothing to wait for."""


# --- protocols ---------------------------------------------------------------------------


@runtime_checkable
class PrevAllocWatcher(Protocol):
    """Thread-safe. Blocks until a previous allocation is terminal."""

    def wait(self, cancel: CancelToken) -> None:
        """Return once the previous allocation is terminal or gone (or there is none).
        Raises PrevAllocWaitCancelled soon after `cancel` is cancelled."""
        ...

    def is_waiting(self) -> bool:
        """True while a `wait` is blocked."""
        ...


@runtime_checkable
class PrevAllocMigrator(PrevAllocWatcher, Protocol):
    """Thread-safe. A watcher that can also move the previous allocation's data."""

    def migrate(self, cancel: CancelToken, dest: AllocDir) -> None:
        """Move the previous allocation's `alloc/data` and tasks' `local/` into `dest`
        (nothing when the disk is neither sticky nor migrating). Raises
        PrevAllocWaitCancelled when cancelled and PrevAllocMigrationError on failure."""
        ...

    def is_migrating(self) -> bool:
        """True while a `migrate` is moving data."""
        ...


# --- shared by the implementations --------------------------------------------------------


class ActivityFlags:
    """Thread-safe. The waiting / migrating counters behind is_waiting / is_migrating."""

    # _lock guards: _waiting, _migrating
    _lock = immutable()
    _waiting = guarded("_lock")
    _migrating = guarded("_lock")

    def __init__(self) -> None:
        self._lock = make_lock("PrevAllocWatcher._lock")
        self._waiting = 0
        self._migrating = 0

    def is_waiting(self) -> bool:
        """True while a `wait` is blocked."""
        with self._lock:
            return self._waiting > 0

    def is_migrating(self) -> bool:
        """True while a `migrate` is moving data."""
        with self._lock:
            return self._migrating > 0

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Count a wait in progress for the duration of the block."""
        with self._lock:
            self._waiting += 1
        try:
            yield
        finally:
            with self._lock:
                self._waiting -= 1

    @contextlib.contextmanager
    def migrating(self) -> Iterator[None]:
        """Count a migration in progress for the duration of the block."""
        with self._lock:
            self._migrating += 1
        try:
            yield
        finally:
            with self._lock:
                self._migrating -= 1


def check_cancel(cancel: CancelToken, prev_alloc_id: str) -> None:
    """Raise PrevAllocWaitCancelled when `cancel` has been cancelled."""
    if cancel.cancelled():
        raise PrevAllocWaitCancelled(prev_alloc_id, cancel.reason)
