"""The migration stream: a tar of ``alloc/data`` and each task's ``local/``.

`write_snapshot` is the sending side (Nomad's ``AllocDir.Snapshot``): entries are
named relative to the alloc dir, directories come before their contents, symlinks are
stored as links and never followed, and only directories, regular files and symlinks
are carried (sockets, FIFOs and devices mean nothing on another node). If the tree
cannot be read, an entry named ``NOMAD-<alloc_id>-ERROR.log`` holding the error is
appended, the archive is closed and the error is raised, so a receiver reading the
stream learns why it is short.

`extract_stream` is the receiving side. It only ever writes into a fresh directory
that it owns, and it trusts nothing in the stream:

- an entry whose name is absolute, contains ``..``, or lies outside ``alloc/data`` and
  ``<task>/local`` is refused (`PathEscapeError` / `AllocDirError`);
- every write goes through directory descriptors opened with ``O_NOFOLLOW`` and files
  are created with ``O_EXCL``, so a symlink planted by an earlier entry is never
  followed (the "write attack"); an existing entry is removed before it is replaced;
- symlinks must be relative and, once the whole tree is in place, must resolve inside
  the alloc dir (chains through other links included);
- setuid/setgid bits are dropped; ownership is kept only when running as root;
- the error marker aborts the extraction with the sender's message.

Headers are built and parsed with `tarfile.TarInfo` (PAX format out; ustar, GNU long
names and PAX records in). File bodies never go through `tarfile`'s small-block
buffering: they move in 1 MiB chunks, or inside the kernel (``sendfile`` out,
``splice`` / ``copy_file_range`` in) when the stream is a plain descriptor, which keeps
a snapshot piped into an extraction on par with ``tar -c | tar -x``.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import tarfile
from collections.abc import Iterator, Sequence
from typing import IO, Any, Final

from allocrunner.allocdir import fs
from allocrunner.errors import AllocDirError, PathEscapeError

__all__ = ["ERROR_MARKER_MTIME", "error_marker_name", "extract_stream", "write_snapshot"]

BLOCK: Final = tarfile.BLOCKSIZE
CHUNK: Final = 1 << 20
ERROR_MARKER_MTIME: Final = 946684800  # 2000-01-01T00:00:00Z, Nomad's sentinel
_MARKER_RE: Final = re.compile(r"NOMAD-.+-ERROR\.log")
_MAX_MARKER_BYTES: Final = 1 << 16
_MAX_META_BYTES: Final = 1 << 20  # PAX records and GNU long names
_ENCODING: Final = "utf-8"
_ERRORS: Final = "surrogateescape"
_DATA_ROOT: Final = ("alloc", "data")
_KERNEL_COPY_MIN: Final = 64 * 1024  # smaller bodies are cheaper to copy by hand
_NO_KERNEL_COPY: Final = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EBADF}
)
_LOCAL_DIR: Final = "local"


def error_marker_name(alloc_id: str) -> str:
    """The name of the entry that reports a failed snapshot of `alloc_id`."""
    return f"NOMAD-{alloc_id}-ERROR.log"


def _pad(size: int) -> int:
    return -size % BLOCK


def _shrank(missing: int) -> str:
    return f"file shrank by {missing} bytes while archived"


# --- sending side ----------------------------------------------------------------------


class _SinkError(Exception):
    """Writing to the output stream failed (not the tree: no marker can be written)."""


def _stream_fd(fileobj: object) -> int | None:
    """The OS descriptor behind a file object, or None if it has none."""
    fileno = getattr(fileobj, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


class _Writer:
    """Not thread-safe; owned by one snapshot. Writes tar blocks to a file object.

    File bodies go through ``sendfile`` when the output has a descriptor (pipe, socket,
    file): the kernel copies them without passing through Python.
    """

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._out = fileobj
        self._out_fd = _stream_fd(fileobj)
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
        self.write(info.tobuf(tarfile.PAX_FORMAT, _ENCODING, _ERRORS))

    def body_from_fd(self, fd: int, size: int, name: str) -> None:
        """Copy exactly `size` bytes of `fd` (then padding); a file that shrank while
        being read is a read error, growth past `size` is left out."""
        pos = 0
        try:
            if self._out_fd is not None and size >= _KERNEL_COPY_MIN:
                self.flush()  # headers written through a buffered object go out first
                while pos < size and self._out_fd is not None:
                    try:
                        n = os.sendfile(self._out_fd, fd, pos, min(size - pos, 1 << 30))
                    except OSError as err:
                        if err.errno in (errno.EPIPE, errno.ECONNRESET):
                            raise _SinkError(f"writing the snapshot stream failed: {err}") from err
                        if err.errno in _NO_KERNEL_COPY or err.errno == errno.EAGAIN:
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
            self.write(bytes(_pad(size)))
            raise
        if _pad(size):
            self.write(bytes(_pad(size)))

    def close(self) -> None:
        self.write(bytes(2 * BLOCK))
        self.flush()


def _info(name: str, st: os.stat_result, kind: bytes, *, size: int = 0, link: str = "") -> Any:
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
            marker = message.encode(_ENCODING, _ERRORS)[:_MAX_MARKER_BYTES]
            info = tarfile.TarInfo(error_marker_name(alloc_id))
            info.size = len(marker)
            info.mode = 0o644
            info.mtime = ERROR_MARKER_MTIME
            out.header(info)
            out.write(marker + bytes(_pad(len(marker))))
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


# --- receiving side --------------------------------------------------------------------


class _Reader:
    """Not thread-safe; owned by one extraction. Reads exact byte counts from a stream.

    From an unbuffered pipe or file, bodies move with ``splice`` / ``copy_file_range``
    straight into the destination file, without passing through Python.
    """

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._in = fileobj
        self._readinto = getattr(fileobj, "readinto", None)
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._kernel_copy: Any = None
        fd = _stream_fd(fileobj) if isinstance(fileobj, io.RawIOBase) else None
        if fd is not None:
            try:
                mode = os.fstat(fd).st_mode
            except OSError:
                mode = 0
            if stat.S_ISFIFO(mode):
                self._kernel_copy = lambda out, n: os.splice(fd, out, n)
            elif stat.S_ISREG(mode):
                self._kernel_copy = lambda out, n: os.copy_file_range(fd, out, n)

    def _fill(self, view: memoryview) -> int:
        """Fill `view` as far as the stream allows; the count read (short only at EOF)."""
        got = 0
        size = len(view)
        while got < size:
            if self._readinto is not None:
                n = self._readinto(view[got:])
            else:
                data = self._in.read(size - got)
                n = len(data) if data is not None else None
                if n:
                    view[got : got + n] = data
            if n is None:
                raise AllocDirError("snapshot stream would block")
            if n == 0:
                break
            got += n
        return got

    def block(self) -> bytes:
        """The next 512-byte block. A stream must end with the end-of-archive blocks,
        so running out here means it was cut short."""
        view = self._view[:BLOCK]
        n = self._fill(view)
        if n == 0:
            raise AllocDirError("snapshot stream is truncated (no end-of-archive marker)")
        if n < BLOCK:
            raise AllocDirError("snapshot stream is truncated (partial header block)")
        return bytes(view)

    def data(self, size: int, limit: int, what: str) -> bytes:
        """A whole padded member body, which must be at most `limit` bytes."""
        if size > limit:
            raise AllocDirError(f"snapshot stream: {what} of {size} bytes is too large")
        buf = bytearray(size + _pad(size))
        if self._fill(memoryview(buf)) < len(buf):
            raise AllocDirError(f"snapshot stream is truncated inside {what}")
        return bytes(buf[:size])

    def copy_to_fd(self, fd: int, size: int, name: str) -> None:
        """Copy a member body of `size` bytes to `fd` and consume its padding."""
        moved = 0
        if self._kernel_copy is not None and size >= _KERNEL_COPY_MIN:
            moved = self._copy_in_kernel(fd, size, name)
        remaining = size - moved + _pad(size)
        to_write = size - moved
        view = self._view
        while remaining:
            want = min(remaining, CHUNK)
            n = self._fill(view[:want])
            if n < want:
                raise AllocDirError(f"snapshot stream is truncated inside {name!r}")
            chunk = view[: min(n, to_write)]
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]
            to_write -= min(n, to_write)
            remaining -= n

    def _copy_in_kernel(self, fd: int, size: int, name: str) -> int:
        moved = 0
        while moved < size:
            try:
                n = self._kernel_copy(fd, min(size - moved, 1 << 30))
            except OSError as err:
                if moved == 0 and err.errno in _NO_KERNEL_COPY:
                    self._kernel_copy = None  # not for this pair of files: copy by hand
                    return 0
                raise
            if n == 0:
                raise AllocDirError(f"snapshot stream is truncated inside {name!r}")
            moved += n
        return moved

    def skip(self, size: int, name: str) -> None:
        remaining = size + _pad(size)
        view = self._view
        while remaining:
            want = min(remaining, CHUNK)
            if self._fill(view[:want]) < want:
                raise AllocDirError(f"snapshot stream is truncated inside {name!r}")
            remaining -= want


def _parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError as err:
            raise AllocDirError("snapshot stream: malformed PAX record length") from err
        if length <= 0 or pos + length > len(data):
            raise AllocDirError("snapshot stream: malformed PAX record")
        record = data[space + 1 : pos + length]
        if not record.endswith(b"\n") or b"=" not in record:
            raise AllocDirError("snapshot stream: malformed PAX record")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode(_ENCODING, _ERRORS)] = value.decode(_ENCODING, _ERRORS)
        pos += length
    return records


class _Entry:
    """Not thread-safe; owned by one extraction. One member of the stream."""

    __slots__ = ("gid", "kind", "link", "mode", "mtime", "name", "size", "uid")

    def __init__(self, info: tarfile.TarInfo, pax: dict[str, str]) -> None:
        self.kind = info.type
        self.name = pax.get("path", info.name)
        self.link = pax.get("linkpath", info.linkname)
        try:
            self.size = int(pax.get("size", info.size))
            self.mtime = float(pax.get("mtime", info.mtime))
            self.uid = int(pax.get("uid", info.uid))
            self.gid = int(pax.get("gid", info.gid))
        except ValueError as err:
            raise AllocDirError(f"snapshot entry {self.name!r}: malformed PAX field") from err
        self.mode = info.mode
        if self.kind in tarfile.REGULAR_TYPES and self.name.endswith("/"):
            self.kind = tarfile.DIRTYPE
        if self.kind == tarfile.DIRTYPE:
            self.name = self.name.rstrip("/")
        if self.size < 0:
            raise AllocDirError(f"snapshot entry {self.name!r}: negative size")


def _entries(reader: _Reader) -> Iterator[_Entry]:
    """Members of the stream with PAX and GNU long-name records applied."""
    global_pax: dict[str, str] = {}
    pax: dict[str, str] = {}
    while True:
        block = reader.block()
        try:
            info = tarfile.TarInfo.frombuf(block, _ENCODING, _ERRORS)
        except tarfile.EOFHeaderError:
            return  # a zero block: the end-of-archive marker
        except tarfile.HeaderError as err:
            raise AllocDirError(f"snapshot stream: bad tar header: {err}") from err
        kind = info.type
        if kind in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            pax.update(_parse_pax(reader.data(info.size, _MAX_META_BYTES, "a PAX header")))
            continue
        if kind == tarfile.XGLTYPE:
            global_pax.update(_parse_pax(reader.data(info.size, _MAX_META_BYTES, "a PAX header")))
            continue
        if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            raw = reader.data(info.size, _MAX_META_BYTES, "a GNU long name")
            value = raw.split(b"\0", 1)[0].decode(_ENCODING, _ERRORS)
            pax["path" if kind == tarfile.GNUTYPE_LONGNAME else "linkpath"] = value
            continue
        if any(key.startswith("GNU.sparse") for key in pax) or kind == tarfile.GNUTYPE_SPARSE:
            raise AllocDirError(f"snapshot entry {info.name!r}: sparse files are not supported")
        yield _Entry(info, {**global_pax, **pax})
        pax = {}


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

    def add(self, entry: _Entry, reader: _Reader) -> None:
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

    def _symlink(self, parent: int, leaf: str, parts: tuple[str, ...], entry: _Entry) -> None:
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

    def _hardlink(self, parent: int, leaf: str, entry: _Entry) -> None:
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
        settle = {p: (0o755, None, -1, -1) for p in self.implicit_dirs}
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
    reader = _Reader(fileobj)
    try:
        job = _Extraction(dest)
    except OSError as err:
        raise AllocDirError(f"extracting snapshot stream into {dest}: {err}") from err
    try:
        for entry in _entries(reader):
            if "/" not in entry.name.strip("/") and _MARKER_RE.fullmatch(entry.name.strip("/")):
                raw = reader.data(min(entry.size, _MAX_MARKER_BYTES), _MAX_MARKER_BYTES, "marker")
                message = raw.decode(_ENCODING, "replace").strip()
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
