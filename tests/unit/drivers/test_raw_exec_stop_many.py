"""raw_exec's `stop_many` with real processes: every group signalled before any wait, one
shared timeout before SIGKILL, the rest of each group killed, nothing signalled when an
id is unknown, and a close releasing the waiting caller."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import ExitResult, RawExecDriver
from allocrunner.drivers.logs import read_logs
from allocrunner.errors import DriverError
from allocrunner.testing import wait_for
from tests.unit.drivers.support import alive, group_members, in_frame, sh, task_config

SIGINT_EXIT = ExitResult(exit_code=130, signal=2)
SIGKILL_EXIT = ExitResult(exit_code=137, signal=9)


def started(raw: RawExecDriver, root: Path, script: str, name: str) -> tuple[str, int]:
    """Start `script` as task `name` under `root`; its task id and pid, once it has
    written "ready" to its stdout."""
    config = task_config(root / name, sh(script), name=name)
    handle = raw.start(config)

    def ready() -> None:
        out = read_logs(config.logs_dir, config.name, "stdout").decode()
        assert "ready" in out, f"{name} not ready: {out!r}"

    wait_for(ready, timeout=5)
    return config.id, int(handle.driver_state["pid"])


def test_every_task_gets_the_stop_signal_and_is_gone_on_return(raw, tmp_path):
    tasks = [started(raw, tmp_path, "echo ready; exec sleep 300", f"t{i}") for i in range(5)]
    raw.stop_many([task_id for task_id, _ in tasks], 5.0)
    for task_id, pid in tasks:
        assert raw.inspect(task_id).exit_result == SIGINT_EXIT
        assert raw.wait(task_id, CancelToken()) == SIGINT_EXIT
        assert not alive(pid), f"pid {pid} of {task_id} still runs"


def test_a_custom_signal_reaches_every_task(raw, tmp_path):
    tasks = [started(raw, tmp_path, "echo ready; exec sleep 300", f"t{i}") for i in range(3)]
    raw.stop_many([task_id for task_id, _ in tasks], 5.0, "SIGTERM")
    for task_id, _ in tasks:
        assert raw.inspect(task_id).exit_result == ExitResult(exit_code=143, signal=15)


def test_the_timeout_is_shared_and_only_the_stubborn_are_sigkilled(raw, tmp_path):
    # Four tasks ignore SIGINT: stopped one after another they would take four
    # timeouts; together they take one, then SIGKILL. The polite one exits on SIGINT.
    stubborn = [
        started(raw, tmp_path, "trap '' INT; echo ready; exec sleep 300", f"s{i}") for i in range(4)
    ]
    polite = started(raw, tmp_path, "echo ready; exec sleep 300", "polite")
    ids = [task_id for task_id, _ in [*stubborn, polite]]
    t0 = time.monotonic()
    raw.stop_many(ids, 0.5)
    took = time.monotonic() - t0
    assert 0.5 <= took < 1.5, f"took {took:.2f} s"
    for task_id, pid in stubborn:
        assert raw.inspect(task_id).exit_result == SIGKILL_EXIT
        assert not alive(pid)
    assert raw.inspect(polite[0]).exit_result == SIGINT_EXIT


def test_what_outlives_each_task_in_its_group_is_killed(raw, tmp_path):
    # The background sleep ignores SIGINT (a non-interactive shell starts it so), and
    # the shell exits on it: only the group kill after the exit ends the sleep.
    script = "sleep 300 & echo $! > child.pid; echo ready; wait"
    tasks = [started(raw, tmp_path, script, f"t{i}") for i in range(3)]
    children = [int((tmp_path / f"t{i}" / f"t{i}" / "child.pid").read_text()) for i in range(3)]
    raw.stop_many([task_id for task_id, _ in tasks], 5.0)
    for task_id, pid in tasks:
        assert raw.inspect(task_id).exit_result == SIGINT_EXIT
        wait_for(lambda pid=pid: _check(not group_members(pid), f"group {pid} left"), 5)
    for child in children:
        wait_for(lambda child=child: _check(not alive(child), f"{child} alive"), 5)


def test_a_group_is_killed_as_its_task_exits_not_once_all_have(raw, tmp_path):
    # The polite task's shell exits on SIGINT and leaves its background sleep; the
    # stubborn task holds the stop for its whole timeout. The sleep must die while the
    # stop still waits, before the reaped shell's pid could be reused as a group id.
    stubborn = started(raw, tmp_path, "trap '' INT; echo ready; exec sleep 300", "stubborn")
    script = "sleep 300 & echo $! > child.pid; echo ready; wait"
    polite = started(raw, tmp_path, script, "polite")
    child = int((tmp_path / "polite" / "polite" / "child.pid").read_text())
    stopper = threading.Thread(
        target=raw.stop_many, args=([stubborn[0], polite[0]], 30.0), name="stop-many"
    )
    stopper.start()
    try:
        wait_for(lambda: _check(not alive(child), f"{child} alive"), timeout=5)
        assert raw.inspect(polite[0]).exit_result == SIGINT_EXIT
        assert stopper.is_alive() and alive(stubborn[1])
    finally:
        raw.signal(stubborn[0], "SIGKILL")
        stopper.join(10.0)
    assert not stopper.is_alive()
    assert raw.inspect(stubborn[0]).exit_result == SIGKILL_EXIT


def test_an_unknown_id_raises_before_any_task_is_signalled(raw, tmp_path):
    task_id, pid = started(raw, tmp_path, "echo ready; exec sleep 300", "t0")
    with pytest.raises(DriverError, match="no-such-task"):
        raw.stop_many([task_id, "no-such-task"], 5.0)
    assert alive(pid)
    assert raw.inspect(task_id).exit_result is None
    raw.stop_many([task_id], 5.0)
    assert raw.inspect(task_id).exit_result == SIGINT_EXIT


def test_exited_tasks_and_repeated_ids_are_left_alone(raw, tmp_path):
    done = task_config(tmp_path / "done", sh("exit 3"), name="done")
    raw.start(done)
    assert raw.wait(done.id, CancelToken()) == ExitResult(exit_code=3)
    task_id, pid = started(raw, tmp_path, "echo ready; exec sleep 300", "t0")
    raw.stop_many([done.id, task_id, task_id], 5.0)
    assert raw.inspect(done.id).exit_result == ExitResult(exit_code=3)
    assert raw.inspect(task_id).exit_result == SIGINT_EXIT
    assert not alive(pid)
    raw.stop_many([], 5.0)


def test_close_releases_a_waiting_stop_many(tmp_path, no_leftover_processes):
    state_dir = tmp_path / "spawner"
    raw = RawExecDriver(state_dir=str(state_dir))
    handles = []
    try:
        ids = []
        for i in range(2):
            config = task_config(
                tmp_path / f"t{i}", sh("trap '' INT; echo ready; exec sleep 300"), name=f"t{i}"
            )
            handles.append(raw.start(config))
            ids.append(config.id)
            wait_for(lambda c=config: _check(b"ready" in _stdout(c), "not ready"), 5)
        errors: list[BaseException] = []

        def stop() -> None:
            try:
                raw.stop_many(ids, 60.0)
            except BaseException as err:
                errors.append(err)

        stopper = threading.Thread(target=stop, name="stop-many")
        stopper.start()
        wait_for(lambda: in_frame(stopper, "_await_all"), timeout=5)
    finally:
        raw.close()
    stopper.join(10.0)
    assert not stopper.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], DriverError), errors
    assert "closed" in str(errors[0])
    with RawExecDriver(state_dir=str(state_dir)) as other:  # end the tasks
        for handle in handles:
            other.recover(handle)
        other.stop_many([handle.config.id for handle in handles], 0.0)
        for handle in handles:
            assert other.inspect(handle.config.id).exit_result == SIGKILL_EXIT


def _stdout(config) -> bytes:
    return read_logs(config.logs_dir, config.name, "stdout")


def _check(condition: object, message: str) -> None:
    assert condition, message
