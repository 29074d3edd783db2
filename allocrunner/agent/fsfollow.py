"""Reading a file as a stream, following it as it grows, and framing what is read.

Beneath ``/v1/client/fs/stream`` and ``/v1/client/fs/logs`` (`allocrunner.agent.fsapi`)
a file is read as a sequence of `Piece`s: data ending at an offset, a file event, or
a heartbeat. `tail` reads a file from an offset and, when following, goes on with
what is appended: it sends ``"file truncated"`` and re-reads from 0 when the file
shrinks, ends after ``"file deleted"`` when it goes away, ends once the next rotated
log file appears (after reading this one to its end), and yields a heartbeat after a
quiet `HEARTBEAT_INTERVAL` so the transport writes something and notices a client
that went away.

`as_frames` turns pieces into Nomad's StreamFrame JSON objects, one per item:
``{"Offset": …, "Data": base64, "File": …, "FileEvent": …}`` with empty fields left
out, as Go's ``omitempty`` does. ``Offset`` is the offset in ``File`` just past the
frame's data (where a reader would resume), as Nomad's framer reports it. `as_plain`
gives the data alone; its heartbeat is an empty chunk that writes nothing (Nomad
writes nothing for plain logs either) but lets the transport check the connection.

Following never polls by re-reading: it waits on `AllocDir.change_events` (and on
`AllocDir.block_until_exists` for the next rotated log file).

Threads: each following `tail` starts a `_Watch` with one ``fsapi-changes-<id8>-<file>``
thread and, for a log, one ``fsapi-next-<id8>-<file>`` thread; they only record what
they saw in one-shot tokens and kick the reader awake. Locks: none declared here
(the tokens and the kick are the project's notify-only primitives). Owner: the
generator returned by `tail` owns its watch: it stops and joins the threads when it
ends, when it is closed early (``close()``) and within milliseconds of its
`CancelToken` firing. A stream belongs to the thread that iterates it; other threads
stop it through the token, never by closing it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Callable, Generator, Iterator
from typing import Final

import attrs

from allocrunner._locking import calls_out, immutable
from allocrunner._sync import CancelToken, Kick, ThreadGroup
from allocrunner.agent.errors import ApiError
from allocrunner.agent.fsparams import api_errors
from allocrunner.allocdir import DELETED, AllocDir, FileChange, PathNotFoundError

__all__ = [
    "DELETE_EVENT",
    "END_CANCELLED",
    "END_DELETED",
    "END_EOF",
    "END_GONE",
    "END_ROTATED",
    "FRAME_SIZE",
    "HEARTBEAT",
    "HEARTBEAT_INTERVAL",
    "TRUNCATE_EVENT",
    "Piece",
    "Pieces",
    "as_frames",
    "as_plain",
    "frame",
    "tail",
]

FRAME_SIZE: Final = 64 * 1024
"""Most bytes of file data in one frame or chunk (Nomad's streamFrameSize)."""

HEARTBEAT_INTERVAL: Final = 1.0
"""Seconds of silence after which a followed stream yields a heartbeat frame."""

DELETE_EVENT: Final = "file deleted"
TRUNCATE_EVENT: Final = "file truncated"

# Why `tail` stopped.
END_EOF: Final = "eof"  # read to the end, not following
END_ROTATED: Final = "rotated"  # the next log file appeared and this one was read to its end
END_DELETED: Final = "deleted"  # the file went away (after what it held was read)
END_GONE: Final = "gone"  # the file was not there to open
END_CANCELLED: Final = "cancelled"

_JOIN_TIMEOUT: Final = 2.0


# --- pieces and frames -----------------------------------------------------------------


@attrs.frozen
class Piece:
    """Immutable. What a stream has to say: data read from `file` ending at `offset`,
    a file event, or (all empty) a heartbeat."""

    file: str = ""
    offset: int = 0
    data: bytes = b""
    event: str = ""


HEARTBEAT: Final = Piece()

Pieces = Generator[Piece, None, None]
"""A stream of pieces; a generator, so that closing it stops what it started."""


def frame(piece: Piece) -> bytes:
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


def as_frames(pieces: Pieces) -> Iterator[bytes]:
    """Each piece as a StreamFrame; closing this closes `pieces`."""
    with contextlib.closing(pieces):
        for piece in pieces:
            yield frame(piece)


def as_plain(pieces: Pieces) -> Iterator[bytes]:
    """The data alone; a heartbeat becomes an empty chunk, which a transport writes as
    nothing but can use to notice a client that went away."""
    with contextlib.closing(pieces):
        for piece in pieces:
            if piece.data:
                yield piece.data
            elif piece == HEARTBEAT:
                yield b""


# --- following a file ------------------------------------------------------------------


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
) -> Generator[Piece, None, int]:
    """Yield what the file holds from `offset` to its end; return the new offset.
    An `event` rides on the first piece (alone, if there is no data)."""
    while not cancel.cancelled():
        data = os.pread(fd, FRAME_SIZE, offset)
        if not data:
            break
        offset += len(data)
        yield Piece(file, offset, data, event)
        event = ""
    if event:
        yield Piece(file, offset, b"", event)
    return offset


def tail(
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
) -> Generator[Piece, None, str]:
    """Yield file `path` from `offset` (named `file` in frames); with `follow`, keep
    yielding what is appended until it is deleted, `next_path` appears (then read
    to the end first), or `cancel` fires. Returns why it stopped (`END_EOF`,
    `END_ROTATED`, `END_DELETED`, `END_GONE` or `END_CANCELLED`)."""
    try:
        with api_errors(file):
            fh = alloc_dir.open(path)
    except ApiError as err:
        if err.status == 404:
            return END_GONE
        raise
    with fh:
        fd = fh.fileno()
        offset = yield from _drain(fd, file, offset, cancel)
        if cancel.cancelled():
            return END_CANCELLED
        if not follow:
            return END_EOF
        watch = _Watch(cancel, f"fsapi-{alloc_dir.alloc_id[:8]}")
        try:
            with api_errors(file):
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
) -> Generator[Piece, None, str]:
    """The following half of `tail`: wake on the watchers, read, heartbeat. After a
    quiet `heartbeat`, a `finished()` writer (a dead task) ends the follow: what it
    wrote has been read to the end."""
    quiet_since = time.monotonic()
    while True:
        watch.wait(quiet_since + heartbeat - time.monotonic())
        if cancel.cancelled():
            return END_CANCELLED
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
            return END_CANCELLED
        if deleted:
            yield Piece(file, offset, b"", DELETE_EVENT)
            return END_DELETED
        if rotated:
            return END_ROTATED
        reason = watch.failed.reason
        if reason is not None:
            raise ApiError(500, f"{file}: {reason}")
        if ended:
            return END_CANCELLED  # nothing left that could wake us
        if time.monotonic() - quiet_since >= heartbeat:
            if finished is not None and finished():
                return END_CANCELLED
            yield HEARTBEAT
            quiet_since = time.monotonic()
