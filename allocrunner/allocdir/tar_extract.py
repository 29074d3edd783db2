"""Extracting the migration stream into a fresh directory, trusting nothing in it.

`extract_stream` is the receiving side of `allocrunner.allocdir.tar_writer`. It only
ever writes into a fresh directory that it owns, and:

- refuses an entry whose name is absolute, contains ``..``, or lies outside
  ``alloc/data`` and ``<task>/local`` (`PathEscapeError` / `AllocDirError`);
- writes through directory descriptors opened with ``O_NOFOLLOW`` and creates files
  with ``O_EXCL``, so a symlink planted by an earlier entry is never followed (the
  "write attack"); an existing entry is removed before it is replaced;
- accepts only relative symlinks and, once the whole tree is in place, checks that
  each resolves inside the alloc dir (chains through other links included);
- drops setuid/setgid bits and keeps ownership only when running as root;
- aborts on the error marker with the sender's message.

Threads: none; an extraction runs on its caller's thread. Locks: none (the
destination is private to the call until it returns). Owner: `AllocDir.extract`,
which calls `extract_stream` on a staging directory and discards it on failure;
each `_Extraction` belongs to one call.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from typing import IO

from allocrunner._locking import confined
from allocrunner.allocdir import fs
from allocrunner.allocdir.tar_format import ENCODING, MARKER_RE, MAX_MARKER_BYTES
from allocrunner.allocdir.tar_reader import Entry, Reader, entries
from allocrunner.errors import AllocDirError, PathEscapeError

__all__ = ["extract_stream"]

_DATA_ROOT = ("alloc", "data")
_LOCAL_DIR = "local"


def _entry_parts(name: str, what: str = "entry") -> tuple[str, ...]:
    """Validate a member name; its components relative to the alloc dir."""
    if "\x00" in name:
        raise PathEscapeError(f"snapshot {what} {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise PathEscapeError(f"snapshot {what} {name!r} is an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise PathEscapeError(f"snapshot {what} {name!r} contains '..'")
    if not parts:
        raise AllocDirError(f"snapshot {what} {name!r} names the alloc dir itself")
    return parts


def _root_of(parts: tuple[str, ...], name: str) -> tuple[str, ...]:
    """The migrated root (``alloc/data`` or ``<task>/local``) that holds `parts`."""
    if len(parts) >= 2:
        if parts[:2] == _DATA_ROOT:
            return _DATA_ROOT
        if parts[0] != fs.SHARED_DIR_NAME and parts[1] == _LOCAL_DIR:
            return parts[:2]
    raise AllocDirError(f"snapshot entry {name!r} is outside alloc/data and the task local dirs")


class _Extraction:
    """Not thread-safe; owned by one `extract_stream` call. Writes beneath `dest`."""

    _parent = confined("extracting")

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.as_root = os.geteuid() == 0
        self.roots: dict[tuple[str, ...], None] = {}
        self.dirs: dict[tuple[str, ...], tuple[int, float, int, int]] = {}
        self.implicit_dirs: set[tuple[str, ...]] = set()
        self.links: list[tuple[str, ...]] = []
        self._parent: tuple[tuple[str, ...], int] | None = None

    def close(self) -> None:
        self._drop_parent()
        os.close(self.root_fd)

    def _drop_parent(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def parent_fd(self, parts: tuple[str, ...], name: str) -> int:
        """Descriptor of the directory `parts`, created as needed, never via a symlink."""
        if self._parent is not None and self._parent[0] == parts:
            return self._parent[1]
        self._drop_parent()
        fd = os.dup(self.root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    self.implicit_dirs.add(parts[: i + 1])
                except FileExistsError:
                    pass
                try:
                    child = os.open(
                        part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                    )
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise PathEscapeError(
                            f"snapshot entry {name!r} goes through {'/'.join(parts[: i + 1])!r},"
                            " which is a symlink or not a directory"
                        ) from err
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        self._parent = (parts, fd)
        return fd

    def _clear(self, dir_fd: int, leaf: str, *, keep_dir: bool) -> bool:
        """Remove what is at `leaf` (never following it); True if a directory was kept."""
        try:
            st = os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return True
            raise AllocDirError(f"snapshot entry replaces directory {leaf!r} with a non-directory")
        os.unlink(leaf, dir_fd=dir_fd)
        return False

    def add(self, entry: Entry, reader: Reader) -> None:
        parts = _entry_parts(entry.name)
        self.roots.setdefault(_root_of(parts, entry.name), None)
        parent = self.parent_fd(parts[:-1], entry.name)
        leaf = parts[-1]
        mode = entry.mode & 0o1777  # never setuid/setgid from a stream
        kind = entry.kind
        if kind in tarfile.REGULAR_TYPES:
            self._clear(parent, leaf, keep_dir=False)
            fd = os.open(
                leaf,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
            try:
                reader.copy_to_fd(fd, entry.size, entry.name)
                if self.as_root:
                    os.fchown(fd, entry.uid, entry.gid)
                os.fchmod(fd, mode)
                mtime_ns = int(entry.mtime * 1e9)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
            return
        reader.skip(entry.size, entry.name)  # only regular files carry a body
        if kind == tarfile.DIRTYPE:
            if not self._clear(parent, leaf, keep_dir=True):
                os.mkdir(leaf, 0o700, dir_fd=parent)
            self.implicit_dirs.discard(parts)
            self.dirs[parts] = (mode, entry.mtime, entry.uid, entry.gid)
        elif kind == tarfile.SYMTYPE:
            self._symlink(parent, leaf, parts, entry)
        elif kind == tarfile.LNKTYPE:
            self._hardlink(parent, leaf, entry)
        else:
            raise AllocDirError(
                f"snapshot entry {entry.name!r} has unsupported type {kind!r}"
                " (only files, directories and links are migrated)"
            )

    def _symlink(self, parent: int, leaf: str, parts: tuple[str, ...], entry: Entry) -> None:
        target = entry.link
        if not target or "\x00" in target:
            raise AllocDirError(f"snapshot symlink {entry.name!r} has an invalid target")
        if target.startswith("/"):
            raise PathEscapeError(
                f"snapshot symlink {entry.name!r} -> {target!r} is absolute and so"
                " escapes the alloc dir"
            )
        # Cheap lexical check now; the full check runs once every link exists.
        try:
            fs.clean_path("/".join([*parts[:-1], target]))
        except PathEscapeError as err:
            raise PathEscapeError(
                f"snapshot symlink {entry.name!r} -> {target!r} escapes the alloc dir"
            ) from err
        self._clear(parent, leaf, keep_dir=False)
        os.symlink(target, leaf, dir_fd=parent)
        if self.as_root:
            os.chown(leaf, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        mtime_ns = int(entry.mtime * 1e9)
        os.utime(leaf, ns=(mtime_ns, mtime_ns), dir_fd=parent, follow_symlinks=False)
        self.links.append(parts)

    def _hardlink(self, parent: int, leaf: str, entry: Entry) -> None:
        src = _entry_parts(entry.link, "hard link target")
        _root_of(src, entry.link)
        self._clear(parent, leaf, keep_dir=False)
        src_parent = os.dup(self.root_fd)
        try:
            for part in src[:-1]:
                try:
                    child = os.open(
                        part,
                        os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=src_parent,
                    )
                except OSError as err:
                    raise PathEscapeError(
                        f"snapshot hard link {entry.name!r} -> {entry.link!r} goes through a"
                        " symlink or a missing directory"
                    ) from err
                os.close(src_parent)
                src_parent = child
            os.link(src[-1], leaf, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(src_parent)

    def finish(self) -> None:
        """Check every symlink against the finished tree, then settle directory modes."""
        self._drop_parent()
        for parts in self.links:
            display = "/".join(parts)
            try:
                fs.resolve(
                    self.dest,
                    parts,
                    display=display,
                    lexical_when_missing=True,
                    refuse_secrets=False,
                ).close()
            except PathEscapeError as err:
                raise PathEscapeError(
                    f"snapshot symlink {display!r} escapes the alloc dir"
                ) from err
            except fs.SymlinkLoopError:
                continue  # a loop resolves nowhere, so it cannot lead out either
            except AllocDirError as err:
                raise AllocDirError(f"snapshot symlink {display!r}: {err}") from err
        settle: dict[tuple[str, ...], tuple[int, float | None, int, int]] = {
            p: (0o755, None, -1, -1) for p in self.implicit_dirs
        }
        settle.update(self.dirs)
        for parts in sorted(settle, key=len, reverse=True):
            mode, mtime, uid, gid = settle[parts]
            fd = self._open_dir(parts)
            try:
                if self.as_root and uid >= 0:
                    os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                if mtime is not None:
                    mtime_ns = int(mtime * 1e9)
                    os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)

    def _open_dir(self, parts: tuple[str, ...]) -> int:
        fd = os.dup(self.root_fd)
        try:
            for part in parts:
                child = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd


def extract_stream(fileobj: IO[bytes], dest: str) -> list[tuple[str, ...]]:
    """Extract a snapshot stream into the empty directory `dest`.

    Returns the migrated roots found (``("alloc", "data")`` and ``(task, "local")``),
    in stream order. Raises `PathEscapeError` for an escaping entry or link and
    `AllocDirError` for the error marker, a malformed or truncated stream, or an I/O
    failure; `dest` may then hold a partial tree, which the caller discards.
    """
    reader = Reader(fileobj)
    try:
        job = _Extraction(dest)
    except OSError as err:
        raise AllocDirError(f"extracting snapshot stream into {dest}: {err}") from err
    try:
        for entry in entries(reader):
            if "/" not in entry.name.strip("/") and MARKER_RE.fullmatch(entry.name.strip("/")):
                raw = reader.data(min(entry.size, MAX_MARKER_BYTES), MAX_MARKER_BYTES, "marker")
                message = raw.decode(ENCODING, "replace").strip()
                raise AllocDirError(f"snapshot stream reported an error: {message}")
            job.add(entry, reader)
        job.finish()
    except (AllocDirError, PathEscapeError):
        raise
    except OSError as err:
        raise AllocDirError(f"extracting snapshot stream: {err}") from err
    finally:
        job.close()
    return list(job.roots)
