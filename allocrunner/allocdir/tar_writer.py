"""The sending side of the migration stream: a tar of an alloc dir's migrated roots.

`write_snapshot` is Nomad's ``AllocDir.Snapshot``: entries are named relative to the
alloc dir, directories come before their contents, symlinks are stored as links and
never followed, and only directories, regular files and symlinks are carried
(sockets, FIFOs and devices mean nothing on another node). If the tree cannot be
read, an entry named ``NOMAD-<alloc_id>-ERROR.log`` holding the error is appended,
the archive is closed and the error is raised, so a receiver reading the stream
learns why it is short.

Headers are built with `tarfile.TarInfo` (PAX format). File bodies never go through
`tarfile`'s small-block buffering: they move in 1 MiB chunks, or inside the kernel
(``sendfile``) when the output is a plain descriptor (pipe, socket, file).

Threads: none; a snapshot runs on its caller's thread. Locks: none (the tree is
walked through directory descriptors opened with ``O_NOFOLLOW``; the caller keeps
it from being destroyed meanwhile). Owner: `AllocDir.snapshot`, which calls
`write_snapshot`; each `_Writer` belongs to one call.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from collections.abc import Sequence
from typing import IO

from allocrunner._locking import confined
from allocrunner.allocdir.tar_format import (
    BLOCK,
    CHUNK,
    ENCODING,
    ENCODING_ERRORS,
    ERROR_MARKER_MTIME,
    KERNEL_COPY_MIN,
    MAX_MARKER_BYTES,
    NO_KERNEL_COPY,
    error_marker_name,
    pad,
    stream_fd,
)
from allocrunner.errors import AllocDirError

__all__ = ["write_snapshot"]


def _shrank(missing: int) -> str:
    return f"file shrank by {missing} bytes while archived"


class _SinkError(Exception):
    """Writing to the output stream failed (not the tree: no marker can be written)."""


class _Writer:
    """Not thread-safe; owned by one snapshot. Writes tar blocks to a file object.

    File bodies go through ``sendfile`` when the output has a descriptor (pipe, socket,
    file): the kernel copies them without passing through Python.
    """

    _out_fd = confined("snapshotting")

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._out = fileobj
        self._out_fd = stream_fd(fileobj)
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = self._out.write(view)
                # None: a writer that does not report counts wrote everything
                view = view[len(view) if n is None else n :]
        except _SinkError:
            raise
        except Exception as err:
            raise _SinkError(f"writing the snapshot stream failed: {err}") from err

    def flush(self) -> None:
        flush = getattr(self._out, "flush", None)
        if flush is not None:
            try:
                flush()
            except Exception as err:
                raise _SinkError(f"flushing the snapshot stream failed: {err}") from err

    def header(self, info: tarfile.TarInfo) -> None:
        self.write(info.tobuf(tarfile.PAX_FORMAT, ENCODING, ENCODING_ERRORS))

    def body_from_fd(self, fd: int, size: int, name: str) -> None:
        """Copy exactly `size` bytes of `fd` (then padding); a file that shrank while
        being read is a read error, growth past `size` is left out."""
        pos = 0
        try:
            if self._out_fd is not None and size >= KERNEL_COPY_MIN:
                self.flush()  # headers written through a buffered object go out first
                while pos < size and self._out_fd is not None:
                    try:
                        n = os.sendfile(self._out_fd, fd, pos, min(size - pos, 1 << 30))
                    except OSError as err:
                        if err.errno in (errno.EPIPE, errno.ECONNRESET):
                            raise _SinkError(f"writing the snapshot stream failed: {err}") from err
                        if err.errno in NO_KERNEL_COPY or err.errno == errno.EAGAIN:
                            self._out_fd = None  # this output cannot take it: copy by hand
                            break
                        raise
                    if n == 0:
                        raise OSError(errno.EIO, _shrank(size - pos), name)
                    pos += n
            view = self._view
            while pos < size:
                want = min(size - pos, CHUNK)
                n = os.preadv(fd, [view[:want]], pos)
                if n == 0:
                    raise OSError(errno.EIO, _shrank(size - pos), name)
                self.write(view[:n])
                pos += n
        except OSError:
            # Keep the archive well formed so the error marker that follows is readable:
            # fill the promised bytes with zeros (the receiver discards them on the marker).
            zeros = bytes(min(size - pos, CHUNK))
            while pos < size:
                self.write(zeros[: min(size - pos, CHUNK)])
                pos += min(size - pos, CHUNK)
            self.write(bytes(pad(size)))
            raise
        if pad(size):
            self.write(bytes(pad(size)))

    def close(self) -> None:
        self.write(bytes(2 * BLOCK))
        self.flush()


def _info(
    name: str, st: os.stat_result, kind: bytes, *, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid = st.st_uid
    info.gid = st.st_gid
    info.uname = ""
    info.gname = ""
    info.mtime = int(st.st_mtime)
    info.size = size
    info.linkname = link
    return info


def write_snapshot(
    alloc_path: str, alloc_id: str, roots: Sequence[str], fileobj: IO[bytes]
) -> None:
    """Write a tar of each of `roots` (paths relative to `alloc_path`) to `fileobj`.

    A missing root is skipped. Raises `AllocDirError` when the tree cannot be read
    (after appending the error marker) or when `fileobj` cannot be written.
    """
    out = _Writer(fileobj)
    try:
        try:
            for root in roots:
                _write_root(out, alloc_path, root)
        except OSError as err:
            message = f"failed to snapshot alloc dir {alloc_id}: {err}"
            marker = message.encode(ENCODING, ENCODING_ERRORS)[:MAX_MARKER_BYTES]
            info = tarfile.TarInfo(error_marker_name(alloc_id))
            info.size = len(marker)
            info.mode = 0o644
            info.mtime = ERROR_MARKER_MTIME
            out.header(info)
            out.write(marker + bytes(pad(len(marker))))
            out.close()
            raise AllocDirError(message) from err
        out.close()
    except _SinkError as err:
        raise AllocDirError(f"snapshot of alloc dir {alloc_id}: {err}") from err


def _write_root(out: _Writer, alloc_path: str, root: str) -> None:
    parts = root.split("/")
    parent_fd = os.open(alloc_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                fd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
            except FileNotFoundError:
                return
            os.close(parent_fd)
            parent_fd = fd
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            out.header(_info(root, st, tarfile.SYMTYPE, link=os.readlink(name, dir_fd=parent_fd)))
            return
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, "snapshot root is not a directory", root)
        top = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
        )
    finally:
        os.close(parent_fd)
    _write_tree(out, top, root)


def _sorted_entries(dir_fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(dir_fd) as it:
        return sorted(it, key=lambda e: e.name)


def _write_tree(out: _Writer, top_fd: int, top_name: str) -> None:
    """Pre-order walk from an open directory, never following symlinks."""
    stack: list[tuple[int, str, list[os.DirEntry[str]], int]] = []
    try:
        out.header(_info(top_name, os.fstat(top_fd), tarfile.DIRTYPE))
        stack.append((top_fd, top_name, _sorted_entries(top_fd), 0))
        top_fd = -1
        while stack:
            dir_fd, rel, entries, index = stack[-1]
            if index == len(entries):
                os.close(dir_fd)
                stack.pop()
                continue
            stack[-1] = (dir_fd, rel, entries, index + 1)
            entry = entries[index]
            name = f"{rel}/{entry.name}"
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fd = os.open(
                    entry.name,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=dir_fd,
                )
                try:
                    out.header(_info(name, os.fstat(fd), tarfile.DIRTYPE))
                    children = _sorted_entries(fd)
                except BaseException:
                    os.close(fd)
                    raise
                stack.append((fd, name, children, 0))
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(entry.name, dir_fd=dir_fd)
                out.header(_info(name, st, tarfile.SYMTYPE, link=target))
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(
                    entry.name,
                    os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    dir_fd=dir_fd,
                )
                try:
                    fst = os.fstat(fd)
                    if not stat.S_ISREG(fst.st_mode):
                        raise OSError(errno.EIO, "file changed type while archived", name)
                    out.header(_info(name, fst, tarfile.REGTYPE, size=fst.st_size))
                    out.body_from_fd(fd, fst.st_size, name)
                finally:
                    os.close(fd)
            # sockets, FIFOs and devices are not carried
    finally:
        if top_fd >= 0:
            os.close(top_fd)
        for dir_fd, *_rest in stack:
            os.close(dir_fd)
