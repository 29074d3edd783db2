"""raw_exec: run a task as a plain process of the agent's user, re-attachable after an
agent restart.

Config keys: ``command`` (required; an absolute path, a path relative to the task
dir, or a name looked up in the task dir's ``local/``, the task dir, then the task
env's ``PATH``) and ``args`` (a list of strings). Both arrive already interpolated.
``TaskConfig.env`` is the complete environment of the process and its working
directory is the task dir. Tasks run as the agent's user (a different
``TaskConfig.user`` is refused). ``oom_score_adj``, ``cgroup_v1_override`` and
``cgroup_v2_override`` are Nomad's (`allocrunner.drivers._raw_exec_config`); other keys
are validation errors.

Isolation, as Nomad's raw_exec gives it (the agent itself is never changed):

- oom_score_adj: every task starts with the configured value, else 0, never with the
  agent's (an agent run with -1000 or 500 does not pass it on). The spawner sets its own
  value around the spawn and restores it, so the child inherits it from its first
  instruction. A configured value the kernel refuses fails the start; the default 0
  refused (an unprivileged agent whose value a privileged parent raised) leaves the task
  the agent's value, with a warning.
- cgroups (`allocrunner.drivers._cgroups` plans, the spawner acts): on a host with a
  writable cgroup v2 hierarchy each task gets ``nomad.slice/<alloc>.<task>.scope`` with
  ``memory.max`` from its resources, removed once it is reaped; an override is joined
  instead (never created or removed). The spawner joins the cgroup around the spawn, as
  Nomad's executor does, so the task is in it before it runs, and never in a half-made
  one: if a step fails, the task runs in no cgroup of its own.
- Warnings go to the ``allocrunner.drivers.raw_exec`` logger, one line per start that
  could not apply what the task asked for (an override that cannot be joined, an unset
  memory limit, an oom_score_adj left as inherited), and once per driver that tasks get
  no cgroup of their own on this host (cgroup v1, as Nomad's raw_exec on v1 makes only
  a freezer cgroup, or no permission). Nomad fails a task whose override is missing;
  here the task runs, with the warning.

How a task runs:

- Tasks are started by the spawner of the driver's state dir (`state_dir`, by default
  a per-user dir in the temp dir; see `allocrunner.drivers.spawner`), one long-lived
  process launched on first use that serves every driver of that dir. It
  ``posix_spawn``s the command itself in a new process group (``pgid`` = pid), with
  every catchable signal at its default action and none blocked (whatever the agent
  ignores, e.g. under ``nohup``, or blocks), stdin on /dev/null and no other
  descriptor. `start()` returns once the command has been exec'd, so a stop or a
  signal sent right after it acts on the command.
- The spawner reaps its tasks and records each exit status in
  ``<task_dir>/.allocrunner-exit-status`` (one line, status then pid, written in one
  write over the lone newline the file holds while the task runs) before it tells any
  agent, through a per-task exit-notify channel. A status above 128 is read as
  "killed by signal status-128" and reported as exit code = status, signal =
  status-128, as Nomad reports signalled tasks (a command that itself exits with such
  a code is indistinguishable).
- The handle's ``driver_state`` holds the pid, pgid, the process start time from
  ``/proc/<pid>/stat`` (against pid reuse), the status-file path, the spawner dir and
  the log location. `recover()` in another driver instance (an agent restart) asks
  the spawner to attach it to the live task, else reads the status file, else raises
  `DriverError`. A `start()` of a task the spawner still runs (an agent that died
  while starting it) adopts that process rather than starting it twice.
- If the spawner dies (kill -9), its tasks run on, orphaned: a task found alive with
  its recorded start time is then watched with a pidfd (or, with
  ``exit_watch="poll"`` or where pidfds are missing, by polling /proc), and its exit
  is reported as an `ExitResult` whose ``err`` says the status is unknown (or as
  killed by SIGKILL if a stop escalated to it). The next start launches a new
  spawner.
- Handles of the older wrapper design (no spawner dir: the pid is a ``/bin/sh``
  wrapper that records the status itself) are recovered as before.
- Stop sends the kill signal (default SIGINT) to the whole group, waits up to the
  timeout for the spawner's exit notice, then SIGKILLs the group; grandchildren die
  with it, and so does whatever of the group outlives the task. Nothing polls:
  stopping many tasks signals them all and each is published as it is reaped.
  `stop_many` does that for many tasks from one thread (as supervisord's
  ``stopAllProcesses`` does): it signals every group back to back, waits with one
  timeout for the exits the pump reports, then SIGKILLs the groups still running,
  where a thread per `stop` would send each signal only once its thread gets the GIL.
- The exit notice of a task this driver started arrives on a stream socket (the
  record keeps our end open for its whole life, the spawner keeps its end open after
  writing): the pump watches it, but a stopping thread takes it over (`_await_notice`):
  the pump holds off the task (`LogPump.hold`: neither the notice nor the end of file
  of the task's output pipes, which its exit brings, wakes it), the stopping thread
  polls the socket itself, peeks at the wait status and publishes the exit: one
  wake-up on the stop path instead of the pump's and then the stopper's, and no pump
  thread competing for a CPU with the spawner that reaps the task. It polls the task's
  pidfd too: that turns readable as the task exits, while the spawner has yet to wake,
  reap it and write the notice, and in that gap the thread does what needs no wait
  status (takes the output pipes from the pump and kills the rest of the group, whose
  id the unreaped task still holds), so only the publishing waits on the notice. It
  does so only if nothing of the task's output is left to copy (each pipe empty at end
  of file);
  otherwise (a child of the task still holds its stdout, or output remains) it gives
  the task back to the pump, which publishes after draining, as it does when no one
  stops the task. Only `NOTICE_WAITERS` stopping threads do
  this at once; when many tasks stop together the pump reports their exits in
  batches. Tasks attached after an agent restart keep a plain pipe that only the pump
  reads.

Logs: with ``TaskConfig.logs_disabled`` (a task's ``logs { disabled = true }``) the
task's stdout and stderr are /dev/null, as Nomad's logmon hook makes them: no pipe, no
log file, nothing pumped but the exit; a reader of its logs finds none. Otherwise a
task's stdout and stderr are pipes created by the driver. One driver-wide
`LogPump` thread copies them into ``<logs_dir>/<task>.stdout.N`` / ``.stderr.N`` with
rotation (`logs.RotatingLogWriter`; `TaskConfig.log_max_file_size_bytes`, when set,
overrides the size in MB, which lets tests rotate small files) and watches the
exit-notify pipes, so a task costs no thread of its own. Before a task's exit is
published its pipes are drained, so when `wait` returns the logs hold everything the
process wrote. The spawner keeps a read end of each pipe, so while no agent is alive a
writing task is never killed by SIGPIPE: once the pipe buffer (64 KiB) is full it
blocks until an agent attaches again (the spawner sends it new read ends) and drains
it, and nothing it wrote is lost.

`close()` stops the pump and closes the driver's spawner connections, leaving running
tasks running (an agent shutdown); a spawner with no task and no agent exits.

Threads: callers' threads (start, wait, stop, …) and the pump thread ``raw_exec-io``;
exits are published by a stopping thread or by the pump. Locks: ``Driver._lock``
guards the task table (`_TaskTable`), each task's result and notice-waiter flag, the
count of threads waiting on notices and the map of spawner clients; the pump's own
``LogPump._lock`` guards what it watches; the two are never nested. Spawner requests
hold no lock. The once-per-driver cgroup warning is an `_sync.Event` (whoever sets it
logs).
Owner: built by `default_drivers()` (or a test) and shared by every TaskRunner of a
node; whoever built it calls `close()`.

The module is one concern, the driver's side of a raw_exec task's life (start, attach,
wait, signal, stop with its exit notice, recover), which is why it runs past 600 lines;
its config parsing lives in `_raw_exec_config`, the process plumbing in `_process` and
the spawner in `spawner`.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import math
import os
import select
import signal as _signal
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from allocrunner._locking import calls_out, guarded, immutable, make_lock
from allocrunner._sync import CancelToken, Event, Waiter
from allocrunner.drivers._cgroups import CGROUP_ROOT, CgroupPlan, host_mode, plan_cgroup
from allocrunner.drivers._common import DEFAULT_KILL_SIGNAL, _TaskTable, signal_number
from allocrunner.drivers._logpump import LogPump, RotatingLogSink, Watch
from allocrunner.drivers._process import (
    STATUS_FILE,
    STREAMS,
    agent_user,
    check_task_dirs,
    close_fds,
    ensure_log_files,
    exit_result_from_status,
    group_usage,
    make_notice_channel,
    make_task_pipes,
    open_output_pipes,
    pidfd_open,
    read_pid_stat,
    read_status,
    remove_status,
    resolve_command,
    task_env,
)
from allocrunner.drivers._raw_exec_config import (
    OOM_SCORE_ADJ_MAX,
    RawExecSpec,
    parse_raw_exec_config,
)
from allocrunner.drivers._task_process import _TaskProcess, task_process_from_handle
from allocrunner.drivers.base import (
    ExitResult,
    TaskConfig,
    TaskHandle,
    TaskStatus,
)
from allocrunner.drivers.spawner_client import (
    Reply,
    SpawnerClient,
    default_state_dir,
    ensure_state_dir,
)
from allocrunner.errors import DriverError
from allocrunner.structs.frozen import FrozenDict

__all__ = [
    "KILL_GRACE",
    "NAME",
    "OOM_SCORE_ADJ_MAX",
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

_log = logging.getLogger("allocrunner.drivers.raw_exec")

KILL_GRACE = 10.0
"""Seconds a stop waits for the group to vanish after SIGKILL before giving up."""
START_SETTLE = 30.0
"""Seconds a new spawner may take to listen before `start()` fails."""
POLL_INTERVAL = 0.05
"""Seconds between liveness checks of a task watched without a pidfd."""
NOTICE_WAITERS = 2
"""How many stopping threads may wait on their tasks' exit notices themselves at once;
the stops beyond it wait for the pump, which reports many exits per wake-up (a hundred
tasks stopped together are reaped sooner so than by a hundred threads taking turns)."""


class RawExecDriver:
    """Thread-safe. The `raw_exec` driver (see the module docstring).

    `state_dir` is the spawner's dir (default: a per-user dir in the temp dir).
    `cgroup_root` is where the cgroup hierarchy is mounted (default /sys/fs/cgroup; its
    mode is read once, here). Call `close()` when done: it joins the pump thread;
    running tasks keep running and can be recovered by another instance.
    """

    name = NAME

    _lock = immutable()
    _tasks = immutable()
    _closing = immutable()
    _pump = immutable()
    _exit_watch = immutable()
    _state_dir = immutable()
    _cgroup_root = immutable()
    _cgroup_mode = immutable()
    _warned_no_cgroup = immutable()
    _closed_r = immutable()
    _closed_w = immutable()
    # _lock guards: _clients, _notice_waiters
    _clients = guarded("_lock")
    _notice_waiters = guarded("_lock")

    def __init__(
        self,
        *,
        exit_watch: str = "pidfd",
        state_dir: str | None = None,
        cgroup_root: str = CGROUP_ROOT,
    ) -> None:
        if exit_watch not in ("pidfd", "poll"):
            raise ValueError(f"exit_watch must be 'pidfd' or 'poll', not {exit_watch!r}")
        self._lock = make_lock("Driver._lock")
        self._tasks: _TaskTable[_TaskProcess] = _TaskTable(NAME, self._lock)
        self._closing = CancelToken()
        self._pump = LogPump("raw_exec-io", poll_interval=POLL_INTERVAL)
        self._exit_watch = exit_watch
        self._state_dir = os.path.abspath(state_dir or default_state_dir())
        self._clients: FrozenDict[str, SpawnerClient] = FrozenDict()
        self._notice_waiters = 0  # threads in `_await_notice` now
        self._cgroup_root = os.path.abspath(cgroup_root)
        self._cgroup_mode = host_mode(self._cgroup_root)
        self._warned_no_cgroup = Event()
        # Readable once the driver is closed: wakes threads polling a task's notice.
        self._closed_r, self._closed_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        weakref.finalize(self, close_fds, self._closed_r, self._closed_w)

    @property
    def state_dir(self) -> str:
        """The dir of the spawner that starts this driver's tasks."""
        return self._state_dir

    def starts_at_once(self, driver_config: Mapping[str, Any]) -> bool:
        """True: a start waits only for the command to be exec'd (or to fail to be),
        so it may be made on a thread that starts others too."""
        return True

    # --- protocol -----------------------------------------------------------------

    def validate_config(self, config: TaskConfig) -> None:
        """Raise DriverError naming the bad key if the raw_exec config is invalid."""
        parse_raw_exec_config(config.driver_config)

    @calls_out
    def start(self, config: TaskConfig) -> TaskHandle:
        """Start the process; return once its command has been exec'd, so that a
        signal sent from now on reaches it (DriverError if it cannot start)."""
        spec = parse_raw_exec_config(config.driver_config)
        task_dir = check_task_dirs(config)
        env = task_env(config)
        command = resolve_command(spec.command, task_dir, env)
        with self._lock:
            self._tasks.check_addable_locked(config.id)
        status_path = os.path.join(task_dir, STATUS_FILE)
        client = self._client(self._state_dir, create=True)
        plan, warning = self._cgroup_plan(config, spec)
        options: dict[str, Any] = {
            "oom_score_adj": 0 if spec.oom_score_adj is None else spec.oom_score_adj,
            "oom_score_adj_required": spec.oom_score_adj is not None,
            "cgroup": None if plan is None else plan.to_json(),
        }
        if config.user and config.user != agent_user():
            options["user"] = config.user
        if config.logs_disabled:
            options["output"] = "null"
        pipes = () if config.logs_disabled else make_task_pipes()
        try:
            notice, notice_peer = make_notice_channel()
        except BaseException:
            close_fds(*pipes)
            raise
        # To the spawner: the pipes' both ends (their write ends become the task's
        # stdout and stderr; it keeps read ends), then the notice channel's far end.
        sent = (*pipes, notice_peer.fileno())
        own = pipes[0::2]  # the read ends, pumped here
        try:
            reply = client.start(
                command=command,
                argv=[command, *spec.args],
                env=env,
                cwd=task_dir,
                status_path=status_path,
                fds=sent,
                options=options,
                meanwhile=(
                    _nothing
                    if config.logs_disabled
                    else functools.partial(ensure_log_files, config)
                ),
            )
        except BaseException:
            close_fds(*pipes)
            notice.close()
            raise
        finally:
            notice_peer.close()
        close_fds(*pipes[1::2])
        _warn_about_start(config, [warning, *reply.fields.get("warnings", ())])
        adopted = bool(reply.fields.get("adopted"))
        outputs = self._outputs_of(reply, own, adopted)
        pid = int(reply.fields["pid"])
        low, high = (int(t) for t in reply.fields["ticks"])
        proc = _TaskProcess(
            self._lock,
            config,
            pid=pid,
            pgid=pid,
            start_ticks=(low, high),
            status_path=status_path,
            started_at=time.time(),
            is_child=False,
            spawner_dir=client.directory,
            notice=notice,
        )
        try:
            self._hand_over(proc, notice.fileno(), outputs, notified=True)
        except BaseException:
            close_fds(*(fd for _, fd in outputs))
            notice.close()
            if not adopted:
                proc.signal_group(_signal.SIGKILL)
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
        outcome = self._await_exit(proc, sig, max(0.0, timeout))
        if outcome is _Outcome.RUNNING:
            with self._lock:
                if proc.result_locked() is None:
                    proc.mark_sigkilled_locked()
            outcome = self._await_exit(proc, _signal.SIGKILL, KILL_GRACE)
            if outcome is _Outcome.RUNNING:
                raise DriverError(
                    f"{NAME}: task {task_id!r} (pid {proc.pid}) did not exit "
                    f"{KILL_GRACE}s after SIGKILL"
                )
        # Whatever of the group outlived the task (e.g. background jobs, which a
        # non-interactive shell starts with SIGINT ignored) is killed too, unless the
        # stopping thread did so already, as soon as the task had exited.
        if outcome is _Outcome.EXITED:
            proc.signal_group(_signal.SIGKILL)

    @calls_out
    def stop_many(self, task_ids: Iterable[str], timeout: float, signal: str = "") -> None:
        """Stop several tasks together, as `stop` stops one: signal every group first
        (default SIGINT), then wait up to `timeout` seconds while the pump reports the
        exits as they come (killing what is left of each group as its task's exit is
        seen), SIGKILL the groups still running, and return once every task has
        exited. One thread for all of them: no thread per task, and the signals go out
        back to back instead of as each stopper gets the GIL. An unknown task id raises
        `DriverError` before anything is signalled; tasks that have exited already are
        left alone."""
        sig = signal_number(signal or DEFAULT_KILL_SIGNAL)
        with self._lock:
            procs = [self._tasks.get_locked(task_id) for task_id in dict.fromkeys(task_ids)]
            live = [proc for proc in procs if proc.result_locked() is None]
        deadline = time.monotonic() + max(0.0, timeout)
        for proc in live:
            proc.signal_group(sig)
        running = self._await_all(live, deadline)
        if running:
            with self._lock:
                for proc in running:
                    if proc.result_locked() is None:
                        proc.mark_sigkilled_locked()
            for proc in running:
                proc.signal_group(_signal.SIGKILL)
            unkilled = self._await_all(running, time.monotonic() + KILL_GRACE)
            if unkilled:
                listed = ", ".join(f"{proc.config.id!r} (pid {proc.pid})" for proc in unkilled)
                raise DriverError(
                    f"{NAME}: tasks {listed} did not exit {KILL_GRACE}s after SIGKILL"
                )

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
        if proc.spawner_dir is not None and self._attach(proc):
            return
        if proc.wrapper_alive() and self._reattach(proc):
            return
        exited = proc.exited_result()
        self._register_recovered(
            task_process_from_handle(self._lock, handle, watched=False), exited
        )

    # --- lifecycle -----------------------------------------------------------------

    @calls_out
    def close(self) -> None:
        """Stop the pump thread and close the spawner connections (running tasks keep
        running). Idempotent."""
        with self._lock:
            self._tasks.close_locked()
            self._closing.cancel(f"{NAME} closed")
            clients = self._clients
        with contextlib.suppress(BlockingIOError):  # written by an earlier close
            os.write(self._closed_w, b"\0")
        self._pump.close()
        for client in clients.values():
            client.close()

    def __enter__(self) -> RawExecDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------

    def _client(self, directory: str, *, create: bool) -> SpawnerClient:
        """The client of the spawner of `directory` (made private first if `create`)."""
        with self._lock:
            if self._tasks.closed_locked():
                raise DriverError(f"{NAME} is closed")
            client = self._clients.get(directory)
        if client is not None:
            return client
        if create:
            ensure_state_dir(directory)
        fresh = SpawnerClient(directory)
        with self._lock:
            closed = self._tasks.closed_locked()
            client = self._clients.get(directory)
            if client is None and not closed:
                self._clients = self._clients.set(directory, fresh)
                client = fresh
        if client is None:
            raise DriverError(f"{NAME} is closed")
        return client

    def _cgroup_plan(self, config: TaskConfig, spec: RawExecSpec) -> tuple[CgroupPlan | None, str]:
        """The task's cgroup plan and the warning to give for this start: one about an
        override that cannot be applied, or, once per driver, that tasks get no cgroup
        of their own on this host."""
        plan, warning = plan_cgroup(
            root=self._cgroup_root,
            mode=self._cgroup_mode,
            alloc_id=config.alloc_id,
            task_name=config.name,
            resources=config.resources,
            v1_override=spec.cgroup_v1_override,
            v2_override=spec.cgroup_v2_override,
        )
        overridden = bool(spec.cgroup_v1_override or spec.cgroup_v2_override)
        if warning and not overridden and not self._warned_no_cgroup.set():
            warning = ""
        return plan, warning

    @staticmethod
    def _outputs_of(
        reply: Reply, own: tuple[int, ...], adopted: bool
    ) -> tuple[tuple[str, int], ...]:
        """The read ends to pump: ours, or for an adopted task the spawner's copies."""
        if not adopted:
            close_fds(*reply.fds)
            return tuple(zip(STREAMS, own, strict=False))
        close_fds(*own)
        return tuple(zip(STREAMS, reply.fds, strict=False))

    def _hand_over(
        self,
        proc: _TaskProcess,
        exit_fd: int | None,
        outputs: tuple[tuple[str, int], ...],
        exited: ExitResult | None = None,
        *,
        notified: bool = False,
    ) -> None:
        """Register the task and give its descriptors to the pump. DriverError (the
        descriptors still the caller's) if the driver is closed or the task already
        runs. A task handed over `exited` has nothing to watch. `exit_fd` turns
        readable once the task has exited: its exit-notify pipe (`notified`: the
        spawner writes the wait status on it) or a pidfd; without one the task is
        polled.

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
        on_exit = proc.on_exit if proc.spawner_dir is None else self._notice_handler(proc)
        watch = Watch(
            owner=proc,
            pipes=tuple((fd, RotatingLogSink(proc.config, stream)) for stream, fd in outputs),
            on_exit=on_exit,
            pidfd=exit_fd,
            poll_exit=proc.poll_exit if exit_fd is None else None,
            status_pipe=notified,
            read_exit=proc.read_notice if proc.notice is not None else None,
        )
        if not self._pump.add(watch):
            with self._lock:
                self._tasks.remove_locked(task_id, proc)
            raise DriverError(f"{NAME} is closed")

    def _notice_handler(self, proc: _TaskProcess) -> Callable[[int | None], None]:
        def on_notice(wait_status: int | None) -> None:
            self._exit_noticed(proc, wait_status)

        return on_notice

    def _exit_noticed(self, proc: _TaskProcess, wait_status: int | None) -> None:
        """On the pump thread: the task's exit-notify channel became readable. Without a
        wait status or a recorded one the spawner died: a task still running is then
        watched on its own."""
        orphaned = (
            wait_status is None
            and read_status(proc.status_path, proc.pid) is None
            and proc.wrapper_alive()
        )
        if orphaned and self._watch_orphan(proc):
            return
        proc.on_exit(wait_status)

    def _exit_pidfd(self, pid: int) -> int | None:
        """A pidfd for `pid` when exits are watched by pidfd, None when they are polled;
        ProcessLookupError once the process is gone."""
        return pidfd_open(pid) if self._exit_watch == "pidfd" else None

    def _watch_orphan(self, proc: _TaskProcess) -> bool:
        """Watch a task whose spawner died by pidfd (or polling); False if it turned out
        to have exited meanwhile."""
        try:
            pidfd = self._exit_pidfd(proc.pid)
        except ProcessLookupError:
            return False
        if not proc.wrapper_alive():
            close_fds(pidfd)
            return False
        watch = Watch(
            owner=proc,
            pipes=(),
            on_exit=proc.on_exit,
            pidfd=pidfd,
            poll_exit=proc.poll_exit if pidfd is None else None,
        )
        if not self._pump.add(watch):
            close_fds(pidfd)  # closing: waiters are released by the driver's close
        return True

    def _attach(self, proc: _TaskProcess) -> bool:
        """Ask the task's spawner to attach this driver to it; False if the spawner does
        not run it (it exited, or its spawner is gone)."""
        assert proc.spawner_dir is not None
        note_r, note_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(note_r, False)
        try:
            reply = self._client(proc.spawner_dir, create=False).attach(
                proc.pid, proc.start_ticks, note_w
            )
        except DriverError:
            reply = None
        except BaseException:
            close_fds(note_r)
            raise
        finally:
            close_fds(note_w)
        if reply is None or reply.fields.get("state") != "running":
            close_fds(note_r, *(reply.fds if reply is not None else ()))
            return False
        outputs = tuple(zip(STREAMS, reply.fds, strict=False))
        self._register_recovered(proc, None, note_r, outputs, notified=True)
        return True

    def _reattach(self, proc: _TaskProcess) -> bool:
        """Watch a live recovered process the spawner does not know (a wrapper, or a
        task whose spawner died) again; False if it turned out to have exited (or its
        pid to be reused) meanwhile."""
        try:
            pidfd = self._exit_pidfd(proc.pid)
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
        exit_fd: int | None = None,
        outputs: tuple[tuple[str, int], ...] = (),
        *,
        notified: bool = False,
    ) -> None:
        """Hand over a recovered task; a concurrent recover() of the same task having
        registered it first is not an error."""
        try:
            self._hand_over(proc, exit_fd, outputs, exited, notified=notified)
        except DriverError:
            close_fds(exit_fd, *(fd for _, fd in outputs))
            with self._lock:
                recovered_meanwhile = self._tasks.contains_locked(proc.config.id)
            if not recovered_meanwhile:
                raise

    @calls_out
    def _await_exit(self, proc: _TaskProcess, sig: int, timeout: float) -> _Outcome:
        """Send `sig` to the task's group and wait up to `timeout` for the task's exit:
        `_Outcome.RUNNING` if it has not exited by then, else whether its group has been
        killed (`_Outcome.GROUP_KILLED`) or not yet (`_Outcome.EXITED`); raises if closed."""
        deadline = time.monotonic() + timeout
        proc.signal_group(sig)
        if proc.notice is not None:
            outcome = self._await_notice(proc, deadline)
            if outcome is not _Outcome.RUNNING:
                return outcome
        joined = CancelToken.any_of(proc.done, self._closing)
        try:
            joined.wait(max(0.0, deadline - time.monotonic()))
        finally:
            joined.cancel("done")
        if proc.done.cancelled():
            return _Outcome.EXITED
        if self._closing.cancelled():
            raise DriverError(f"{NAME} closed while stopping task {proc.config.id!r}")
        return _Outcome.RUNNING

    @calls_out
    def _await_all(self, procs: list[_TaskProcess], deadline: float) -> list[_TaskProcess]:
        """Wait until every one of `procs` has exited or `deadline` passes; those still
        running then. What is left of each group is killed as soon as its task's exit
        is seen, as `stop` does, while the id is surely still the group's (waiting for
        the others first would leave the reaped task's pid free for reuse meanwhile).
        Raises `DriverError` if the driver closes meanwhile."""
        waiter = Waiter()
        withdraws = [proc.done.on_cancel(waiter.wake) for proc in procs]
        withdraws.append(self._closing.on_cancel(waiter.wake))
        try:
            pending = procs
            while True:
                pending = _kill_exited_groups(pending)
                if not pending:
                    return []
                if self._closing.cancelled():
                    raise DriverError(f"{NAME} closed while stopping task {pending[0].config.id!r}")
                left = deadline - time.monotonic()
                if left <= 0 or not waiter.wait(left):
                    return _kill_exited_groups(pending)
        finally:
            for withdraw in withdraws:
                withdraw()

    @calls_out
    def _await_notice(self, proc: _TaskProcess, deadline: float) -> _Outcome:
        """Wait until `deadline` on the notice channel of a task just signalled and take
        its exit from the pump, which meanwhile does not wake for the task
        (`LogPump.hold`, done right after the signal, off the stop's path: the task's
        exit, its output pipes' end of file included, comes well after, and finds it
        held): one wake-up on the notice, not the pump's and then this thread's. The
        outcome once this thread published the exit (`_take_notice`). `_Outcome.RUNNING` (the
        caller then waits for the pump's report) if another thread waits on the
        channel, or `NOTICE_WAITERS` threads wait on theirs, the pump reads the task's
        output right now, the driver closed, the time ran out, the spawner died, or
        output is left to copy (the pump reports the exit once the logs hold
        everything)."""
        assert proc.notice is not None
        with self._lock:
            entered = self._notice_waiters < NOTICE_WAITERS and proc.enter_notice_locked()
            if entered:
                self._notice_waiters += 1
        if not entered:
            return _Outcome.RUNNING
        notice_fd = proc.notice.fileno()
        held = False
        outcome = _Outcome.RUNNING
        try:
            held = self._pump.hold(proc, notice_fd)
            if held:
                outcome = self._take_notice(proc, notice_fd, deadline)
        finally:
            with self._lock:
                proc.leave_notice_locked()
                self._notice_waiters -= 1
            if held and outcome is _Outcome.RUNNING:
                self._pump.release(proc, notice_fd)
        return outcome

    def _take_notice(self, proc: _TaskProcess, notice_fd: int, deadline: float) -> _Outcome:
        """Take the notice, polling for it until `deadline` unless it is there already;
        the outcome once this thread published the exit. A notice that is there
        already is taken at once, with no pidfd and no poll: on busy CPUs the
        signalled task, and then its spawner, may run before this thread gets past
        the signal, so that the task is reaped and recorded by the time it looks (the
        caller then kills what is left of the group, as after any notice)."""
        outcome = _Outcome.EXITED
        wait_status = proc.read_notice()
        if wait_status is None:
            outcome = self._poll_notice(proc, notice_fd, deadline)
            if outcome is _Outcome.RUNNING:
                return outcome
            wait_status = proc.read_notice()
            if wait_status is None:  # the spawner died: the pump sees to the task
                return _Outcome.RUNNING  # (`_exit_noticed`)
        if outcome is _Outcome.EXITED and not self._pump.take_exit(proc):
            return _Outcome.RUNNING
        proc.on_exit(wait_status)
        return outcome

    def _poll_notice(self, proc: _TaskProcess, notice_fd: int, deadline: float) -> _Outcome:
        """Poll until the notice channel turns readable: `_Outcome.RUNNING` if
        `deadline` passed, the driver closed or the pump keeps the task's output,
        else whether the group was killed meanwhile. The task's own pidfd is polled
        too: it turns readable when the task exits, while the spawner has yet to reap
        it and write the notice, and what does not need the wait status is done in
        that gap rather than after the notice: the output pipes are taken from the
        pump (each must be at end of file) and the rest of the group is killed."""
        poller = select.poll()
        poller.register(notice_fd, select.POLLIN)
        poller.register(self._closed_r, select.POLLIN)
        pidfd = self._task_pidfd(proc)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        outcome = _Outcome.EXITED
        try:
            while True:
                ready = dict(poller.poll(_poll_ms(deadline)))
                if not ready or self._closing.cancelled():
                    return _Outcome.RUNNING
                if notice_fd in ready or pidfd not in ready:
                    return outcome
                # Only the pidfd: the task has exited (a zombie until its spawner
                # reaps it), so its group id is still its own.
                poller.unregister(pidfd)
                close_fds(pidfd)
                pidfd = None
                if not self._pump.take_exit(proc):
                    return _Outcome.RUNNING
                proc.signal_group(_signal.SIGKILL)
                outcome = _Outcome.GROUP_KILLED
        finally:
            close_fds(pidfd)

    def _task_pidfd(self, proc: _TaskProcess) -> int | None:
        """A pidfd of the task to poll for its exit, or None (no pidfds here, or the
        task is gone already: its notice follows)."""
        try:
            return self._exit_pidfd(proc.pid)
        except OSError:
            return None


def _kill_exited_groups(procs: list[_TaskProcess]) -> list[_TaskProcess]:
    """SIGKILL what is left of the group of each of `procs` whose exit is published
    (whatever of it outlived the task); the others, still running."""
    running = []
    for proc in procs:
        if proc.done.cancelled():
            proc.signal_group(_signal.SIGKILL)
        else:
            running.append(proc)
    return running


class _Outcome(enum.Enum):
    """How far a stop's wait got."""

    RUNNING = "the task has not exited (yet)"
    EXITED = "the task has exited and its exit is published; the rest of its group lives on"
    GROUP_KILLED = "the task has exited, its exit is published and the rest of its group killed"


def _poll_ms(deadline: float) -> int:
    """Milliseconds to `deadline` as `poll` takes them (rounded up, capped)."""
    return math.ceil(min(max(0.0, deadline - time.monotonic()) * 1000, _POLL_MS_MAX))


_POLL_MS_MAX = 2**31 - 1
"""The longest timeout `poll` takes, in milliseconds."""


def _nothing() -> None:
    return None


def _warn_about_start(config: TaskConfig, warnings: list[str]) -> None:
    """Log what of a task's config this start could not apply, as one line."""
    found = [w for w in warnings if w]
    if found:
        _log.warning(
            "%s: task %r of alloc %s: %s", NAME, config.name, config.alloc_id, "; ".join(found)
        )
