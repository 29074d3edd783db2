"""Placing a fetched artifact at its destination inside the task dir, never outside.

`resolve_destination` reads a destination as Nomad's task env does (``ClientPath``):
a relative path is joined to the task dir; an absolute one is kept when it lies in the
confinement root and joined to the task dir otherwise; then the result must stay in
the root (the task dir by default, or the alloc dir for Nomad's own rule:
``artifact destination path escapes ...``), following any symlink already there
(`allocrunner.allocdir.fs.resolve`), so a link planted by an earlier run of the task
cannot carry the artifact out.

The install itself moves what the staging directory holds with ``rename`` through
directory descriptors opened with ``O_NOFOLLOW``: a file replaces what was at its
name in one step (a symlink there is replaced, never followed); a directory is merged
entry by entry into an existing one; a file never replaces a directory.

Threads: none; an install runs on its caller's thread. Locks: none. Owner:
`allocrunner.artifacts.fetch`, with the task not running (artifacts are fetched
before the task starts), so nothing changes the destination meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

import attrs

from allocrunner.allocdir import fs
from allocrunner.errors import AllocDirError, PathEscapeError

__all__ = [
    "Destination",
    "InstallError",
    "install_file",
    "merge_tree",
    "open_dir",
    "resolve_destination",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class InstallError(Exception):
    """The artifact cannot be put at its destination; the message is the reason."""


@attrs.frozen
class Destination:
    """Immutable. Where an artifact goes: `parts` beneath `root`, none a symlink."""

    root: str
    parts: tuple[str, ...]

    @property
    def path(self) -> str:
        return os.path.join(self.root, *self.parts)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_destination(destination: str, task_dir: str, root: str) -> Destination:
    """The destination of an artifact, resolved beneath `root`; PathEscapeError when
    it leaves it (lexically or through a symlink)."""
    task_dir = os.path.abspath(task_dir)
    root = os.path.abspath(root)
    if "\x00" in destination:
        raise PathEscapeError("artifact destination path contains a NUL byte")
    path = destination
    if not os.path.isabs(path) or not _inside(os.path.normpath(path), root):
        path = os.path.join(task_dir, path.lstrip("/"))
    path = os.path.normpath(path)
    where = "task directory" if root == task_dir else "alloc directory"
    if not _inside(path, root):
        raise PathEscapeError(f"artifact destination path escapes {where}")
    rel = os.path.relpath(path, root)
    parts = () if rel == "." else tuple(rel.split("/"))
    try:
        with fs.resolve(
            root, parts, display=destination, lexical_when_missing=True, refuse_secrets=False
        ) as resolved:
            return Destination(root, tuple(resolved.parts))
    except PathEscapeError:
        raise PathEscapeError(f"artifact destination path escapes {where}") from None
    except AllocDirError as err:
        raise InstallError(f"artifact destination {destination}: {err}") from None


def open_dir(root: str, parts: tuple[str, ...]) -> int:
    """A descriptor of the directory `parts` beneath `root`, made (0755) where missing;
    a component that is a symlink or not a directory is refused."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise InstallError(
                        f"destination {'/'.join(parts[: i + 1])} is not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def install_file(source: str, dir_fd: int, leaf: str, display: str) -> None:
    """Move the file `source` to `leaf` in the directory `dir_fd`, replacing a file or
    symlink there in one step; InstallError when a directory is there."""
    try:
        os.rename(source, leaf, dst_dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise InstallError(f"destination {display} is a directory") from None
        raise


def _kind(name: str, dir_fd: int) -> int | None:
    try:
        return stat.S_IFMT(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return None


def merge_tree(src_fd: int, dst_fd: int, display: str) -> None:
    """Move every entry of the directory `src_fd` into `dst_fd`: directories present in
    both are merged, anything else replaces what is there; a directory in `dst_fd` is
    never replaced by a non-directory (InstallError)."""
    for name in sorted(os.listdir(src_fd)):
        mine, theirs = _kind(name, src_fd), _kind(name, dst_fd)
        shown = f"{display.rstrip('/')}/{name}"
        if mine == stat.S_IFDIR and theirs == stat.S_IFDIR:
            _merge_dirs(name, src_fd, dst_fd, shown)
            continue
        if theirs == stat.S_IFDIR:
            raise InstallError(f"destination {shown} is a directory")
        if theirs is not None and mine == stat.S_IFDIR:
            os.unlink(name, dir_fd=dst_fd)
        os.rename(name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _merge_dirs(name: str, src_fd: int, dst_fd: int, display: str) -> None:
    src_child = os.open(name, _DIR_FLAGS, dir_fd=src_fd)
    try:
        os.fchmod(src_child, stat.S_IMODE(os.fstat(src_child).st_mode) | stat.S_IRWXU)
        dst_child = os.open(name, _DIR_FLAGS, dir_fd=dst_fd)
        try:
            merge_tree(src_child, dst_child, display)
        finally:
            os.close(dst_child)
    finally:
        os.close(src_child)
