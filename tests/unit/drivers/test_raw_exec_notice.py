"""raw_exec's exit notice with real processes: a stopping thread takes it over from the
log pump, the spawner keeps its end of the channel until ours closes, and the cases
where the pump keeps the report (output still held open, several waiters, a close)."""

from __future__ import annotations

import os
import select
import signal
import threading
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import ExitResult, RawExecDriver, TaskConfig
from allocrunner.drivers._task_process import _TaskProcess
from allocrunner.drivers.logs import read_logs
from allocrunner.errors import DriverError
from allocrunner.testing import wait_for
from tests.unit.drivers.raw_exec_support import assert_spawner_retires, spawner_pid
from tests.unit.drivers.support import alive, group_members, in_frame, sh, task_config

SIGINT_EXIT = ExitResult(exit_code=130, signal=2)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "spawner"


@pytest.fixture
def raw(no_leftover_processes, state_dir):
    driver = RawExecDriver(state_dir=str(state_dir))
    yield driver
    driver.close()
    assert_spawner_retires(state_dir)


def socket_fds(pid: int) -> int:
    """How many sockets process `pid` has open."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except FileNotFoundError:
            continue
    return count


def open_descriptors() -> set[tuple[str, str]]:
    """This process's open descriptors, each with what it refers to (a pipe's or
    socket's inode number included)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            found.add((name, os.readlink(f"/proc/self/fd/{name}")))
        except FileNotFoundError:  # the listing's own descriptor, closed since
            continue
    return found


def stdout_of(config) -> str:
    return read_logs(config.logs_dir, config.name, "stdout").decode()


def test_spawner_keeps_the_notice_channel_until_the_record_goes(raw, tmp_path, state_dir):
    config = task_config(tmp_path, sh("exec sleep 30"))
    raw.start(config)
    spawner = spawner_pid(state_dir)
    assert spawner is not None
    with_task = socket_fds(spawner)  # the listener, our connection, the notice channel
    raw.stop(config.id, 10.0)
    assert raw.wait(config.id, CancelToken()) == SIGINT_EXIT
    assert socket_fds(spawner) == with_task  # no end of file after the notice
    raw.destroy(config.id)  # the task's record goes, and our end of the channel

    def released() -> None:
        assert socket_fds(spawner) == with_task - 1, "the spawner keeps the channel"

    wait_for(released, timeout=5)


def test_output_still_held_open_is_copied_before_the_exit_is_published(raw, tmp_path):
    # The background sleep ignores SIGINT (a non-interactive shell's jobs do) and holds
    # stdout open after the task's process exits: the pump reports that exit once it
    # has copied what the task wrote, and the stop's SIGKILL ends the sleep.
    config = task_config(tmp_path, sh("sleep 300 & echo ready; exec sleep 300"))
    pid = raw.start(config).driver_state["pid"]
    wait_for(lambda: _check("ready" in stdout_of(config), "no ready yet"), timeout=5)
    raw.stop(config.id, 10.0)
    assert raw.inspect(config.id).exit_result == SIGINT_EXIT
    assert "ready" in stdout_of(config)
    wait_for(lambda: _check(not group_members(pid), "group left"), timeout=5)


def test_concurrent_stops_and_a_wait_all_return_the_exit(raw, tmp_path):
    config = task_config(tmp_path, sh("exec sleep 30"))
    raw.start(config)
    results: list[object] = []

    def stop() -> None:
        raw.stop(config.id, 10.0)
        results.append(raw.inspect(config.id).exit_result)

    def wait() -> None:
        results.append(raw.wait(config.id, CancelToken()))

    threads = [threading.Thread(target=f, name=f"notice-{f.__name__}") for f in (wait, stop)]
    threads.append(threading.Thread(target=stop, name="notice-stop-2"))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10.0)
    assert results == [SIGINT_EXIT] * 3


def test_close_releases_a_stop_waiting_on_the_notice(raw, tmp_path, state_dir):
    config = task_config(tmp_path, sh("trap '' INT; exec sleep 300"))
    handle = raw.start(config)
    # start() returns once the shell runs; the stop's SIGINT must find INT ignored,
    # which it is once the shell has exec'd sleep.
    comm = Path(f"/proc/{handle.driver_state['pid']}/comm")
    wait_for(lambda: _check(comm.read_text() == "sleep\n", "not sleep yet"), timeout=5)
    errors: list[BaseException] = []

    def stop() -> None:
        try:
            raw.stop(config.id, 60.0)
        except BaseException as err:
            errors.append(err)

    stopper = threading.Thread(target=stop, name="notice-stopper")
    stopper.start()
    wait_for(lambda: in_frame(stopper, "_take_notice"), timeout=5)
    raw.close()
    stopper.join(10.0)
    assert not stopper.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], DriverError), errors
    with RawExecDriver(state_dir=str(state_dir)) as other:  # end the task
        other.recover(handle)
        other.stop(config.id, 0.0)
        assert other.inspect(config.id).exit_result == ExitResult(exit_code=137, signal=9)


def start_with_background_sleep(raw: RawExecDriver, tmp_path: Path) -> tuple[TaskConfig, int, int]:
    """Start a task running `background_sleep`: its config, its pid, and the sleep's pid
    once the sleep runs."""
    child_pid = tmp_path / "child.pid"
    child_pid.touch()
    config = task_config(tmp_path, sh(background_sleep(child_pid)))
    pid = raw.start(config).driver_state["pid"]
    wait_for(lambda: _check(child_pid.read_text().endswith("\n"), "no child yet"), timeout=5)
    return config, pid, int(child_pid.read_text())


def background_sleep(child_pid: Path) -> str:
    """A script that starts a background ``sleep`` (SIGINT ignored, as a non-interactive
    shell's jobs have it) holding none of the task's pipes, then waits. The sleep
    writes its pid to `child_pid` itself, once its output is redirected: a pid the
    shell wrote (``$!``) can be there while the forked child still holds the task's
    stdout, and a stop then rightly waits for that pipe's end of file."""
    return f"sh -c 'echo $$ > {child_pid}; exec sleep 300' >/dev/null 2>&1 & wait"


def _check(condition: object, message: str) -> None:
    assert condition, message


def test_last_words_on_the_stop_signal_reach_the_logs_before_the_exit(raw, tmp_path):
    # The task writes as it exits: its pipe holds output when the notice arrives, so
    # the stopping thread leaves the report to the pump, which copies it first.
    config = task_config(
        tmp_path, sh("trap 'echo bye; exit 3' INT; echo ready; while :; do sleep 0.05; done")
    )
    raw.start(config)
    wait_for(lambda: _check("ready" in stdout_of(config), "no ready yet"), timeout=5)
    raw.stop(config.id, 10.0)
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=3)
    assert stdout_of(config) == "ready\nbye\n"


def test_pipes_the_stopping_thread_takes_are_closed_once_the_task_is_destroyed(raw, tmp_path):
    def run_once(name: str) -> None:
        config = task_config(tmp_path, sh("exec sleep 30"), name=name)
        raw.start(config)
        raw.stop(config.id, 10.0)
        assert raw.wait(config.id, CancelToken()) == SIGINT_EXIT
        raw.destroy(config.id)

    run_once("warm")  # the spawner connection and the pump thread stay
    before = open_descriptors()
    run_once("measured")
    # Nothing the measured task opened is left open. Compared as (fd, what it is) so
    # that a descriptor of an earlier test's driver closed meanwhile (its finalizer
    # runs when its last reference goes) neither hides a leak nor fails the test.
    assert open_descriptors() - before == set()


def test_the_group_is_killed_as_soon_as_the_task_exits_not_once_the_spawner_reports_it(
    raw, tmp_path, state_dir
):
    # The spawner is stopped, so no notice can come: the stopping thread sees the
    # task's exit on its pidfd and kills what is left of the group (a background sleep,
    # which ignores SIGINT and holds no pipe of the task's) right then, and still
    # publishes the exit only from the spawner's notice.
    config, pid, child = start_with_background_sleep(raw, tmp_path)
    spawner = spawner_pid(state_dir)
    assert spawner is not None
    results: list[object] = []

    def stop() -> None:
        raw.stop(config.id, 10.0)
        results.append(raw.wait(config.id, CancelToken()))

    stopper = threading.Thread(target=stop, name="notice-early-kill")
    os.kill(spawner, signal.SIGSTOP)
    try:
        stopper.start()
        wait_for(lambda: _check(not alive(child), "the group's sleep lives on"), timeout=5)
        assert stopper.is_alive() and not results, "published without the spawner's notice"
    finally:
        os.kill(spawner, signal.SIGCONT)
    stopper.join(10.0)
    assert results == [SIGINT_EXIT]
    wait_for(lambda: _check(not group_members(pid), "group left"), timeout=5)


def test_a_notice_already_there_when_the_stop_looks_is_taken_at_once(raw, tmp_path, monkeypatch):
    # On busy CPUs the signalled task, and then its spawner, may run before the
    # stopping thread gets past the signal: the task is reaped and its notice written
    # by then. The stopping thread takes that notice at once (it opens no pidfd and
    # polls nothing), publishes the exit and still kills what is left of the group.
    config, pid, child = start_with_background_sleep(raw, tmp_path)
    signal_group = _TaskProcess.signal_group
    notice_seen: list[bool] = []

    def signal_then_wait_for_the_notice(proc: _TaskProcess, sig: int) -> None:
        signal_group(proc, sig)
        if sig == signal.SIGINT and proc.notice is not None:
            readable = select.poll()
            readable.register(proc.notice.fileno(), select.POLLIN)
            notice_seen.append(bool(readable.poll(5000)))

    def no_pidfd(self: RawExecDriver, proc: _TaskProcess) -> int | None:
        raise AssertionError("the stop opened the task's pidfd")

    monkeypatch.setattr(_TaskProcess, "signal_group", signal_then_wait_for_the_notice)
    monkeypatch.setattr(RawExecDriver, "_task_pidfd", no_pidfd)
    raw.stop(config.id, 10.0)
    assert notice_seen == [True]
    assert raw.wait(config.id, CancelToken()) == SIGINT_EXIT
    wait_for(lambda: _check(not alive(child), "the group's sleep lives on"), timeout=5)
    wait_for(lambda: _check(not group_members(pid), "group left"), timeout=5)
