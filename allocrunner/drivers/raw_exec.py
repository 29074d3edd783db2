"""raw_exec: run a task as a plain process of the agent's user, re-attachable after an
agent restart.

Config keys: ``command`` (required; an absolute path, a path relative to the task
dir, or a name looked up in the task dir's ``local/``, the task dir, then the task
env's ``PATH``) and ``args`` (a list of strings). Both arrive already interpolated.
``TaskConfig.env`` is the complete environment of the process and its working
directory is the task dir. Tasks run as the agent's user (a different
``TaskConfig.user`` is refused). Nomad's ``cgroup_v1_override``, ``cgroup_v2_override``
and ``oom_score_adj`` are accepted and ignored; other keys are validation errors.

How a task runs:

- The command runs under a small ``/bin/sh`` wrapper in a new session, so the task is
  one process group (``pgid`` = wrapper pid). The wrapper traps every terminating
  signal (traps are reset for the command), so a stop or a signal sent to the group
  reaches the command with its default action while the wrapper survives; it runs the
  command in the foreground, then records the command's exit status in
  ``<task_dir>/.allocrunner-exit-status`` and exits with it. A status above 128 is
  read as "killed by signal status-128" and reported as exit code = status, signal =
  status-128, as Nomad
  reports signalled tasks (a command that itself exits with such a code is
  indistinguishable). The status is one newline-terminated ``echo`` (a single small
  write), read only once the wrapper has exited or when it parses completely, which
  gives the atomicity a tmp+rename would, without a second fork at every exit. The
  line also names the wrapper's pid, so a stale status of an earlier run is ignored.
- The handle's ``driver_state`` holds the pid, pgid, the process start time from
  ``/proc/<pid>/stat`` (against pid reuse), the status-file path and the log location.
  `recover()` in another driver instance (an agent restart) attaches to the live
  wrapper if its pid still has the recorded start time, reads the status file if the
  task has exited, and otherwise raises `DriverError`.
- Exits are watched with a pidfd per task (or, with ``exit_watch="poll"`` or where
  pidfds are missing, by polling). When the agent is the wrapper's parent it reaps
  it (its wait status is authoritative, and no zombie is left); otherwise the status
  file is. A wrapper that was SIGKILLed by a stop's escalation leaves no status file
  and is reported as killed by SIGKILL.
- Stop sends the kill signal (default SIGINT) to the whole group, waits up to the
  timeout, then SIGKILLs the group; grandchildren die with it, and so does whatever
  of the group outlives the task. A signal sent while the wrapper is still starting
  the command is never lost: the wrapper notes it and exits as if the command had
  been killed by it, or, if it came too late for that, it is sent again once the
  command runs.

Logs: the wrapper's stdout and stderr are pipes. One driver-wide I/O thread (a
selector over every pipe and pidfd, plus a wake pipe) copies them into
``<logs_dir>/<task>.stdout.N`` / ``.stderr.N`` with rotation (`logs.RotatingLogWriter`;
`TaskConfig.log_max_file_size_bytes`, when set, overrides the size in MB, which lets
tests rotate small files), so a task costs no thread of its own. Before a task's exit
is published its pipes are drained, so when `wait` returns the logs hold everything
the process wrote. Pipes rather than FIFOs keep the start path free of file-system
metadata work (no mkfifo per start), yet stay re-openable after an agent restart:
`recover()` opens the wrapper's ``/proc/<pid>/fd/1`` and ``/2`` read-only, which
yields new read ends of the same pipes. The wrapper also keeps a read end of each
pipe open itself (closed for the command). That is the answer to SIGPIPE: while the
agent is down a pipe always has a reader, so a writing task is never killed by
SIGPIPE; once the pipe buffer (64 KiB) is full it blocks until the agent is back and
drains it, and nothing it wrote is lost. Like ``Popen(close_fds=True)``, the task
inherits no other descriptor of the agent.

`close()` stops the I/O thread and leaves running tasks running (an agent shutdown);
a task that exits while no driver watches it records its status for `recover()`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pwd
import select
import shutil
import signal as _signal
import stat
import subprocess
import time
import weakref
from collections.abc import Mapping
from typing import Any

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.drivers._common import DEFAULT_KILL_SIGNAL, check_keys, signal_number, task_status
from allocrunner.drivers.base import (
    ExitResult,
    TaskConfig,
    TaskHandle,
    TaskStatus,
)
from allocrunner.drivers.logs import MB, RotatingLogWriter, ensure_log_file
from allocrunner.errors import DriverError, TaskExitedError

NAME = "raw_exec"

_KNOWN_KEYS = frozenset(
    {"command", "args", "cgroup_v1_override", "cgroup_v2_override", "oom_score_adj"}
)

STATUS_FILE = ".allocrunner-exit-status"
"""Where, in the task dir, the wrapper records the command's exit status."""
KILL_GRACE = 10.0
"""Seconds a stop waits for the group to vanish after SIGKILL before giving up."""
START_SETTLE = 10.0
"""Seconds a signal sent while the wrapper is starting its command waits for the
command to run, to be sent again if the wrapper could not apply it."""
POLL_INTERVAL = 0.05
"""Seconds between liveness checks of a task watched without a pidfd."""

# Signals whose default action does not terminate: left alone by the wrapper.
_NOT_TRAPPED = {
    _signal.SIGKILL,
    _signal.SIGSTOP,
    _signal.SIGCHLD,
    _signal.SIGCONT,
    _signal.SIGTSTP,
    _signal.SIGTTIN,
    _signal.SIGTTOU,
    _signal.SIGWINCH,
    _signal.SIGURG,
}
_TRAPPED = sorted(int(s) for s in _signal.valid_signals() if s not in _NOT_TRAPPED)

# The wrapper notes any terminating signal in `g` instead of dying of it. A signal
# that reached it before the command started is applied to the command by not
# starting it at all and exiting as if the command had been killed by it; a signal
# that comes while the command runs reaches the command through the group.
# Arguments: the status file, then the command and its args. The wrapper opens read
# ends of its own stdout and stderr pipes on fds 3 and 4 (closed for the command). It
# creates (or empties) the status file while starting, off the agent's start path, so
# that the exit only writes one line into an existing file; the line carries the
# wrapper's pid, so a stale file of an earlier run of the task is never taken for this
# run's.
_WRAPPER = (
    "".join(f"trap 'g={n}' {n}\n" for n in _TRAPPED)
    + "s=$1; shift\n"
    + ': >"$s"\n'
    + "command exec 3</proc/self/fd/1 4</proc/self/fd/2\n"
    + 'if [ -n "$g" ]; then c=$((128+g)); else "$@" 3<&- 4<&-; c=$?; fi\n'
    + 'echo "$c $$" 1<>"$s"\n'
    + 'exit "$c"\n'
)
_WRAPPER_ARGV0 = "allocrunner-raw_exec"

_STREAMS = ("stdout", "stderr")


@attrs.frozen
class RawExecSpec:
    """Immutable. A raw_exec driver config, parsed and checked."""

    command: str
    args: tuple[str, ...] = ()


def parse_raw_exec_config(config: Mapping[str, Any]) -> RawExecSpec:
    """Parse a raw_exec config; DriverError naming the key for a bad value."""
    check_keys(NAME, config, _KNOWN_KEYS)
    command = config.get("command")
    if command is None or command == "":
        raise DriverError(f"invalid {NAME} config: missing command (the 'command' key is required)")
    if not isinstance(command, str):
        raise DriverError(
            f"invalid {NAME} config: command must be a string, not {type(command).__name__}"
        )
    args = config.get("args", ())
    if args is None:
        args = ()
    if isinstance(args, str) or not isinstance(args, list | tuple):
        raise DriverError(
            f"invalid {NAME} config: args must be a list of strings, not {type(args).__name__}"
        )
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise DriverError(
                f"invalid {NAME} config: args[{i}] must be a string, not {type(arg).__name__}"
            )
    return RawExecSpec(command=command, args=tuple(args))


def exit_result_from_status(status: int) -> ExitResult:
    """The result for a shell exit status (above 128: killed by signal status-128)."""
    if status > 128 and (status - 128) in _VALID_SIGNALS:
        return ExitResult(exit_code=status, signal=status - 128)
    return ExitResult(exit_code=status)


_VALID_SIGNALS = frozenset(int(s) for s in _signal.valid_signals())


def _signalled(sig: int) -> ExitResult:
    return ExitResult(exit_code=128 + sig, signal=sig)


_TICKS = os.sysconf("SC_CLK_TCK")
_NS_PER_TICK = 1_000_000_000 // _TICKS


def _boot_ticks() -> int:
    """Clock ticks since boot, on the clock /proc/<pid>/stat start times use."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _NS_PER_TICK


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[19])


def _command_started(pid: int) -> bool | None:
    """Whether wrapper `pid` has a child that exec'd the command (a fork of the
    wrapper that has not exec'd yet still shows the wrapper's command line); None if
    the wrapper is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as fh:
            children = fh.read().split()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            own = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not own:
        return None  # a zombie: the wrapper has exited
    for child in children:
        try:
            with open(f"/proc/{int(child)}/cmdline", "rb") as fh:
                if fh.read() != own:
                    return True
        except (FileNotFoundError, ProcessLookupError):
            continue
    return False


def _read_status(path: str, pid: int) -> int | None:
    """The exit status wrapper `pid` recorded, or None if absent, incomplete or left
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


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid`; None where pidfds are not supported."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
            return None
        raise


def resolve_command(command: str, task_dir: str, env: Mapping[str, str]) -> str:
    """The absolute path of the executable `command` names; DriverError naming it if
    there is none. Relative paths are taken from the task dir; bare names are looked
    up in the task dir's ``local/``, the task dir, then the task env's PATH."""
    if os.path.isabs(command) or os.sep in command:
        path = command if os.path.isabs(command) else os.path.join(task_dir, command)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
        raise DriverError(f"{NAME}: command {command!r} does not exist or is not executable")
    for base in (os.path.join(task_dir, "local"), task_dir):
        path = os.path.join(base, command)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    search = env.get("PATH") or os.environ.get("PATH") or os.defpath
    found = shutil.which(command, path=search)
    if found is None:
        raise DriverError(f"{NAME}: command {command!r} not found in the task dir or PATH")
    return os.path.abspath(found)


class _Proc:
    """Thread-safe. One raw_exec task; mutable fields are guarded by the driver's lock."""

    _lock = immutable()
    config = immutable()
    pid = immutable()
    pgid = immutable()
    start_ticks = immutable()
    status_path = immutable()
    started_at = immutable()
    is_child = immutable()
    watched = immutable()
    done = immutable()
    # _lock guards: _result, _completed_at, _sigkilled
    _result = guarded("_lock")
    _completed_at = guarded("_lock")
    _sigkilled = guarded("_lock")

    def __init__(
        self,
        lock: Any,
        config: TaskConfig,
        *,
        pid: int,
        pgid: int,
        start_ticks: tuple[int, int],
        status_path: str,
        started_at: float,
        is_child: bool,
        watched: bool = True,
    ) -> None:
        self._lock = lock
        self.config = config
        self.pid = pid
        self.pgid = pgid
        # The process start time in clock ticks since boot, as /proc/<pid>/stat shows
        # it: known to lie within this (low, high) range.
        self.start_ticks = start_ticks
        self.status_path = status_path
        self.started_at = started_at
        self.is_child = is_child
        # False for a task found already exited at recovery: its group id may have
        # been reused since, so it is never signalled.
        self.watched = watched
        self.done = CancelToken()  # cancelled once, after the result is set
        self._result: ExitResult | None = None
        self._completed_at: float | None = None
        self._sigkilled = False

    def started_at_ticks(self, ticks: int) -> bool:
        """True if a process started at `ticks` is this task's wrapper (not a reuse)."""
        return self.start_ticks[0] <= ticks <= self.start_ticks[1]

    @requires("_lock")
    def result_locked(self) -> ExitResult | None:
        return self._result

    @requires("_lock")
    def finish_locked(self, result: ExitResult) -> None:
        if self._result is None:
            self._result = result
            self._completed_at = time.time()
            self.done.cancel("exited")

    @requires("_lock")
    def mark_sigkilled_locked(self) -> None:
        self._sigkilled = True

    @requires("_lock")
    def sigkilled_locked(self) -> bool:
        return self._sigkilled

    @requires("_lock")
    def status_locked(self) -> TaskStatus:
        return task_status(self.config, self.started_at, self._completed_at, self._result)

    def driver_state(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "pgid": self.pgid,
            "start_ticks": list(self.start_ticks),
            "started_at": self.started_at,
            "status_path": self.status_path,
            "logs_dir": self.config.logs_dir,
            "stdout_log": f"{self.config.name}.stdout",
            "stderr_log": f"{self.config.name}.stderr",
        }


class _Stream:
    """Not thread-safe; owned by the driver's I/O thread once handed over. One output
    pipe of a task, copied into rotated log files (opened on the first bytes)."""

    def __init__(self, proc: _Proc, stream: str, fd: int) -> None:
        self.proc = proc
        self.stream = stream
        self.fd = fd
        self.writer: RotatingLogWriter | None = None
        self.write_errors = 0

    def write(self, data: bytes) -> None:
        try:
            if self.writer is None:
                config = self.proc.config
                self.writer = RotatingLogWriter(
                    config.logs_dir,
                    config.name,
                    self.stream,
                    max_files=config.log_max_files,
                    max_bytes=config.log_max_file_size_bytes or config.log_max_file_size_mb * MB,
                )
            self.writer.write(data)
        except (OSError, ValueError):
            self.write_errors += 1

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.close()


@attrs.frozen(eq=False)
class _Forget:
    """Immutable. Ask the I/O thread to drop a task's pipes and pidfd, then set `done`."""

    proc: _Proc
    done: CancelToken


class RawExecDriver:
    """Thread-safe. The `raw_exec` driver (see the module docstring).

    Call `close()` when done: it joins the I/O thread; running tasks keep running and
    can be recovered by another instance.
    """

    name = NAME

    _lock = immutable()
    _closing = immutable()
    _threads = immutable()
    _epoll = immutable()
    _wake_r = immutable()
    _wake_w = immutable()
    _devnull = immutable()
    _exit_watch = immutable()
    # _lock guards: _tasks, _watched, _polled, _pending, _io_started, _closed
    _tasks = guarded("_lock")
    _watched = guarded("_lock")
    _polled = guarded("_lock")
    _pending = guarded("_lock")
    _io_started = guarded("_lock")
    _closed = guarded("_lock")

    def __init__(self, *, exit_watch: str = "pidfd") -> None:
        if exit_watch not in ("pidfd", "poll"):
            raise ValueError(f"exit_watch must be 'pidfd' or 'poll', not {exit_watch!r}")
        self._lock = make_lock("Driver._lock")
        self._closing = CancelToken()
        self._threads = ThreadGroup(NAME)
        self._exit_watch = exit_watch
        # Descriptors are registered with the epoll by the thread that hands them over
        # (no wake-up of the I/O thread on the start path). The epoll and the wake
        # pipe live as long as the driver object, so that a registration or wake-up
        # racing close() can never reach a recycled descriptor.
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # tasks' stdin
        weakref.finalize(self, _close_all, self._epoll, self._wake_r, self._wake_w, self._devnull)
        self._tasks: dict[str, _Proc] = {}
        # Descriptor -> what it watches: a _Stream (output pipe) or a _Proc (pidfd).
        # An entry exists before its descriptor is registered and is removed before
        # the descriptor is unregistered and closed.
        self._watched: dict[int, _Stream | _Proc] = {}
        self._polled: dict[int, _Proc] = {}  # pid -> task watched without a pidfd
        self._pending: tuple[_Forget, ...] = ()
        self._io_started = False
        self._closed = False

    # --- protocol -----------------------------------------------------------------

    def validate_config(self, config: TaskConfig) -> None:
        """Raise DriverError naming the bad key if the raw_exec config is invalid."""
        parse_raw_exec_config(config.driver_config)

    @calls_out
    def start(self, config: TaskConfig) -> TaskHandle:
        """Start the process; return once it runs (DriverError if it cannot)."""
        spec = parse_raw_exec_config(config.driver_config)
        task_dir = self._check_dirs(config)
        env = _task_env(config)
        command = resolve_command(spec.command, task_dir, env)
        with self._lock:
            self._check_startable_locked(config.id)
        status_path = os.path.join(task_dir, STATUS_FILE)
        if config.logs_dir:
            for stream in ("stdout", "stderr"):
                ensure_log_file(config.logs_dir, config.name, stream)
        pipes = _make_pipes()
        try:
            # The fork happens in between: its start time lies in this range, which
            # spares reading /proc/<pid>/stat on the start path.
            ticks_before = _boot_ticks()
            pid = _spawn(command, spec.args, env, task_dir, status_path, pipes, self._devnull)
            ticks_after = _boot_ticks()
        except BaseException:
            _close_fds(pipes["stdout_r"], pipes["stderr_r"])
            raise
        finally:
            # The wrapper holds the write ends now; the pump must see EOF when it ends.
            _close_fds(pipes["stdout_w"], pipes["stderr_w"])
        fifos = (("stdout", pipes["stdout_r"]), ("stderr", pipes["stderr_r"]))
        pidfd = None
        try:
            pidfd = None if self._exit_watch == "poll" else _pidfd_open(pid)
            proc = _Proc(
                self._lock,
                config,
                pid=pid,
                pgid=pid,
                start_ticks=(ticks_before, ticks_after),
                status_path=status_path,
                started_at=time.time(),
                is_child=True,
            )
            self._hand_over(proc, pidfd, fifos)
        except BaseException:
            _close_fds(pidfd, pipes["stdout_r"], pipes["stderr_r"])
            _kill_and_reap(pid)
            raise
        return TaskHandle(driver=NAME, config=config, driver_state=proc.driver_state())

    @calls_out
    def wait(self, task_id: str, cancel: CancelToken) -> ExitResult | None:
        """Block until the task exits (its result) or `cancel` is cancelled (None)."""
        with self._lock:
            proc = self._get_locked(task_id)
            result = proc.result_locked()
        if result is not None:
            return result
        joined = CancelToken.any_of(cancel, proc.done, self._closing)
        try:
            joined.wait()
        finally:
            joined.cancel("done")
        with self._lock:
            result = proc.result_locked()
        if result is not None:
            return result
        if cancel.cancelled():
            return None
        raise DriverError(f"{NAME} closed while waiting on task {task_id!r}")

    @calls_out
    def stop(self, task_id: str, timeout: float, signal: str = "") -> None:
        """Signal the process group (default SIGINT), SIGKILL it after `timeout`
        seconds; return once the task has exited."""
        sig = signal_number(signal or DEFAULT_KILL_SIGNAL)
        with self._lock:
            proc = self._get_locked(task_id)
            if proc.result_locked() is not None:
                return
        self._deliver(proc, sig)
        if not self._await_exit(proc, max(0.0, timeout)):
            with self._lock:
                if proc.result_locked() is None:
                    proc.mark_sigkilled_locked()
            _killpg(proc, _signal.SIGKILL)
            if not self._await_exit(proc, KILL_GRACE):
                raise DriverError(
                    f"{NAME}: task {task_id!r} (pid {proc.pid}) did not exit "
                    f"{KILL_GRACE}s after SIGKILL"
                )
        # Whatever of the group outlived the task (e.g. background jobs, which a
        # non-interactive shell starts with SIGINT ignored) is killed too.
        _killpg(proc, _signal.SIGKILL)

    @calls_out
    def destroy(self, task_id: str, force: bool = False) -> None:
        """Forget the task and remove its status file; a running task is
        refused unless `force`, which kills it first."""
        with self._lock:
            proc = self._get_locked(task_id)
            running = proc.result_locked() is None
        if running:
            if not force:
                raise DriverError(f"cannot destroy running task {task_id!r}")
            self.stop(task_id, 0.0, "SIGKILL")
        elif proc.watched:
            # The exit was seen live, so the group id cannot have been reused yet:
            # kill what is left of the group.
            _killpg(proc, _signal.SIGKILL)
        token = CancelToken()
        with self._lock:
            if self._tasks.get(task_id) is not proc:
                return
            tasks = dict(self._tasks)
            del tasks[task_id]
            self._tasks = tasks
            live_io = self._io_started and not self._closed
            if live_io:
                self._pending = (*self._pending, _Forget(proc, token))
        if live_io:
            self._wake()
            joined = CancelToken.any_of(token, self._closing)
            try:
                joined.wait()
            finally:
                joined.cancel("done")
        _remove_status(proc.status_path)

    def inspect(self, task_id: str) -> TaskStatus:
        """The task's current status."""
        with self._lock:
            return self._get_locked(task_id).status_locked()

    @calls_out
    def signal(self, task_id: str, signal: str) -> None:
        """Deliver a signal to the task's process group."""
        sig = signal_number(signal)
        with self._lock:
            if not self._closed and task_id not in self._tasks:  # exited and destroyed
                raise TaskExitedError(f"task {task_id!r} is not running")
            proc = self._get_locked(task_id)
            if proc.result_locked() is not None:
                raise TaskExitedError(f"task {task_id!r} is not running")
        self._deliver(proc, sig)

    @calls_out
    def stats(self, task_id: str) -> dict[str, float]:
        """CPU seconds, resident memory and process count of the task's group."""
        with self._lock:
            proc = self._get_locked(task_id)
            if proc.result_locked() is not None:
                return {}
        return _group_stats(proc.pgid)

    @calls_out
    def recover(self, handle: TaskHandle) -> None:
        """Re-attach to a task started before an agent restart (module docstring)."""
        if handle.driver != NAME:
            raise DriverError(f"{NAME} cannot recover a {handle.driver!r} task")
        task_id = handle.task_id
        with self._lock:
            if self._closed:
                raise DriverError(f"{NAME} is closed")
            if task_id in self._tasks:
                return
        proc = _proc_from_handle(self._lock, handle)
        found = _proc_stat(proc.pid)
        if found is not None and proc.started_at_ticks(found[1]) and found[0] not in ("Z", "X"):
            pidfd = None
            if self._exit_watch == "pidfd":
                try:
                    pidfd = _pidfd_open(proc.pid)
                except ProcessLookupError:
                    pidfd = -1
            fifos = _open_fifos(proc) if pidfd != -1 else ()
            again = _proc_stat(proc.pid) if pidfd != -1 else None
            if again is not None and proc.started_at_ticks(again[1]):
                try:
                    self._hand_over(proc, pidfd, fifos)
                except DriverError:
                    _close_fds(pidfd, *(fd for _, fd in fifos))
                    if not self._recovered_meanwhile(task_id):
                        raise
                return
            _close_fds(*(fd for _, fd in fifos))
            if pidfd is not None and pidfd >= 0:
                _close_fds(pidfd)
        exited = self._exited_result(proc)
        proc = _proc_from_handle(self._lock, handle, watched=False)
        try:
            self._hand_over(proc, None, (), exited)
        except DriverError:
            if not self._recovered_meanwhile(task_id):
                raise

    def _recovered_meanwhile(self, task_id: str) -> bool:
        """True if a concurrent recover() registered the task (recovering twice is not
        an error)."""
        with self._lock:
            return not self._closed and task_id in self._tasks

    # --- lifecycle -----------------------------------------------------------------

    @calls_out
    def close(self) -> None:
        """Stop the I/O thread (running tasks keep running). Idempotent."""
        with self._lock:
            self._closed = True
            self._closing.cancel(f"{NAME} closed")
        self._wake()
        self._threads.join(timeout=10.0)

    def __enter__(self) -> RawExecDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals: calling threads -------------------------------------------------

    @requires("_lock")
    def _get_locked(self, task_id: str) -> _Proc:
        if self._closed:
            raise DriverError(f"{NAME} is closed")
        proc = self._tasks.get(task_id)
        if proc is None:
            raise DriverError(f"{NAME}: unknown task {task_id!r}")
        return proc

    @requires("_lock")
    def _check_startable_locked(self, task_id: str) -> None:
        if self._closed:
            raise DriverError(f"{NAME} is closed")
        old = self._tasks.get(task_id)
        if old is not None and old.result_locked() is None:
            raise DriverError(f"{NAME}: task {task_id!r} is already running")

    @staticmethod
    def _check_dirs(config: TaskConfig) -> str:
        if config.user and config.user != _agent_user():
            raise DriverError(
                f"{NAME}: task user {config.user!r} is not supported: tasks run as the "
                f"agent's user {_agent_user()!r}"
            )
        if not config.task_dir:
            raise DriverError(f"{NAME}: task {config.name!r} has no task_dir")
        if not os.path.isdir(config.task_dir):
            raise DriverError(f"{NAME}: task_dir {config.task_dir!r} does not exist")
        if not config.logs_dir or not os.path.isdir(config.logs_dir):
            raise DriverError(f"{NAME}: logs_dir {config.logs_dir!r} does not exist")
        if config.log_max_files < 1:
            raise DriverError(f"{NAME}: log_max_files must be at least 1")
        if config.log_max_file_size_bytes <= 0 and config.log_max_file_size_mb < 1:
            raise DriverError(f"{NAME}: log_max_file_size_mb must be at least 1")
        return os.path.abspath(config.task_dir)

    def _hand_over(
        self,
        proc: _Proc,
        pidfd: int | None,
        fifos: tuple[tuple[str, int], ...],
        exited: ExitResult | None = None,
    ) -> None:
        """Register the task and give its descriptors to the I/O thread (starting it
        on first use). DriverError (the descriptors still the caller's) if the driver
        is closed or the task already runs."""
        task_id = proc.config.id
        streams = [_Stream(proc, stream, fd) for stream, fd in fifos]
        fds = [e.fd for e in streams] + ([] if pidfd is None else [pidfd])
        with self._lock:
            self._check_startable_locked(task_id)
            tasks = dict(self._tasks)
            tasks[task_id] = proc
            self._tasks = tasks
            if exited is not None:
                proc.finish_locked(exited)
            watched = dict(self._watched)
            for entry in streams:
                watched[entry.fd] = entry
            if pidfd is not None:
                watched[pidfd] = proc
            self._watched = watched
            poll = exited is None and pidfd is None
            if poll:
                polled = dict(self._polled)
                polled[proc.pid] = proc
                self._polled = polled
            spawn = not self._io_started
            self._io_started = True
        for fd in fds:
            # Only fails if close() raced us; then the I/O thread closed the fds.
            with contextlib.suppress(OSError, ValueError):
                self._epoll.register(fd, select.EPOLLIN)
        if spawn:
            self._threads.spawn("raw_exec-io", self._io_loop)
        elif poll:
            self._wake()

    @calls_out
    def _deliver(self, proc: _Proc, sig: int) -> None:
        """Send `sig` to the task's group so that the command gets it exactly once.

        Until the command has been exec'd, a signal can only reach the wrapper (or the
        command's not-yet-exec'd fork, which forgets it). The wrapper then either exits
        as if the command had been killed, or, if the signal came too late for that,
        has started the command anyway: in that case the signal is sent again once the
        command runs."""
        started = _command_started(proc.pid)
        _killpg(proc, sig)
        if started is not False:
            return
        deadline = time.monotonic() + START_SETTLE
        while not proc.done.cancelled() and time.monotonic() < deadline:
            started = _command_started(proc.pid)
            if started is None:
                return
            if started:
                _killpg(proc, sig)
                return
            if self._closing.wait(0.0005):
                return

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    @calls_out
    def _await_exit(self, proc: _Proc, timeout: float) -> bool:
        """True once the task has exited; False after `timeout`; raises if closed."""
        joined = CancelToken.any_of(proc.done, self._closing)
        try:
            joined.wait(timeout)
        finally:
            joined.cancel("done")
        if proc.done.cancelled():
            return True
        if self._closing.cancelled():
            raise DriverError(f"{NAME} closed while stopping task {proc.config.id!r}")
        return False

    @staticmethod
    def _exited_result(proc: _Proc) -> ExitResult:
        """The result of a recorded task whose process is no longer running: its wait
        status if it is a zombie child of ours, else its status file; DriverError if
        it left neither."""
        found = _proc_stat(proc.pid)
        if found is not None and proc.started_at_ticks(found[1]):
            with contextlib.suppress(ChildProcessError):
                wpid, wstatus = os.waitpid(proc.pid, os.WNOHANG)
                if wpid == proc.pid:
                    return _result_from_wait(wstatus)
        status = _read_status(proc.status_path, proc.pid)
        if status is not None:
            return exit_result_from_status(status)
        raise DriverError(
            f"{NAME}: task {proc.config.id!r} (pid {proc.pid}) is gone and left no exit status"
        )

    # --- internals: the I/O thread -------------------------------------------------

    def _io_loop(self) -> None:
        """Thread body: copy output pipes to log files and publish exits."""
        try:
            while True:
                with self._lock:
                    closed = self._closed
                    pending, self._pending = self._pending, ()
                    polling = bool(self._polled)
                for command in pending:
                    self._forget(command.proc)
                    command.done.cancel("forgotten")
                if closed:
                    return
                events = self._epoll.poll(POLL_INTERVAL if polling else -1)
                for fd, _ in events:
                    self._dispatch(fd)
                if polling:
                    self._poll_exits()
        finally:
            self._shutdown_io()

    def _dispatch(self, fd: int) -> None:
        if fd == self._wake_r:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
            return
        with self._lock:
            entry = self._watched.get(fd)
        if isinstance(entry, _Stream):
            self._pump(entry)
        elif isinstance(entry, _Proc) and _readable(fd):
            self._unwatch(fd)
            os.close(fd)
            self._exited(entry, None)

    def _unwatch(self, *fds: int) -> None:
        """Drop entries, then unregister their descriptors (the caller closes them)."""
        with self._lock:
            watched = dict(self._watched)
            for fd in fds:
                watched.pop(fd, None)
            self._watched = watched
        for fd in fds:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    def _pump(self, entry: _Stream, limit: int = 16) -> None:
        """Copy what the pipe holds (a bounded number of reads) into the log files."""
        for _ in range(limit):
            try:
                data = os.read(entry.fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_stream(entry)
                return
            entry.write(data)

    def _close_stream(self, entry: _Stream) -> None:
        with self._lock:
            mine = self._watched.get(entry.fd) is entry
        if not mine:
            return
        self._unwatch(entry.fd)
        os.close(entry.fd)
        entry.close()

    def _entries_of(self, proc: _Proc) -> list[tuple[int, _Stream | _Proc]]:
        with self._lock:
            return [
                (fd, e)
                for fd, e in self._watched.items()
                if e is proc or (isinstance(e, _Stream) and e.proc is proc)
            ]

    def _poll_exits(self) -> None:
        with self._lock:
            polled = list(self._polled.items())
        for pid, proc in polled:
            wait_status = None
            if proc.is_child:
                try:
                    wpid, wstatus = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    wpid = -1
                if wpid == 0:
                    continue
                if wpid == pid:
                    wait_status = wstatus
            if wait_status is None:
                found = _proc_stat(pid)
                if found is not None and proc.started_at_ticks(found[1]) and found[0] not in "ZX":
                    continue
            with self._lock:
                remaining = dict(self._polled)
                remaining.pop(pid, None)
                self._polled = remaining
            self._exited(proc, wait_status)

    def _exited(self, proc: _Proc, wait_status: int | None) -> None:
        """The wrapper has exited: drain its logs, reap it, publish the result."""
        for _, entry in self._entries_of(proc):
            if isinstance(entry, _Stream):
                self._pump(entry, limit=1 << 30)
        if wait_status is None:
            try:
                wpid, wstatus = os.waitpid(proc.pid, 0)
                if wpid == proc.pid:
                    wait_status = wstatus
            except ChildProcessError:
                pass
        if wait_status is not None:
            result = _result_from_wait(wait_status)
        else:
            status = _read_status(proc.status_path, proc.pid)
            result = None if status is None else exit_result_from_status(status)
        with self._lock:
            if result is None:
                if proc.sigkilled_locked():
                    result = _signalled(_signal.SIGKILL)
                else:
                    result = ExitResult(
                        err=f"process {proc.pid} exited without recording an exit status"
                    )
            proc.finish_locked(result)

    def _forget(self, proc: _Proc) -> None:
        for fd, entry in self._entries_of(proc):
            if isinstance(entry, _Stream):
                self._pump(entry)
                self._close_stream(entry)
            else:
                self._unwatch(fd)
                os.close(fd)
        with self._lock:
            polled = dict(self._polled)
            polled.pop(proc.pid, None)
            self._polled = polled

    def _shutdown_io(self) -> None:
        """Close every watched descriptor; tasks keep running."""
        with self._lock:
            watched, self._watched = self._watched, {}
            self._polled = {}
            pending, self._pending = self._pending, ()
        for fd, entry in watched.items():
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
            if isinstance(entry, _Stream):
                # Keep what is buffered, but never chase a task that writes on.
                with contextlib.suppress(OSError):
                    for _ in range(16):
                        data = os.read(fd, 65536)
                        if not data:
                            break
                        entry.write(data)
                entry.close()
            os.close(fd)
        for command in pending:
            command.done.cancel("closed")


# --- process helpers -----------------------------------------------------------------


@functools.cache
def _agent_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _task_env(config: TaskConfig) -> dict[str, str]:
    env = {}
    for key, value in config.env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise DriverError(f"{NAME}: env {key!r} must map a string to a string")
        env[key] = value
    return env


def _make_pipes() -> dict[str, int]:
    """A pipe per output stream, both ends close-on-exec (the spawn hands the write
    ends over as stdout and stderr), the read ends non-blocking for the pump."""
    pipes: dict[str, int] = {}
    try:
        for stream in _STREAMS:
            read, write = os.pipe2(os.O_CLOEXEC)
            pipes[f"{stream}_r"], pipes[f"{stream}_w"] = read, write
            os.set_blocking(read, False)
    except OSError as err:
        _close_fds(*pipes.values())
        raise DriverError(f"{NAME}: cannot create output pipes: {err}") from err
    return pipes


def _open_fifos(proc: _Proc) -> tuple[tuple[str, int], ...]:
    """New read ends of a recovered task's output pipes. Opening a pipe through
    ``/proc/<pid>/fd/<n>`` opens the pipe itself, in the mode asked for, so the
    wrapper's stdout and stderr (fds 1 and 2) lead to its output pipes."""
    fifos = []
    for stream, fd in (("stdout", 1), ("stderr", 2)):
        path = f"/proc/{proc.pid}/fd/{fd}"
        try:
            opened = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        if stat.S_ISFIFO(os.fstat(opened).st_mode):
            fifos.append((stream, opened))
        else:
            os.close(opened)
    return tuple(fifos)


def _spawn(
    command: str,
    args: tuple[str, ...],
    env: dict[str, str],
    cwd: str,
    status_path: str,
    pipes: dict[str, int],
    stdin: int,
) -> int:
    """Start the wrapper; its pid. Like any Popen it inherits no other descriptor of
    the agent and gets default SIGPIPE/SIGXFSZ dispositions."""
    try:
        child = subprocess.Popen(
            ["/bin/sh", "-c", _WRAPPER, _WRAPPER_ARGV0, status_path, command, *args],
            stdin=stdin,
            stdout=pipes["stdout_w"],
            stderr=pipes["stderr_w"],
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as err:
        raise DriverError(f"{NAME}: cannot start {command!r}: {err}") from err
    # From here on this driver reaps the wrapper with os.waitpid (or another agent
    # does after a restart); the Popen object is dropped and must not warn about it.
    child.returncode = 0
    return child.pid


def _result_from_wait(wait_status: int) -> ExitResult:
    if os.WIFSIGNALED(wait_status):
        return _signalled(os.WTERMSIG(wait_status))
    return exit_result_from_status(os.waitstatus_to_exitcode(wait_status))


def _killpg(proc: _Proc, sig: int) -> None:
    try:
        os.killpg(proc.pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as err:
        raise DriverError(f"{NAME}: cannot signal task {proc.config.id!r}: {err}") from err


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, _signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _readable(fd: int) -> bool:
    """True if `fd` polls readable now (a pidfd: its process has exited)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _close_all(epoll: select.epoll, *fds: int) -> None:
    epoll.close()
    _close_fds(*fds)


def _close_fds(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _remove_status(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _proc_from_handle(lock: Any, handle: TaskHandle, *, watched: bool = True) -> _Proc:
    state = handle.driver_state
    ints = {}
    ticks = state.get("start_ticks")
    if isinstance(ticks, int) and not isinstance(ticks, bool):
        ticks = (ticks, ticks)
    if (
        not isinstance(ticks, list | tuple)
        or len(ticks) != 2
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in ticks)
    ):
        raise DriverError(f"{NAME}: handle of task {handle.task_id!r} has a bad start_ticks")
    for key in ("pid", "pgid"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DriverError(
                f"{NAME}: handle of task {handle.task_id!r} has a bad {key}: {value!r}"
            )
        ints[key] = value
    status_path = state.get("status_path")
    if not isinstance(status_path, str) or not status_path:
        raise DriverError(f"{NAME}: handle of task {handle.task_id!r} has no status_path")
    started_at = state.get("started_at", 0.0)
    return _Proc(
        lock,
        handle.config,
        pid=ints["pid"],
        pgid=ints["pgid"],
        start_ticks=(ticks[0], ticks[1]),
        status_path=status_path,
        started_at=float(started_at) if isinstance(started_at, int | float) else 0.0,
        is_child=False,
        watched=watched,
    )


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _group_stats(pgid: int) -> dict[str, float]:
    cpu = 0
    rss = 0
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(b")") + 2 :].split()
        if int(fields[2]) != pgid or fields[0] in (b"Z", b"X"):
            continue
        count += 1
        cpu += int(fields[11]) + int(fields[12])
        rss += int(fields[21]) * _PAGE
    return {"cpu_seconds": cpu / _TICKS, "memory_rss_bytes": float(rss), "processes": float(count)}
