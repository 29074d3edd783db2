"""The client filesystem and logs API, independent of any transport.

The agent serves Nomad's ``/v1/client/fs/{ls,stat,cat,readat,stream,logs}/:alloc``
endpoints. This module is everything those endpoints do except HTTP: each function
takes an `AllocDir`, checks its parameters the way Nomad does, and returns JSON-ready
values (`ls`, `stat`), bytes (`readat`) or an iterator of body chunks (`cat`,
`stream`, `logs`). Failures are `ApiError`s carrying the status the HTTP layer
answers with: 400 for a bad parameter, 403 for a path that escapes the alloc dir or
reaches into a task's ``secrets/``, 404 for a missing file or log, 500 for an I/O
failure. Every path check is the alloc dir's own (`AllocDir` walks paths without
ever letting a symlink lead out), so nothing here touches a path directly.

Paths are relative to the alloc dir; a leading ``/`` is allowed and means the alloc
dir itself, as in Nomad (``/alloc/logs/web.stdout.0``).

Streams (`stream`, and `logs` unless ``plain``) yield Nomad's StreamFrame JSON
objects, one per item: ``{"Offset": …, "Data": base64, "File": …, "FileEvent": …}``
with empty fields left out, as Go's ``omitempty`` does. `Offset` is the offset in
`File` just past the frame's data (where a reader would resume), as Nomad's framer
reports it; ``FileEvent`` is ``"file deleted"`` or ``"file truncated"``. While
following, an idle stream yields a heartbeat frame ``{}`` every second so that the
transport writes something and notices a client that went away; plain-text logs
have no frames, so their heartbeat is an empty chunk that writes nothing (Nomad
writes nothing for them either) but lets the transport check the connection.

Following never polls by re-reading: it waits on `AllocDir.change_events` (and on
`AllocDir.block_until_exists` for the next rotated log file), each run by a named
helper thread that only wakes the iterator. The iterator owns those threads: it
stops and joins them when it ends, when it is closed early (``close()``) and within
milliseconds of its `CancelToken` firing. A stream iterator belongs to the thread
that iterates it; other threads stop it through the token, never by closing it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import time
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from datetime import datetime
from typing import Final

import attrs

from allocrunner._locking import calls_out, immutable
from allocrunner._sync import CancelToken, Kick, ThreadGroup
from allocrunner.agent.errors import ApiError, bad_request, forbidden, not_found
from allocrunner.allocdir import DELETED, AllocDir, FileChange, FileInfo, PathNotFoundError
from allocrunner.allocdir.fs import SecretsAccessError, SymlinkLoopError
from allocrunner.errors import AllocDirError, PathEscapeError

__all__ = [
    "DELETE_EVENT",
    "FRAME_SIZE",
    "HEARTBEAT_INTERVAL",
    "LOG_TYPES",
    "TRUNCATE_EVENT",
    "cat",
    "file_info_json",
    "go_time",
    "logs",
    "ls",
    "parse_bool",
    "parse_int",
    "readat",
    "sniff_content_type",
    "stat",
    "stream",
]

FRAME_SIZE: Final = 64 * 1024
"""Most bytes of file data in one frame or chunk (Nomad's streamFrameSize)."""

HEARTBEAT_INTERVAL: Final = 1.0
"""Seconds of silence after which a followed stream yields a heartbeat frame."""

DELETE_EVENT: Final = "file deleted"
TRUNCATE_EVENT: Final = "file truncated"
LOG_TYPES: Final = ("stdout", "stderr")
ORIGINS: Final = ("start", "end")
LOGS_PATH: Final = "alloc/logs"

_SNIFF_LEN: Final = 512
_JOIN_TIMEOUT: Final = 2.0
_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_GO_INT: Final = re.compile(r"[+-]?[0-9]+\Z")


# --- parameters --------------------------------------------------------------------


def parse_bool(name: str, text: str) -> bool:
    """A query parameter as Go's ``strconv.ParseBool`` reads it; 400 otherwise."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise bad_request(f"failed to parse {name} field to boolean: invalid syntax: {text!r}")


def parse_int(name: str, text: str) -> int:
    """A base-10 integer query parameter as Go's ``strconv.ParseInt`` reads it; 400
    otherwise (range checks are the caller's)."""
    if not _GO_INT.match(text):
        raise bad_request(f"error parsing {name}: invalid syntax: {text!r}")
    return int(text)


def _non_negative(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{name} must be a non-negative integer, got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be a boolean, got {value!r}")
    return value


def _heartbeat(value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"heartbeat must be a positive number of seconds, got {value!r}")
    return float(value)


def _origin(value: object) -> str:
    if value == "":
        return "start"
    if value not in ORIGINS:
        raise bad_request("origin must be start or end")
    return str(value)


def _file_path(path: object) -> str:
    """A path naming a file: required, relative to the alloc dir."""
    if not isinstance(path, str):
        raise bad_request(f"path must be a string, got {type(path).__name__}")
    if path == "":
        raise bad_request("must provide a file name")
    return _relative(path)


def _relative(path: str) -> str:
    """Nomad joins the path onto the alloc dir, so a leading ``/`` names the alloc dir."""
    return path.lstrip("/")


# --- errors ------------------------------------------------------------------------


@contextlib.contextmanager
def _api_errors(path: str) -> Iterator[None]:
    """Turn the alloc dir's errors about `path` into the API's statuses."""
    try:
        yield
    except PathEscapeError as err:
        raise forbidden(str(err)) from err
    except SecretsAccessError as err:
        raise forbidden(str(err)) from err
    except PathNotFoundError as err:
        raise not_found(f"no such file or directory: {path!r}") from err
    except SymlinkLoopError as err:
        raise bad_request(str(err)) from err
    except AllocDirError as err:
        raise ApiError(500, str(err)) from err


def _is_regular(info: FileInfo) -> bool:
    """True for a regular file: its Go mode string has no type letter."""
    return set(info.file_mode[:-9]) <= set("-ugt")


def _stat_file(alloc_dir: AllocDir, path: str, display: str) -> FileInfo:
    """The info of a regular file to read; 400 for a directory or a special file."""
    with _api_errors(display):
        info = alloc_dir.stat(path)
    if info.is_dir:
        raise bad_request(f"file {display!r} is a directory")
    if not _is_regular(info):
        raise bad_request(f"file {display!r} is not a regular file")
    return info


# --- ls and stat ---------------------------------------------------------------------


def go_time(moment: datetime) -> str:
    """`moment` as Go marshals a ``time.Time`` read from the file system: RFC 3339 in
    the local zone, fractional seconds without trailing zeros, ``Z`` for UTC."""
    local = moment.astimezone()
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{local.microsecond:06d}".rstrip("0")
    if fraction:
        text += "." + fraction
    offset = local.utcoffset()
    minutes = 0 if offset is None else int(offset.total_seconds()) // 60
    if minutes == 0:
        return text + "Z"
    sign = "+" if minutes > 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{mins:02d}"


def file_info_json(info: FileInfo, content_type: str = "") -> dict[str, object]:
    """Nomad's AllocFileInfo JSON object for `info`."""
    return {
        "Name": info.name,
        "IsDir": info.is_dir,
        "Size": info.size,
        "FileMode": info.file_mode,
        "ModTime": go_time(info.mod_time),
        "ContentType": content_type,
    }


@calls_out
def ls(alloc_dir: AllocDir, path: str) -> list[dict[str, object]]:
    """The entries of directory `path` as AllocFileInfo objects, sorted by name.

    An empty `path` lists the alloc dir itself (Nomad's default ``/``). Entries carry
    an empty ``ContentType``, as Nomad's listing does; symlinks are reported as
    such. 400 when `path` is not a directory.
    """
    if not isinstance(path, str):
        raise bad_request(f"path must be a string, got {type(path).__name__}")
    relative = _relative(path)
    with _api_errors(path):
        info = alloc_dir.stat(relative)
        if not info.is_dir:
            raise bad_request(f"path {path!r} is not a directory")
        entries = alloc_dir.list(relative)
    return [file_info_json(entry) for entry in entries]


@calls_out
def stat(alloc_dir: AllocDir, path: str) -> dict[str, object]:
    """The AllocFileInfo object of `path` (a symlink is followed, inside the alloc dir),
    with the ``ContentType`` Nomad sniffs from the first 512 bytes."""
    relative = _file_path(path)
    with _api_errors(path):
        info = alloc_dir.stat(relative)
    return file_info_json(info, _content_type(alloc_dir, relative, info))


def _content_type(alloc_dir: AllocDir, path: str, info: FileInfo) -> str:
    """Nomad's best-effort content type: sniffed, ``.json`` special-cased."""
    content_type = "application/octet-stream"
    if not info.is_dir and _is_regular(info):
        with contextlib.suppress(AllocDirError, PathEscapeError):
            head = alloc_dir.read_at(path, 0, _SNIFF_LEN)
            if head:
                content_type = sniff_content_type(head)
    if path.endswith(".json"):
        content_type = "application/json"
    return content_type


# --- cat and readat ------------------------------------------------------------------


@calls_out
def cat(alloc_dir: AllocDir, path: str) -> Iterator[bytes]:
    """The contents of file `path`, in chunks of at most `FRAME_SIZE` bytes.

    The path is checked now (400, 403, 404 raised by this call); the file is read
    as the iterator is consumed, up to its end at that time.
    """
    relative = _file_path(path)
    _stat_file(alloc_dir, relative, path)
    return _cat_chunks(alloc_dir, relative, path)


def _cat_chunks(alloc_dir: AllocDir, path: str, display: str) -> Iterator[bytes]:
    with _api_errors(display):
        fh = alloc_dir.open(path)
    with fh:
        while True:
            chunk = fh.read(FRAME_SIZE)
            if not chunk:
                return
            yield chunk


@calls_out
def readat(alloc_dir: AllocDir, path: str, offset: int, limit: int) -> bytes:
    """Up to `limit` bytes of file `path` from `offset`; a `limit` of 0 reads to the end
    of the file, as in Nomad. Fewer bytes at the end of the file, none past it."""
    relative = _file_path(path)
    offset = _non_negative("offset", offset)
    limit = _non_negative("limit", limit)
    _stat_file(alloc_dir, relative, path)
    if limit:
        with _api_errors(path):
            return alloc_dir.read_at(relative, offset, limit)
    chunks: list[bytes] = []
    with _api_errors(path):
        fh = alloc_dir.open(relative)
    with fh:
        while chunk := os.pread(fh.fileno(), 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
    return b"".join(chunks)


# --- content sniffing ------------------------------------------------------------------

_WS: Final = b"\t\n\x0c\r "
_HTML_TAGS: Final = (
    b"<!DOCTYPE HTML", b"<HTML", b"<HEAD", b"<SCRIPT", b"<IFRAME", b"<H1", b"<DIV",
    b"<FONT", b"<TABLE", b"<A", b"<STYLE", b"<TITLE", b"<B", b"<BODY", b"<BR", b"<P",
    b"<!--",
)  # fmt: skip
_PREFIXES: Final = (
    (b"%PDF-", "application/pdf"),
    (b"%!PS-Adobe-", "application/postscript"),
    (b"\xfe\xff", "text/plain; charset=utf-16be"),
    (b"\xff\xfe", "text/plain; charset=utf-16le"),
    (b"\xef\xbb\xbf", "text/plain; charset=utf-8"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"\x00\x00\x02\x00", "image/x-icon"),
    (b"BM", "image/bmp"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"ID3", "audio/mpeg"),
    (b"OggS\x00", "application/ogg"),
    (b"MThd\x00\x00\x00\x06", "audio/midi"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),
    (b"\x00\x01\x00\x00", "font/ttf"),
    (b"OTTO", "font/otf"),
    (b"ttcf", "font/collection"),
    (b"wOFF", "font/woff"),
    (b"wOF2", "font/woff2"),
    (b"\x1f\x8b\x08", "application/x-gzip"),
    (b"PK\x03\x04", "application/zip"),
    (b"Rar!\x1a\x07\x00", "application/x-rar-compressed"),
    (b"Rar!\x1a\x07\x01\x00", "application/x-rar-compressed"),
    (b"\x00asm", "application/wasm"),
)
_CONTAINERS: Final = (  # (head, tag at 8..) of RIFF/IFF containers
    (b"RIFF", b"WEBPVP", "image/webp"),
    (b"RIFF", b"WAVE", "audio/wave"),
    (b"RIFF", b"AVI ", "video/avi"),
    (b"FORM", b"AIFF", "audio/aiff"),
)
_BINARY: Final = frozenset([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])


def sniff_content_type(data: bytes) -> str:
    """The MIME type Go's ``http.DetectContentType`` gives `data` (its first 512 bytes
    decide): markup, common image, audio, video, font and archive signatures, else
    UTF-8 text when no byte is binary, else ``application/octet-stream``."""
    data = data[:_SNIFF_LEN]
    rest = data.lstrip(_WS)
    for tag in _HTML_TAGS:
        if len(rest) > len(tag) and rest[: len(tag)].upper() == tag and rest[len(tag)] in b" >":
            return "text/html; charset=utf-8"
    if rest.startswith(b"<?xml"):
        return "text/xml; charset=utf-8"
    for prefix, content_type in _PREFIXES:
        if data.startswith(prefix):
            return content_type
    for head, tag, content_type in _CONTAINERS:
        if data.startswith(head) and data[8 : 8 + len(tag)] == tag:
            return content_type
    if _is_mp4(data):
        return "video/mp4"
    if not any(byte in _BINARY for byte in rest):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def _is_mp4(data: bytes) -> bool:
    if len(data) < 12:
        return False
    box = int.from_bytes(data[:4], "big")
    if len(data) < box or box % 4 or data[4:8] != b"ftyp":
        return False
    return any(data[at : at + 3] == b"mp4" for at in range(8, box, 4) if at != 12)


# --- frames ----------------------------------------------------------------------------


@attrs.frozen
class _Piece:
    """Immutable. What a stream has to say: data read from `file` ending at `offset`,
    a file event, or (all empty) a heartbeat."""

    file: str = ""
    offset: int = 0
    data: bytes = b""
    event: str = ""


_HEARTBEAT: Final = _Piece()


def _frame(piece: _Piece) -> bytes:
    """Nomad's StreamFrame JSON for `piece`, empty fields omitted."""
    obj: dict[str, object] = {}
    if piece.offset:
        obj["Offset"] = piece.offset
    if piece.data:
        obj["Data"] = base64.b64encode(piece.data).decode("ascii")
    if piece.file:
        obj["File"] = piece.file
    if piece.event:
        obj["FileEvent"] = piece.event
    return json.dumps(obj, separators=(",", ":")).encode()


def _framed(pieces: Iterator[_Piece]) -> Iterator[bytes]:
    with contextlib.closing(pieces):
        for piece in pieces:
            yield _frame(piece)


def _plain(pieces: Iterator[_Piece]) -> Iterator[bytes]:
    """The data alone; a heartbeat becomes an empty chunk, which a transport writes as
    nothing but can use to notice a client that went away."""
    with contextlib.closing(pieces):
        for piece in pieces:
            if piece.data:
                yield piece.data
            elif piece == _HEARTBEAT:
                yield b""


# --- following a file ------------------------------------------------------------------

_EOF: Final = "eof"  # read to the end, not following
_ROTATED: Final = "rotated"  # the next log file appeared and this one was read to its end
_DELETED: Final = "deleted"  # the file went away (after what it held was read)
_GONE: Final = "gone"  # the file was not there to open
_CANCELLED: Final = "cancelled"


class _Watch:
    """Thread-safe. Helper threads watching one file for one following iterator.

    One thread follows `AllocDir.change_events` of the file and, for a log, another
    waits for the next rotated file with `AllocDir.block_until_exists`. They only
    record what they saw in one-shot flags and kick the iterator awake; the iterator
    does all the reading. Owned by that iterator, which `close()`s it.
    """

    kick = immutable()
    stop = immutable()
    deleted = immutable()
    rotated = immutable()
    ended = immutable()
    failed = immutable()
    _threads = immutable()

    def __init__(self, cancel: CancelToken, name: str) -> None:
        self.kick = Kick()
        self.stop = cancel.child()
        self.deleted = CancelToken()  # the change watcher saw the file go
        self.rotated = CancelToken()  # the next log file exists
        self.ended = CancelToken()  # the change watcher stopped
        self.failed = CancelToken()  # a watcher failed; the reason says why
        self._threads = ThreadGroup(name)

    @calls_out
    def start(self, alloc_dir: AllocDir, path: str, offset: int, next_path: str | None) -> None:
        """Start watching `path` past `offset` (and for `next_path` to appear)."""
        tag = f"{alloc_dir.alloc_id[:8]}-{os.path.basename(path)}"
        try:
            changes = alloc_dir.change_events(path, offset, self.stop)
        except PathNotFoundError:
            self.deleted.cancel()
            self.ended.cancel()
        else:
            self._threads.spawn(f"fsapi-changes-{tag}", self._follow_changes, changes)
        if next_path is not None:
            self._threads.spawn(f"fsapi-next-{tag}", self._await_next, alloc_dir, next_path)

    def _follow_changes(self, changes: Iterator[FileChange]) -> None:
        try:
            for change in changes:
                if change.kind == DELETED:
                    self.deleted.cancel()
                self.kick.kick()
        except Exception as err:  # a symlink swapped in on the way, an I/O error
            self.failed.cancel(f"watching the file failed: {err}")
        finally:
            self.ended.cancel()
            self.kick.kick()

    def _await_next(self, alloc_dir: AllocDir, next_path: str) -> None:
        try:
            if alloc_dir.block_until_exists(next_path, self.stop):
                self.rotated.cancel()
        except Exception as err:
            self.failed.cancel(f"waiting for {next_path!r} failed: {err}")
        finally:
            self.kick.kick()

    @calls_out
    def wait(self, timeout: float) -> bool:
        """Wait for a watcher's kick; False if `timeout` passed without one."""
        return self.kick.wait(max(timeout, 0.0))

    @calls_out
    def close(self) -> None:
        """Stop the watchers and join them."""
        self.stop.cancel("stream closed")
        self._threads.join(_JOIN_TIMEOUT)


def _drain(
    fd: int, file: str, offset: int, cancel: CancelToken, event: str = ""
) -> Generator[_Piece, None, int]:
    """Yield what the file holds from `offset` to its end; return the new offset.
    An `event` rides on the first piece (alone, if there is no data)."""
    while not cancel.cancelled():
        data = os.pread(fd, FRAME_SIZE, offset)
        if not data:
            break
        offset += len(data)
        yield _Piece(file, offset, data, event)
        event = ""
    if event:
        yield _Piece(file, offset, b"", event)
    return offset


def _tail(
    alloc_dir: AllocDir,
    path: str,
    file: str,
    offset: int,
    cancel: CancelToken,
    *,
    follow: bool,
    next_path: str | None,
    heartbeat: float,
    finished: Callable[[], bool] | None = None,
) -> Generator[_Piece, None, str]:
    """Yield file `path` from `offset` (named `file` in frames); with `follow`, keep
    yielding what is appended until it is deleted, `next_path` appears (then read
    to the end first), or `cancel` fires. Returns why it stopped."""
    try:
        with _api_errors(file):
            fh = alloc_dir.open(path)
    except ApiError as err:
        if err.status == 404:
            return _GONE
        raise
    with fh:
        fd = fh.fileno()
        offset = yield from _drain(fd, file, offset, cancel)
        if cancel.cancelled():
            return _CANCELLED
        if not follow:
            return _EOF
        watch = _Watch(cancel, f"fsapi-{alloc_dir.alloc_id[:8]}")
        try:
            with _api_errors(file):
                watch.start(alloc_dir, path, offset, next_path)
            return (
                yield from _follow(
                    watch, fd, file, offset, cancel, heartbeat=heartbeat, finished=finished
                )
            )
        finally:
            watch.close()


def _follow(
    watch: _Watch,
    fd: int,
    file: str,
    offset: int,
    cancel: CancelToken,
    *,
    heartbeat: float,
    finished: Callable[[], bool] | None = None,
) -> Generator[_Piece, None, str]:
    """The following half of `_tail`: wake on the watchers, read, heartbeat. After a
    quiet `heartbeat`, a `finished()` writer (a dead task) ends the follow: what it
    wrote has been read to the end."""
    quiet_since = time.monotonic()
    while True:
        watch.wait(quiet_since + heartbeat - time.monotonic())
        if cancel.cancelled():
            return _CANCELLED
        # ended before deleted: a watcher raises its flag before it ends
        ended = watch.ended.cancelled()
        rotated = watch.rotated.cancelled()
        deleted = watch.deleted.cancelled()
        before = offset
        if os.fstat(fd).st_size < offset:
            offset = yield from _drain(fd, file, 0, cancel, TRUNCATE_EVENT)
        else:
            offset = yield from _drain(fd, file, offset, cancel)
        if offset != before:
            quiet_since = time.monotonic()
        if cancel.cancelled():
            return _CANCELLED
        if deleted:
            yield _Piece(file, offset, b"", DELETE_EVENT)
            return _DELETED
        if rotated:
            return _ROTATED
        reason = watch.failed.reason
        if reason is not None:
            raise ApiError(500, f"{file}: {reason}")
        if ended:
            return _CANCELLED  # nothing left that could wake us
        if time.monotonic() - quiet_since >= heartbeat:
            if finished is not None and finished():
                return _CANCELLED
            yield _HEARTBEAT
            quiet_since = time.monotonic()


# --- stream ----------------------------------------------------------------------------


@calls_out
def stream(
    alloc_dir: AllocDir,
    path: str,
    *,
    offset: int = 0,
    origin: str = "start",
    follow: bool = True,
    cancel: CancelToken,
    heartbeat: float = HEARTBEAT_INTERVAL,
) -> Iterator[bytes]:
    """StreamFrames of file `path` from `offset` bytes after its start, or before its
    end with ``origin="end"`` (clamped to the start). With `follow` (the default, as
    in Nomad) the stream goes on with what is appended, sends ``"file truncated"``
    and re-reads from 0 when the file shrinks, and ends after a ``"file deleted"``
    frame when it goes away; without it the stream ends at the end of the file.
    It also ends, promptly, when `cancel` fires. Parameters and the path are checked
    now (400, 403, 404 raised by this call)."""
    relative = _file_path(path)
    offset = _non_negative("offset", offset)
    origin = _origin(origin)
    follow = _flag("follow", follow)
    heartbeat = _heartbeat(heartbeat)
    info = _stat_file(alloc_dir, relative, path)
    if origin == "end":
        offset = max(info.size - offset, 0)
    pieces = _stream_pieces(alloc_dir, relative, path, offset, cancel, follow, heartbeat)
    return _framed(pieces)


def _stream_pieces(
    alloc_dir: AllocDir,
    path: str,
    file: str,
    offset: int,
    cancel: CancelToken,
    follow: bool,
    heartbeat: float,
) -> Iterator[_Piece]:
    end = yield from _tail(
        alloc_dir, path, file, offset, cancel, follow=follow, next_path=None, heartbeat=heartbeat
    )
    if end == _GONE:
        raise not_found(f"no such file or directory: {file!r}")


# --- logs ------------------------------------------------------------------------------


@attrs.frozen
class _LogFile:
    """Immutable. One rotated log file: its index and its size when listed."""

    index: int
    size: int


def _log_files(alloc_dir: AllocDir, task: str, log_type: str) -> list[_LogFile]:
    """The task's log files of `log_type`, oldest first ([] when there is no logs dir)."""
    pattern = re.compile(re.escape(f"{task}.{log_type}.") + r"([0-9]+)\Z")
    try:
        with _api_errors(LOGS_PATH):
            entries = alloc_dir.list(LOGS_PATH)
    except ApiError as err:
        if err.status == 404:
            return []
        raise
    found = []
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not entry.is_dir:
            found.append(_LogFile(int(match.group(1)), entry.size))
    return sorted(found, key=lambda log: log.index)


def _start_position(files: Sequence[_LogFile], origin: str, offset: int) -> tuple[int, int]:
    """Nomad's findClosest: the (index, offset) to start at, `offset` counting forward
    from the first file's start or back from the last file's end, across files and
    clamped to the logs that exist."""
    if origin == "start":
        at, remaining = 0, offset
        while remaining > files[at].size and at < len(files) - 1:
            remaining -= files[at].size
            at += 1
        return files[at].index, min(remaining, files[at].size)
    at, back = len(files) - 1, offset
    while back > files[at].size and at > 0:
        back -= files[at].size
        at -= 1
    return files[at].index, max(files[at].size - back, 0)


def _log_name(task: str, log_type: str, index: int) -> str:
    return f"{LOGS_PATH}/{task}.{log_type}.{index}"


def _check_task(task: object, tasks: Collection[str] | None) -> str:
    if not isinstance(task, str) or task == "":
        raise bad_request("must provide task name")
    if tasks is not None and task not in tasks:
        raise bad_request(f"unknown task name {task!r}")
    if "/" in task or "\x00" in task or task in (".", ".."):
        raise bad_request(f"unknown task name {task!r}")
    return task


@calls_out
def logs(
    alloc_dir: AllocDir,
    task: str,
    *,
    log_type: str = "stdout",
    follow: bool = False,
    origin: str = "start",
    offset: int = 0,
    plain: bool = False,
    cancel: CancelToken,
    tasks: Collection[str] | None = None,
    heartbeat: float = HEARTBEAT_INTERVAL,
    finished: Callable[[], bool] | None = None,
) -> Iterator[bytes]:
    """The logs of `task` across its rotated files ``alloc/logs/<task>.<type>.N``.

    `offset` counts from the start of the oldest kept file, or with ``origin="end"``
    back from the end of the newest, across files, as Nomad does. Raw bytes with
    `plain`, else StreamFrames (``File`` names the log file, ``Offset`` is within
    it). Without `follow` (the default, as in Nomad) it ends at the end of the newest
    file that existed when called; with it, it goes on into each next rotated file as
    it appears, without losing or repeating a byte, until `cancel` fires or, once
    the log has been quiet for a heartbeat, `finished()` says the task is dead.

    Parameters are checked now: 400 for an empty or (when `tasks`, the alloc's task
    names, is given) unknown task, a log type other than stdout/stderr, a bad origin
    or offset; 404 when the task has no log file of that type.
    """
    task = _check_task(task, tasks)
    if log_type not in LOG_TYPES:
        raise bad_request("must provide log type (stdout/stderr)")
    origin = _origin(origin)
    offset = _non_negative("offset", offset)
    follow = _flag("follow", follow)
    plain = _flag("plain", plain)
    heartbeat = _heartbeat(heartbeat)
    files = _log_files(alloc_dir, task, log_type)
    if not files:
        raise not_found(f"log entry for task {task!r} and log type {log_type!r} not found")
    index, start = _start_position(files, origin, offset)
    last = None if follow else files[-1].index
    pieces = _log_pieces(
        alloc_dir, task, log_type, index, start, last, cancel, heartbeat, finished
    )
    return _plain(pieces) if plain else _framed(pieces)


def _log_pieces(
    alloc_dir: AllocDir,
    task: str,
    log_type: str,
    index: int,
    offset: int,
    last: int | None,
    cancel: CancelToken,
    heartbeat: float,
    finished: Callable[[], bool] | None = None,
) -> Iterator[_Piece]:
    """Walk the log files from `index` at `offset`: to the end of file `last`, or,
    following (`last` None), on into every newer file as it appears."""
    while not cancel.cancelled():
        name = _log_name(task, log_type, index)
        following = last is None
        end = yield from _tail(
            alloc_dir,
            name,
            name,
            offset,
            cancel,
            follow=following,
            next_path=_log_name(task, log_type, index + 1) if following else None,
            heartbeat=heartbeat,
            finished=finished,
        )
        if end == _CANCELLED or (last is not None and index >= last and end != _GONE):
            return
        wanted = index if end == _GONE else index + 1
        newer = [f for f in _log_files(alloc_dir, task, log_type) if f.index >= wanted]
        if not newer or (last is not None and newer[0].index > last):
            return
        index, offset = newer[0].index, 0
