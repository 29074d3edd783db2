"""Escape-safe file-system primitives for the alloc dir.

Paths handed to the alloc dir come from outside (the fs API, a migration stream), and
the tree itself is written by tasks, which may plant symlinks anywhere they can write.
So nothing here ever lets the kernel follow a symlink on our behalf: a path is walked
one component at a time through directory file descriptors opened with
``O_NOFOLLOW``, and every symlink met on the way is resolved by us, against the alloc
dir as the root, refusing any step that would leave it. A task swapping a directory
for a symlink between our check and our use cannot redirect us, because there is no
such gap: the check *is* the walk. (This is what ``openat2(RESOLVE_BENEATH)`` gives
in C; Python has no binding for it.)

Rules shared by every operation:

- a path is relative to the alloc dir; absolute paths and ``..`` steps that leave it
  raise `PathEscapeError` (``a/../b`` is fine: it never leaves);
- a symlink is followed only while its target stays inside the alloc dir (an absolute
  target is accepted only when it names a place inside it);
- anything under a task's ``secrets/`` (any letter case) is refused with
  `SecretsAccessError`, also when reached through a symlink;
- a missing path raises `PathNotFoundError`; other OS failures raise `AllocDirError`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

import attrs

from allocrunner.errors import AllocDirError, PathEscapeError

__all__ = [
    "DELETED",
    "MODIFIED",
    "TRUNCATED",
    "AllocDirDestroyError",
    "FileChange",
    "FileInfo",
    "PathNotFoundError",
    "SecretsAccessError",
    "SymlinkLoopError",
    "clean_path",
    "go_file_mode",
]

_O_PATH: Final = os.O_PATH | os.O_CLOEXEC
_O_NOFOLLOW_PATH: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR_NOFOLLOW: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SYMLINK_HOPS: Final = 40

MODIFIED: Final = "modified"
TRUNCATED: Final = "truncated"
DELETED: Final = "deleted"
SHARED_DIR_NAME: Final = "alloc"
SECRETS_DIR_NAME: Final = "secrets"


# --- errors ----------------------------------------------------------------------------


class PathNotFoundError(AllocDirError, FileNotFoundError):
    """The path does not exist inside the alloc dir."""


class SecretsAccessError(AllocDirError, PermissionError):
    """The path lies under a task's ``secrets/`` directory, which the fs API never serves."""


class SymlinkLoopError(AllocDirError):
    """Resolving the path met too many symlinks (a loop)."""


class AllocDirDestroyError(AllocDirError):
    """Destroying the alloc dir left something behind; `errors` holds every failure."""

    def __init__(self, message: str, errors: Sequence[OSError]) -> None:
        super().__init__(message)
        self.errors: tuple[OSError, ...] = tuple(errors)


# --- value objects ---------------------------------------------------------------------


@attrs.frozen
class FileInfo:
    """Immutable. One file as the fs API reports it (Nomad's AllocFileInfo).

    `file_mode` is the Go ``os.FileMode`` string (``-rw-r--r--``, ``drwxr-xr-x``,
    ``Lrwxrwxrwx``, ``dtrwxrwxrwx``) so that API clients see what Nomad shows.
    """

    name: str
    is_dir: bool
    size: int
    file_mode: str
    mod_time: datetime


@attrs.frozen
class FileChange:
    """Immutable. One change seen by `AllocDir.change_events`.

    `kind` is ``"modified"`` (grew, or rewritten in place), ``"truncated"`` (shrank) or
    ``"deleted"`` (gone or replaced by another file; the last event). `size` is the
    file's size now (0 once deleted); `offset` is the size known before this change,
    so after ``modified`` the unseen bytes are ``[offset, size)``.
    """

    kind: str = attrs.field(validator=attrs.validators.in_((MODIFIED, TRUNCATED, DELETED)))
    size: int
    offset: int


def file_info(name: str, st: os.stat_result) -> FileInfo:
    """The `FileInfo` of a stat result, under `name`."""
    return FileInfo(
        name=name,
        is_dir=stat.S_ISDIR(st.st_mode),
        size=st.st_size,
        file_mode=go_file_mode(st.st_mode),
        mod_time=datetime.fromtimestamp(st.st_mtime_ns / 1e9, tz=UTC),
    )


def go_file_mode(mode: int) -> str:
    """Render a POSIX ``st_mode`` the way Go's ``os.FileMode.String`` does."""
    fmt = stat.S_IFMT(mode)
    flags = ""
    if fmt == stat.S_IFDIR:
        flags += "d"
    if fmt == stat.S_IFLNK:
        flags += "L"
    if fmt in (stat.S_IFBLK, stat.S_IFCHR):
        flags += "D"
    if fmt == stat.S_IFIFO:
        flags += "p"
    if fmt == stat.S_IFSOCK:
        flags += "S"
    if mode & stat.S_ISUID:
        flags += "u"
    if mode & stat.S_ISGID:
        flags += "g"
    if fmt == stat.S_IFCHR:
        flags += "c"
    if mode & stat.S_ISVTX:
        flags += "t"
    if fmt not in (
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFBLK,
        stat.S_IFCHR,
        stat.S_IFIFO,
        stat.S_IFSOCK,
    ):
        flags += "?"
    perms = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return (flags or "-") + perms


# --- path checks -----------------------------------------------------------------------


def clean_path(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """Split a path relative to the alloc dir into clean components.

    ``.`` and empty components are dropped and ``..`` is applied lexically; an absolute
    path, a NUL byte, or a ``..`` that climbs above the alloc dir raises
    `PathEscapeError`. ``""`` and ``"."`` name the alloc dir itself.
    """
    if isinstance(path, bytes):
        raise TypeError(f"path {path!r}: expected str or os.PathLike[str], got bytes")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"path {path!r}: expected str or os.PathLike[str]")
    if "\x00" in text:
        raise PathEscapeError(f"path {text!r} contains a NUL byte")
    if text.startswith("/"):
        raise PathEscapeError(
            f"path {text!r} is absolute; alloc dir paths are relative to the alloc dir"
        )
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathEscapeError(f"path {text!r} escapes the alloc dir")
            parts.pop()
        else:
            parts.append(part)
    return tuple(parts)


def is_secret(parts: Sequence[str]) -> bool:
    """True when `parts` is a task's secrets dir or lies under it (any letter case)."""
    return (
        len(parts) >= 2 and parts[0] != SHARED_DIR_NAME and parts[1].casefold() == SECRETS_DIR_NAME
    )


def check_not_secret(parts: Sequence[str], display: str) -> None:
    """Raise `SecretsAccessError` when `parts` reaches into a task's secrets dir."""
    if is_secret(parts):
        raise SecretsAccessError(f"path {display!r} is inside a task's secrets directory")


def os_error(err: OSError, display: str, where: str) -> AllocDirError:
    """Translate an OSError met while serving `display` into the alloc dir's errors."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return PathNotFoundError(
            errno.ENOENT, f"no such file or directory in alloc dir {where}", display
        )
    return AllocDirError(f"{display!r} in alloc dir {where}: {err.strerror or err}")


class Resolved:
    """Not thread-safe; owned by the caller. A path walked beneath the alloc dir.

    `fd` is an ``O_PATH`` descriptor of the final object (or -1 when it does not exist
    and the walk was lexical past that point), `st` its stat, `parts` the components of
    where it really is, relative to the root. Close it with `close()` (or ``with``).
    """

    __slots__ = ("fd", "parts", "st")

    def __init__(self, fd: int, st: os.stat_result | None, parts: tuple[str, ...]) -> None:
        self.fd = fd
        self.st = st
        self.parts = parts

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Resolved:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve(
    root: str,
    parts: Sequence[str],
    *,
    display: str,
    follow_final: bool = True,
    lexical_when_missing: bool = False,
    refuse_secrets: bool = True,
) -> Resolved:
    """Walk `parts` beneath `root`, following symlinks only inside it.

    The result's descriptor is an ``O_PATH`` one: use `reopen` to read through it. With
    `follow_final` False a final symlink is returned itself. With `lexical_when_missing`
    a missing component does not fail the walk: the rest is applied lexically (so a
    dangling symlink is still checked for escapes) and the result has ``fd == -1``.
    With `refuse_secrets` False the walk may pass through secrets dirs (used to check
    migrated symlinks for escapes only; nothing is read).
    Raises `PathEscapeError`, `SecretsAccessError`, `PathNotFoundError`, `AllocDirError`.
    """
    try:
        root_fd = os.open(root, _O_PATH | os.O_DIRECTORY)
    except OSError as err:
        raise os_error(err, display, root) from err
    dirs = [root_fd]  # descriptors of the directories walked into, root first
    names: list[str] = []  # where dirs[-1] (then the final object) really is
    pending = list(reversed(parts))
    hops = 0
    final_fd = -1
    final_st: os.stat_result | None = None
    try:
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if len(dirs) == 1:
                    raise PathEscapeError(f"path {display!r} escapes the alloc dir")
                os.close(dirs.pop())
                names.pop()
                continue
            if refuse_secrets and len(names) == 1 and is_secret((names[0], name)):
                # refused whether or not it exists, and before looking at it
                raise SecretsAccessError(
                    f"path {display!r} leads into a task's secrets directory"
                    f" ({names[0] + '/' + name!r})"
                )
            try:
                fd = os.open(name, _O_NOFOLLOW_PATH, dir_fd=dirs[-1])
            except FileNotFoundError:
                if not lexical_when_missing:
                    raise
                _lexical_rest(names, name, pending, display, refuse_secrets)
                return Resolved(-1, None, tuple(names))
            try:
                st = os.fstat(fd)
            except OSError:
                os.close(fd)
                raise
            if stat.S_ISLNK(st.st_mode) and (pending or follow_final):
                os.close(fd)
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise SymlinkLoopError(f"path {display!r}: too many levels of symbolic links")
                target = os.readlink(name, dir_fd=dirs[-1])
                if target.startswith("/"):
                    inside = _inside(root, target)
                    if inside is None:
                        link = "/".join([*names, name])
                        raise PathEscapeError(
                            f"path {display!r} escapes the alloc dir through symlink "
                            f"{link!r} -> {target!r}"
                        )
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                    names.clear()
                    pending.extend(reversed(inside))
                else:
                    pending.extend(reversed(target.split("/")))
                continue
            names.append(name)
            if pending:
                if not stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    if lexical_when_missing:
                        names.pop()
                        _lexical_rest(names, name, pending, display, refuse_secrets)
                        return Resolved(-1, None, tuple(names))
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)
                dirs.append(fd)
            else:
                final_fd, final_st = fd, st
        if final_fd < 0:
            final_fd = dirs.pop()
            final_st = os.fstat(final_fd)
        return Resolved(final_fd, final_st, tuple(names))
    except PathEscapeError:
        raise
    except AllocDirError:
        if final_fd >= 0:
            os.close(final_fd)
        raise
    except OSError as err:
        if final_fd >= 0:
            os.close(final_fd)
        raise os_error(err, display, root) from err
    finally:
        for fd in dirs:
            os.close(fd)


def _lexical_rest(
    names: list[str], missing: str, pending: list[str], display: str, refuse_secrets: bool
) -> None:
    """Apply the components after a missing one lexically, refusing escapes."""
    names.append(missing)
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if not names:
                raise PathEscapeError(f"path {display!r} escapes the alloc dir")
            names.pop()
        else:
            names.append(name)
        if refuse_secrets and len(names) == 2 and is_secret(names):
            raise SecretsAccessError(f"path {display!r} leads into a task's secrets directory")


def _inside(root: str, target: str) -> list[str] | None:
    """The components of absolute `target` below `root`, or None if it is not below it."""
    for base in {os.path.abspath(root), os.path.realpath(root)}:
        prefix = base.rstrip("/") + "/"
        if target == base or target.rstrip("/") == base:
            return []
        if target.startswith(prefix):
            return target[len(prefix) :].split("/")
    return None


def reopen(resolved: Resolved, display: str) -> int:
    """A readable descriptor for a resolved regular file or directory."""
    st = resolved.st
    assert st is not None and resolved.fd >= 0
    try:
        if stat.S_ISDIR(st.st_mode):
            return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=resolved.fd)
        if not stat.S_ISREG(st.st_mode):
            raise AllocDirError(f"path {display!r} is not a regular file")
        # Re-opening through procfs reaches exactly the inode we walked to.
        return os.open(f"/proc/self/fd/{resolved.fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise os_error(err, display, "") from err


# --- directory creation and removal ----------------------------------------------------


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
    seen: set[tuple[int, int]] = set()
    total = 0

    def account(st: os.stat_result) -> int:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in seen:
                return 0
            seen.add(key)
        return st.st_blocks * 512

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    except OSError as err:
        raise AllocDirError(f"disk usage of {path}: {err.strerror or err}") from err
    if not stat.S_ISDIR(st.st_mode):
        return account(st)
    try:
        for _dirpath, dirnames, filenames, dir_fd in os.fwalk(path, follow_symlinks=False):
            with contextlib.suppress(OSError):
                total += account(os.fstat(dir_fd))
            for name in filenames:
                try:
                    total += account(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
                except OSError:
                    continue  # vanished while we looked: it no longer uses space
            # Symlinks to directories are listed in dirnames but never walked into.
            for name in dirnames:
                try:
                    sub = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISLNK(sub.st_mode):
                    total += account(sub)
    except OSError as err:
        raise AllocDirError(f"disk usage of {path}: {err.strerror or err}") from err
    return total
