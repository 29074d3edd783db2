"""`_TaskProcess`: raw_exec's record of one task: who its process is (pid, process
group, start time against pid reuse, status file, the spawner dir that started it, see
`allocrunner.drivers.spawner`), how its exit is seen and what it exited with, and the
handle state that lets another agent find it again (`driver_state`,
`task_process_from_handle`). A handle without a spawner dir names a task of the older
``/bin/sh`` wrapper design (`allocrunner.drivers._process`): its pid is the wrapper's,
which records the status itself; such tasks are still recovered.

Threads: the driver's callers (start, wait, stop, recover, …) and the log pump's
thread, which calls `poll_exit` and `on_exit`; a stopping thread that takes the exit
notice over from the pump calls `read_notice` and `on_exit` too. Locks: none of its
own; the result fields and the notice-waiter flag are guarded by the owning driver's
``Driver._lock``, which is passed in, and `on_exit` takes it only to publish the result
(no I/O under it). Owner: `RawExecDriver`
creates one per started or recovered task and keeps it in its task table.
"""

from __future__ import annotations

import os
import signal as _signal
import socket
import time
import weakref
from typing import Any

from allocrunner._locking import guarded, immutable, requires
from allocrunner._sync import CancelToken
from allocrunner.drivers._common import task_status
from allocrunner.drivers._logpump import Exited
from allocrunner.drivers._process import (
    exit_result_from_status,
    read_pid_stat,
    read_status,
    reap_blocking,
    reap_now,
    result_from_wait,
    signalled,
)
from allocrunner.drivers.base import ExitResult, TaskConfig, TaskHandle, TaskStatus
from allocrunner.errors import DriverError

_NAME = "raw_exec"


_PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)
"""recv flags to read a notice without consuming it or blocking (an int: the flag
enum's `|` is slow Python on the stop path)."""


class _TaskProcess:
    """Thread-safe. One raw_exec task; mutable fields are guarded by the driver's lock."""

    _lock = immutable()
    config = immutable()
    pid = immutable()
    pgid = immutable()
    start_ticks = immutable()
    status_path = immutable()
    started_at = immutable()
    is_child = immutable()
    spawner_dir = immutable()
    watched = immutable()
    notice = immutable()
    done = immutable()
    # _lock guards: _result, _completed_at, _sigkilled, _notice_waiter
    _result = guarded("_lock")
    _completed_at = guarded("_lock")
    _sigkilled = guarded("_lock")
    _notice_waiter = guarded("_lock")

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
        spawner_dir: str | None = None,
        watched: bool = True,
        notice: socket.socket | None = None,
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
        # The state dir of the spawner that started the task (None: a wrapper task).
        self.spawner_dir = spawner_dir
        # False for a task found already exited at recovery: its group id may have
        # been reused since, so it is never signalled.
        self.watched = watched
        # Our end of the exit-notify channel (a stream socket the spawner writes the
        # wait status to and then keeps open): watched by the pump and waited on by a
        # stopping thread (`RawExecDriver._await_notice`); both only peek at the
        # notice. Open as long as this record lives, so no thread ever polls a
        # closed (or reused) descriptor.
        self.notice = notice
        if notice is not None:
            weakref.finalize(self, notice.close)
        self.done = CancelToken()  # cancelled once, after the result is set
        self._result: ExitResult | None = None
        self._completed_at: float | None = None
        self._sigkilled = False
        self._notice_waiter = False  # a thread waits on the notice itself

    def started_at_ticks(self, ticks: int) -> bool:
        """True if a process started at `ticks` is this task's process (not a reuse)."""
        return self.start_ticks[0] <= ticks <= self.start_ticks[1]

    def wrapper_alive(self) -> bool:
        """True if the task's process (not one that reused its pid) runs, not a zombie."""
        found = read_pid_stat(self.pid)
        return found is not None and self.started_at_ticks(found.start_ticks) and found.alive

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the task's process group (gone already: nothing to do)."""
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass
        except PermissionError as err:
            raise DriverError(f"{_NAME}: cannot signal task {self.config.id!r}: {err}") from err

    @requires("_lock")
    def result_locked(self) -> ExitResult | None:
        return self._result

    @requires("_lock")
    def running_locked(self) -> bool:
        return self._result is None

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
    def status_locked(self) -> TaskStatus:
        return task_status(self.config, self.started_at, self._completed_at, self._result)

    def poll_exit(self) -> Exited | None:
        """On the pump thread, for a task watched without a pidfd: `Exited` once the
        wrapper has exited (with its wait status if this process reaped it)."""
        if self.is_child:
            wait_status = reap_now(self.pid)
            if wait_status is not None:
                return Exited(wait_status)
        return None if self.wrapper_alive() else Exited(None)

    @requires("_lock")
    def enter_notice_locked(self) -> bool | None:
        """A thread would wait on the notice itself: True if it may (no other does;
        it then mutes the pump's watch of it until `leave_notice_locked`), False if
        another does, None if the exit is published already."""
        if self._result is not None:
            return None
        if self._notice_waiter:
            return False
        self._notice_waiter = True
        return True

    @requires("_lock")
    def leave_notice_locked(self) -> None:
        """The thread that `enter_notice_locked` let wait on the notice is done."""
        self._notice_waiter = False

    def read_notice(self) -> int | None:
        """The wait status on the notice channel, left there for other readers, once it
        polls readable; None if the spawner died without writing it."""
        assert self.notice is not None
        try:
            data = self.notice.recv(64, _PEEK_NOW)
        except OSError:
            return None
        try:
            return int(data) if data else None
        except ValueError:
            return None

    def on_exit(self, wait_status: int | None) -> None:
        """On the pump thread, once the process has exited (or its spawner reported the
        exit) and its pipes are drained: reap it if it is a child of this process, and
        publish the result."""
        if wait_status is None and self.is_child:
            wait_status = reap_blocking(self.pid)
        if wait_status is not None:
            result = result_from_wait(wait_status)
        else:
            status = read_status(self.status_path, self.pid)
            result = None if status is None else exit_result_from_status(status)
        with self._lock:
            if result is None:
                if self._sigkilled:
                    result = signalled(_signal.SIGKILL)
                else:
                    result = ExitResult(err=self._unknown_exit())
            self.finish_locked(result)

    def _unknown_exit(self) -> str:
        if self.spawner_dir is None:
            return f"process {self.pid} exited without recording an exit status"
        return (
            f"process {self.pid} exited and its exit status is unknown: the spawner "
            f"that started it died before it exited"
        )

    def exited_result(self) -> ExitResult:
        """The result of a recorded task whose process is no longer running: its wait
        status if it is a zombie child of ours, else its status file; DriverError if
        it left neither."""
        found = read_pid_stat(self.pid)
        if found is not None and self.started_at_ticks(found.start_ticks) and self.is_child:
            wait_status = reap_now(self.pid)
            if wait_status is not None:
                return result_from_wait(wait_status)
        status = read_status(self.status_path, self.pid)
        if status is not None:
            return exit_result_from_status(status)
        raise DriverError(
            f"{_NAME}: task {self.config.id!r} (pid {self.pid}) is gone and left no exit status"
        )

    def driver_state(self) -> dict[str, Any]:
        """The handle's driver_state: what a later `task_process_from_handle` needs."""
        state: dict[str, Any] = {
            "pid": self.pid,
            "pgid": self.pgid,
            "start_ticks": list(self.start_ticks),
            "started_at": self.started_at,
            "status_path": self.status_path,
            "logs_dir": self.config.logs_dir,
            "stdout_log": f"{self.config.name}.stdout",
            "stderr_log": f"{self.config.name}.stderr",
        }
        if self.spawner_dir is not None:
            state["spawner_dir"] = self.spawner_dir
        return state


def task_process_from_handle(
    lock: Any, handle: TaskHandle, *, watched: bool = True
) -> _TaskProcess:
    """The record a handle describes (the process is not looked at); DriverError
    naming the bad field of a malformed handle."""
    state = handle.driver_state
    ticks = _start_ticks(handle)
    ints = {}
    for key in ("pid", "pgid"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DriverError(
                f"{_NAME}: handle of task {handle.task_id!r} has a bad {key}: {value!r}"
            )
        ints[key] = value
    status_path = state.get("status_path")
    if not isinstance(status_path, str) or not status_path:
        raise DriverError(f"{_NAME}: handle of task {handle.task_id!r} has no status_path")
    started_at = state.get("started_at", 0.0)
    spawner_dir = state.get("spawner_dir")
    if spawner_dir is not None and (not isinstance(spawner_dir, str) or not spawner_dir):
        raise DriverError(f"{_NAME}: handle of task {handle.task_id!r} has a bad spawner_dir")
    return _TaskProcess(
        lock,
        handle.config,
        pid=ints["pid"],
        pgid=ints["pgid"],
        start_ticks=ticks,
        status_path=status_path,
        started_at=float(started_at) if isinstance(started_at, int | float) else 0.0,
        is_child=False,
        spawner_dir=spawner_dir,
        watched=watched,
    )


def _start_ticks(handle: TaskHandle) -> tuple[int, int]:
    """The (low, high) start-time range of a handle (a single value in older ones)."""
    ticks = handle.driver_state.get("start_ticks")
    if isinstance(ticks, int) and not isinstance(ticks, bool):
        ticks = (ticks, ticks)
    if (
        not isinstance(ticks, list | tuple)
        or len(ticks) != 2
        or not all(isinstance(t, int) and not isinstance(t, bool) for t in ticks)
    ):
        raise DriverError(f"{_NAME}: handle of task {handle.task_id!r} has a bad start_ticks")
    return (ticks[0], ticks[1])
