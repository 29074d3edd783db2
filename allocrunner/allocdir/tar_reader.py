"""Reading the migration stream: exact byte counts and tar members, trusting nothing.

`Reader` reads whole blocks and bodies from the stream and reports a stream cut
short as `AllocDirError`. From an unbuffered pipe or file, bodies move with
``splice`` / ``copy_file_range`` straight into the destination file, without passing
through Python. `entries` parses the members (ustar, GNU long names and PAX records,
with `tarfile.TarInfo` for the headers), bounds the metadata it accepts and refuses
sparse files; what a member's name may be is checked by the extraction
(`allocrunner.allocdir.tar_extract`).

Threads: none. Locks: none. Owner: one `extract_stream` call creates one `Reader`
and iterates `entries` over it on its own thread.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from typing import IO

from allocrunner._locking import confined
from allocrunner.allocdir.tar_format import (
    BLOCK,
    CHUNK,
    ENCODING,
    ENCODING_ERRORS,
    KERNEL_COPY_MIN,
    MAX_META_BYTES,
    NO_KERNEL_COPY,
    pad,
    stream_fd,
)
from allocrunner.errors import AllocDirError

__all__ = ["Entry", "Reader", "entries", "parse_pax"]

_ZERO_BLOCK = bytes(BLOCK)


class Reader:
    """Not thread-safe; owned by one extraction. Reads exact byte counts from a stream.

    From an unbuffered pipe or file, bodies move with ``splice`` / ``copy_file_range``
    straight into the destination file, without passing through Python.
    """

    _kernel_copy = confined("extracting")

    def __init__(self, fileobj: IO[bytes]) -> None:
        self._in = fileobj
        self._readinto = getattr(fileobj, "readinto", None)
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        self._kernel_copy: Callable[[int, int], int] | None = None
        fd = stream_fd(fileobj) if isinstance(fileobj, io.RawIOBase) else None
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
        buf = bytearray(size + pad(size))
        if self._fill(memoryview(buf)) < len(buf):
            raise AllocDirError(f"snapshot stream is truncated inside {what}")
        return bytes(buf[:size])

    def copy_to_fd(self, fd: int, size: int, name: str) -> None:
        """Copy a member body of `size` bytes to `fd` and consume its padding."""
        moved = 0
        kernel_copy = self._kernel_copy
        if kernel_copy is not None and size >= KERNEL_COPY_MIN:
            moved = self._copy_in_kernel(kernel_copy, fd, size, name)
        remaining = size - moved + pad(size)
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

    def _copy_in_kernel(
        self, kernel_copy: Callable[[int, int], int], fd: int, size: int, name: str
    ) -> int:
        moved = 0
        while moved < size:
            try:
                n = kernel_copy(fd, min(size - moved, 1 << 30))
            except OSError as err:
                if moved == 0 and err.errno in NO_KERNEL_COPY:
                    self._kernel_copy = None  # not for this pair of files: copy by hand
                    return 0
                raise
            if n == 0:
                raise AllocDirError(f"snapshot stream is truncated inside {name!r}")
            moved += n
        return moved

    def skip(self, size: int, name: str) -> None:
        remaining = size + pad(size)
        view = self._view
        while remaining:
            want = min(remaining, CHUNK)
            if self._fill(view[:want]) < want:
                raise AllocDirError(f"snapshot stream is truncated inside {name!r}")
            remaining -= want


def parse_pax(data: bytes) -> dict[str, str]:
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
        records[key.decode(ENCODING, ENCODING_ERRORS)] = value.decode(ENCODING, ENCODING_ERRORS)
        pos += length
    return records


class Entry:
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


def entries(reader: Reader) -> Iterator[Entry]:
    """Members of the stream with PAX and GNU long-name records applied."""
    global_pax: dict[str, str] = {}
    pax: dict[str, str] = {}
    while True:
        block = reader.block()
        if block == _ZERO_BLOCK:
            return  # the end-of-archive marker (what `frombuf` reports as EOFHeaderError)
        try:
            info = tarfile.TarInfo.frombuf(block, ENCODING, ENCODING_ERRORS)
        except tarfile.HeaderError as err:
            raise AllocDirError(f"snapshot stream: bad tar header: {err}") from err
        kind = info.type
        if kind in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            pax.update(parse_pax(reader.data(info.size, MAX_META_BYTES, "a PAX header")))
            continue
        if kind == tarfile.XGLTYPE:
            global_pax.update(parse_pax(reader.data(info.size, MAX_META_BYTES, "a PAX header")))
            continue
        if kind in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            raw = reader.data(info.size, MAX_META_BYTES, "a GNU long name")
            value = raw.split(b"\0", 1)[0].decode(ENCODING, ENCODING_ERRORS)
            pax["path" if kind == tarfile.GNUTYPE_LONGNAME else "linkpath"] = value
            continue
        if any(key.startswith("GNU.sparse") for key in pax) or kind == tarfile.GNUTYPE_SPARSE:
            raise AllocDirError(f"snapshot entry {info.name!r}: sparse files are not supported")
        yield Entry(info, {**global_pax, **pax})
        pax = {}
