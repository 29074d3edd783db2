"""`LocalPrevAlloc`: the previous allocation runs on this node.

`wait` follows the previous runner's broadcaster until it shows a terminal client
status (or closes); `migrate` moves the previous alloc dir's data into the new one.
The previous directory is never destroyed here: the garbage collector owns it
(Nomad #18034).

Threads: none of its own; `wait` and `migrate` run on the caller's thread (the new
allocation's runner), `is_waiting` / `is_migrating` may be asked from any thread.
Locks: the inherited `ActivityFlags._lock` (``PrevAllocWatcher._lock``) guards the
waiting / migrating counters only; no lock is held while waiting on the listener or
moving data. `wait` blocks in the listener's ``get`` with no timeout: the cancel token's
callback closes the listener, which wakes it. Closing takes ``AllocBroadcaster._lock``
(a leaf), so the token must not be cancelled while a declared lock is held.
Owner: `new_prev_watcher` builds it from the previous runner (for the previous
allocation and for each preempted one); the new `AllocRunner` calls it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from allocrunner._locking import calls_out, immutable
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir
from allocrunner.allocwatcher.base import (
    LOGGER_NAME,
    ActivityFlags,
    PrevAllocMigrationError,
    check_cancel,
)
from allocrunner.errors import BroadcasterClosed
from allocrunner.structs import Allocation

if TYPE_CHECKING:
    from allocrunner.broadcaster import AllocListener

__all__ = ["LocalPrevAlloc"]

log = logging.getLogger(LOGGER_NAME)


class LocalPrevAlloc(ActivityFlags):
    """Thread-safe. The previous allocation runs on this node.

    `prev_alloc` is its client view when the watcher was made; `listener_factory`
    opens a listener on its runner's broadcaster; `tasks` names the tasks whose
    `local/` directories move; `sticky` is `ephemeral_disk.sticky or migrate`.
    """

    _prev_alloc = immutable()
    _prev_alloc_dir = immutable()
    _listener_factory = immutable()
    _tasks = immutable()
    _sticky = immutable()

    def __init__(
        self,
        prev_alloc: Allocation,
        prev_alloc_dir: AllocDir,
        listener_factory: Callable[[], AllocListener[Allocation]],
        tasks: Sequence[str],
        sticky: bool,
    ) -> None:
        super().__init__()
        if not isinstance(prev_alloc, Allocation):
            raise TypeError(f"prev_alloc: expected Allocation, got {type(prev_alloc).__name__}")
        if isinstance(tasks, str):
            raise TypeError("tasks: expected a sequence of task names, got a str")
        self._prev_alloc = prev_alloc
        self._prev_alloc_dir = prev_alloc_dir
        self._listener_factory = listener_factory
        self._tasks = tuple(tasks)
        self._sticky = bool(sticky)

    @property
    def prev_alloc_id(self) -> str:
        return self._prev_alloc.id

    @property
    def sticky(self) -> bool:
        return self._sticky

    @calls_out
    def wait(self, cancel: CancelToken) -> None:
        """Return once the previous runner broadcasts a terminal client status, or its
        broadcaster closes; at once if the client view was already terminal."""
        prev_id = self._prev_alloc.id
        check_cancel(cancel, prev_id)
        if self._prev_alloc.client_terminal():
            return
        with self.waiting():
            try:
                listener = self._listener_factory()
            except BroadcasterClosed:
                return
            with listener:
                self._follow(listener, cancel)

    def _follow(self, listener: AllocListener[Allocation], cancel: CancelToken) -> None:
        """Return at the first terminal view or when the broadcaster closes; raise
        `PrevAllocWaitCancelled` once `cancel` fires, which closes the listener and so
        wakes the blocked ``get`` (no timed wake-ups)."""
        prev_id = self._prev_alloc.id
        withdraw = cancel.on_cancel(listener.close)
        try:
            while True:
                check_cancel(cancel, prev_id)
                try:
                    alloc = listener.get()
                except BroadcasterClosed:
                    check_cancel(cancel, prev_id)
                    return
                if alloc.client_terminal():
                    log.debug("previous allocation %s is %s", prev_id, alloc.client_status)
                    return
        finally:
            withdraw()

    @calls_out
    def migrate(self, cancel: CancelToken, dest: AllocDir) -> None:
        """Move the previous alloc dir's data into `dest` when sticky. The previous
        directory itself is left for the garbage collector."""
        if not self._sticky:
            return
        check_cancel(cancel, self._prev_alloc.id)
        with self.migrating():
            try:
                dest.move_from(self._prev_alloc_dir, list(self._tasks))
            except Exception as err:
                raise PrevAllocMigrationError(
                    f"moving data of previous allocation {self._prev_alloc.id}: {err}"
                ) from err

    def __repr__(self) -> str:
        return f"<LocalPrevAlloc {self._prev_alloc.id} sticky={self._sticky}>"
