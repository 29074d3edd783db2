"""mock_driver: a scripted driver for tests, driven by Nomad's mock driver config keys.

A mock task is no process: its life is a few deadlines on the monotonic clock, so
tests run in milliseconds and need no thread per task. The keys (durations are Go
duration strings such as "10ms", "1.5s", "2m"):

- ``run_for``: how long the task runs before exiting on its own (default 0: it exits
  at once).
- ``exit_code``, ``exit_signal``, ``exit_err_msg``: the result it exits with. As in
  Nomad, a stopped mock task reports this same configured result.
- ``start_error`` (+ ``start_error_recoverable``): `start` raises `DriverError` with
  this message and recoverability.
- ``start_block_for``: `start` blocks this long first (before any start error).
- ``kill_after``: how long the task takes to exit after a stop signal; a stop's own
  timeout force-kills it sooner, as it would a real process.
- ``signal_error``: `signal` raises `DriverError` with this message.
- ``stdout_string``, ``stdout_repeat``, ``stdout_repeat_duration`` (and the same three
  for ``stderr_``): the string is written to ``<logs_dir>/<task>.stdout.0`` at start,
  then again `stdout_repeat` times, one `stdout_repeat_duration` apart. As in Nomad, a
  task whose output is still repeating does not exit before the repeats are done
  (unless it is stopped, which cancels them). With ``TaskConfig.logs_disabled`` nothing
  is written.

Nomad's other mock keys (``plugin_exit_after``, ``driver_ip``, ``driver_advertise``,
``driver_port_map``, ``exec_command``) are accepted and ignored; any other key is a
validation error naming it.

Time is evaluated lazily: whoever looks at a task (`wait`, `inspect`, `stop`, …)
commits its exit once its deadline has passed, and a waiter sleeps exactly until the
next deadline. Only repeated output needs a clock of its own, served by one
driver-wide timer thread started on first use and joined by `close()`.

Recovery: by default a handle can be recovered only by the driver instance that still
knows the task (a TaskRunner restarting against the same driver); any other handle
raises `DriverError`, which lets tests simulate a task lost across an agent restart.
`MockDriver(recover_from_state=True)` instead rebuilds an unknown task from its handle
the way Nomad's mock does, running for whatever is left of `run_for` by the wall
clock (its output is not replayed).

Locks: `Driver._lock` guards the task table and the output timer's schedule; each task's
state has its own ``MockTask._lock``, so that a thousand tasks stopping together each
take their own lock rather than queue on the driver's (a holder that the GIL switched
out made every other stopping task wait on it). The two nest one way only: the task
table asks whether a task still runs (`_MockTask.running_locked`) while it holds the
driver's lock. Neither is held across a wait or a write.
Owner: built by `default_drivers()` (or a test) and shared by every task runner.
"""

from __future__ import annotations

import heapq
import itertools
import os
import time
from collections.abc import Mapping
from typing import Any

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken, Kick, ThreadGroup
from allocrunner.drivers._common import (
    DEFAULT_KILL_SIGNAL,
    _TaskTable,
    signal_number,
    task_status,
)
from allocrunner.drivers.base import (
    ExitResult,
    TaskConfig,
    TaskHandle,
    TaskStatus,
)
from allocrunner.drivers.mock_config import NAME, MockOutput, MockSpec, parse_mock_config
from allocrunner.errors import DriverError


class _MockTask:
    """Thread-safe. One mock task; its mutable fields are guarded by its own lock. The
    public methods take that lock; the `_locked` ones need it held."""

    _lock = immutable()
    _table_lock = immutable()  # the driver's lock, which guards the table holding it
    config = immutable()
    spec = immutable()
    started_at = immutable()
    run_until = immutable()
    _kill_at = guarded("_lock")
    _outputs_pending = guarded("_lock")
    _result = guarded("_lock")
    _completed_at = guarded("_lock")
    _write_error = guarded("_lock")
    _wake = guarded("_lock")

    def __init__(
        self,
        table_lock: Any,
        config: TaskConfig,
        spec: MockSpec,
        started_at: float,
        run_until: float,
        outputs_pending: int,
    ) -> None:
        self._lock = make_lock("MockTask._lock")
        self._table_lock = table_lock
        self.config = config
        self.spec = spec
        self.started_at = started_at
        self.run_until = run_until
        self._kill_at: float | None = None
        self._outputs_pending = outputs_pending
        self._result: ExitResult | None = None
        self._completed_at: float | None = None
        self._write_error: str | None = None
        # Cancelled whenever a deadline changes or the task exits, to wake waiters.
        self._wake = CancelToken()

    @requires("_table_lock")
    def running_locked(self) -> bool:
        """For the task table, under the driver's lock: whether the task still runs (a
        due exit is committed first). Takes the task's lock inside the driver's."""
        with self._lock:
            return self.settle_locked(time.monotonic()) is None

    def poll(self) -> tuple[ExitResult | None, float | None, CancelToken]:
        """The result (a due exit committed first), else None, the seconds until the
        next deadline (None: only the output timer can end it) and the token a change
        cancels."""
        with self._lock:
            now = time.monotonic()
            return self.settle_locked(now), self.timeout_locked(now), self._wake

    def kill(self, within: float) -> None:
        """Unless it has exited, make the task exit within `within` seconds from now."""
        with self._lock:
            now = time.monotonic()
            if self.settle_locked(now) is None:
                self.kill_locked(now + within)

    def end(self, force: bool) -> bool:
        """For destroy: True once the task has exited, at once if `force`; False (and
        nothing changed) if it still runs."""
        with self._lock:
            now = time.monotonic()
            if self.settle_locked(now) is None:
                if not force:
                    return False
                self.kill_locked(now)
                self.settle_locked(now)
            return True

    def status(self) -> TaskStatus:
        with self._lock:
            self.settle_locked(time.monotonic())
            return task_status(self.config, self.started_at, self._completed_at, self._result)

    def output_allowed(self, when: float) -> bool:
        with self._lock:
            return self._result is None and (self._kill_at is None or when < self._kill_at)

    def output_failed(self, error: str) -> None:
        """A log write failed: the task exits with that error (as Nomad's mock does)."""
        with self._lock:
            if self._fail_locked(error):
                self._rewake_locked()

    def output_done(self, error: str | None = None) -> None:
        """One repeating stream has written its last copy, was cancelled, or failed
        with `error`."""
        with self._lock:
            if error is not None:
                self._fail_locked(error)
            self._outputs_pending -= 1
            self._rewake_locked()

    @requires("_lock")
    def _fail_locked(self, error: str) -> bool:
        """Keep the first write error of a running task; True if this one was kept."""
        if self._result is None and self._write_error is None:
            self._write_error = error
            return True
        return False

    @requires("_lock")
    def settle_locked(self, now: float) -> ExitResult | None:
        """Commit the exit if a deadline has passed; the result, or None while running."""
        if self._result is None:
            kill_at = self._kill_at
            if self._write_error is not None:
                self._exit_locked(ExitResult(err=self._write_error))
            elif (kill_at is not None and now >= kill_at) or (
                now >= self.run_until and self._outputs_pending == 0
            ):
                self._exit_locked(self.spec.exit_result())
        return self._result

    @requires("_lock")
    def _exit_locked(self, result: ExitResult) -> None:
        self._result = result
        self._completed_at = time.time()
        self._wake.cancel("exited")

    @requires("_lock")
    def timeout_locked(self, now: float) -> float | None:
        """Seconds until the next deadline; None when only the output timer can end it."""
        deadlines = []
        if self._kill_at is not None:
            deadlines.append(self._kill_at)
        if self._outputs_pending == 0:
            deadlines.append(self.run_until)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    @requires("_lock")
    def kill_locked(self, at: float) -> None:
        """Make the task exit no later than `at` (monotonic)."""
        if self._result is None and (self._kill_at is None or at < self._kill_at):
            self._kill_at = at
            self._rewake_locked()

    @requires("_lock")
    def _rewake_locked(self) -> None:
        old = self._wake
        self._wake = CancelToken()
        old.cancel("changed")


@attrs.frozen(order=True)
class _Repeat:
    """Immutable. A pending repeated write of one stream of one task."""

    when: float
    seq: int
    task: _MockTask = attrs.field(eq=False, order=False)
    output: MockOutput = attrs.field(eq=False, order=False)
    remaining: int = attrs.field(eq=False, order=False)


class MockDriver:
    """Thread-safe. The scripted `mock_driver` (see the module docstring).

    Call `close()` when done: it stops the output timer thread (if one was started)
    and makes pending waits raise `DriverError`.
    """

    name = NAME

    _lock = immutable()
    _recover_from_state = immutable()
    _closing = immutable()
    _timer_kick = immutable()
    _threads = immutable()
    _seq = immutable()
    _tasks = immutable()  # its map and closed flag are guarded by _lock
    # _lock guards: _repeats, _timer_started (and the task table and each task's state)
    _repeats = guarded("_lock")
    _timer_started = guarded("_lock")

    def __init__(self, *, recover_from_state: bool = False) -> None:
        self._lock = make_lock("Driver._lock")
        self._recover_from_state = recover_from_state
        self._closing = CancelToken()
        self._timer_kick = Kick()
        self._threads = ThreadGroup("mock_driver")
        self._seq = itertools.count()
        self._tasks: _TaskTable[_MockTask] = _TaskTable(NAME, self._lock)
        self._repeats: tuple[_Repeat, ...] = ()  # a heap, replaced copy-on-write
        self._timer_started = False

    def starts_at_once(self, driver_config: Mapping[str, Any]) -> bool:
        """True if a task with this config starts without waiting (no
        ``start_block_for``), so that its start may be made on a thread that starts
        others too. A config that does not parse is started the usual way, which
        reports it."""
        try:
            return parse_mock_config(driver_config).start_block_for <= 0
        except DriverError:
            return False

    # --- protocol -----------------------------------------------------------------

    def validate_config(self, config: TaskConfig) -> None:
        """Raise DriverError naming the bad key if the mock config is invalid."""
        parse_mock_config(config.driver_config)

    @calls_out
    def start(self, config: TaskConfig) -> TaskHandle:
        """Start a scripted task (honouring start_block_for and start_error)."""
        spec = parse_mock_config(config.driver_config)
        if spec.start_block_for > 0 and self._closing.wait(spec.start_block_for):
            raise DriverError(f"{NAME} is closed")
        if spec.start_error:
            raise DriverError(spec.start_error, recoverable=spec.start_error_recoverable)
        write_error = None
        repeating = []
        for output in (spec.stdout, spec.stderr):
            if output.text:
                write_error = write_error or _write_output(config, output)
                if output.repeat > 0:
                    repeating.append(output)
        started_mono = time.monotonic()
        task = _MockTask(
            self._lock,
            config,
            spec,
            started_at=time.time(),
            run_until=started_mono + spec.run_for,
            outputs_pending=len(repeating),
        )
        if write_error is not None:
            task.output_failed(write_error)
        spawn = False
        with self._lock:
            self._tasks.add_locked(config.id, task)
            if repeating:
                heap = list(self._repeats)
                for output in repeating:
                    entry = _Repeat(
                        started_mono + output.interval, next(self._seq), task, output, output.repeat
                    )
                    heapq.heappush(heap, entry)
                self._repeats = tuple(heap)
                spawn = not self._timer_started
                self._timer_started = True
                self._timer_kick.kick()
        if spawn:
            self._threads.spawn("mock_driver-output", self._output_loop)
        return TaskHandle(
            driver=NAME,
            config=config,
            driver_state={"started_at": task.started_at},
        )

    @calls_out
    def wait(self, task_id: str, cancel: CancelToken) -> ExitResult | None:
        """Block until the task exits (its result) or `cancel` is cancelled (None)."""
        with self._lock:
            task = self._tasks.get_locked(task_id)
        return self._await(task, cancel)

    @calls_out
    def stop(self, task_id: str, timeout: float, signal: str = "") -> None:
        """Signal the task (it exits after kill_after, or at `timeout` at the latest)
        and return once it has exited."""
        signal_number(signal or DEFAULT_KILL_SIGNAL)
        with self._lock:
            task = self._tasks.get_locked(task_id)
        task.kill(min(task.spec.kill_after, max(0.0, timeout)))
        self._await(task, None)

    def destroy(self, task_id: str, force: bool = False) -> None:
        """Forget the task; a running one is refused unless `force` (then killed)."""
        with self._lock:
            task = self._tasks.get_locked(task_id)
        if not task.end(force):
            raise DriverError(f"cannot destroy running task {task_id!r}")
        with self._lock:
            # A start that reused the id meanwhile replaced the entry: it stays.
            self._tasks.remove_locked(task_id, task)

    def inspect(self, task_id: str) -> TaskStatus:
        """The task's current status."""
        with self._lock:
            task = self._tasks.get_locked(task_id)
        return task.status()

    def signal(self, task_id: str, signal: str) -> None:
        """Accept a signal for a running task, or fail with the scripted signal_error."""
        signal_number(signal)
        with self._lock:
            task = self._tasks.get_live_locked(task_id)
        if task.spec.signal_error:
            raise DriverError(task.spec.signal_error)

    def stats(self, task_id: str) -> dict[str, float]:
        """A mock task uses no resources."""
        with self._lock:
            self._tasks.get_locked(task_id)
        return {}

    def recover(self, handle: TaskHandle) -> None:
        """Re-attach to a task this instance still runs (see the module docstring)."""
        if handle.driver != NAME:
            raise DriverError(f"{NAME} cannot recover a {handle.driver!r} task")
        task_id = handle.task_id
        with self._lock:
            if self._tasks.closed_locked():
                raise DriverError(f"{NAME} is closed")
            if self._tasks.contains_locked(task_id):
                return
        if not self._recover_from_state:
            raise DriverError(f"{NAME}: task {task_id!r} is unknown to this driver; not recovered")
        self._rebuild(handle)

    # --- lifecycle -----------------------------------------------------------------

    @calls_out
    def close(self) -> None:
        """Stop the output timer and wake pending waits (they raise). Idempotent."""
        with self._lock:
            self._tasks.close_locked()
            self._closing.cancel(f"{NAME} closed")
            self._timer_kick.kick()
        self._threads.join(timeout=10.0)

    def __enter__(self) -> MockDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals -----------------------------------------------------------------

    @calls_out
    def _await(self, task: _MockTask, cancel: CancelToken | None) -> ExitResult | None:
        while True:
            result, timeout, wake = task.poll()
            if result is not None:
                return result
            if cancel is not None and cancel.cancelled():
                return None
            if self._closing.cancelled():
                raise DriverError(f"{NAME} closed while waiting on task {task.config.id!r}")
            tokens = (wake, self._closing) if cancel is None else (wake, self._closing, cancel)
            joined = CancelToken.any_of(*tokens)
            try:
                joined.wait(timeout)
            finally:
                joined.cancel("done")

    def _rebuild(self, handle: TaskHandle) -> None:
        spec = parse_mock_config(handle.config.driver_config)
        started_at = handle.driver_state.get("started_at")
        if isinstance(started_at, bool) or not isinstance(started_at, int | float):
            raise DriverError(f"{NAME}: handle of task {handle.task_id!r} has no started_at")
        left = max(0.0, spec.run_for - (time.time() - started_at))
        task = _MockTask(
            self._lock,
            handle.config,
            spec,
            started_at=float(started_at),
            run_until=time.monotonic() + left,
            outputs_pending=0,
        )
        with self._lock:
            if self._tasks.closed_locked():
                raise DriverError(f"{NAME} is closed")
            if not self._tasks.contains_locked(handle.task_id):
                self._tasks.add_locked(handle.task_id, task)

    def _output_loop(self) -> None:
        """Thread body: write repeated output when due."""
        while True:
            with self._lock:
                if self._tasks.closed_locked():
                    return
                now = time.monotonic()
                due: list[_Repeat] = []
                if self._repeats and self._repeats[0].when <= now:
                    heap = list(self._repeats)
                    while heap and heap[0].when <= now:
                        due.append(heapq.heappop(heap))
                    self._repeats = tuple(heap)
                timeout = self._repeats[0].when - now if self._repeats else None
            if not due:
                self._timer_kick.wait(timeout)
                continue
            for entry in due:
                self._fire(entry)

    @calls_out
    def _fire(self, entry: _Repeat) -> None:
        task = entry.task
        allowed = task.output_allowed(entry.when)
        error = _write_output(task.config, entry.output) if allowed else None
        if not allowed or error is not None or entry.remaining <= 1:
            task.output_done(error)
            return
        nxt = attrs.evolve(
            entry,
            when=entry.when + entry.output.interval,
            seq=next(self._seq),
            remaining=entry.remaining - 1,
        )
        with self._lock:
            heap = list(self._repeats)
            heapq.heappush(heap, nxt)
            self._repeats = tuple(heap)


@calls_out
def _write_output(config: TaskConfig, output: MockOutput) -> str | None:
    """Append one copy of the output to the task's log file; the error text, if any."""
    if not config.logs_dir or config.logs_disabled:
        return None
    path = os.path.join(config.logs_dir, f"{config.name}.{output.stream}.0")
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(output.text)
    except OSError as err:
        return f"failed to write {output.stream}: {err}"
    return None
