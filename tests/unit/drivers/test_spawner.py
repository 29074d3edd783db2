"""The raw_exec spawner with real processes: its crash cases (an agent killed during a
start, the spawner killed with running tasks, a task exiting while no agent lives),
one spawner per dir, its retirement, and handles of the older wrapper design."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import ExitResult, RawExecDriver, TaskHandle
from allocrunner.drivers._process import children_of, read_pid_stat, read_status
from allocrunner.drivers.base import TASK_STATE_RUNNING
from allocrunner.drivers.spawner_client import SpawnerClient
from allocrunner.errors import DriverError
from allocrunner.testing import wait_for
from tests.unit.drivers.raw_exec_support import assert_spawner_retires, spawner_pid
from tests.unit.drivers.support import alive, proc_state, sh, task_config

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "spawner"


@pytest.fixture
def raw(no_leftover_processes, state_dir):
    driver = RawExecDriver(state_dir=str(state_dir))
    yield driver
    driver.close()
    assert_spawner_retires(state_dir)


def _check(condition: object, message: str) -> None:
    assert condition, message


def read_pid_file(path: Path) -> int:
    def check() -> int:
        text = path.read_text() if path.exists() else ""
        assert text.endswith("\n"), f"{path} not written yet"
        return int(text)

    return wait_for(check, timeout=10)


def ppid_of(pid: int) -> int | None:
    found = read_pid_stat(pid)
    return None if found is None else found.ppid


def task_pids_of_spawner(state_dir: Path) -> list[int]:
    pid = spawner_pid(state_dir)
    return [] if pid is None else [child.pid for child in children_of(pid)]


def run_agent(script: str, config, state_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run an agent in another Python process (it gets the config and the dir)."""
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps(config.to_json()), str(state_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )


# An agent that SIGKILLs itself once its start request is sent, before any reply.
_DIE_DURING_START = """
import json, os, signal, sys
from allocrunner.drivers import RawExecDriver, TaskConfig
from allocrunner.drivers import spawner_client

def die(conn):
    os.kill(os.getpid(), signal.SIGKILL)

spawner_client._receive = die
config = TaskConfig.from_json(json.loads(sys.argv[1]))
RawExecDriver(state_dir=sys.argv[2]).start(config)
"""

# An agent that starts a task, prints its handle and exits without stopping it.
_START_AND_LEAVE = """
import json, sys
from allocrunner.drivers import RawExecDriver, TaskConfig
config = TaskConfig.from_json(json.loads(sys.argv[1]))
driver = RawExecDriver(state_dir=sys.argv[2])
handle = driver.start(config)
driver.close()
print(json.dumps(handle.to_json()))
"""


def test_agent_killed_during_a_start_never_gets_the_task_started_twice(raw, tmp_path, state_dir):
    config = task_config(tmp_path, sh('echo $$ > "$PWD/pid"; exec sleep 30'))
    done = run_agent(_DIE_DURING_START, config, state_dir)
    assert done.returncode == -signal.SIGKILL, done.stderr
    started = read_pid_file(Path(config.task_dir) / "pid")
    assert task_pids_of_spawner(state_dir) == [started]
    # The next agent starts the same task: the spawner's running process is adopted.
    handle = raw.start(config)
    assert handle.driver_state["pid"] == started
    assert task_pids_of_spawner(state_dir) == [started]
    assert raw.inspect(config.id).state == TASK_STATE_RUNNING
    raw.stop(config.id, 5.0)
    assert raw.inspect(config.id).exit_result == ExitResult(exit_code=130, signal=2)
    assert proc_state(started) is None


def test_task_exit_while_no_agent_lives_is_recorded_by_the_spawner(tmp_path, state_dir):
    config = task_config(tmp_path, sh("while [ ! -e go ]; do sleep 0.01; done; exit 3"))
    done = run_agent(_START_AND_LEAVE, config, state_dir)
    assert done.returncode == 0, done.stderr
    handle = TaskHandle.from_json(json.loads(done.stdout))
    pid = handle.driver_state["pid"]
    assert ppid_of(pid) == spawner_pid(state_dir)
    (Path(config.task_dir) / "go").touch()
    wait_for(lambda: _check(proc_state(pid) is None, f"{pid} not reaped"), timeout=10)
    status = Path(handle.driver_state["status_path"])
    assert status.read_text() == f"3 {pid}\n"
    # No task and no agent: the spawner is gone too; the status file holds the exit.
    assert_spawner_retires(state_dir)
    with RawExecDriver(state_dir=str(state_dir)) as agent:
        agent.recover(handle)
        assert agent.wait(config.id, CancelToken()) == ExitResult(exit_code=3)
    assert_spawner_retires(state_dir)


def test_a_running_task_status_file_holds_no_status_until_its_exit_is_written_over_it(
    raw, tmp_path
):
    config = task_config(tmp_path, sh("while [ ! -e go ]; do sleep 0.01; done; exit 4"))
    handle = raw.start(config)
    pid = handle.driver_state["pid"]
    status = Path(handle.driver_state["status_path"])
    # Written by the spawner right after its reply: a lone newline, which names no pid.
    wait_for(lambda: _check(status.exists() and status.read_bytes() == b"\n", "no newline"))
    assert read_status(str(status), pid) is None
    (Path(config.task_dir) / "go").touch()
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=4)
    assert status.read_text() == f"4 {pid}\n"
    assert read_status(str(status), pid) == 4


def test_spawner_killed_leaves_tasks_running_with_an_unknown_exit(raw, tmp_path, state_dir):
    config = task_config(tmp_path, sh("exec sleep 30"))
    handle = raw.start(config)
    pid = handle.driver_state["pid"]
    first = spawner_pid(state_dir)
    assert first is not None and ppid_of(pid) == first
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: _check(proc_state(first) is None, "spawner still there"), timeout=10)
    # The task runs on, orphaned, and the driver still reports it running.
    assert alive(pid) and ppid_of(pid) != first
    assert raw.inspect(config.id).state == TASK_STATE_RUNNING
    # A new task gets a new spawner.
    other = task_config(tmp_path, sh("exit 5"), name="other")
    raw.start(other)
    assert raw.wait(other.id, CancelToken()) == ExitResult(exit_code=5)
    assert spawner_pid(state_dir) not in (None, first)
    # A new agent recovers the orphan as running too.
    with RawExecDriver(state_dir=str(state_dir)) as agent:
        agent.recover(handle)
        assert agent.inspect(config.id).state == TASK_STATE_RUNNING
    raw.stop(config.id, 5.0)
    result = raw.inspect(config.id).exit_result
    assert result is not None and result.err is not None and "unknown" in result.err, result
    assert not result.successful()
    assert not alive(pid)


def test_orphan_that_ignores_the_stop_is_reported_sigkilled(raw, tmp_path, state_dir):
    config = task_config(tmp_path, sh("trap '' INT; echo ready; exec sleep 30"))
    raw.start(config)
    first = spawner_pid(state_dir)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: _check(proc_state(first) is None, "spawner still there"), timeout=10)
    raw.stop(config.id, 0.2)
    assert raw.inspect(config.id).exit_result == ExitResult(exit_code=137, signal=9)


def test_one_spawner_serves_concurrent_first_starts(tmp_path, state_dir, no_leftover_processes):
    drivers = [RawExecDriver(state_dir=str(state_dir)) for _ in range(4)]
    configs = [task_config(tmp_path, sh("exit 0"), name=f"t{i}") for i in range(4)]
    errors: list[BaseException] = []

    def start(driver: RawExecDriver, config) -> None:
        try:
            driver.start(config)
            driver.wait(config.id, CancelToken())
        except BaseException as err:
            errors.append(err)

    threads = [
        threading.Thread(target=start, args=pair, name="starter")
        for pair in zip(drivers, configs, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    pids = {driver_pid(d) for d in drivers}
    assert len(pids) == 1 and None not in pids, pids
    for driver in drivers:
        driver.close()
    assert_spawner_retires(state_dir)


def driver_pid(driver: RawExecDriver) -> int | None:
    client = SpawnerClient(driver.state_dir)
    try:
        return client.ping()
    finally:
        client.close()


def test_wrapper_handle_with_a_recorded_status_is_recovered(raw, tmp_path):
    config = task_config(tmp_path, sh("exit 0"))
    status = Path(config.task_dir) / ".allocrunner-exit-status"
    state = {"pid": 999_999, "pgid": 999_999, "start_ticks": [1, 2], "status_path": str(status)}
    status.write_text("5 999999\n")
    raw.recover(TaskHandle(driver="raw_exec", config=config, driver_state=state))
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=5)
    other = task_config(tmp_path, sh("exit 0"), name="other")
    state = {**state, "status_path": str(Path(other.task_dir) / "missing")}
    with pytest.raises(DriverError, match="no exit status"):
        raw.recover(TaskHandle(driver="raw_exec", config=other, driver_state=state))


def test_many_tasks_stopped_together_are_each_reaped(raw, tmp_path):
    configs = [task_config(tmp_path, sh("exec sleep 30"), name=f"s{i}") for i in range(40)]
    pids = [raw.start(config).driver_state["pid"] for config in configs]
    assert sorted(task_pids_of_spawner(raw_state_dir(raw))) == sorted(pids)
    errors: list[BaseException] = []

    def stop(config) -> None:
        try:
            raw.stop(config.id, 10.0)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=stop, args=(c,), name="stopper") for c in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for config, pid in zip(configs, pids, strict=True):
        assert raw.inspect(config.id).exit_result == ExitResult(exit_code=130, signal=2)
        assert proc_state(pid) is None


def raw_state_dir(driver: RawExecDriver) -> Path:
    return Path(driver.state_dir)
