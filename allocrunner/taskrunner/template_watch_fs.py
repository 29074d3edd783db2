"""SourceWatch: wakes a template watcher when one of its task's template source files
may have changed, on inotify where Linux has it, by polling elsewhere.

Inotify: one instance per watch (so per task with source templates). It watches the
directories on the way to each source, each opened by the alloc dir's escape-safe walk
(`allocdir.fs.resolve`: nothing outside the allocation directory is ever watched), and
for a source reached through a symlink the directory it really lives in. Directory
watches report what happens to the entries in them, so events are filtered by entry
name and mean:

- the source's entry was closed after writing (IN_CLOSE_WRITE), renamed into place,
  or had its attributes changed: read the sources again;
- it was created: watch again (its writer has not closed it yet: reading now could see
  half a file, so the close is waited for), deleted or renamed away: watch again;
- an entry on the way (a directory) changed, a watched directory went away, or the
  kernel queue overflowed: watch again and read the sources again.

Events about other entries are dropped in the kernel-to-user read, at no further cost.
Where inotify cannot be had, or adding a watch fails (``ENOSPC`` once
``fs.inotify.max_user_watches`` is used up), the watch polls every `POLL_INTERVAL`
seconds for a change of each source's stat signature (device, inode, size, mtime,
ctime) instead, for the rest of its life.

Threads: none; one watch belongs to the template watcher thread that opens it, except
the cancel token's callback (`CancelWake`), which runs on the cancelling thread.
Locks: none. Owner: `template_watch.TemplateWatcher`.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Sequence
from typing import Final

from allocrunner._locking import calls_out, confined, immutable
from allocrunner._sync import CancelToken
from allocrunner.allocdir import fs
from allocrunner.allocdir.inotify import (
    DIR_EVENTS,
    IN_ATTRIB,
    IN_CREATE,
    IN_DELETE_SELF,
    IN_IGNORED,
    IN_MOVE_SELF,
    IN_MOVED_TO,
    IN_Q_OVERFLOW,
    CancelWake,
    Inotify,
    InotifyEvent,
    open_with_wake,
    wait_readable,
)
from allocrunner.errors import AllocRunnerError

__all__ = ["IN_CLOSE_WRITE", "POLL_INTERVAL", "SourceWatch"]

IN_CLOSE_WRITE: Final = 0x00000008
POLL_INTERVAL: Final = 0.5
"""Seconds between two looks at the sources where inotify is unavailable."""

_DIR_MASK: Final = DIR_EVENTS | IN_CLOSE_WRITE
_GONE: Final = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_WRITTEN: Final = IN_CLOSE_WRITE | IN_MOVED_TO | IN_ATTRIB

Signature = tuple[int, int, int, int, int] | None
"""A source's device, inode, size, mtime and ctime (ns), or None when it is missing."""


class _Act(enum.Flag):
    NOTHING = 0
    REWATCH = enum.auto()
    READ = enum.auto()


class _NoWatch(Exception):
    """Adding a watch failed: poll from now on."""


class SourceWatch:
    """Not thread-safe; owned by one template watcher thread. The owner loops: `arm()`,
    read the sources, `wait()` (module docstring). `close()` when done."""

    _root = immutable()
    _sources = immutable()
    _cancel = immutable()
    _inotify = confined("template-watch")
    _wake = confined("template-watch")
    _names = confined("template-watch")  # wd -> entry name -> whether it is a source
    _stale = confined("template-watch")
    _signatures = confined("template-watch")

    def __init__(self, root: str, sources: Sequence[tuple[str, ...]], cancel: CancelToken) -> None:
        """Watch `sources` (each as path components relative to the alloc dir `root`)
        until `cancel` fires."""
        self._root = root
        self._sources = tuple(sources)
        self._cancel = cancel
        self._inotify: Inotify | None = None
        self._wake: CancelWake | None = None
        self._names: dict[int, dict[str, bool]] = {}
        self._stale = True
        self._signatures: tuple[Signature, ...] = ()
        self._open()
        if self._inotify is None:
            self._signatures = self._stat_all()

    def _open(self) -> None:
        opened = open_with_wake(self._cancel)
        if opened is not None:
            self._inotify, self._wake = opened

    def polling(self) -> bool:
        """True once this watch polls (no inotify, or it ran out of watches)."""
        return self._inotify is None

    # --- inotify ------------------------------------------------------------------

    @calls_out
    def arm(self) -> None:
        """Watch the directories on the way to every source again, if anything on the
        way may have changed since the last time."""
        inotify = self._inotify
        if inotify is None or not self._stale:
            return
        names: dict[int, dict[str, bool]] = {}
        try:
            for parts in self._sources:
                self._watch_way(inotify, parts, names)
            for wd in self._names.keys() - names.keys():
                inotify.rm_watch(wd)
        except (_NoWatch, OSError):
            self._fall_back()
            return
        self._names = names
        self._stale = False

    def _watch_way(
        self, inotify: Inotify, parts: tuple[str, ...], names: dict[int, dict[str, bool]]
    ) -> None:
        for depth in range(len(parts)):
            wd = self._watch_dir(inotify, parts[:depth])
            if wd is None:
                return  # missing: its parent's watch sees it come back
            entries = names.setdefault(wd, {})
            name = parts[depth]
            entries[name] = entries.get(name, False) or depth == len(parts) - 1
        real = self._real_parts(parts)
        if real is not None and real != parts and real:
            wd = self._watch_dir(inotify, real[:-1])
            if wd is not None:
                names.setdefault(wd, {})[real[-1]] = True

    def _watch_dir(self, inotify: Inotify, parts: tuple[str, ...]) -> int | None:
        """The watch on directory `parts`, or None if it is not a directory now."""
        try:
            resolved = fs.resolve(self._root, parts, display="/".join(parts), refuse_secrets=False)
        except (AllocRunnerError, OSError):
            return None
        with resolved:
            if resolved.st is None or not stat.S_ISDIR(resolved.st.st_mode):
                return None
            try:
                return inotify.add_watch_fd(resolved.fd, _DIR_MASK)
            except OSError as err:
                raise _NoWatch(str(err)) from err

    def _real_parts(self, parts: tuple[str, ...]) -> tuple[str, ...] | None:
        try:
            with fs.resolve(
                self._root, parts, display="/".join(parts), refuse_secrets=False
            ) as resolved:
                return resolved.parts
        except (AllocRunnerError, OSError):
            return None

    @calls_out
    def wait(self) -> bool:
        """Block until a source may have changed (True) or the token fired (False)."""
        if self._inotify is None:
            return self._poll()
        while True:
            inotify, wake = self._inotify, self._wake
            assert wake is not None
            wait_readable(inotify, wake)
            if self._cancel.cancelled():
                return False
            act = _Act.NOTHING
            for event in inotify.read_events():
                act |= self._meaning(event)
            if act & _Act.REWATCH:
                self._stale = True
                self.arm()
                if self._inotify is None:
                    return True  # fell back to polling: look at the sources now
            if act & _Act.READ:
                return True

    def _meaning(self, event: InotifyEvent) -> _Act:
        if event.mask & IN_Q_OVERFLOW:
            return _Act.REWATCH | _Act.READ
        entries = self._names.get(event.wd)
        if entries is None:
            return _Act.NOTHING  # a watch dropped at the last arm
        if not event.name:
            return _Act.REWATCH | _Act.READ if event.mask & (_GONE | IN_ATTRIB) else _Act.NOTHING
        source = entries.get(os.fsdecode(event.name))
        if source is None:
            return _Act.NOTHING
        if not source:
            return _Act.REWATCH | _Act.READ  # a directory on the way
        if event.mask & _WRITTEN:
            return _Act.REWATCH | _Act.READ
        if event.mask & IN_CREATE:
            return _Act.REWATCH  # wait for its writer to close it
        return _Act.REWATCH  # deleted or renamed away: nothing new to read

    def _fall_back(self) -> None:
        self._close_inotify()
        self._names = {}
        self._signatures = self._stat_all()

    # --- polling ------------------------------------------------------------------

    @calls_out
    def _poll(self) -> bool:
        while not self._cancel.wait(POLL_INTERVAL):
            signatures = self._stat_all()
            if signatures != self._signatures:
                self._signatures = signatures
                return True
        return False

    def _stat_all(self) -> tuple[Signature, ...]:
        return tuple(self._stat(parts) for parts in self._sources)

    def _stat(self, parts: tuple[str, ...]) -> Signature:
        try:
            with fs.resolve(
                self._root, parts, display="/".join(parts), refuse_secrets=False
            ) as resolved:
                st = resolved.st
        except (AllocRunnerError, OSError):
            return None
        if st is None:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    # --- closing ------------------------------------------------------------------

    def _close_inotify(self) -> None:
        inotify, self._inotify = self._inotify, None
        wake, self._wake = self._wake, None
        if inotify is not None:
            inotify.close()
        if wake is not None:
            wake.close()

    @calls_out
    def close(self) -> None:
        """Close the inotify instance and its wake-up; idempotent."""
        self._close_inotify()

    def __enter__(self) -> SourceWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
