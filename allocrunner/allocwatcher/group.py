"""`GroupPrevAllocWatcher`: waits for several allocations (the previous one and any it
preempted) to be terminal.

Threads: none of its own; `wait` runs each watcher's wait in turn on the caller's
thread. Locks: the inherited `ActivityFlags._lock` (``PrevAllocWatcher._lock``) guards
its own waiting counter only (it never migrates); it is never held while a member
waits. Owner: `new_prev_watcher` builds it when preempted runners are given; the new
`AllocRunner` calls it.
"""

from __future__ import annotations

from collections.abc import Sequence

from allocrunner._locking import calls_out, immutable
from allocrunner._sync import CancelToken
from allocrunner.allocwatcher.base import ActivityFlags, PrevAllocWaitCancelled, PrevAllocWatcher

__all__ = ["GroupPrevAllocWatcher"]


class GroupPrevAllocWatcher(ActivityFlags):
    """Thread-safe. Waits for every one of several allocations (the previous one and
    those it preempted) to be terminal."""

    _watchers = immutable()

    def __init__(self, watchers: Sequence[PrevAllocWatcher]) -> None:
        super().__init__()
        self._watchers = tuple(watchers)

    @calls_out
    def wait(self, cancel: CancelToken) -> None:
        """Wait for each allocation in turn (waiting for all is the same whatever the
        order). Failures are collected and raised together; cancellation at once."""
        errors: list[Exception] = []
        with self.waiting():
            for watcher in self._watchers:
                try:
                    watcher.wait(cancel)
                except PrevAllocWaitCancelled:
                    raise
                except Exception as err:
                    errors.append(err)
        if errors:
            raise ExceptionGroup("waiting for previous allocations failed", errors)

    def __repr__(self) -> str:
        return f"<GroupPrevAllocWatcher of {len(self._watchers)}>"
