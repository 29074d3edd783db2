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

`resolve` is that walk, in named steps (`_Walk`); each step states what it guarantees.
Creating, removing and measuring whole directories lives in `fs_dirs` (re-exported).

Threads and locks: none. Every function keeps its state in the call (a `Resolved` or a
walk belongs to its caller), so any thread may call any of them at once. Owner:
`AllocDir`, `TaskDir` and the migration stream (`tarstream`) call them.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import attrs

from allocrunner._locking import confined
from allocrunner.allocdir.fs_dirs import (
    PRIVATE_DIR_MODE,
    build_layout,
    ensure_dir,
    fill_private_dir,
    remove_tree,
    tree_usage,
)
from allocrunner.errors import AllocDirError, PathEscapeError

__all__ = [
    "DELETED",
    "MODIFIED",
    "PRIVATE_DIR_MODE",
    "TRUNCATED",
    "AllocDirDestroyError",
    "FileChange",
    "FileInfo",
    "PathNotFoundError",
    "SecretsAccessError",
    "SymlinkLoopError",
    "build_layout",
    "clean_path",
    "ensure_dir",
    "fill_private_dir",
    "go_file_mode",
    "remove_tree",
    "tree_usage",
]

_O_PATH: Final = os.O_PATH | os.O_CLOEXEC
_O_NOFOLLOW_PATH: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
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


_GO_TYPE_LETTER: Final = {
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "L",
    stat.S_IFBLK: "D",
    stat.S_IFCHR: "D",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "S",
}
_KNOWN_TYPES: Final = frozenset({stat.S_IFREG, *_GO_TYPE_LETTER})


def go_file_mode(mode: int) -> str:
    """Render a POSIX ``st_mode`` the way Go's ``os.FileMode.String`` does."""
    fmt = stat.S_IFMT(mode)
    flags = (  # in Go's order
        _GO_TYPE_LETTER.get(fmt, ""),
        "u" if mode & stat.S_ISUID else "",
        "g" if mode & stat.S_ISGID else "",
        "c" if fmt == stat.S_IFCHR else "",
        "t" if mode & stat.S_ISVTX else "",
        "" if fmt in _KNOWN_TYPES else "?",
    )
    perms = "".join(ch if mode & (1 << (8 - i)) else "-" for i, ch in enumerate("rwxrwxrwx"))
    return ("".join(flags) or "-") + perms


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

    fd = confined("caller")

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
    Every descriptor the walk opened is closed, except the one it returns.
    """
    walk = _Walk(
        root,
        _open_root(root, display),
        parts,
        display=display,
        follow_final=follow_final,
        lexical_when_missing=lexical_when_missing,
        refuse_secrets=refuse_secrets,
    )
    try:
        return walk.run()
    except AllocDirError:
        raise
    except OSError as err:
        raise os_error(err, display, root) from err
    finally:
        walk.close()


def _open_root(root: str, display: str) -> int:
    """An ``O_PATH`` descriptor of the directory `root` (symlinks in `root` itself are
    the caller's and are followed); any failure is raised as the alloc dir's error."""
    try:
        return os.open(root, _O_PATH | os.O_DIRECTORY)
    except OSError as err:
        raise os_error(err, display, root) from err


class _Walk:
    """Not thread-safe; owned by one `resolve` call. One walk beneath a root descriptor.

    Invariants between steps: `dirs` holds an open ``O_PATH`` descriptor of each
    directory entered, the root first, and `names` where the last of them really is,
    relative to the root (so ``len(dirs) == len(names) + 1``); `pending` holds the
    components still to walk, the next one last. Symlink targets are pushed onto
    `pending`, never handed to the kernel, so no step can leave the root unseen.
    """

    __slots__ = (
        "_dirs",
        "_display",
        "_follow_final",
        "_hops",
        "_lexical_when_missing",
        "_names",
        "_pending",
        "_refuse_secrets",
        "_root",
    )

    def __init__(
        self,
        root: str,
        root_fd: int,
        parts: Sequence[str],
        *,
        display: str,
        follow_final: bool,
        lexical_when_missing: bool,
        refuse_secrets: bool,
    ) -> None:
        self._root = root
        self._display = display
        self._follow_final = follow_final
        self._lexical_when_missing = lexical_when_missing
        self._refuse_secrets = refuse_secrets
        self._dirs: list[int] = [root_fd]
        self._names: list[str] = []
        self._pending: list[str] = list(reversed(parts))
        self._hops = itertools.count(1)  # how many symlinks this one makes

    def close(self) -> None:
        """Close every directory descriptor the walk still holds (the root included)."""
        while self._dirs:
            os.close(self._dirs.pop())

    def run(self) -> Resolved:
        """Take the pending components one by one until the walk ends: at a final object
        (returned open), at a missing part (returned lexically when allowed) or at a
        refusal (raised)."""
        while self._pending:
            name = self._pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                self._step_up()
                continue
            done = self._step_into(name)
            if done is not None:
                return done
        return self._final_dir()

    def _step_up(self) -> None:
        """Leave the current directory for its parent; never above the root."""
        if len(self._dirs) == 1:
            raise PathEscapeError(f"path {self._display!r} escapes the alloc dir")
        os.close(self._dirs.pop())
        self._names.pop()

    def _step_into(self, name: str) -> Resolved | None:
        """Take component `name` of the current directory: refuse a secrets dir before
        looking at it, follow a symlink (unless it is final and not to be followed),
        enter a directory, or end the walk. None means the walk goes on."""
        self._refuse_secret(name)
        fd = self._open_child(name)
        if fd is None:
            return self._lexical(name)
        st = _fstat_or_close(fd)
        if stat.S_ISLNK(st.st_mode) and (self._pending or self._follow_final):
            os.close(fd)
            self._follow_link(name)
            return None
        return self._enter(name, fd, st)

    def _refuse_secret(self, name: str) -> None:
        """Raise `SecretsAccessError` when `name` is a task's secrets dir (any letter case),
        whether or not it exists; a no-op when secrets are allowed."""
        if self._refuse_secrets and len(self._names) == 1 and is_secret((self._names[0], name)):
            raise SecretsAccessError(
                f"path {self._display!r} leads into a task's secrets directory"
                f" ({self._names[0] + '/' + name!r})"
            )

    def _open_child(self, name: str) -> int | None:
        """An ``O_PATH`` descriptor of `name` itself (a symlink is not followed), or None
        when it is missing and the walk may go on lexically."""
        try:
            return os.open(name, _O_NOFOLLOW_PATH, dir_fd=self._dirs[-1])
        except FileNotFoundError:
            if not self._lexical_when_missing:
                raise
            return None

    def _follow_link(self, name: str) -> None:
        """Queue the target of symlink `name` in its place: a relative target from the
        current directory, an absolute one from the root, and only when it names a
        place inside the root. Raises `SymlinkLoopError` past MAX_SYMLINK_HOPS links."""
        if next(self._hops) > MAX_SYMLINK_HOPS:
            raise SymlinkLoopError(f"path {self._display!r}: too many levels of symbolic links")
        target = os.readlink(name, dir_fd=self._dirs[-1])
        if not target.startswith("/"):
            self._pending.extend(reversed(target.split("/")))
            return
        inside = _inside(self._root, target)
        if inside is None:
            link = "/".join([*self._names, name])
            raise PathEscapeError(
                f"path {self._display!r} escapes the alloc dir through symlink "
                f"{link!r} -> {target!r}"
            )
        self._restart_at_root(inside)

    def _restart_at_root(self, parts: list[str]) -> None:
        """Go back to the root (closing every other directory) with `parts` to walk."""
        while len(self._dirs) > 1:
            os.close(self._dirs.pop())
        self._names.clear()
        self._pending.extend(reversed(parts))

    def _enter(self, name: str, fd: int, st: os.stat_result) -> Resolved | None:
        """Own `fd`, the object `name` (not a symlink to follow): the result when nothing
        is pending, else the next directory; a non-directory with components after it
        ends the walk lexically when allowed and fails with ENOTDIR otherwise."""
        if not self._pending:
            self._names.append(name)
            return Resolved(fd, st, tuple(self._names))
        if stat.S_ISDIR(st.st_mode):
            self._names.append(name)
            self._dirs.append(fd)
            return None
        os.close(fd)
        if self._lexical_when_missing:
            return self._lexical(name)
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", name)

    def _lexical(self, missing: str) -> Resolved:
        """The lexical result from `missing` on (still refusing escapes and, unless
        allowed, secrets dirs); it has no descriptor."""
        _lexical_rest(self._names, missing, self._pending, self._display, self._refuse_secrets)
        return Resolved(-1, None, tuple(self._names))

    def _final_dir(self) -> Resolved:
        """The walk ended in a directory: hand its descriptor over to the result."""
        fd = self._dirs.pop()
        return Resolved(fd, _fstat_or_close(fd), tuple(self._names))


def _fstat_or_close(fd: int) -> os.stat_result:
    """The stat of `fd`; if that fails, `fd` is closed before the error is raised."""
    try:
        return os.fstat(fd)
    except OSError:
        os.close(fd)
        raise


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
