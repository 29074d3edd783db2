"""The agent's side of the raw_exec spawner (`allocrunner.drivers.spawner`): find or
launch the spawner of a state dir, and ask it to start or attach to tasks.

A connection is made under ``<dir>/start.3.lock`` (an flock): connect to the socket, or,
if no spawner serves it, launch one (``python -I -S spawner.py <dir>``, which returns
once the spawner listens) and connect. The spawner retires only when it can take that
lock, so an agent connecting never races a retiring spawner. Connections are pooled
(a `Fifo`): a request takes one (or opens one), sends one message, reads the reply and
puts the connection back, so concurrent requests need no lock and an open driver keeps
the spawner alive. `close()` closes the pooled connections: a spawner with no task and
no agent then exits.

Threads: none of its own; callers' threads do the socket I/O. Locks: none declared (the
pool is a `_sync.Fifo`, the closing flag a `CancelToken`). Owner: `RawExecDriver`
creates one client per state dir it uses and closes them in its `close()`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from allocrunner._locking import immutable
from allocrunner._sync import CancelToken, Fifo
from allocrunner.drivers import spawner as _spawner
from allocrunner.errors import DriverError

_NAME = "raw_exec"
LAUNCH_TIMEOUT = 30.0
"""Seconds a launch waits for a new spawner to listen."""
_REPLY_SIZE = 65536
_MAX_FDS = 4


def default_state_dir() -> str:
    """The spawner dir used when the driver is given none: per user, in the temp dir."""
    return os.path.join(tempfile.gettempdir(), f"allocrunner-{os.getuid()}", "raw_exec")


def ensure_state_dir(path: str) -> str:
    """Create the dir (and its parent) private to this user; DriverError if either
    exists but belongs to someone else or is writable by others."""
    path = os.path.abspath(path)
    for directory in (os.path.dirname(path), path):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        info = os.stat(directory)
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise DriverError(
                f"{_NAME}: state dir {directory!r} is not private to uid {os.getuid()}"
            )
    return path


@attrs.frozen
class Reply:
    """Immutable. A spawner's reply: its JSON fields and the descriptors it sent (the
    receiver owns them)."""

    fields: dict[str, Any]
    fds: tuple[int, ...] = ()


class SpawnerClient:
    """Thread-safe. Requests to the spawner of one state dir (module docstring)."""

    directory = immutable()
    _pool = immutable()
    _closing = immutable()

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._pool: Fifo[socket.socket] = Fifo()
        self._closing = CancelToken()

    def start(
        self,
        *,
        command: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str,
        status_path: str,
        fds: tuple[int, ...],
        options: Mapping[str, Any] | None = None,
        meanwhile: Callable[[], object] = lambda: None,
    ) -> Reply:
        """Start a task (launching the spawner if needed); `fds` are the stdout and
        stderr read and write ends and the exit-notify write end (only the last when
        `options` has ``output: "null"``). `options` are further fields of the request
        (``oom_score_adj``, ``cgroup``, ``output``: see the spawner). `meanwhile`, which
        must not raise, runs while the spawner works, between request and reply."""
        message = {
            **(options or {}),
            "op": "start",
            "path": command,
            "argv": argv,
            "env": env,
            "cwd": cwd,
            "status_path": status_path,
        }
        reply = self._request(message, fds, launch=True, meanwhile=meanwhile)
        if reply is None:
            raise DriverError(f"{_NAME}: no spawner serves {self.directory!r}")
        if not reply.fields.get("ok"):
            raise DriverError(f"{_NAME}: cannot start {command!r}: {reply.fields.get('error')}")
        return reply

    def attach(self, pid: int, ticks: tuple[int, int], notify_w: int) -> Reply | None:
        """Attach to running task `pid` started within `ticks` (clock ticks since boot);
        None if no spawner serves the dir."""
        message = {"op": "attach", "pid": pid, "ticks": list(ticks)}
        return self._request(message, (notify_w,), launch=False)

    def ping(self) -> int | None:
        """The spawner's pid; None if none serves the dir (none is launched)."""
        reply = self._request({"op": "ping"}, (), launch=False)
        return None if reply is None else int(reply.fields["pid"])

    def close(self) -> None:
        """Close the pooled connections (requests in flight close theirs). Idempotent."""
        self._closing.cancel("closed")
        for conn in self._pool.drain():
            conn.close()

    # --- internals -------------------------------------------------------------------

    def _request(
        self,
        message: dict[str, Any],
        fds: tuple[int, ...],
        *,
        launch: bool,
        meanwhile: Callable[[], object] = lambda: None,
    ) -> Reply | None:
        data = json.dumps(message).encode()
        conn = self._pool.take()
        if conn is not None and not _send(conn, data, fds):
            conn.close()  # the spawner went away since: try a fresh connection
            conn = None
        if conn is None:
            conn = self._connect(launch)
            if conn is None:
                return None
            if not _send(conn, data, fds):
                conn.close()
                raise DriverError(f"{_NAME}: the spawner of {self.directory!r} went away")
        meanwhile()
        try:
            reply = _receive(conn)
        except BaseException:
            conn.close()
            raise
        if reply is None:
            conn.close()
            raise DriverError(f"{_NAME}: the spawner of {self.directory!r} died during a request")
        self._put_back(conn)
        return reply

    def _put_back(self, conn: socket.socket) -> None:
        self._pool.put(conn)
        if self._closing.cancelled():
            for pooled in self._pool.drain():
                pooled.close()

    def _connect(self, launch: bool) -> socket.socket | None:
        """A new connection, under the start lock; launch a spawner if none serves the
        dir and `launch`, else None."""
        if self._closing.cancelled():
            raise DriverError(f"{_NAME} is closed")
        lock_fd = os.open(
            os.path.join(self.directory, _spawner.START_LOCK_NAME),
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            conn = _try_connect(self.directory)
            if conn is None and launch:
                self._launch()
                conn = _try_connect(self.directory)
                if conn is None:
                    raise DriverError(
                        f"{_NAME}: the spawner launched in {self.directory!r} does not listen"
                    )
            return conn
        finally:
            os.close(lock_fd)

    def _launch(self) -> None:
        log = os.open(
            os.path.join(self.directory, _spawner.LOG_NAME),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        try:
            launcher = subprocess.Popen(
                [sys.executable, "-I", "-S", _spawner.__file__, self.directory],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                close_fds=True,
                start_new_session=True,
                cwd="/",
            )
        finally:
            os.close(log)
        try:
            code = launcher.wait(LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            raise DriverError(
                f"{_NAME}: the spawner of {self.directory!r} did not start in {LAUNCH_TIMEOUT}s"
            ) from None
        if code != 0:
            raise DriverError(
                f"{_NAME}: the spawner of {self.directory!r} failed to start (exit {code}); "
                f"see {_spawner.LOG_NAME} there"
            )


def _try_connect(directory: str) -> socket.socket | None:
    """A connection to the dir's spawner; None if none listens."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    address, dir_fd = _spawner.short_path(_spawner.socket_path(directory))
    try:
        conn.connect(address)
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    except BaseException:
        conn.close()
        raise
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    return conn


def _send(conn: socket.socket, data: bytes, fds: tuple[int, ...]) -> bool:
    """Send one request; False if the spawner is gone."""
    ancillary = (
        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    )
    try:
        conn.sendmsg([data], ancillary)
    except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError):
        return False
    return True


def _receive(conn: socket.socket) -> Reply | None:
    """Read one reply; None at end of file (the spawner died)."""
    try:
        data, ancdata, _, _ = conn.recvmsg(
            _REPLY_SIZE, socket.CMSG_SPACE(_MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
        )
    except ConnectionResetError:
        return None
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    return Reply(json.loads(data), tuple(fds))
