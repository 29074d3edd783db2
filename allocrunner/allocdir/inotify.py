"""Linux inotify through ctypes, and a cancellable wait on it.

The alloc dir waits for files to appear and change (`AllocDir.block_until_exists`,
`AllocDir.change_events`) on inotify instead of re-checking on a timer. The binding is
three syscalls (`inotify_init1`, `inotify_add_watch`, `inotify_rm_watch`) reached with
ctypes, and the parsing of ``struct inotify_event`` records; it needs no dependency.

`Inotify.open()` returns None wherever inotify cannot be had (not Linux, no symbol in
libc, ``EMFILE``/``ENFILE`` once ``fs.inotify.max_user_instances`` is used up, …):
callers then fall back to polling. A watch is always added through
``/proc/self/fd/<fd>`` of a descriptor the caller opened with its own escape-safe
walk, so no path is resolved by name here.

`CancelWake` turns a `CancelToken` into a readable eventfd, so one ``poll`` waits on
inotify and on cancellation at once, with no timeout. `PathWatch` puts the two together
for a wait on a path: it watches what its owner's walk hands it, re-arms when a
watched directory changes, and falls back to sleeping on the token for a fixed
interval where inotify is missing or runs out (instances or watches).

Threads: none; every object here belongs to one waiting call on the caller's thread,
except the token's callback, which runs on the cancelling thread. Locks: none declared;
the callback and the closing waiter settle who touches the eventfd through a one-shot
`_sync.Event` (see `CancelWake`). Owner: `AllocDir`'s waits open and close them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import sys
from collections.abc import Callable, Iterator
from typing import Final

import attrs

from allocrunner._locking import calls_out, confined, immutable
from allocrunner._sync import CancelToken, Event

__all__ = [
    "DIR_EVENTS",
    "IN_ATTRIB",
    "IN_CREATE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_IGNORED",
    "IN_MODIFY",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_MOVE_SELF",
    "IN_ONLYDIR",
    "IN_Q_OVERFLOW",
    "TARGET_EVENTS",
    "CancelWake",
    "Inotify",
    "InotifyEvent",
    "PathWatch",
    "WatchTarget",
    "open_with_wake",
    "parse_events",
]

IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

# A directory on the way: entries appearing, going or being renamed, and the
# directory itself going away (or its permissions changing).
DIR_EVENTS: Final = (
    IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
# The object followed (`AllocDir.change_events`): written, truncated, touched,
# removed or renamed (and, for a directory, its entries).
TARGET_EVENTS: Final = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
)

_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_READ_SIZE: Final = 64 * 1024
# Failures that mean "no inotify here": fall back to polling rather than fail the call.
UNAVAILABLE_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC, errno.ENOSYS, errno.EINVAL}
)


@attrs.frozen
class InotifyEvent:
    """Immutable. One ``struct inotify_event``: the watch, what happened, the name of
    the entry in a watched directory (empty for the watched object itself)."""

    wd: int
    mask: int
    cookie: int
    name: bytes


def parse_events(buf: bytes) -> list[InotifyEvent]:
    """The events packed in `buf` as the kernel writes them (a header, then a
    NUL-padded name of `len` bytes). A truncated record ends the list."""
    events: list[InotifyEvent] = []
    pos = 0
    while pos + _HEADER.size <= len(buf):
        wd, mask, cookie, length = _HEADER.unpack_from(buf, pos)
        pos += _HEADER.size
        if pos + length > len(buf):
            break
        name = buf[pos : pos + length].rstrip(b"\x00")
        pos += length
        events.append(InotifyEvent(wd, mask, cookie, name))
    return events


class _Libc:
    """Immutable. The three inotify entry points of the C library, or none of them."""

    def __init__(self) -> None:
        self.init1: Callable[[int], int] | None = None
        self.add_watch: Callable[[int, bytes, int], int] | None = None
        self.rm_watch: Callable[[int, int], int] | None = None
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init1 = libc.inotify_init1
            add_watch = libc.inotify_add_watch
            rm_watch = libc.inotify_rm_watch
        except (OSError, AttributeError):
            return
        init1.argtypes = [ctypes.c_int]
        init1.restype = ctypes.c_int
        add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        add_watch.restype = ctypes.c_int
        rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        rm_watch.restype = ctypes.c_int
        self.init1, self.add_watch, self.rm_watch = init1, add_watch, rm_watch


_LIBC: Final = _Libc()


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


class Inotify:
    """Not thread-safe; owned by one waiting call. One inotify instance.

    Close it with `close()` (or ``with``); every method but `close` raises `OSError`
    on failure.
    """

    fd = confined("caller")

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @staticmethod
    def available() -> bool:
        """True where the C library has inotify (it may still fail to open)."""
        return _LIBC.init1 is not None

    @classmethod
    def open(cls) -> Inotify | None:
        """A new non-blocking, close-on-exec instance, or None where inotify cannot be
        had now (see `UNAVAILABLE_ERRNOS`)."""
        if _LIBC.init1 is None:
            return None
        fd = _LIBC.init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            if err in UNAVAILABLE_ERRNOS:
                return None
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        return cls(fd)

    def fileno(self) -> int:
        return self.fd

    def add_watch_fd(self, fd: int, mask: int) -> int:
        """Watch the object open as `fd` (any descriptor, ``O_PATH`` included) for
        `mask`; the watch descriptor (the same one again for an object already
        watched, whose mask is then replaced)."""
        assert _LIBC.add_watch is not None
        wd = _LIBC.add_watch(self.fd, f"/proc/self/fd/{fd}".encode(), mask)
        if wd < 0:
            _raise_errno("inotify_add_watch")
        return wd

    def rm_watch(self, wd: int) -> None:
        """Stop watch `wd`; a watch the kernel already dropped is no error."""
        assert _LIBC.rm_watch is not None
        if _LIBC.rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            _raise_errno("inotify_rm_watch")

    def read_events(self) -> list[InotifyEvent]:
        """Every event queued now (none when the queue is empty); never blocks."""
        events: list[InotifyEvent] = []
        while True:
            try:
                buf = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return events
            events.extend(parse_events(buf))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CancelWake:
    """Thread-safe. An eventfd that becomes readable when `cancel` fires.

    The token's callback runs on the cancelling thread and may race with `close()`.
    Both try to set `_claim` (exactly one succeeds): a callback that wins writes to the
    eventfd and then sets `_written`; a `close()` that loses waits for `_written`
    before closing the eventfd. So nobody ever writes to a closed — or by then reused —
    descriptor, and `close()` waits only for a callback already under way.
    """

    fd = immutable()
    _claim = immutable()
    _written = immutable()
    _withdraw = immutable()

    def __init__(self, cancel: CancelToken) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._claim = Event()
        self._written = Event()
        self._withdraw = cancel.on_cancel(self._on_cancel)

    def fileno(self) -> int:
        return self.fd

    def _on_cancel(self) -> None:
        if self._claim.set():
            with contextlib.suppress(OSError):
                os.eventfd_write(self.fd, 1)
            self._written.set()

    @calls_out
    def close(self) -> None:
        """Withdraw the callback and close the eventfd (after a racing callback wrote)."""
        self._withdraw()
        if not self._claim.set():
            self._written.wait()
        os.close(self.fd)


@calls_out
def wait_readable(inotify: Inotify, wake: CancelWake) -> bool:
    """Block, with no timeout, until `inotify` has events or `wake` fires; True when
    inotify is readable (it may be both)."""
    poller = select.poll()
    poller.register(inotify.fileno(), select.POLLIN)
    poller.register(wake.fileno(), select.POLLIN)
    while True:
        try:
            ready = poller.poll()
        except InterruptedError:
            continue
        if ready:
            return any(fd == inotify.fileno() for fd, _ in ready)


WatchTarget = tuple[int, int, bool]
"""One object to watch: an open descriptor of it, the event mask, and whether events
on it mean the set of objects to watch may have changed (a directory on the way)."""

# Events after which the watched objects must be walked again.
_REWALK: Final = IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_Q_OVERFLOW


class PathWatch:
    """Not thread-safe; owned by one waiting call. Wakes its owner when something on
    the way to a path may have changed, or when the token fires.

    `walk` yields the objects to watch, each as a `WatchTarget` whose descriptor stays
    open until the walk resumes (it is the owner's escape-safe walk: nothing is
    resolved here). The owner loops: `arm()`, check the path, `wait()`. `arm` walks
    again only when a directory event (or a dropped watch) came since the last walk.
    Without inotify — or once adding a watch fails (``ENOSPC`` when
    ``fs.inotify.max_user_watches`` is used up) — `wait` sleeps on the token for
    `poll_interval` instead, for the rest of the call; so does a round in which the
    walk yielded nothing to watch.
    """

    _cancel = confined("caller")
    _walk = confined("caller")
    _poll_interval = confined("caller")
    _inotify = confined("caller")
    _wake = confined("caller")
    _watches = confined("caller")  # wd -> whether its events call for a new walk
    _stale = confined("caller")

    def __init__(
        self,
        cancel: CancelToken,
        walk: Callable[[], Iterator[WatchTarget]],
        poll_interval: float,
    ) -> None:
        self._cancel = cancel
        self._walk = walk
        self._poll_interval = poll_interval
        self._inotify: Inotify | None = None
        self._wake: CancelWake | None = None
        self._watches: dict[int, bool] = {}
        self._stale = True
        self._open()

    def _open(self) -> None:
        opened = open_with_wake(self._cancel)
        if opened is not None:
            self._inotify, self._wake = opened

    def polling(self) -> bool:
        """True once this watch sleeps on a timer (no inotify, or it ran out)."""
        return self._inotify is None

    @calls_out
    def arm(self) -> None:
        """Watch what the walk yields now, if anything may have moved since the last
        walk. Errors of the walk itself (an escape, a refused path) propagate."""
        inotify = self._inotify
        if inotify is None or not self._stale:
            return
        watches: dict[int, bool] = {}
        try:
            for fd, mask, rewalk in self._walk():
                watches[inotify.add_watch_fd(fd, mask)] = rewalk
            for wd in self._watches.keys() - watches.keys():
                inotify.rm_watch(wd)
        except OSError:
            self._fall_back()
            return
        self._watches = watches
        self._stale = not watches  # nothing to watch yet: walk again next round

    @calls_out
    def wait(self) -> bool:
        """Block until something watched changed (True) or the token fired (False)."""
        inotify = self._inotify
        if inotify is None or not self._watches:
            return not self._cancel.wait(self._poll_interval)
        assert self._wake is not None
        if wait_readable(inotify, self._wake):
            for event in inotify.read_events():
                if event.mask & _REWALK or self._watches.get(event.wd, True):
                    self._stale = True
        return not self._cancel.cancelled()

    def _fall_back(self) -> None:
        self.close()
        self._watches = {}

    @calls_out
    def close(self) -> None:
        """Close the inotify instance and the eventfd; idempotent."""
        inotify, self._inotify = self._inotify, None
        wake, self._wake = self._wake, None
        if inotify is not None:
            inotify.close()
        if wake is not None:
            wake.close()

    def __enter__(self) -> PathWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_with_wake(cancel: CancelToken) -> tuple[Inotify, CancelWake] | None:
    """An inotify instance and a wake-up for `cancel`, or None where either cannot be
    had (no inotify: the caller polls instead)."""
    inotify = Inotify.open()
    if inotify is None:
        return None
    try:
        wake = CancelWake(cancel)
    except OSError:
        inotify.close()
        return None
    return inotify, wake
