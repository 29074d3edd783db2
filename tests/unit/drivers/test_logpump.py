"""`LogPump`: pipes copied into sinks, exits seen by pidfd or by polling and reported
only after the pipes are drained, forget and close releasing every descriptor, and its
leaf lock."""

from __future__ import annotations

import errno
import functools
import os
import subprocess
import threading
import weakref
from collections.abc import Iterator

import pytest

from allocrunner._locking import assert_no_locks_held, lock_rank
from allocrunner.drivers._logpump import Exited, LogPump, RotatingLogSink, Watch
from allocrunner.drivers._process import reap_blocking, reap_now
from allocrunner.drivers.logs import read_logs
from allocrunner.testing import wait_for
from tests.unit.drivers.support import task_config


class ListSink:
    """Thread-safe. Collects what the pump writes."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._data = bytearray()
        self.closed = threading.Event()

    def write(self, data: bytes) -> None:
        assert_no_locks_held("writing a sink")
        with self._mutex:
            self._data += data

    def close(self) -> None:
        self.closed.set()

    def data(self) -> bytes:
        with self._mutex:
            return bytes(self._data)


class ExitRecorder:
    """Thread-safe. Records `on_exit` calls and what the sinks held at that moment."""

    def __init__(self, *sinks: ListSink, reap: int = 0) -> None:
        self._sinks = sinks
        self._reap = reap
        self.calls: list[tuple[int | None, list[bytes]]] = []
        self.done = threading.Event()

    def __call__(self, wait_status: int | None) -> None:
        assert_no_locks_held("on_exit")
        if wait_status is None and self._reap:
            wait_status = reap_blocking(self._reap)
        self.calls.append((wait_status, [sink.data() for sink in self._sinks]))
        self.done.set()


@pytest.fixture
def pump() -> Iterator[LogPump]:
    pump = LogPump("test-pump", poll_interval=0.01)
    yield pump
    pump.close()


def nonblocking_pipe() -> tuple[int, int]:
    read, write = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(read, False)
    return read, write


def child_writing(script: str, stdout: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["/bin/sh", "-c", script], stdout=stdout)
    os.close(stdout)
    return proc


def test_the_lock_is_a_declared_leaf():
    assert lock_rank("LogPump._lock") > lock_rank("Driver._lock")


def test_a_pipe_is_copied_until_end_of_file(pump):
    read, write = nonblocking_pipe()
    sink = ListSink()
    assert pump.add(Watch(owner=object(), pipes=((read, sink),), on_exit=ExitRecorder()))
    os.write(write, b"hello ")
    wait_for(lambda: _assert_equal(sink.data(), b"hello "))
    os.write(write, b"world")
    os.close(write)
    assert sink.closed.wait(10)
    assert sink.data() == b"hello world"


def _assert_equal(actual: object, expected: object) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"


def test_a_pidfd_exit_is_reported_after_the_pipe_is_drained(pump):
    read, write = nonblocking_pipe()
    sink = ListSink()
    proc = child_writing("head -c 300000 /dev/zero; exit 3", write)
    recorder = ExitRecorder(sink, reap=proc.pid)
    watch = Watch(
        owner=proc, pipes=((read, sink),), on_exit=recorder, pidfd=os.pidfd_open(proc.pid)
    )
    assert pump.add(watch)
    assert recorder.done.wait(10)
    proc.returncode = 0  # reaped by the recorder
    [(status, seen)] = recorder.calls
    assert status is not None and os.waitstatus_to_exitcode(status) == 3
    assert seen == [b"\0" * 300000]


def test_a_polled_exit_gets_the_wait_status_the_poller_reaped(pump):
    read, write = nonblocking_pipe()
    sink = ListSink()
    proc = child_writing("echo polled; exit 5", write)

    def poll_exit() -> Exited | None:
        status = reap_now(proc.pid)
        return None if status is None else Exited(status)

    recorder = ExitRecorder(sink)
    assert pump.add(Watch(owner=proc, pipes=((read, sink),), on_exit=recorder, poll_exit=poll_exit))
    assert recorder.done.wait(10)
    proc.returncode = 0  # reaped by poll_exit
    [(status, seen)] = recorder.calls
    assert status is not None and os.waitstatus_to_exitcode(status) == 5
    assert seen == [b"polled\n"]


def test_many_processes_at_once(pump):
    procs = []
    for i in range(20):
        read, write = nonblocking_pipe()
        sink = ListSink()
        proc = child_writing(f"i=0; while [ $i -lt 50 ]; do echo {i}-$i; i=$((i+1)); done", write)
        recorder = ExitRecorder(sink, reap=proc.pid)
        pidfd = os.pidfd_open(proc.pid)
        assert pump.add(Watch(owner=proc, pipes=((read, sink),), on_exit=recorder, pidfd=pidfd))
        procs.append((i, proc, sink, recorder))
    for i, proc, sink, recorder in procs:
        assert recorder.done.wait(10)
        proc.returncode = 0
        expected = "".join(f"{i}-{n}\n" for n in range(50)).encode()
        assert recorder.calls[0][1] == [expected]
        assert sink.closed.wait(10)


def test_the_exits_of_one_turn_are_reported_once_the_turn_s_reads_are_done(pump, caplog):
    """Exits the pump finds in one turn are reported after every descriptor of the turn
    is served, and an owner whose report raises keeps no other owner from its own."""
    in_report = threading.Event()
    release = threading.Event()

    def hold_the_pump(_: int | None) -> None:
        in_report.set()
        release.wait(10)

    blocker_r, blocker_w = nonblocking_pipe()
    assert pump.add(
        Watch(owner=object(), pipes=(), on_exit=hold_the_pump, pidfd=blocker_r, status_pipe=True)
    )
    os.write(blocker_w, b"0")
    os.close(blocker_w)
    assert in_report.wait(10)
    # While the pump is held inside that report, two processes "exit", each with output
    # waiting in its pipe: the pump's next turn finds all four descriptors ready.
    sinks = {"a": ListSink(), "b": ListSink()}
    seen: dict[str, dict[str, bytes]] = {}

    def on_exit(name: str, _: int | None) -> None:
        seen[name] = {n: sink.data() for n, sink in sinks.items()}
        if name == "a":
            raise RuntimeError("an owner's bug")

    for name, sink in sinks.items():
        out_r, out_w = nonblocking_pipe()
        status_r, status_w = nonblocking_pipe()
        os.write(out_w, f"{name} wrote this".encode())
        os.close(out_w)
        os.write(status_w, b"0")
        os.close(status_w)
        watch = Watch(
            owner=object(),
            pipes=((out_r, sink),),
            on_exit=functools.partial(on_exit, name),
            pidfd=status_r,
            status_pipe=True,
        )
        assert pump.add(watch)
    release.set()

    def both_reported() -> None:
        assert sorted(seen) == ["a", "b"]

    wait_for(both_reported)
    both = {"a": b"a wrote this", "b": b"b wrote this"}
    assert seen == {"a": both, "b": both}
    assert "an owner's bug" in caplog.text


def test_forget_closes_the_pipes_and_reports_no_exit(pump):
    read, write = nonblocking_pipe()
    sink = ListSink()
    owner = object()
    recorder = ExitRecorder()
    assert pump.add(Watch(owner=owner, pipes=((read, sink),), on_exit=recorder))
    os.write(write, b"kept")
    pump.forget(owner)
    assert sink.closed.is_set()
    assert sink.data() == b"kept"
    with pytest.raises(BrokenPipeError):  # the pump's read end is gone
        os.write(write, b"lost")
    os.close(write)
    assert not recorder.calls


def _forgets_queued(pump: LogPump) -> int:
    with pump._lock:
        return len(pump._forgets)


def test_a_forgotten_owner_is_not_kept_by_the_turn_that_reported_its_exit(pump):
    """Once `forget` returns the pump holds nothing of the owner (the raw_exec driver
    closes a task's notice socket when its record is freed), even when the forget is
    served right after the turn that reported the owner's exit: neither that turn's
    reports nor the forget requests outlive the release of the forgetting thread."""

    class Owner:
        pass

    owner = Owner()
    alive = weakref.ref(owner)
    read, write = nonblocking_pipe()
    proc = child_writing("exit 0", write)
    forgetter: list[threading.Thread] = []

    def on_exit(wait_status: int | None) -> None:
        reap_blocking(proc.pid)
        thread = threading.Thread(target=pump.forget, args=(alive(),))
        forgetter.append(thread)
        thread.start()
        # Until the forget is queued: the pump serves it at the top of its next turn,
        # right after this one's reports.
        wait_for(lambda: _assert_equal(_forgets_queued(pump), 1))

    pidfd = os.pidfd_open(proc.pid)
    assert pump.add(Watch(owner=owner, pipes=((read, ListSink()),), on_exit=on_exit, pidfd=pidfd))
    del owner
    wait_for(lambda: _assert_equal(len(forgetter), 1))
    forgetter[0].join(10)
    proc.returncode = 0  # reaped by on_exit
    assert not forgetter[0].is_alive()
    assert alive() is None, "the pump still holds the forgotten owner"


def test_close_releases_every_descriptor_and_refuses_more(pump):
    read, write = nonblocking_pipe()
    sink = ListSink()
    owner = object()
    assert pump.add(Watch(owner=owner, pipes=((read, sink),), on_exit=ExitRecorder()))
    os.write(write, b"buffered")
    pump.close()
    assert sink.closed.is_set() and sink.data() == b"buffered"
    with pytest.raises(OSError) as caught:
        os.write(write, b"x")
    assert caught.value.errno == errno.EPIPE
    os.close(write)
    other_read, other_write = nonblocking_pipe()
    assert not pump.add(Watch(owner=object(), pipes=((other_read, ListSink()),), on_exit=print))
    os.close(other_read)  # still the caller's
    os.close(other_write)
    pump.forget(owner)  # returns at once
    pump.close()  # idempotent


def test_forget_before_the_thread_started_returns_at_once(pump):
    pump.forget(object())


def test_rotating_sink_writes_the_task_logs(tmp_path):
    config = task_config(tmp_path, {}, log_max_file_size_bytes=4, log_max_files=3)
    sink = RotatingLogSink(config, "stdout")
    assert read_logs(config.logs_dir, config.name, "stdout") == b""
    sink.write(b"0123456789")
    sink.close()
    assert read_logs(config.logs_dir, config.name, "stdout") == b"0123456789"
    assert sink.write_errors == 0


def _held_watch(pump: LogPump) -> tuple[object, int, int, int, ListSink, ExitRecorder]:
    """An owner with one output pipe and an exit pipe it keeps (`read_exit`); returns
    the owner, the output's write end, the exit pipe's ends, the sink and the
    recorder."""
    read, write = nonblocking_pipe()
    exit_r, exit_w = nonblocking_pipe()
    sink = ListSink()
    recorder = ExitRecorder(sink)
    owner = object()
    watch = Watch(
        owner=owner,
        pipes=((read, sink),),
        on_exit=recorder,
        pidfd=exit_r,
        status_pipe=True,
        read_exit=lambda: 0,
    )
    assert pump.add(watch)
    return owner, write, exit_r, exit_w, sink, recorder


def test_a_held_owner_is_left_to_its_thread_which_takes_its_drained_pipes(pump):
    owner, write, exit_r, exit_w, sink, recorder = _held_watch(pump)
    os.write(write, b"early")
    wait_for(lambda: _assert_equal(sink.data(), b"early"))
    pump.forget(object())  # the pump is done reading it (`hold` refuses it meanwhile)
    assert pump.hold(owner, exit_r)
    assert not pump.hold(owner, exit_r)  # held already
    os.close(write)
    os.write(exit_w, b"0")
    pump.forget(object())  # a turn of the pump: it would have seen both by now
    assert not recorder.calls and not sink.closed.is_set()
    assert pump.take_exit(owner)
    pump.forget(owner)
    assert sink.closed.is_set()
    assert sink.data() == b"early"
    assert not recorder.calls
    os.close(exit_r)  # the owner's
    os.close(exit_w)


def test_output_left_in_a_held_owner_s_pipe_is_copied_by_the_pump_on_release(pump):
    owner, write, exit_r, exit_w, _, recorder = _held_watch(pump)
    assert pump.hold(owner, exit_r)
    os.write(write, b"late")
    os.close(write)
    os.write(exit_w, b"0")
    pump.forget(object())
    assert not recorder.calls
    assert not pump.take_exit(owner)
    pump.release(owner, exit_r)
    assert recorder.done.wait(10)
    assert recorder.calls == [(0, [b"late"])]
    pump.forget(owner)
    os.close(exit_r)
    os.close(exit_w)


def test_hold_refuses_an_owner_it_does_not_watch(pump):
    assert not pump.hold(object(), 0)
    assert not pump.take_exit(object())
