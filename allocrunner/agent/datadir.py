"""One owner per data dir: the agent's exclusive lock and its `agent.json` record.

An agent holds an exclusive `fcntl.flock` on ``<data_dir>/agent.lock`` for its whole
life. The kernel drops the lock when the process dies, however it dies, so a stale
record from a crashed agent can never block the next one: the lock decides, not the
files. The lock file holds the owner's pid (written after the lock is taken) so a
second agent can name the holder in its error.

``<data_dir>/agent.json`` (address, pid, start time) lets the command line find the
agent. It is written atomically after the HTTP server listens and is trusted only
while the lock is held by a live process (`find_agent`).

Threads: none. Locks: no declared lock; the data-dir lock is the kernel's ``flock``,
held by a `DataDirLock` from the agent's start to its shutdown. Owner: the `Agent`
takes the lock and writes the record; the command line reads it (`find_agent`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

import attrs

from allocrunner._locking import confined
from allocrunner.agent.errors import AgentError, DataDirLockedError

__all__ = [
    "AgentInfo",
    "DataDirLock",
    "agent_info_path",
    "find_agent",
    "read_agent_info",
    "write_agent_info",
]

LOCK_FILE = "agent.lock"
INFO_FILE = "agent.json"


def agent_info_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / INFO_FILE


class DataDirLock:
    """Not thread-safe; owned by the agent's main thread. The data dir's exclusive lock.

    `acquire()` raises `DataDirLockedError` naming the holder's pid when another
    process holds it; it never waits. `release()` is idempotent.
    """

    _fd = confined("agent main")

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise AgentError(f"data dir {self.data_dir}: {err.strerror or err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirLockedError(str(self.data_dir), holder) from None
        except OSError as err:
            os.close(fd)
            raise AgentError(f"locking {self.path}: {err.strerror or err}") from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        return 0


def lock_holder(data_dir: str | os.PathLike[str]) -> int | None:
    """The pid holding `data_dir`'s lock (0 if unknown), or None when nobody holds it."""
    path = Path(data_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@attrs.frozen
class AgentInfo:
    """Immutable. What `agent.json` records about a running agent."""

    address: str
    pid: int
    started: float


def write_agent_info(data_dir: str | os.PathLike[str], address: str) -> AgentInfo:
    """Record this process as the agent on `data_dir` (atomic replace)."""
    info = AgentInfo(address=address, pid=os.getpid(), started=time.time())
    path = agent_info_path(data_dir)
    tmp = path.with_name(f".{INFO_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"address": info.address, "pid": info.pid, "started": info.started}))
    os.replace(tmp, path)
    return info


def remove_agent_info(data_dir: str | os.PathLike[str]) -> None:
    """Remove `agent.json` if it still names this process."""
    info = read_agent_info(data_dir)
    if info is not None and info.pid == os.getpid():
        agent_info_path(data_dir).unlink(missing_ok=True)


def read_agent_info(data_dir: str | os.PathLike[str]) -> AgentInfo | None:
    """The record in `agent.json`, or None if missing or unreadable (it may be stale)."""
    try:
        data = json.loads(agent_info_path(data_dir).read_text())
        return AgentInfo(
            address=str(data["address"]), pid=int(data["pid"]), started=float(data["started"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_agent(data_dir: str | os.PathLike[str]) -> str | None:
    """The HTTP address of the live agent owning `data_dir`, or None.

    The record counts only while its pid holds the data dir's lock: a record left by
    a crashed agent (or by an earlier agent whose pid was reused) is ignored.
    """
    info = read_agent_info(data_dir)
    if info is None:
        return None
    holder = lock_holder(data_dir)
    if holder is None or (holder and holder != info.pid):
        return None
    return info.address
