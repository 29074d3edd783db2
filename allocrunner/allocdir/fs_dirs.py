"""Directories of the alloc dir as whole objects: create one safely, remove a tree,
measure its disk usage. None of these ever follows a symlink a task may have planted.

Threads and locks: none. Every function keeps its state in the call, so any thread may
call any of them at once; concurrent calls on one tree only race as the file system
does (a removal keeps going past entries that vanish, usage counts what it still sees).
Owner: `AllocDir` and `TaskDir` call them, through the `fs` module that re-exports them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Final

from allocrunner.errors import AllocDirError

__all__ = [
    "PRIVATE_DIR_MODE",
    "build_layout",
    "ensure_dir",
    "fill_private_dir",
    "remove_tree",
    "tree_usage",
]

_O_DIR_NOFOLLOW: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
PRIVATE_DIR_MODE: Final = 0o700
"""The mode a fresh layout's top directory is made with, until `fill_private_dir` has
filled it: no other user can enter it meanwhile, so nobody can plant a symlink there."""


def ensure_dir(parent_fd: int, name: str, mode: int, display: str) -> int:
    """Create directory `name` under `parent_fd` if missing and set exactly `mode`.

    Never follows a symlink: an existing non-directory (or symlink) at `name` raises
    `AllocDirError`. Returns a descriptor of the directory; the caller closes it.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=parent_fd)
    try:
        fd = os.open(name, _O_DIR_NOFOLLOW, dir_fd=parent_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise AllocDirError(f"{display} exists and is not a directory") from err
        raise
    try:
        os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return fd


def fill_private_dir(path: str, entries: Sequence[tuple[str, int]], mode: int) -> None:
    """Create `entries` (paths relative to `path`, parents first, each with its mode)
    inside `path`, then give `path` its own `mode`.

    `path` must be a directory this process has just made with `PRIVATE_DIR_MODE`
    (its `mkdir` succeeded): until the final chmod no other user can enter it, so
    nothing in it can have been replaced by a symlink, and plain path calls are as safe
    as the descriptor walk of `ensure_dir` at about a third of the system calls (a
    mkdir and a chmod per directory, against a mkdir, open, fchmod and close). Every
    mode is set by chmod, so the umask never changes it. A failure part way leaves
    `path` private; building again finds it existing and takes the careful walk, which
    completes the layout and resets every mode. An entry that exists already (another
    build of `path` ran meanwhile) raises FileExistsError, and a umask that took the
    owner's write bit off `path` makes a non-root caller's first mkdir raise
    PermissionError: the caller then takes that careful walk too, which sets the
    modes through descriptors first.
    """
    for relative, entry_mode in entries:
        entry = f"{path}/{relative}"
        os.mkdir(entry, entry_mode)
        os.chmod(entry, entry_mode)
    os.chmod(path, mode)


def build_layout(
    path: str,
    entries: Sequence[tuple[str, int]],
    mode: int,
    walk: Callable[[], None],
    *,
    make_parent: bool = False,
) -> None:
    """Make directory `path` with `entries` inside and give it `mode`: a fresh one is
    made private and filled by path (`fill_private_dir`); one that exists already is
    left to `walk`, the caller's descriptor walk that completes it and resets its modes
    without following symlinks. So is a fresh one whose filling met an entry another
    build made meanwhile, or found it unwritable (a non-root caller under a umask
    without the owner's write bit). OSError from the mkdir or the filling propagates
    (FileNotFoundError: `path`'s parent is missing, unless `make_parent`: the parent
    is then made, with its own parents, and the build tried again; looked for only
    when the mkdir finds it missing, so that a build under an existing parent makes no
    system call for it)."""
    try:
        os.mkdir(path, PRIVATE_DIR_MODE)
    except FileExistsError:
        walk()
        return
    except FileNotFoundError:
        if not make_parent:
            raise
        os.makedirs(os.path.dirname(path), exist_ok=True)
        build_layout(path, entries, mode, walk)
        return
    try:
        fill_private_dir(path, entries, mode)
    except (FileExistsError, PermissionError):
        walk()


def remove_tree(path: str) -> list[OSError]:
    """Remove `path` and everything under it without following symlinks.

    Best effort: keeps going past failures, retries once after making directories
    writable (a task may have left read-only ones), and returns the failures that
    remain. A path that is already gone is not a failure.
    """
    errors: list[OSError] = []
    for attempt in range(3):
        errors = _rmtree_once(path)
        if not errors:
            return []
        if attempt == 0 and any(e.errno in (errno.EACCES, errno.EPERM) for e in errors):
            _make_dirs_writable(path)
    return errors


def _rmtree_once(path: str) -> list[OSError]:
    errors: list[OSError] = []
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return []
    except OSError as err:
        return [err]
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as err:
            errors.append(err)
        return errors

    def collect(exc: BaseException) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, OSError):
            errors.append(exc)
        else:  # pragma: no cover - rmtree only reports OSErrors
            raise exc

    _rmtree(path, collect)
    return errors


def _rmtree(path: str, collect: Callable[[BaseException], None]) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=lambda _fn, _p, exc: collect(exc))
    else:
        shutil.rmtree(path, onerror=lambda _fn, _p, info: collect(info[1]))


def _make_dirs_writable(path: str) -> None:
    try:
        for _dirpath, _dirs, _files, dir_fd in os.fwalk(path, follow_symlinks=False):
            try:
                mode = os.fstat(dir_fd).st_mode
                os.fchmod(dir_fd, stat.S_IMODE(mode) | stat.S_IRWXU)
            except OSError:
                continue
    except OSError:
        return


def tree_usage(path: str) -> int:
    """Bytes of disk used by `path` and everything under it (hard links counted once)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise _usage_error(path, err) from err
    usage = _DiskUsage()
    if not stat.S_ISDIR(st.st_mode):
        return usage.of(st)
    try:
        return sum(
            usage.of_walked_dir(dir_fd, dirnames, filenames)
            for _dirpath, dirnames, filenames, dir_fd in os.fwalk(path, follow_symlinks=False)
        )
    except OSError as err:
        raise _usage_error(path, err) from err


def _usage_error(path: str, err: OSError) -> AllocDirError:
    return AllocDirError(f"disk usage of {path}: {err.strerror or err}")


class _DiskUsage:
    """Not thread-safe; owned by one `tree_usage` call. Adds up disk blocks, counting an
    inode with several hard links once."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def of(self, st: os.stat_result) -> int:
        """Bytes used by the object of `st`; 0 for a hard-linked file already counted."""
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in self._seen:
                return 0
            self._seen.add(key)
        return st.st_blocks * 512

    def of_walked_dir(self, dir_fd: int, dirnames: list[str], filenames: list[str]) -> int:
        """Bytes used by a directory `os.fwalk` yielded: itself, its files, and its
        symlinks to directories (listed in `dirnames` but never walked into). Entries
        that vanish while we look no longer use space and count nothing."""
        total = 0
        with contextlib.suppress(OSError):
            total += self.of(os.fstat(dir_fd))
        for name in filenames:
            st = _lstat_at(dir_fd, name)
            total += self.of(st) if st is not None else 0
        for name in dirnames:
            st = _lstat_at(dir_fd, name)
            total += self.of(st) if st is not None and stat.S_ISLNK(st.st_mode) else 0
        return total


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """The stat of `name` in `dir_fd` without following a symlink; None if it failed."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
