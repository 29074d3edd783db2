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
  one process group (``pgid`` = wrapper pid); see `allocrunner.drivers._process`. A
  stop or a signal sent to the group reaches the command with its default action
  while the wrapper survives, records the command's exit status in
  ``<task_dir>/.allocrunner-exit-status`` and exits with it. A status above 128 is
  read as "killed by signal status-128" and reported as exit code = status, signal =
  status-128, as Nomad reports signalled tasks (a command that itself exits with such
  a code is indistinguishable). The status is one newline-terminated line naming the
  wrapper's pid too, read only once the wrapper has exited or when it parses
  completely, so a half-written or stale status is never taken for this run's.
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
  of the group outlives the task.
- Signals are never lost at the start, nor inherited from the agent: the wrapper is
  spawned with every signal at its default action and none blocked (an agent under
  ``nohup`` ignores SIGHUP, one started as a background job SIGINT and SIGQUIT), and
  `start()` returns only once the wrapper's handshake says the command is being
  exec'd by a process that no longer traps anything, so a stop or a signal sent
  right after `start()` acts on the command itself (see
  `allocrunner.drivers._process`).

Logs: the wrapper's stdout and stderr are pipes. One driver-wide `LogPump` thread
copies them into ``<logs_dir>/<task>.stdout.N`` / ``.stderr.N`` with rotation
(`logs.RotatingLogWriter`; `TaskConfig.log_max_file_size_bytes`, when set, overrides
the size in MB, which lets tests rotate small files) and watches the pidfds, so a task
costs no thread of its own. Before a task's exit is published its pipes are drained,
so when `wait` returns the logs hold everything the process wrote. Pipes keep the
start path free of file-system metadata work, yet stay re-openable after an agent
restart: `recover()` opens the wrapper's ``/proc/<pid>/fd/1`` and ``/2`` read-only,
which yields new read ends of the same pipes. The wrapper keeps a read end of each
pipe open itself, so while the agent is down a writing task is never killed by
SIGPIPE: once the pipe buffer (64 KiB) is full it blocks until the agent is back and
drains it, and nothing it wrote is lost. Like ``Popen(close_fds=True)``, the task
inherits no other descriptor of the agent.

`close()` stops the pump and leaves running tasks running (an agent shutdown); a task
that exits while no driver watches it records its status for `recover()`.

Threads: callers' threads (start, wait, stop, …) and the pump thread ``raw_exec-io``,
which publishes exits. Locks: ``Driver._lock`` guards the task table (`_TaskTable`)
and each task's result; the pump's own ``LogPump._lock`` guards what it watches; the
two are never nested. Owner: built by `default_drivers()` (or a test) and shared by
every TaskRunner of a node; whoever built it calls `close()`.
"""

from __future__ import annotations

import os
import signal as _signal
import time
import weakref
from collections.abc import Mapping
from typing import Any

import attrs

from allocrunner._locking import calls_out, immutable, make_lock
from allocrunner._sync import CancelToken
from allocrunner.drivers._common import DEFAULT_KILL_SIGNAL, _TaskTable, check_keys, signal_number
from allocrunner.drivers._logpump import LogPump, RotatingLogSink, Watch
from allocrunner.drivers._process import (
    STATUS_FILE,
    STREAMS,
    await_command_start,
    boot_ticks,
    check_task_dirs,
    close_fds,
    exit_result_from_status,
    group_usage,
    kill_group_and_reap,
    make_pipes,
    open_output_pipes,
    pidfd_open,
    read_pid_stat,
    remove_status,
    resolve_command,
    result_from_wait,
    spawn_wrapper,
    task_env,
)
from allocrunner.drivers._task_process import _TaskProcess, task_process_from_handle
from allocrunner.drivers.base import (
    ExitResult,
    TaskConfig,
    TaskHandle,
    TaskStatus,
)
from allocrunner.drivers.logs import ensure_log_file
from allocrunner.errors import DriverError

__all__ = [
    "KILL_GRACE",
    "NAME",
    "POLL_INTERVAL",
    "START_SETTLE",
    "STATUS_FILE",
    "RawExecDriver",
    "RawExecSpec",
    "exit_result_from_status",
    "parse_raw_exec_config",
    "resolve_command",
]

NAME = "raw_exec"

_KNOWN_KEYS = frozenset(
    {"command", "args", "cgroup_v1_override", "cgroup_v2_override", "oom_score_adj"}
)

KILL_GRACE = 10.0
"""Seconds a stop waits for the group to vanish after SIGKILL before giving up."""
START_SETTLE = 30.0
"""Seconds `start()` waits for the wrapper's handshake (its command about to be
exec'd) before it kills the wrapper and fails."""
POLL_INTERVAL = 0.05
"""Seconds between liveness checks of a task watched without a pidfd."""


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


class RawExecDriver:
    """Thread-safe. The `raw_exec` driver (see the module docstring).

    Call `close()` when done: it joins the pump thread; running tasks keep running and
    can be recovered by another instance.
    """

    name = NAME

    _lock = immutable()
    _tasks = immutable()
    _closing = immutable()
    _pump = immutable()
    _devnull = immutable()
    _exit_watch = immutable()

    def __init__(self, *, exit_watch: str = "pidfd") -> None:
        if exit_watch not in ("pidfd", "poll"):
            raise ValueError(f"exit_watch must be 'pidfd' or 'poll', not {exit_watch!r}")
        self._lock = make_lock("Driver._lock")
        self._tasks: _TaskTable[_TaskProcess] = _TaskTable(NAME, self._lock)
        self._closing = CancelToken()
        self._pump = LogPump("raw_exec-io", poll_interval=POLL_INTERVAL)
        self._exit_watch = exit_watch
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)  # tasks' stdin
        weakref.finalize(self, close_fds, self._devnull)

    # --- protocol -----------------------------------------------------------------

    def validate_config(self, config: TaskConfig) -> None:
        """Raise DriverError naming the bad key if the raw_exec config is invalid."""
        parse_raw_exec_config(config.driver_config)

    @calls_out
    def start(self, config: TaskConfig) -> TaskHandle:
        """Start the process; return once its command is being exec'd, so that a
        signal sent from now on reaches it (DriverError if it cannot start)."""
        spec = parse_raw_exec_config(config.driver_config)
        task_dir = check_task_dirs(config)
        env = task_env(config)
        command = resolve_command(spec.command, task_dir, env)
        with self._lock:
            self._tasks.check_addable_locked(config.id)
        status_path = os.path.join(task_dir, STATUS_FILE)
        for stream in STREAMS:
            ensure_log_file(config.logs_dir, config.name, stream)
        pipes = make_pipes()
        try:
            # The fork happens in between: its start time lies in this range, which
            # spares reading /proc/<pid>/stat on the start path.
            ticks_before = boot_ticks()
            pid = spawn_wrapper(
                command, spec.args, env, task_dir, status_path, pipes, self._devnull
            )
            ticks_after = boot_ticks()
        except BaseException:
            close_fds(pipes["stdout_r"], pipes["stderr_r"], pipes["ready_r"])
            raise
        finally:
            # The wrapper holds the write ends now; the pump must see EOF when it ends.
            close_fds(pipes["stdout_w"], pipes["stderr_w"], pipes["ready_w"])
        outputs = tuple((stream, pipes[f"{stream}_r"]) for stream in STREAMS)
        self._await_command(pid, pipes["ready_r"], outputs, command)
        pidfd = None
        try:
            pidfd = None if self._exit_watch == "poll" else pidfd_open(pid)
            proc = _TaskProcess(
                self._lock,
                config,
                pid=pid,
                pgid=pid,
                start_ticks=(ticks_before, ticks_after),
                status_path=status_path,
                started_at=time.time(),
                is_child=True,
            )
            self._hand_over(proc, pidfd, outputs)
        except BaseException:
            close_fds(pidfd, *(fd for _, fd in outputs))
            kill_group_and_reap(pid)
            raise
        return TaskHandle(driver=NAME, config=config, driver_state=proc.driver_state())

    @calls_out
    def wait(self, task_id: str, cancel: CancelToken) -> ExitResult | None:
        """Block until the task exits (its result) or `cancel` is cancelled (None)."""
        with self._lock:
            proc = self._tasks.get_locked(task_id)
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
            proc = self._tasks.get_locked(task_id)
            if proc.result_locked() is not None:
                return
        proc.signal_group(sig)
        if not self._await_exit(proc, max(0.0, timeout)):
            with self._lock:
                if proc.result_locked() is None:
                    proc.mark_sigkilled_locked()
            proc.signal_group(_signal.SIGKILL)
            if not self._await_exit(proc, KILL_GRACE):
                raise DriverError(
                    f"{NAME}: task {task_id!r} (pid {proc.pid}) did not exit "
                    f"{KILL_GRACE}s after SIGKILL"
                )
        # Whatever of the group outlived the task (e.g. background jobs, which a
        # non-interactive shell starts with SIGINT ignored) is killed too.
        proc.signal_group(_signal.SIGKILL)

    @calls_out
    def destroy(self, task_id: str, force: bool = False) -> None:
        """Forget the task and remove its status file; a running task is
        refused unless `force`, which kills it first."""
        with self._lock:
            proc = self._tasks.get_locked(task_id)
            running = proc.result_locked() is None
        if running:
            if not force:
                raise DriverError(f"cannot destroy running task {task_id!r}")
            self.stop(task_id, 0.0, "SIGKILL")
        elif proc.watched:
            # The exit was seen live, so the group id cannot have been reused yet:
            # kill what is left of the group.
            proc.signal_group(_signal.SIGKILL)
        with self._lock:
            removed = self._tasks.remove_locked(task_id, proc)
        if not removed:
            return
        self._pump.forget(proc)
        remove_status(proc.status_path)

    def inspect(self, task_id: str) -> TaskStatus:
        """The task's current status."""
        with self._lock:
            return self._tasks.get_locked(task_id).status_locked()

    @calls_out
    def signal(self, task_id: str, signal: str) -> None:
        """Deliver a signal to the task's process group."""
        sig = signal_number(signal)
        with self._lock:
            proc = self._tasks.get_live_locked(task_id)
        proc.signal_group(sig)

    @calls_out
    def stats(self, task_id: str) -> dict[str, float]:
        """CPU seconds, resident memory and process count of the task's group."""
        with self._lock:
            proc = self._tasks.get_locked(task_id)
            if proc.result_locked() is not None:
                return {}
        return group_usage(proc.pgid)

    @calls_out
    def recover(self, handle: TaskHandle) -> None:
        """Re-attach to a task started before an agent restart (module docstring)."""
        if handle.driver != NAME:
            raise DriverError(f"{NAME} cannot recover a {handle.driver!r} task")
        with self._lock:
            if self._tasks.closed_locked():
                raise DriverError(f"{NAME} is closed")
            if self._tasks.contains_locked(handle.task_id):
                return
        proc = task_process_from_handle(self._lock, handle)
        if proc.wrapper_alive() and self._reattach(proc):
            return
        exited = proc.exited_result()
        self._register_recovered(
            task_process_from_handle(self._lock, handle, watched=False), exited
        )

    # --- lifecycle -----------------------------------------------------------------

    @calls_out
    def close(self) -> None:
        """Stop the pump thread (running tasks keep running). Idempotent."""
        with self._lock:
            self._tasks.close_locked()
            self._closing.cancel(f"{NAME} closed")
        self._pump.close()

    def __enter__(self) -> RawExecDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------

    def _hand_over(
        self,
        proc: _TaskProcess,
        pidfd: int | None,
        outputs: tuple[tuple[str, int], ...],
        exited: ExitResult | None = None,
    ) -> None:
        """Register the task and give its descriptors to the pump. DriverError (the
        descriptors still the caller's) if the driver is closed or the task already
        runs. A task handed over `exited` has nothing to watch.

        The table learns of the task before the pump does; no `destroy` can forget it
        in between, since a destroy waits for a running task's exit, which only the
        pump reports."""
        task_id = proc.config.id
        with self._lock:
            self._tasks.add_locked(task_id, proc)
            if exited is not None:
                proc.finish_locked(exited)
        if exited is not None:
            return
        watch = Watch(
            owner=proc,
            pipes=tuple((fd, RotatingLogSink(proc.config, stream)) for stream, fd in outputs),
            on_exit=proc.on_exit,
            pidfd=pidfd,
            poll_exit=proc.poll_exit if pidfd is None else None,
        )
        if not self._pump.add(watch):
            with self._lock:
                self._tasks.remove_locked(task_id, proc)
            raise DriverError(f"{NAME} is closed")

    def _reattach(self, proc: _TaskProcess) -> bool:
        """Watch the live wrapper of a recovered task again; False if it turned out to
        have exited (or its pid to be reused) meanwhile."""
        pidfd = None
        if self._exit_watch == "pidfd":
            try:
                pidfd = pidfd_open(proc.pid)
            except ProcessLookupError:
                return False
        outputs = open_output_pipes(proc.pid)
        again = read_pid_stat(proc.pid)
        if again is None or not proc.started_at_ticks(again.start_ticks):
            close_fds(pidfd, *(fd for _, fd in outputs))
            return False
        self._register_recovered(proc, None, pidfd, outputs)
        return True

    def _register_recovered(
        self,
        proc: _TaskProcess,
        exited: ExitResult | None,
        pidfd: int | None = None,
        outputs: tuple[tuple[str, int], ...] = (),
    ) -> None:
        """Hand over a recovered task; a concurrent recover() of the same task having
        registered it first is not an error."""
        try:
            self._hand_over(proc, pidfd, outputs, exited)
        except DriverError:
            close_fds(pidfd, *(fd for _, fd in outputs))
            with self._lock:
                recovered_meanwhile = self._tasks.contains_locked(proc.config.id)
            if not recovered_meanwhile:
                raise

    @staticmethod
    def _await_command(
        pid: int, ready: int, outputs: tuple[tuple[str, int], ...], command: str
    ) -> None:
        """Wait for the handshake of wrapper `pid` (its command about to be exec'd).
        Closes `ready`. If the wrapper exited first or took too long: kill its group,
        reap it, close `outputs` and raise DriverError."""
        try:
            started = await_command_start(ready, START_SETTLE)
        except BaseException:
            close_fds(*(fd for _, fd in outputs))
            kill_group_and_reap(pid)
            raise
        finally:
            close_fds(ready)
        if started:
            return
        close_fds(*(fd for _, fd in outputs))
        wait_status = kill_group_and_reap(pid)
        ended = (
            "" if wait_status is None else f", exit code {result_from_wait(wait_status).exit_code}"
        )
        raise DriverError(
            f"{NAME}: cannot start {command!r}: its wrapper exited before starting it"
            f"{ended}; see the task's stderr log"
        )

    @calls_out
    def _await_exit(self, proc: _TaskProcess, timeout: float) -> bool:
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
