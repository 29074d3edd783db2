"""The raw_exec spawner: one long-lived process per state dir that starts raw_exec tasks,
reaps them and records each exit status in the task's status file, so an exit code
survives agent restarts without a wrapper process per task.

Run as ``python -m allocrunner.drivers.spawner <dir>`` or, faster to boot because it
imports nothing but the standard library, ``python -I -S <this file> <dir>``; run
isolated, it cannot import a sibling module, which is why everything the spawner process
does (serving, spawning, reaping, the oom_score_adj and cgroup of a spawn) is in this
one file: a single concern, the spawner process, longer than most modules for that
reason. The launcher takes ``<dir>/spawner.3.lock`` (3 is `PROTOCOL`; an flock held
for the spawner's whole life; the file holds its pid), binds ``<dir>/spawner.3.sock``
(SOCK_SEQPACKET; only peers of its own uid are served), forks the daemon (new session,
stdin/stdout on /dev/null, stderr appended to ``<dir>/spawner.log``) and exits 0 once
the socket accepts connections.

Requests and replies are one JSON message each, descriptors passed with SCM_RIGHTS:

- ``start`` (path, argv, env, cwd, status_path; fds: stdout read/write ends, stderr
  read/write ends, the far end of an exit-notify channel (a pipe, or a stream socket,
  which lets the agent read the notice without consuming it); with ``output: "null"`` only
  the last, and the task's stdout and stderr are /dev/null; optional
  ``oom_score_adj`` with ``oom_score_adj_required``, and ``cgroup``, the plan of
  `allocrunner.drivers._cgroups.CgroupPlan`; optional ``user``: the task runs as
  that user, with its group and supplementary groups, as Nomad's executor sets them).
  The task is spawned with ``posix_spawn`` (with a ``user``, which posix_spawn cannot
  set, by fork and exec: the spawner is single-threaded, and a pipe closed by the exec
  reports its success or its errno): its own process group, every catchable signal at its default
  action, an empty signal mask, stdin on /dev/null and no other descriptor (every
  descriptor of the spawner is close-on-exec). ``posix_spawn`` returns after the exec
  (glibc's vfork reports exec failures), so the reply (pid, the range of clock ticks
  since boot its start time lies in, and the monotonic time of the exec for
  benchmarks) means the command runs. A live task with
  the same status path is adopted instead: an agent that died during a start never
  gets its task started twice. What could not be applied is in the reply's
  ``warnings``.

Around each spawn the spawner itself takes what the task must start with, as Nomad's
executor does, and gives it up right after: it makes the task's cgroup (and its
``memory.max``) and moves into it (or into the override's cgroups, one per v1
controller), sets its oom_score_adj to the task's, spawns (the child inherits both),
then restores its own oom_score_adj and moves back into the cgroups it came from. Being
single-threaded, nothing else runs meanwhile. If a cgroup step fails, every join is
undone and a cgroup it made removed before the spawn, which then happens in no cgroup of
the task's own (a warning); an oom_score_adj the kernel refuses fails the start if the
task configured it, else it is a warning. A cgroup made for a task is removed once the
task is reaped; while members of it live on (leftovers of the task's group, killed with
``cgroup.kill`` where the kernel has it) its removal is retried at every loop turn, and
given up (logged) when the spawner retires.
- ``attach`` (pid, start-ticks range; fd: an exit-notify channel): ``running`` with new
  read ends of the task's output pipes, or ``unknown`` (not a live task of this
  spawner: its exit, if recorded, is in its status file).
- ``ping``: the spawner's pid.

The spawner keeps each task's output read ends, so a task never gets SIGPIPE while no
agent reads. When a task's pidfd turns readable (or, without pidfds, on SIGCHLD through
a wakeup fd; never by timed polling; readable pidfds are served before the other
ready descriptors of a loop turn) it reaps the exited child,
records ``"<status> <pid>\\n"`` (status = exit code, or 128 + signal) in the task's
status file, and only then writes the wait status (in decimal) to each exit-notify
channel of the task (a pipe or a stream socket); everything else (closing the task's
descriptors, removing its cgroup) comes after, off the agent's stop path. A channel
whose notice was written is kept open until its reader closes it (the epoll reports
EPOLLERR then), so a reader sees the notice and never an end of file, which only a
dead spawner gives it. The status file is created right after the start's reply,
holding a lone newline (which no reader takes for a status), and kept open, so the exit
costs one write of the whole line over it (a reader takes only a complete line naming
the pid: it sees all of it or nothing, as with a renamed file, without the file
creation, about as slow as a whole Popen kill + wait, on the stop path). The newline
gives the file its data block before the exit: writing into a file that has none
allocates it, which on ext4 costs 4 to 8 µs more, on the stop path.

It exits once it has no task and no connected agent and no agent is connecting
(``start.3.lock``, which agents hold while they connect or launch).

Crash cases: a spawner killed inside a spawn's bracket takes its temporary cgroup
membership and oom_score_adj with it; a cgroup it made stays, empty, and is reused by the
next start of the same task. A spawner killed while tasks run leaves them in their
cgroups; those cgroups are not removed by anyone (empty cgroups cost nothing; an
operator may rmdir them). An agent killed at any point changes nothing here.

Threads: one (an epoll loop). Locks: none in-process; the two flocks above order it
against other processes. Owner: launched by `allocrunner.drivers.spawner_client` on
first use; nothing in the agent process imports it except to find its path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

PROTOCOL = 3
"""The request protocol's version; it names the socket and the lock, so a spawner left
running by an older agent keeps its own tasks and never gets requests it cannot read."""
SOCKET_NAME = f"spawner.{PROTOCOL}.sock"
LOCK_NAME = f"spawner.{PROTOCOL}.lock"
START_LOCK_NAME = f"start.{PROTOCOL}.lock"
LOG_NAME = "spawner.log"
MAX_MESSAGE = 1 << 20
"""The largest request (environment included), in bytes."""
MAX_FDS = 8
IDLE_CHECK = 1.0
"""Seconds between idle checks while an agent holds the start lock."""

NO_STATUS = b"\n"
"""What a running task's status file holds: a line naming no pid, which readers skip,
and shorter than any status line, which overwrites it whole."""

_DEFAULT_SIGNALS = tuple(
    sorted(int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
)
_CREDS = struct.Struct("3i")


def socket_path(directory: str) -> str:
    """The spawner socket of `directory` (see `short_path` to bind or connect it)."""
    return os.path.join(directory, SOCKET_NAME)


def short_path(path: str) -> tuple[str, int | None]:
    """A name for `path` short enough for a socket address, and a descriptor of its
    directory to close afterwards (None if `path` itself is short enough)."""
    if len(os.fsencode(path)) < 100:
        return path, None
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dir_fd}/{os.path.basename(path)}", dir_fd


_NS_PER_TICK = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def boot_ticks() -> int:
    """Clock ticks since boot, the clock of the start times in /proc/<pid>/stat."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // _NS_PER_TICK


def record_status(status_fd: int | None, path: str, status: int, pid: int) -> None:
    """Record `status` of task `pid`: one write of the whole line over the lone newline
    the task's start left in its status file (`status_fd`; the line is longer, so
    nothing of the newline stays), or, without it, a new file renamed over `path`.
    Readers take only a complete line naming the pid, so either way they see all of it
    or none."""
    if status_fd is not None:
        os.pwrite(status_fd, b"%d %d\n" % (status, pid), 0)
        return
    write_status(path, status, pid)


def write_status(path: str, status: int, pid: int) -> None:
    """Record `status` of task `pid` at `path` atomically (temporary file, rename)."""
    tmp = f"{path}.{pid}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{status} {pid}\n".encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def status_of(wait_status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class _StartRefused(Exception):
    """A start the spawner must refuse (its message is the reply's error)."""


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


_OOM_SCORE_ADJ = "/proc/self/oom_score_adj"


@contextlib.contextmanager
def _oom_score_adj(target: int | None, required: bool, warnings: list[str]) -> Iterator[None]:
    """While the body spawns, this process has oom_score_adj `target` (None: leave it), so
    the child inherits it; then its own value again. A value that cannot be set refuses
    the start if `required`, else adds a warning."""
    own = None
    if target is not None:
        with open(_OOM_SCORE_ADJ, "rb") as fh:
            own = int(fh.read())
    problem = ""
    if own is not None and own != target:
        try:
            _write(_OOM_SCORE_ADJ, str(target))
        except OSError as err:
            problem = f"oom_score_adj {target} cannot be set: {os.strerror(err.errno or 0)}"
            own = None
    if problem and required:
        raise _StartRefused(problem)
    if problem:
        warnings.append(f"{problem} (the task keeps the agent's value)")
    try:
        yield
    finally:
        if own is not None and own != target:
            try:
                _write(_OOM_SCORE_ADJ, str(own))
            except OSError as err:
                print(f"spawner: cannot restore oom_score_adj {own}: {err}", file=sys.stderr)


@contextlib.contextmanager
def _in_cgroup(plan: dict[str, Any] | None, warnings: list[str]) -> Iterator[str]:
    """While the body spawns, this process is in the cgroups of `plan` (made first if it
    says so), so the child starts in them; then it is back in its own. Yields the cgroup
    made for the task ("" for none). If any step fails, nothing of the plan is kept (the
    made cgroup is removed, every join undone) and the body runs in no cgroup of its
    own, with a warning."""
    created, returns = "", []
    if plan:
        try:
            created = _make_cgroup(plan, warnings)
            returns = _join(plan["joins"])
        except OSError as err:
            if created:
                remove_cgroup(created)
            created = ""
            warnings.append(f"the task runs in no cgroup of its own: {err}")
    spawned = False
    try:
        yield created
        spawned = True
    finally:
        _leave(returns)
        if created and not spawned:
            remove_cgroup(created)


def _make_cgroup(plan: dict[str, Any], warnings: list[str]) -> str:
    """Make the plan's cgroup (and its parent), with its memory limit; its path ("" if
    the plan makes none). A cgroup left by a killed spawner is reused."""
    path: str = plan.get("create") or ""
    if not path:
        return ""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        with contextlib.suppress(FileExistsError):
            os.mkdir(parent)
        with contextlib.suppress(OSError):
            _write(os.path.join(parent, "cgroup.subtree_control"), "+memory")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    limit: str = plan.get("memory_max") or ""
    if not limit:
        return path
    memory_max = os.path.join(path, "memory.max")
    if not os.path.exists(memory_max):
        warnings.append(f"memory limit not applied: no memory controller in {parent}")
        return path
    try:
        _write(memory_max, limit)
    except OSError:
        remove_cgroup(path)
        raise
    return path


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per controller ("" for the unified hierarchy)."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                for key in parts[1].split(","):
                    own[key] = parts[2]
    return own


def _join(joins: list[list[str]]) -> list[str]:
    """Move this process into each target cgroup; the cgroups to return to. On a failure
    every join done is undone and the OSError raised."""
    own = _own_cgroups()
    returns: list[str] = []
    try:
        for mount, key, target in joins:
            if key not in own:
                raise OSError(errno.ENOENT, f"no {key or 'unified'} cgroup of the spawner")
            back = os.path.join(mount, own[key].lstrip("/"))
            _write(os.path.join(target, "cgroup.procs"), str(os.getpid()))
            returns.append(back)
    except OSError:
        _leave(returns)
        raise
    return returns


def _leave(returns: list[str]) -> None:
    for back in reversed(returns):
        try:
            _write(os.path.join(back, "cgroup.procs"), str(os.getpid()))
        except OSError as err:
            print(f"spawner: cannot return to cgroup {back}: {err}", file=sys.stderr)


def remove_cgroup(path: str, *, kill: bool = False) -> bool:
    """Remove a cgroup made for a task; False while it still has members (with `kill`,
    they are killed first where the kernel offers ``cgroup.kill``)."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as err:
        if err.errno != errno.EBUSY:
            print(f"spawner: cannot remove cgroup {path}: {err}", file=sys.stderr)
            return True
        if kill:
            with contextlib.suppress(OSError):
                _write(os.path.join(path, "cgroup.kill"), "1")
        return False
    return True


class _Task:
    """One running task: its identity and the descriptors the spawner keeps for it."""

    def __init__(
        self,
        pid: int,
        ticks: tuple[int, int],
        status_path: str,
        outputs: list[int],
        cgroup: str = "",
    ) -> None:
        self.pid = pid
        self.ticks = ticks
        self.status_path = status_path
        self.outputs = outputs
        self.cgroup = cgroup  # the cgroup made for the task, removed once it is reaped
        self.notifies: list[int] = []
        self.notified: list[int] = []  # the notifies its exit notice was written to
        self.status_file: list[int] = []  # the open status file, once created

    def open_status(self) -> None:
        """Create (or empty) the status file, write the newline that stands for "no
        status yet" into it and keep it open for the exit's write."""
        try:
            fd = os.open(
                self.status_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644
            )
        except OSError as err:
            print(f"spawner: cannot create {self.status_path}: {err}", file=sys.stderr)
            return
        self.status_file.append(fd)
        try:
            os.pwrite(fd, NO_STATUS, 0)
        except OSError as err:  # the exit's write still works, only slower
            print(f"spawner: cannot write {self.status_path}: {err}", file=sys.stderr)


def _credentials(user: str) -> tuple[int, int, list[int]]:
    """The uid, gid and supplementary groups of `user` (a name, or a numeric uid);
    OSError naming it when there is no such user."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise OSError(errno.EINVAL, f"no such user {user!r}") from None
        try:
            entry = pwd.getpwuid(int(user))
        except KeyError:
            return int(user), int(user), []
    return entry.pw_uid, entry.pw_gid, os.getgrouplist(entry.pw_name, entry.pw_gid)


def _fork_exec(
    path: str,
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    stdio: tuple[int, int, int],
    creds: tuple[int, int, list[int]],
) -> int:
    """Start the command as another user, set up as `posix_spawn` sets up the others
    (own process group, default signals, empty mask, stdin/out/err); the pid once it
    has exec'd, OSError with the child's errno if it could not."""
    report_r, report_w = os.pipe()  # both close-on-exec
    pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup, only syscalls, then exec or _exit
        try:
            os.setpgid(0, 0)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            for number in _DEFAULT_SIGNALS:
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(number, signal.SIG_DFL)
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            os.chdir(cwd)
            uid, gid, groups = creds
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            try:
                os.execve(path, argv, env)
            except OSError as err:
                if err.errno != errno.ENOEXEC:
                    raise
                os.execve("/bin/sh", ["/bin/sh", path, *argv[1:]], env)
        except OSError as err:
            os.write(report_w, str(err.errno or errno.EPERM).encode())
        except BaseException:  # anything else still reports a failed start
            os.write(report_w, str(errno.EINVAL).encode())
        finally:
            os._exit(127)
    os.close(report_w)
    try:
        report = os.read(report_r, 32)
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)
        code = int(report)
        raise OSError(code, os.strerror(code))
    return pid


class Spawner:
    """Not thread-safe: one thread runs `serve`. See the module docstring."""

    def __init__(self, directory: str, listener: socket.socket) -> None:
        self.directory = directory
        self.listener = listener
        self.tasks: dict[int, _Task] = {}
        self.by_status_path: dict[str, int] = {}
        self.clients: dict[int, socket.socket] = {}
        self.after_reply: list[Callable[[], None]] = []
        self.pidfds: dict[int, int] = {}  # pidfd -> pid of the task it watches
        # Exit-notify write ends whose notice is written, kept open until their reader
        # closes (then they poll EPOLLERR): see `keep_delivered`.
        self.delivered: set[int] = set()
        self.lingering: list[str] = []  # made cgroups whose removal waits for members
        self.use_pidfds = _pidfds_work()
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.buffer = bytearray(MAX_MESSAGE)
        self.wake_r, self.wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.epoll = select.epoll()

    def serve(self) -> None:
        if not self.use_pidfds:
            signal.signal(signal.SIGCHLD, lambda *_: None)
            signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self.listener.setblocking(False)
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        while True:
            events = self.epoll.poll(IDLE_CHECK)
            if len(events) > 1:  # exits first: an agent's stop waits on their notices
                events.sort(key=lambda event: event[0] not in self.pidfds)
            for fd, _ in events:
                if fd == self.listener.fileno():
                    self.accept()
                elif fd == self.wake_r:
                    self.reap()
                elif fd in self.pidfds:
                    self.reap_pidfd(fd)
                elif fd in self.delivered:
                    self.delivered.discard(fd)
                    os.close(fd)  # its reader is gone; closing unregisters it
                else:
                    self.serve_client(fd)
            if self.lingering:
                self.lingering[:] = [p for p in self.lingering if not remove_cgroup(p)]
            if self.idle() and self.try_retire():
                return

    # --- clients ---------------------------------------------------------------------

    def accept(self) -> bool:
        """Accept every pending connection; True if there was one."""
        accepted = False
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return accepted
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
            if _CREDS.unpack(creds)[1] != os.getuid():
                conn.close()
                continue
            conn.setblocking(False)
            self.clients[conn.fileno()] = conn
            self.epoll.register(conn.fileno(), select.EPOLLIN)
            accepted = True

    def serve_client(self, fd: int) -> None:
        conn = self.clients.get(fd)
        if conn is None:
            return
        try:
            size, ancdata, _, _ = conn.recvmsg_into(
                [self.buffer], socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size, ancdata = 0, []
        fds = _received_fds(ancdata)
        if size == 0:
            _close(*fds)
            self.drop_client(fd)
            return
        try:
            request = json.loads(bytes(self.buffer[:size]))
            reply, out_fds = self.handle(request, fds)
        except Exception as err:  # a bad request must not take the spawner down
            _close(*fds)
            reply, out_fds = {"ok": False, "error": f"bad request: {err}"}, []
        try:
            conn.sendmsg(
                [json.dumps(reply).encode()],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(out_fds)}i", *out_fds))]
                if out_fds
                else [],
            )
        except OSError:
            self.drop_client(fd)
        finally:
            _close(*out_fds)
            self.run_after_reply()

    def run_after_reply(self) -> None:
        work = list(self.after_reply)
        self.after_reply.clear()
        for job in work:
            job()

    def drop_client(self, fd: int) -> None:
        conn = self.clients.pop(fd, None)
        if conn is not None:
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)
            conn.close()

    def handle(self, request: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        """Serve one request; the reply and the descriptors to send (closed after)."""
        op = request.get("op")
        if op == "start":
            return self.start(request, fds)
        if op == "attach":
            return self.attach(request, fds)
        _close(*fds)
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "tasks": sorted(self.tasks)}, []
        return {"ok": False, "error": f"unknown op {op!r}"}, []

    # --- tasks -----------------------------------------------------------------------

    def start(self, request: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        if request.get("output") == "null":
            (notify_w,) = fds
            outputs, writers = [], (self.devnull, self.devnull)
        else:
            out_r, out_w, err_r, err_w, notify_w = fds
            outputs, writers = [out_r, err_r], (out_w, err_w)
        status_path = request["status_path"]
        running = self.by_status_path.get(status_path)
        if running is not None:
            _close(*(fd for fd in fds if fd != notify_w))
            return self.adopt(self.tasks[running], notify_w, adopted=True)
        warnings: list[str] = []
        try:
            with (
                _in_cgroup(request.get("cgroup"), warnings) as cgroup,
                _oom_score_adj(
                    request.get("oom_score_adj"),
                    bool(request.get("oom_score_adj_required")),
                    warnings,
                ),
            ):
                # The child's start time lies in this range: no need to read /proc.
                before = boot_ticks()
                pid = self.spawn(request, *writers)
                execd_ns = time.monotonic_ns()
                ticks = (before, boot_ticks())
        except OSError as err:
            _close(*fds)
            return {"ok": False, "error": os.strerror(err.errno or 0) or str(err)}, []
        except _StartRefused as err:
            _close(*fds)
            return {"ok": False, "error": str(err)}, []
        finally:
            _close(*(fd for fd in writers if fd != self.devnull))
        task = _Task(pid, ticks, status_path, outputs, cgroup)
        task.notifies.append(notify_w)
        self.tasks[pid] = task
        self.by_status_path[status_path] = pid
        # After the reply (and before any exit is recorded), off the start's path: the
        # status file (stale from an earlier run of the task, or new) is left holding
        # only a newline.
        self.after_reply.append(task.open_status)
        if self.use_pidfds:
            self.after_reply.append(lambda: self.watch_exit(pid))
        reply = {"ok": True, "pid": pid, "ticks": task.ticks, "execd_ns": execd_ns}
        if warnings:
            reply["warnings"] = warnings
        return reply, []

    def spawn(self, request: dict[str, Any], out_w: int, err_w: int) -> int:
        """posix_spawn the command in its cwd; OSError if it cannot be exec'd."""
        path: str = request["path"]
        argv: list[str] = request["argv"]
        if request.get("user"):
            creds = _credentials(str(request["user"]))
            return _fork_exec(
                path, argv, request["env"], request["cwd"], (self.devnull, out_w, err_w), creds
            )
        actions = [
            (os.POSIX_SPAWN_DUP2, self.devnull, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        os.chdir(request["cwd"])
        try:
            try:
                return self._posix_spawn(path, argv, request["env"], actions)
            except OSError as err:
                if err.errno != errno.ENOEXEC:
                    raise
                # A script without a "#!" line runs under the shell, as execvp does.
                return self._posix_spawn(
                    "/bin/sh", ["/bin/sh", path, *argv[1:]], request["env"], actions
                )
        finally:
            os.chdir("/")

    @staticmethod
    def _posix_spawn(
        path: str, argv: list[str], env: dict[str, str], actions: list[tuple[int, ...]]
    ) -> int:
        return os.posix_spawn(
            path,
            argv,
            env,
            file_actions=actions,
            setpgroup=0,
            setsigmask=(),
            setsigdef=_DEFAULT_SIGNALS,
        )

    def attach(self, request: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int]]:
        (notify_w,) = fds
        task = self.tasks.get(int(request["pid"]))
        if task is None or list(task.ticks) != request["ticks"]:
            _close(notify_w)
            return {"ok": True, "state": "unknown"}, []
        return self.adopt(task, notify_w, adopted=False)

    def adopt(
        self, task: _Task, notify_w: int, *, adopted: bool
    ) -> tuple[dict[str, Any], list[int]]:
        task.notifies.append(notify_w)
        reply = {"ok": True, "state": "running", "pid": task.pid, "ticks": task.ticks}
        if adopted:
            reply["adopted"] = True
        return reply, [os.dup(fd) for fd in task.outputs]

    def watch_exit(self, pid: int) -> None:
        """Watch task `pid` with a pidfd (readable once it has exited, zombie or not)."""
        try:
            fd = os.pidfd_open(pid)
        except OSError as err:
            print(f"spawner: cannot watch {pid}: {err}; reaping it later", file=sys.stderr)
            return
        self.pidfds[fd] = pid
        self.epoll.register(fd, select.EPOLLIN)

    def reap_pidfd(self, fd: int) -> None:
        """Task exit seen on its pidfd: reap, record and notify first (the stop path
        waits on the notice), then tidy up (closing a pidfd drops it from the epoll)."""
        pid = self.pidfds.pop(fd)
        try:
            # Blocking: a pidfd turns readable a moment before its process can be
            # waited for (the kernel wakes pidfd pollers before it marks the process a
            # zombie), and a WNOHANG wait in that moment would lose the exit for good.
            reaped, wait_status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped already, by `reap`
            reaped, wait_status = 0, 0
        task = self.notify_exit(pid, wait_status) if reaped == pid else None
        os.close(fd)
        if task is not None:
            self.forget_task(task)
        if len(self.pidfds) < len(self.tasks):
            self.reap()  # a task whose pidfd could not be opened

    def reap(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_r, 4096):
                pass
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            task = self.notify_exit(pid, wait_status)
            if task is not None:
                self.forget_task(task)

    def notify_exit(self, pid: int, wait_status: int) -> _Task | None:
        """Record the exit of task `pid` in its status file, then write the wait status
        to each of its exit-notify pipes; the task (None if it is not one)."""
        task = self.tasks.pop(pid, None)
        if task is None:
            return None
        status = status_of(wait_status)
        try:
            status_fd = task.status_file[0] if task.status_file else None
            record_status(status_fd, task.status_path, status, pid)
        except OSError as err:
            print(f"spawner: cannot record exit {status} of {pid}: {err}", file=sys.stderr)
        notice = b"%d" % wait_status
        for fd in task.notifies:
            try:
                os.write(fd, notice)
            except OSError:  # no reader any more
                continue
            task.notified.append(fd)
        return task

    def forget_task(self, task: _Task) -> None:
        """After its exit is notified: close what the spawner kept for the task and
        remove its cgroup."""
        if self.by_status_path.get(task.status_path) == task.pid:
            del self.by_status_path[task.status_path]
        _close(*(fd for fd in task.notifies if fd not in task.notified))
        _close(*task.outputs, *task.status_file)
        for fd in task.notified:
            self.keep_delivered(fd)
        if task.cgroup and not remove_cgroup(task.cgroup, kill=True):
            self.lingering.append(task.cgroup)

    def keep_delivered(self, fd: int) -> None:
        """Keep a notify write end whose notice was written open until its reader
        closes: the reader sees the notice, never an end of file (which only a dead
        spawner gives it), so an agent whose stopping thread waits on the channel while
        the agent's log pump ignores it is not woken twice by a hang-up (see
        `allocrunner.drivers.raw_exec`)."""
        try:
            self.epoll.register(fd, 0)  # EPOLLERR (no reader left) is always reported
        except OSError:
            _close(fd)
            return
        self.delivered.add(fd)

    # --- lifetime --------------------------------------------------------------------

    def idle(self) -> bool:
        return not self.tasks and not self.clients

    def try_retire(self) -> bool:
        """Stop serving if still idle and no agent is connecting: True to exit."""
        lock_path = os.path.join(self.directory, START_LOCK_NAME)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            if self.accept() or self.tasks:
                return False
            for path in self.lingering:
                if not remove_cgroup(path):
                    print(f"spawner: leaving cgroup {path} (still has members)", file=sys.stderr)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path(self.directory))
            self.listener.close()
            return True
        finally:
            os.close(fd)


def _pidfds_work() -> bool:
    """True if this kernel and Python offer pidfds (then no SIGCHLD handler is needed)."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return False
    try:
        os.close(opener(os.getpid()))
    except OSError:
        return False
    return True


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
    return fds


def launch(directory: str) -> int:
    """Take the dir's lock, listen, fork the daemon; 0 once it serves (the launcher's
    exit code), 3 if another spawner holds the lock."""
    lock_fd = os.open(
        os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # A retiring spawner still holds it for a moment; a serving one would have
        # been reached by the agent that launched us, which holds the start lock.
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    path = socket_path(directory)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    address, dir_fd = short_path(path)
    try:
        listener.bind(address)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    listener.listen(128)
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    _reset_signals()
    _raise_fd_limit()
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    _detach_stdio(directory)
    Spawner(directory, listener).serve()
    return 0


def _raise_fd_limit() -> None:
    """Each running task holds a few descriptors here: allow as many as the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _reset_signals() -> None:
    """Whatever the agent that launched it blocks or ignores: block nothing (SIGCHLD
    must arrive), and outlive hang-ups and interrupts, as a daemon does."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)


def _detach_stdio(directory: str) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    log = os.open(os.path.join(directory, LOG_NAME), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(log, 2)
    _close(devnull, log)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: spawner.py <state dir>", file=sys.stderr)
        return 2
    return launch(os.path.abspath(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
