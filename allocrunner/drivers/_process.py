"""Processes of raw_exec tasks: the checks and lookups before a spawn (and the pipes and
log files it needs), exit statuses and status files, pipes and pidfds of running
tasks, and the one reader of ``/proc/<pid>/stat`` in the package.

Tasks are spawned by `allocrunner.drivers.spawner`; it records each exit status as one
line, the status then the task's pid, in the task dir's `STATUS_FILE` (status above
128: "killed by signal status-128", `exit_result_from_status`). Tasks of the older
design ran under a ``/bin/sh`` wrapper that wrote the same line with its own pid and
held read ends of its output pipes; such a task is still recovered (`read_status`,
`open_output_pipes`).

``/proc/<pid>/stat`` is parsed in one place (`parse_pid_stat`): the command name is
skipped up to its last ``)``, since it may hold spaces and parentheses itself. On top
of it: `read_pid_stat`, `pid_alive`, `children_of`, `group_processes`, `group_usage`.

Threads: none of its own; every function runs on its caller's thread. Locks: none; the
functions read /proc, wait and signal, so callers hold no lock when they call them.
Owner: `allocrunner.drivers.raw_exec` (checks, watch, recover) and
`allocrunner.agent.stats` (per-process usage); tests use the /proc helpers too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pwd
import shutil
import signal as _signal
import socket
import stat
import time
from collections.abc import Iterable, Iterator, Mapping

import attrs

from allocrunner.drivers.base import ExitResult, TaskConfig
from allocrunner.drivers.logs import ensure_first_log_files
from allocrunner.errors import DriverError

STATUS_FILE = ".allocrunner-exit-status"
"""Where, in the task dir, a task's exit status is recorded (by the spawner)."""
STREAMS = ("stdout", "stderr")
"""The output streams of a task, in the order of their descriptors (1, 2)."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second, the unit of the times in /proc/<pid>/stat."""

_NAME = "raw_exec"
_PAGE = os.sysconf("SC_PAGE_SIZE")
_NS_PER_TICK = 1_000_000_000 // CLOCK_TICKS
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENOTDIR)
_VALID_SIGNALS = frozenset(int(s) for s in _signal.valid_signals())


# --- /proc ---------------------------------------------------------------------------


def read_proc(path: str) -> bytes | None:
    """The bytes of a /proc file; None when it (or its process) no longer exists."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as err:
        if err.errno in _GONE:
            return None
        raise


@attrs.frozen
class PidStat:
    """Immutable. The fields of ``/proc/<pid>/stat`` the package uses (times in clock
    ticks; `start_ticks` counts from boot)."""

    pid: int
    state: str
    ppid: int
    pgid: int
    utime: int
    stime: int
    start_ticks: int
    rss_bytes: int

    @property
    def alive(self) -> bool:
        """False for a zombie or a dead process."""
        return self.state not in ("Z", "X", "x")


def parse_pid_stat(data: bytes) -> PidStat | None:
    """Parse one ``/proc/<pid>/stat``; None for data that is cut short or malformed.

    The command name is skipped up to its last ``)``, since it may hold spaces and
    parentheses itself."""
    try:
        pid = int(data[: data.index(b" (")])
        fields = data[data.rindex(b")") + 2 :].split()
        return PidStat(
            pid=pid,
            state=fields[0].decode("ascii", "replace"),
            ppid=int(fields[1]),
            pgid=int(fields[2]),
            utime=int(fields[11]),
            stime=int(fields[12]),
            start_ticks=int(fields[19]),
            rss_bytes=max(0, int(fields[21])) * _PAGE,
        )
    except (ValueError, IndexError):
        return None


def read_pid_stat(pid: int) -> PidStat | None:
    """The stat of process `pid`; None if it is gone."""
    data = read_proc(f"/proc/{pid}/stat")
    return parse_pid_stat(data) if data else None


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is neither a zombie nor dead."""
    found = read_pid_stat(pid)
    return found is not None and found.alive


def all_processes() -> Iterator[PidStat]:
    """The stat of every process /proc lists (those that exit during the scan are left
    out)."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = read_pid_stat(int(name))
            if found is not None:
                yield found


def children_of(pid: int) -> list[PidStat]:
    """The live (not zombie) children of process `pid`, by pid."""
    return sorted((s for s in all_processes() if s.ppid == pid and s.alive), key=lambda s: s.pid)


def group_processes(pgids: Iterable[int]) -> dict[int, list[PidStat]]:
    """The live processes of each of the process groups `pgids`, by pid, from one scan
    of /proc."""
    wanted = set(pgids)
    groups: dict[int, list[PidStat]] = {pgid: [] for pgid in wanted}
    if not wanted:
        return groups
    for found in all_processes():
        if found.pgid in wanted and found.alive:
            groups[found.pgid].append(found)
    for members in groups.values():
        members.sort(key=lambda s: s.pid)
    return groups


def group_usage(pgid: int) -> dict[str, float]:
    """CPU seconds, resident memory and process count of the live members of group
    `pgid`."""
    members = group_processes([pgid])[pgid]
    return {
        "cpu_seconds": sum(s.utime + s.stime for s in members) / CLOCK_TICKS,
        "memory_rss_bytes": float(sum(s.rss_bytes for s in members)),
        "processes": float(len(members)),
    }


def boot_ticks() -> int:
    """Clock ticks since boot, on the clock /proc/<pid>/stat start times use."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _NS_PER_TICK


# --- exit statuses -------------------------------------------------------------------


def exit_result_from_status(status: int) -> ExitResult:
    """The result for a shell exit status (above 128: killed by signal status-128)."""
    if status > 128 and (status - 128) in _VALID_SIGNALS:
        return ExitResult(exit_code=status, signal=status - 128)
    return ExitResult(exit_code=status)


def signalled(sig: int) -> ExitResult:
    """The result of a process killed by signal `sig`, as a shell reports it."""
    return ExitResult(exit_code=128 + sig, signal=sig)


@functools.lru_cache(maxsize=1024)
def result_from_wait(wait_status: int) -> ExitResult:
    """The result for a wait status of a task's process. Cached (an `ExitResult` is
    immutable, and a node's tasks end with few distinct statuses): a stop takes it
    right after the spawner's notice, on the path its caller waits on."""
    if os.WIFSIGNALED(wait_status):
        return signalled(os.WTERMSIG(wait_status))
    return exit_result_from_status(os.waitstatus_to_exitcode(wait_status))


def read_status(path: str, pid: int) -> int | None:
    """The exit status recorded for process `pid`, or None if absent, incomplete or left
    by another run."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(64)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not data.endswith(b"\n"):
        return None
    try:
        status, writer = (int(x) for x in data.split())
    except ValueError:
        return None
    return status if writer == pid else None


def remove_status(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def reap_now(pid: int) -> int | None:
    """The wait status of child `pid` if it has exited; None if it runs or is not a
    child of this process."""
    try:
        reaped, wait_status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return wait_status if reaped == pid else None


def reap_blocking(pid: int) -> int | None:
    """Wait for child `pid` to exit; its wait status, or None if it is not a child of
    this process."""
    try:
        reaped, wait_status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return wait_status if reaped == pid else None


# --- preparing a spawn ---------------------------------------------------------------


def resolve_command(command: str, task_dir: str, env: Mapping[str, str]) -> str:
    """The absolute path of the executable `command` names; DriverError naming it if
    there is none. Relative paths are taken from the task dir; bare names are looked
    up in the task dir's ``local/``, the task dir, then the task env's PATH."""
    if os.path.isabs(command) or os.sep in command:
        path = command if os.path.isabs(command) else os.path.join(task_dir, command)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
        raise DriverError(f"{_NAME}: command {command!r} does not exist or is not executable")
    for base in (os.path.join(task_dir, "local"), task_dir):
        path = os.path.join(base, command)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    search = env.get("PATH") or os.environ.get("PATH") or os.defpath
    found = shutil.which(command, path=search)
    if found is None:
        raise DriverError(f"{_NAME}: command {command!r} not found in the task dir or PATH")
    return os.path.abspath(found)


@functools.cache
def agent_user() -> str:
    """The name of the user this process runs as (its uid if it has no name)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def check_task_user(user: str) -> None:
    """DriverError unless a task may run as `user`: switching users needs an agent
    running as root (Nomad's executor fails the same way), and the user must exist."""
    if os.geteuid() != 0:
        raise DriverError(
            f"{_NAME}: task user {user!r}: running a task as another user needs the agent "
            f"to run as root; it runs as {agent_user()!r}"
        )
    try:
        pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise DriverError(f"{_NAME}: task user {user!r} does not exist") from None


def check_task_dirs(config: TaskConfig) -> str:
    """The absolute task dir; DriverError for a config no task can run with (a user
    it may not run as, missing task or logs dir, log limits below 1)."""
    if config.user and config.user != agent_user():
        check_task_user(config.user)
    if not config.task_dir:
        raise DriverError(f"{_NAME}: task {config.name!r} has no task_dir")
    if not os.path.isdir(config.task_dir):
        raise DriverError(f"{_NAME}: task_dir {config.task_dir!r} does not exist")
    if not config.logs_dir or not os.path.isdir(config.logs_dir):
        raise DriverError(f"{_NAME}: logs_dir {config.logs_dir!r} does not exist")
    if config.log_max_files < 1:
        raise DriverError(f"{_NAME}: log_max_files must be at least 1")
    if config.log_max_file_size_bytes <= 0 and config.log_max_file_size_mb < 1:
        raise DriverError(f"{_NAME}: log_max_file_size_mb must be at least 1")
    return os.path.abspath(config.task_dir)


def task_env(config: TaskConfig) -> dict[str, str]:
    """The task's environment as the spawn takes it; DriverError for a non-string."""
    env = {}
    for key, value in config.env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise DriverError(f"{_NAME}: env {key!r} must map a string to a string")
        env[key] = value
    return env


# --- spawning and signalling ---------------------------------------------------------


def ensure_log_files(config: TaskConfig) -> None:
    """Create file 0 of each stream that has no file yet, so a reader finds an empty log
    (done while the spawner starts the task; best effort)."""
    ensure_first_log_files(config.logs_dir, config.name, STREAMS)


def make_task_pipes() -> tuple[int, int, int, int]:
    """stdout and stderr pipes (read end, write end each), close-on-exec, the read ends
    non-blocking."""
    made: list[int] = []
    try:
        for _ in range(2):
            read, write = os.pipe2(os.O_CLOEXEC)
            made += [read, write]
            os.set_blocking(read, False)
    except OSError as err:
        close_fds(*made)
        raise DriverError(f"{_NAME}: cannot create pipes: {err}") from err
    out_r, out_w, err_r, err_w = made
    return out_r, out_w, err_r, err_w


def make_notice_channel() -> tuple[socket.socket, socket.socket]:
    """A task's exit-notify channel (ours, the spawner's end), close-on-exec: a
    stream socket pair, so its notice can be read without being consumed
    (``MSG_PEEK``) by every thread that waits for it."""
    try:
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as err:
        raise DriverError(f"{_NAME}: cannot create an exit-notify socket: {err}") from err


def open_output_pipes(pid: int) -> tuple[tuple[str, int], ...]:
    """New read ends (stream name, fd) of the output pipes of process `pid`. Opening a
    pipe through ``/proc/<pid>/fd/<n>`` opens the pipe itself, in the mode asked for,
    so its stdout and stderr (fds 1 and 2) lead to its output pipes (when they still
    are pipes)."""
    opened_pipes = []
    for fd_number, stream in enumerate(STREAMS, start=1):
        try:
            opened = os.open(
                f"/proc/{pid}/fd/{fd_number}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except OSError:
            continue
        if stat.S_ISFIFO(os.fstat(opened).st_mode):
            opened_pipes.append((stream, opened))
        else:
            os.close(opened)
    return tuple(opened_pipes)


def pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid`; None where pidfds are not supported. ProcessLookupError if
    `pid` is gone."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return None
        raise


def close_fds(*fds: int | None) -> None:
    """Close every descriptor given (None is skipped), ignoring errors."""
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
