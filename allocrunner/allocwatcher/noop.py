"""`NoopPrevAlloc`: the watcher and migrator of an allocation with nothing to wait for.

Threads: none; every method returns at once on the caller's thread. Locks: none (the
object is stateless). Owner: `new_prev_watcher` hands it out when there is no previous
allocation (or it cannot be observed), and `AllocRunner` uses it when given no watcher:
both the one shared instance, `NOOP_PREV_ALLOC`.
"""

from __future__ import annotations

from allocrunner._locking import thread_safe
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir

__all__ = ["NOOP_PREV_ALLOC", "NoopPrevAlloc"]


@thread_safe
class NoopPrevAlloc:
    """Thread-safe. Nothing to wait for and nothing to migrate (stateless)."""

    def wait(self, cancel: CancelToken) -> None:
        """Return at once."""

    def is_waiting(self) -> bool:
        return False

    def migrate(self, cancel: CancelToken, dest: AllocDir) -> None:
        """Return at once."""

    def is_migrating(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<NoopPrevAlloc>"


NOOP_PREV_ALLOC = NoopPrevAlloc()
"""The one instance anyone needs: it is stateless, and a thousand allocations with no
previous allocation need not make a thousand of them."""
