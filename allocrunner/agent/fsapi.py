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

Its parts live beside it: parameter checks and the error mapping in
`allocrunner.agent.fsparams`, content sniffing in `allocrunner.agent.fssniff`, and
reading, following and framing a file in `allocrunner.agent.fsfollow` (the StreamFrame
shape, heartbeats and file events are described there). This module adds the
endpoints themselves and the walk across a task's rotated log files.

Threads: none of its own; a followed `stream` or `logs` iterator starts and joins
watcher threads through `fsfollow` (named ``fsapi-…``), and belongs to the thread
that iterates it. Locks: none. Owner: plain functions, called by the HTTP handlers of
`allocrunner.agent.api_client` on request threads.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from typing import Final

import attrs

from allocrunner._locking import calls_out
from allocrunner._sync import CancelToken
from allocrunner.agent.errors import ApiError, bad_request, not_found
from allocrunner.agent.fsfollow import (
    DELETE_EVENT,
    END_CANCELLED,
    END_GONE,
    FRAME_SIZE,
    HEARTBEAT_INTERVAL,
    TRUNCATE_EVENT,
    Pieces,
    as_frames,
    as_plain,
    tail,
)
from allocrunner.agent.fsparams import (
    ORIGINS,
    api_errors,
    check_flag,
    check_heartbeat,
    check_origin,
    file_path,
    is_regular,
    non_negative,
    parse_bool,
    parse_int,
    relative,
    stat_file,
)
from allocrunner.agent.fssniff import SNIFF_LEN, sniff_content_type
from allocrunner.allocdir import AllocDir, FileInfo
from allocrunner.errors import AllocDirError, PathEscapeError

__all__ = [
    "DELETE_EVENT",
    "FRAME_SIZE",
    "HEARTBEAT_INTERVAL",
    "LOG_TYPES",
    "ORIGINS",
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

LOG_TYPES: Final = ("stdout", "stderr")
LOGS_PATH: Final = "alloc/logs"


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
    rel_path = relative(path)
    with api_errors(path):
        info = alloc_dir.stat(rel_path)
        if not info.is_dir:
            raise bad_request(f"path {path!r} is not a directory")
        entries = alloc_dir.list(rel_path)
    return [file_info_json(entry) for entry in entries]


@calls_out
def stat(alloc_dir: AllocDir, path: str) -> dict[str, object]:
    """The AllocFileInfo object of `path` (a symlink is followed, inside the alloc dir),
    with the ``ContentType`` Nomad sniffs from the first 512 bytes."""
    rel_path = file_path(path)
    with api_errors(path):
        info = alloc_dir.stat(rel_path)
    return file_info_json(info, _content_type(alloc_dir, rel_path, info))


def _content_type(alloc_dir: AllocDir, path: str, info: FileInfo) -> str:
    """Nomad's best-effort content type: sniffed, ``.json`` special-cased."""
    content_type = "application/octet-stream"
    if not info.is_dir and is_regular(info):
        with contextlib.suppress(AllocDirError, PathEscapeError):
            head = alloc_dir.read_at(path, 0, SNIFF_LEN)
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
    rel_path = file_path(path)
    stat_file(alloc_dir, rel_path, path)
    return _cat_chunks(alloc_dir, rel_path, path)


def _cat_chunks(alloc_dir: AllocDir, path: str, display: str) -> Iterator[bytes]:
    with api_errors(display):
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
    rel_path = file_path(path)
    offset = non_negative("offset", offset)
    limit = non_negative("limit", limit)
    stat_file(alloc_dir, rel_path, path)
    if limit:
        with api_errors(path):
            return alloc_dir.read_at(rel_path, offset, limit)
    chunks: list[bytes] = []
    with api_errors(path):
        fh = alloc_dir.open(rel_path)
    with fh:
        while chunk := os.pread(fh.fileno(), 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
    return b"".join(chunks)


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
    rel_path = file_path(path)
    offset = non_negative("offset", offset)
    origin = check_origin(origin)
    follow = check_flag("follow", follow)
    heartbeat = check_heartbeat(heartbeat)
    info = stat_file(alloc_dir, rel_path, path)
    if origin == "end":
        offset = max(info.size - offset, 0)
    pieces = _stream_pieces(alloc_dir, rel_path, path, offset, cancel, follow, heartbeat)
    return as_frames(pieces)


def _stream_pieces(
    alloc_dir: AllocDir,
    path: str,
    file: str,
    offset: int,
    cancel: CancelToken,
    follow: bool,
    heartbeat: float,
) -> Pieces:
    end = yield from tail(
        alloc_dir, path, file, offset, cancel, follow=follow, next_path=None, heartbeat=heartbeat
    )
    if end == END_GONE:
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
        with api_errors(LOGS_PATH):
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
    origin = check_origin(origin)
    offset = non_negative("offset", offset)
    follow = check_flag("follow", follow)
    plain = check_flag("plain", plain)
    heartbeat = check_heartbeat(heartbeat)
    files = _log_files(alloc_dir, task, log_type)
    if not files:
        raise not_found(f"log entry for task {task!r} and log type {log_type!r} not found")
    index, start = _start_position(files, origin, offset)
    last = None if follow else files[-1].index
    pieces = _log_pieces(alloc_dir, task, log_type, index, start, last, cancel, heartbeat, finished)
    return as_plain(pieces) if plain else as_frames(pieces)


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
) -> Pieces:
    """Walk the log files from `index` at `offset`: to the end of file `last`, or,
    following (`last` None), on into every newer file as it appears."""
    while not cancel.cancelled():
        name = _log_name(task, log_type, index)
        following = last is None
        end = yield from tail(
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
        if end == END_CANCELLED or (last is not None and index >= last and end != END_GONE):
            return
        wanted = index if end == END_GONE else index + 1
        newer = [f for f in _log_files(alloc_dir, task, log_type) if f.index >= wanted]
        if not newer or (last is not None and newer[0].index > last):
            return
        index, offset = newer[0].index, 0
