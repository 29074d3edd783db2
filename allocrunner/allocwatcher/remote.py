"""`RemotePrevAlloc`: the previous allocation ran on another node (or its runner is gone).

`wait` polls a pluggable `fetch_alloc` until the previous allocation is terminal,
garbage-collected or not visible, retrying fetch errors with jittered exponential
backoff. `migrate` streams a tar snapshot from a pluggable `fetch_snapshot` into a
temporary alloc dir and moves it in, so a failed migration leaves the destination
untouched.

Threads: none of its own; `wait` and `migrate` run on the caller's thread (the new
allocation's runner) and call `fetch_alloc` / `fetch_snapshot` there, with no lock held.
Locks: the inherited `ActivityFlags._lock` (``PrevAllocWatcher._lock``) guards the
waiting / migrating counters and `_outcome` (how the last wait ended, which tells
`migrate` whether there is anything left to fetch). Owner: `new_prev_watcher` builds it
when the previous allocation is not on this node and a `fetch_alloc` is given.
"""

from __future__ import annotations

import io
import logging
import random
import secrets
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING, BinaryIO, TypedDict

from allocrunner._locking import calls_out, guarded, immutable
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir
from allocrunner.allocwatcher.base import (
    LOGGER_NAME,
    ActivityFlags,
    PrevAllocMigrationError,
    PrevAllocWaitCancelled,
    UnknownAllocationError,
    check_cancel,
)
from allocrunner.structs import Allocation

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["FetchAlloc", "FetchSnapshot", "RemoteOptions", "RemotePrevAlloc"]

log = logging.getLogger(LOGGER_NAME)

FetchAlloc = Callable[[str, CancelToken], "Allocation | None"]
FetchSnapshot = Callable[[str, CancelToken], BinaryIO]

_UNKNOWN = "unknown"  # not waited for yet
_GONE = "gone"  # garbage-collected, unknown or not visible: nothing to migrate
_TERMINAL = "terminal"


class RemoteOptions(TypedDict, total=False):
    """The tuning keywords of `RemotePrevAlloc` (all optional)."""

    poll_interval: float
    retry_base: float
    retry_max: float
    temp_root: str | None


class RemotePrevAlloc(ActivityFlags):
    """Thread-safe. The previous allocation ran on another node (or its runner is gone).

    `fetch_alloc(id, cancel)` returns the allocation as the cluster knows it, None if
    it was garbage-collected, or raises `PermissionError` / `UnknownAllocationError`
    when it cannot be seen (both end the wait: there is nothing to wait for); any other
    error is retried with exponential backoff. `fetch_snapshot(id, cancel)` returns a
    readable tar stream of its alloc dir (see `AllocDir.snapshot`).
    """

    _prev_alloc_id = immutable()
    _fetch_alloc = immutable()
    _fetch_snapshot = immutable()
    _tasks = immutable()
    _migrate = immutable()
    _poll_interval = immutable()
    _retry_base = immutable()
    _retry_max = immutable()
    _temp_root = immutable()
    # _lock also guards: _outcome
    _outcome = guarded("_lock")

    def __init__(
        self,
        prev_alloc_id: str,
        fetch_alloc: FetchAlloc,
        fetch_snapshot: FetchSnapshot | None = None,
        *,
        tasks: Sequence[str] = (),
        migrate: bool = False,
        poll_interval: float = 1.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        temp_root: str | None = None,
    ) -> None:
        super().__init__()
        if not prev_alloc_id or not isinstance(prev_alloc_id, str):
            raise ValueError("prev_alloc_id: must be a non-empty allocation id")
        if isinstance(tasks, str):
            raise TypeError("tasks: expected a sequence of task names, got a str")
        for name, value in (
            ("poll_interval", poll_interval),
            ("retry_base", retry_base),
            ("retry_max", retry_max),
        ):
            if value <= 0:
                raise ValueError(f"{name}: must be positive, got {value!r}")
        self._prev_alloc_id = prev_alloc_id
        self._fetch_alloc = fetch_alloc
        self._fetch_snapshot = fetch_snapshot
        self._tasks = tuple(tasks)
        self._migrate = bool(migrate)
        self._poll_interval = float(poll_interval)
        self._retry_base = float(retry_base)
        self._retry_max = max(float(retry_max), float(retry_base))
        self._temp_root = temp_root
        self._outcome = _UNKNOWN

    @property
    def prev_alloc_id(self) -> str:
        return self._prev_alloc_id

    # --- wait --------------------------------------------------------------------------

    @calls_out
    def wait(self, cancel: CancelToken) -> None:
        """Poll until the previous allocation is terminal, garbage-collected or not
        visible. Fetch errors are retried with backoff; cancellation ends the wait."""
        prev_id = self._prev_alloc_id
        failures = 0
        with self.waiting():
            while True:
                check_cancel(cancel, prev_id)
                try:
                    alloc = self._fetch_alloc(prev_id, cancel)
                except (PermissionError, UnknownAllocationError) as err:
                    log.info("previous allocation %s cannot be watched: %s", prev_id, err)
                    self._set_outcome(_GONE)
                    return
                except PrevAllocWaitCancelled:
                    raise
                except Exception as err:
                    failures += 1
                    self._retry_later(cancel, failures, err)
                    continue
                failures = 0
                if self._settled(alloc):
                    return
                self._sleep(cancel, self._poll_interval)

    def _settled(self, alloc: Allocation | None) -> bool:
        """Record and report whether a fetched view ends the wait: the allocation is
        gone (None) or terminal."""
        if alloc is None:
            log.debug("previous allocation %s was garbage-collected", self._prev_alloc_id)
            self._set_outcome(_GONE)
            return True
        if alloc.client_terminal():
            self._set_outcome(_TERMINAL)
            return True
        return False

    def _retry_later(self, cancel: CancelToken, failures: int, err: Exception) -> None:
        """Log the failed fetch and sleep its backoff (cancellable)."""
        delay = self._backoff(failures)
        log.warning(
            "fetching previous allocation %s failed (retry in %.2fs): %s",
            self._prev_alloc_id,
            delay,
            err,
        )
        self._sleep(cancel, delay)

    def _backoff(self, failures: int) -> float:
        """Jittered exponential backoff: in [ceiling / 2, ceiling], ceiling capped."""
        ceiling = min(self._retry_max, self._retry_base * (2 ** min(failures - 1, 30)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _sleep(self, cancel: CancelToken, seconds: float) -> None:
        """Sleep `seconds`, or raise PrevAllocWaitCancelled as soon as `cancel` fires."""
        if cancel.wait(seconds):
            raise PrevAllocWaitCancelled(self._prev_alloc_id, cancel.reason)

    def _set_outcome(self, outcome: str) -> None:
        with self._lock:
            self._outcome = outcome

    # --- migrate -----------------------------------------------------------------------

    @calls_out
    def migrate(self, cancel: CancelToken, dest: AllocDir) -> None:
        """Stream the previous alloc dir into a temporary alloc dir, then move its data
        into `dest` and remove the temporary one. Nothing happens unless the disk
        migrates, and nothing can be fetched once the previous allocation is gone. On
        any failure the temporary dir is removed and `dest` is left as it was."""
        if not self._migrate:
            return
        prev_id = self._prev_alloc_id
        with self._lock:
            outcome = self._outcome
        if outcome == _GONE:
            log.warning("previous allocation %s is gone: no data to migrate", prev_id)
            return
        fetch_snapshot = self._fetch_snapshot
        if fetch_snapshot is None:
            log.warning("no snapshot source for previous allocation %s: not migrating", prev_id)
            return
        check_cancel(cancel, prev_id)
        with self.migrating():
            self._migrate_into(cancel, dest, fetch_snapshot)

    def _migrate_into(
        self, cancel: CancelToken, dest: AllocDir, fetch_snapshot: FetchSnapshot
    ) -> None:
        """Extract into a staging alloc dir beside `dest`, then move into `dest`; the
        staging dir is removed whatever happens. Failures other than cancellation are
        raised as PrevAllocMigrationError."""
        prev_id = self._prev_alloc_id
        root = self._temp_root or str(dest.root)
        # A name no allocation can have, so a failure never removes a real alloc dir.
        temp = AllocDir(root, f".migrate-{prev_id}-{secrets.token_hex(4)}")
        try:
            temp.build()
            _extract_snapshot(temp, fetch_snapshot(prev_id, cancel), cancel, prev_id)
            check_cancel(cancel, prev_id)
            dest.move_from(temp, list(self._tasks))
        except PrevAllocWaitCancelled:
            raise
        except Exception as err:
            raise PrevAllocMigrationError(
                f"migrating data of previous allocation {prev_id}: {err}"
            ) from err
        finally:
            _discard(temp)

    def __repr__(self) -> str:
        return f"<RemotePrevAlloc {self._prev_alloc_id} migrate={self._migrate}>"


def _extract_snapshot(
    temp: AllocDir, stream: BinaryIO, cancel: CancelToken, prev_alloc_id: str
) -> None:
    """Extract `stream` into `temp`, stopping with PrevAllocWaitCancelled at the next
    read once `cancel` fires; `stream` is closed in every case."""
    try:
        with io.BufferedReader(_CancellableRaw(stream, cancel, prev_alloc_id)) as reader:
            temp.extract(reader)
    finally:
        stream.close()


class _CancellableRaw(io.RawIOBase):
    """Not thread-safe; owned by one migrate call. A read-only raw stream over `raw`
    whose every read first checks `cancel`, so a long extraction stops. Closing it
    leaves `raw` open (its opener closes it)."""

    def __init__(self, raw: IO[bytes], cancel: CancelToken, prev_alloc_id: str) -> None:
        super().__init__()
        self._raw = raw
        self._cancel = cancel
        self._prev_alloc_id = prev_alloc_id

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int | None:
        check_cancel(self._cancel, self._prev_alloc_id)
        readinto = getattr(self._raw, "readinto", None)
        if readinto is not None:
            return readinto(buffer)
        view = memoryview(buffer).cast("B")
        data = self._raw.read(len(view))
        if data is None:
            return None
        view[: len(data)] = data
        return len(data)


def _discard(temp: AllocDir) -> None:
    """Remove a staging alloc dir; a failure is logged, never raised over the outcome."""
    try:
        temp.destroy()
    except Exception as err:
        log.warning("removing migration staging dir %s failed: %s", temp.path, err)
