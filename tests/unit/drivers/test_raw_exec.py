"""raw_exec with real processes: env, cwd, logs, kill, exit status, recovery, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import ExitResult, RawExecDriver, TaskHandle
from allocrunner.drivers._process import boot_ticks, read_pid_stat
from allocrunner.drivers.base import TASK_STATE_EXITED, TASK_STATE_RUNNING
from allocrunner.drivers.logs import log_indices, read_logs
from allocrunner.errors import DriverError
from allocrunner.testing import assert_stays, wait_for
from tests.unit.drivers.raw_exec_support import assert_spawner_retires
from tests.unit.drivers.support import (
    PATH,
    alive,
    group_members,
    live_children,
    proc_state,
    sh,
    task_config,
)

REPO = Path(__file__).resolve().parents[3]


def spawner_dir(tmp_path: Path) -> Path:
    return tmp_path / "spawner"


def driver_in(tmp_path: Path, **kwargs) -> RawExecDriver:
    """A driver (another agent) using the test's spawner dir."""
    return RawExecDriver(state_dir=str(spawner_dir(tmp_path)), **kwargs)


@pytest.fixture
def raw(no_leftover_processes, tmp_path):
    driver = driver_in(tmp_path)
    yield driver
    driver.close()
    assert_spawner_retires(spawner_dir(tmp_path))


def logs(config, stream: str = "stdout") -> str:
    return read_logs(config.logs_dir, config.name, stream).decode()


def log_contains(config, text: str, stream: str = "stdout"):
    def check():
        got = logs(config, stream)
        assert text in got, f"{text!r} not yet in {stream}: {got[-200:]!r}"

    return check


def run(driver: RawExecDriver, config) -> ExitResult:
    driver.start(config)
    result = driver.wait(config.id, CancelToken())
    assert result is not None
    return result


# --- the process environment ---------------------------------------------------------


def test_env_is_exactly_the_task_env(raw, tmp_path, monkeypatch):
    monkeypatch.setenv("ALLOCRUNNER_AGENT_ONLY", "leak")
    env = {"PATH": PATH, "NOMAD_TASK_NAME": "web", "GREETING": "hello world"}
    config = task_config(tmp_path, sh("env"), env=env)
    assert run(raw, config) == ExitResult()
    seen = dict(line.split("=", 1) for line in logs(config).splitlines() if "=" in line)
    assert seen["GREETING"] == "hello world"
    assert seen["NOMAD_TASK_NAME"] == "web"
    assert "ALLOCRUNNER_AGENT_ONLY" not in seen
    # /bin/sh itself may add PWD; nothing of the agent's environment leaks in.
    assert set(seen) - set(env) <= {"PWD", "SHLVL", "OLDPWD", "_"}


def test_cwd_is_the_task_dir(raw, tmp_path):
    config = task_config(tmp_path, sh("pwd -P"))
    run(raw, config)
    assert logs(config).strip() == os.path.realpath(config.task_dir)


def test_command_is_looked_up_in_path_and_task_dir(raw, tmp_path):
    config = task_config(tmp_path, {"command": "echo", "args": ["from", "path"]})
    run(raw, config)
    assert logs(config) == "from path\n"
    local = Path(config.task_dir) / "local"
    local.mkdir()
    script = local / "hello.sh"
    script.write_text("#!/bin/sh\necho local script\n")
    script.chmod(0o755)
    config2 = task_config(tmp_path, {"command": "hello.sh"})
    run(raw, config2)
    assert "local script" in logs(config2)
    config3 = task_config(tmp_path, {"command": "local/hello.sh"})
    run(raw, config3)
    assert logs(config3).count("local script") == 2  # same log files, appended


def test_args_are_passed_verbatim(raw, tmp_path):
    args = ["a b", "$HOME", "*", "", "'q'"]
    config = task_config(
        tmp_path, {"command": "/bin/sh", "args": ["-c", 'printf "%s|" "$@"', "x", *args]}
    )
    run(raw, config)
    assert logs(config) == "|".join(args) + "|"


# --- exit status ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("exit 0", ExitResult()),
        ("exit 7", ExitResult(exit_code=7)),
        ("kill -TERM $$", ExitResult(exit_code=143, signal=15)),
        ("kill -KILL $$", ExitResult(exit_code=137, signal=9)),
        ("exit 255", ExitResult(exit_code=255)),
    ],
    ids=["zero", "seven", "sigterm", "sigkill", "255-not-a-signal"],
)
def test_exit_code_and_signal_when_process_exits_on_its_own(raw, tmp_path, script, expected):
    config = task_config(tmp_path, sh(script))
    assert run(raw, config) == expected
    status = raw.inspect(config.id)
    assert status.state == TASK_STATE_EXITED
    assert status.exit_result == expected
    assert status.completed_at >= status.started_at


def test_exit_status_file_records_the_command_status(raw, tmp_path):
    config = task_config(tmp_path, sh("exit 9"))
    handle = raw.start(config)
    raw.wait(config.id, CancelToken())
    # The status line names the wrapper that wrote it, so a stale one is never misread.
    assert (
        Path(handle.driver_state["status_path"]).read_text() == f"9 {handle.driver_state['pid']}\n"
    )


def test_wait_returns_after_logs_are_drained(raw, tmp_path):
    config = task_config(
        tmp_path,
        sh("i=0; while [ $i -lt 2000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxx; i=$((i+1)); done"),
    )
    run(raw, config)
    lines = logs(config).splitlines()
    assert len(lines) == 2000
    assert lines[-1].startswith("line-1999-")


def test_no_zombie_after_exit(raw, tmp_path):
    config = task_config(tmp_path, sh("exit 0"))
    handle = raw.start(config)
    raw.wait(config.id, CancelToken())
    assert proc_state(handle.driver_state["pid"]) is None


# --- logs ----------------------------------------------------------------------------


def test_stdout_and_stderr_logs(raw, tmp_path):
    config = task_config(tmp_path, sh("echo out; echo err >&2"))
    run(raw, config)
    assert (Path(config.logs_dir) / "web.stdout.0").read_text() == "out\n"
    assert (Path(config.logs_dir) / "web.stderr.0").read_text() == "err\n"


def test_logs_rotate_by_size_and_keep_max_files(raw, tmp_path):
    # 50 lines of 100 bytes = 5000 bytes, into files of 1000 bytes, 3 kept.
    line = "x" * 99
    script = f"i=0; while [ $i -lt 50 ]; do echo {line}; i=$((i+1)); done; echo tail >&2"
    config = task_config(tmp_path, sh(script), log_max_files=3, log_max_file_size_bytes=1000)
    run(raw, config)
    indices = log_indices(config.logs_dir, "web", "stdout")
    assert indices == [2, 3, 4]
    sizes = [(Path(config.logs_dir) / f"web.stdout.{i}").stat().st_size for i in indices]
    assert sizes == [1000, 1000, 1000]
    assert logs(config) == (line + "\n") * 30
    assert log_indices(config.logs_dir, "web", "stderr") == [0]


def test_restarted_task_appends_to_newest_log(raw, tmp_path):
    first = task_config(tmp_path, sh("echo one"), log_max_file_size_bytes=6)
    run(raw, first)
    second = task_config(tmp_path, sh("echo two"), log_max_file_size_bytes=6)
    run(raw, second)
    assert logs(second) == "one\ntwo\n"
    assert log_indices(second.logs_dir, "web", "stdout") == [0, 1]


def test_output_is_pumped_while_running(raw, tmp_path):
    config = task_config(tmp_path, sh("echo started; exec sleep 30"))
    raw.start(config)
    wait_for(log_contains(config, "started"), timeout=5)
    assert raw.inspect(config.id).state == TASK_STATE_RUNNING
    raw.stop(config.id, 5.0)


# --- stop and signals ----------------------------------------------------------------


def test_stop_sends_sigint_by_default(raw, tmp_path):
    config = task_config(tmp_path, sh("exec sleep 30"))
    raw.start(config)
    raw.stop(config.id, 5.0)
    assert raw.inspect(config.id).exit_result == ExitResult(exit_code=130, signal=2)


def test_stop_with_custom_signal(raw, tmp_path):
    config = task_config(tmp_path, sh("exec sleep 30"))
    raw.start(config)
    raw.stop(config.id, 5.0, "SIGTERM")
    assert raw.inspect(config.id).exit_result == ExitResult(exit_code=143, signal=15)


def test_stop_reaches_grandchildren(raw, tmp_path):
    # `ready` is written once both background sleeps are forked, so the group then has
    # its three members (the shell and two sleeps).
    script = "sleep 300 & echo $! > child.pid; sleep 300 & echo forked > ready; wait"
    config = task_config(tmp_path, sh(script))
    handle = raw.start(config)
    pid_file = Path(config.task_dir) / "child.pid"
    ready = Path(config.task_dir) / "ready"
    wait_for(lambda: _assert(ready.exists() and ready.read_text().strip(), "not ready"), 5)
    grandchild = int(pid_file.read_text())
    pgid = handle.driver_state["pgid"]
    assert alive(grandchild)
    assert len(group_members(pgid)) >= 3
    raw.stop(config.id, 5.0)
    wait_for(lambda: _assert(not alive(grandchild), f"grandchild {grandchild} alive"), 5)
    wait_for(lambda: _assert(not group_members(pgid), "group still has members"), 5)


def test_kill_timeout_escalates_to_sigkill(raw, tmp_path):
    config = task_config(tmp_path, sh("trap '' INT; echo ready; exec sleep 300"))
    raw.start(config)
    wait_for(log_contains(config, "ready"), timeout=5)
    t0 = time.monotonic()
    raw.stop(config.id, 0.3)
    took = time.monotonic() - t0
    assert 0.3 <= took < 5
    assert raw.inspect(config.id).exit_result == ExitResult(exit_code=137, signal=9)


def test_signal_goes_to_the_group(raw, tmp_path):
    script = "trap 'echo got-hup' HUP; echo ready; while :; do sleep 0.01; done"
    config = task_config(tmp_path, sh(script))
    raw.start(config)
    wait_for(log_contains(config, "ready"), timeout=5)
    raw.signal(config.id, "SIGHUP")
    wait_for(log_contains(config, "got-hup"), timeout=5)
    assert raw.inspect(config.id).state == TASK_STATE_RUNNING
    raw.signal(config.id, "USR1")  # the wrapper survives signals the command dies of
    wait_for(lambda: _assert(raw.inspect(config.id).state == TASK_STATE_EXITED, "running"), 5)
    assert raw.inspect(config.id).exit_result == ExitResult(exit_code=138, signal=10)


def test_signal_of_exited_task_fails(raw, tmp_path):
    config = task_config(tmp_path, sh("exit 0"))
    run(raw, config)
    with pytest.raises(DriverError, match="not running"):
        raw.signal(config.id, "SIGHUP")


def test_destroy_force_kills_and_removes_state(raw, tmp_path):
    config = task_config(tmp_path, sh("exec sleep 30"))
    handle = raw.start(config)
    with pytest.raises(DriverError, match="running"):
        raw.destroy(config.id)
    raw.destroy(config.id, force=True)
    assert not alive(handle.driver_state["pid"])
    assert not Path(handle.driver_state["status_path"]).exists()
    with pytest.raises(DriverError, match="unknown"):
        raw.inspect(config.id)


def test_stats_of_running_task(raw, tmp_path):
    config = task_config(tmp_path, sh("exec sleep 30"))
    raw.start(config)
    assert raw.stats(config.id)["processes"] >= 1

    def mapped() -> None:
        # start() returns once the exec is past its point of no return; the new
        # program's memory may be mapped a moment later.
        assert raw.stats(config.id)["memory_rss_bytes"] > 0

    wait_for(mapped, timeout=5)
    raw.stop(config.id, 5.0)
    assert raw.stats(config.id) == {}


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver_config", "needle", "at_validate"),
    [
        ({}, "missing command", True),
        ({"command": ""}, "missing command", True),
        ({"command": 5}, "command must be a string", True),
        ({"command": "/no/such/binary-xyz"}, "/no/such/binary-xyz", False),
        ({"command": "no-such-command-xyz"}, "no-such-command-xyz", False),
        ({"command": "/bin/echo", "args": "hello"}, "args must be a list", True),
        ({"command": "/bin/echo", "args": ["ok", 3]}, r"args\[1\]", True),
        ({"command": "/bin/echo", "arg": ["x"]}, "unknown key 'arg'", True),
    ],
    ids=[
        "missing",
        "empty",
        "not-a-string",
        "no-such-path",
        "not-in-path",
        "args-str",
        "args-int",
        "unknown-key",
    ],
)
def test_bad_config_is_a_driver_error_and_starts_nothing(
    raw, tmp_path, driver_config, needle, at_validate
):
    config = task_config(tmp_path, driver_config)
    before = live_children()
    if at_validate:
        with pytest.raises(DriverError, match=needle):
            raw.validate_config(config)
    else:
        raw.validate_config(config)  # a missing binary is only found at start
    with pytest.raises(DriverError, match=needle):
        raw.start(config)
    assert live_children() == before
    with pytest.raises(DriverError, match="unknown task"):
        raw.inspect(config.id)


def test_missing_task_dir_is_an_error(raw, tmp_path):
    config = task_config(tmp_path, sh("exit 0"))
    os.rmdir(config.task_dir)
    with pytest.raises(DriverError, match="task_dir"):
        raw.start(config)


def test_non_executable_command_is_an_error(raw, tmp_path):
    script = tmp_path / "plain.txt"
    script.write_text("echo hi\n")
    with pytest.raises(DriverError, match=r"plain\.txt"):
        raw.start(task_config(tmp_path, {"command": str(script)}))


def test_duplicate_running_task_id_is_refused(raw, tmp_path):
    config = task_config(tmp_path, sh("exec sleep 30"))
    raw.start(config)
    before = live_children()
    with pytest.raises(DriverError, match="already running"):
        raw.start(config)
    assert live_children() == before
    raw.stop(config.id, 5.0)


# --- recovery ------------------------------------------------------------------------

_START_ELSEWHERE = """
import json, sys
from allocrunner.drivers import RawExecDriver, TaskConfig
config = TaskConfig.from_json(json.loads(sys.argv[1]))
driver = RawExecDriver(state_dir=sys.argv[2])
handle = driver.start(config)
driver.close()
print(json.dumps(handle.to_json()))
"""


def start_in_other_agent(config) -> TaskHandle:
    """Start a task from another Python process that then exits (an agent that died):
    the task is no child of this process."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _START_ELSEWHERE,
            json.dumps(config.to_json()),
            str(spawner_dir(Path(config.task_dir).parent)),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, "ALLOCRUNNER_LOCKCHECK": "1"},
    )
    handle = TaskHandle.from_json(json.loads(out.stdout))
    assert handle.driver_state["pid"] not in live_children()
    return handle


def gated(script_after: str) -> dict:
    """A task that runs until a file `go` appears in its task dir."""
    return sh(f"while [ ! -e go ]; do sleep 0.01; done; {script_after}")


def test_recover_running_task_in_new_agent_gets_true_exit_code(raw, tmp_path):
    config = task_config(tmp_path, gated("echo done; exit 42"))
    handle = start_in_other_agent(config)
    raw.recover(TaskHandle.from_json(handle.to_json()))
    assert raw.inspect(config.id).state == TASK_STATE_RUNNING
    (Path(config.task_dir) / "go").touch()
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=42)
    assert "done" in logs(config)
    raw.recover(handle)  # idempotent


def test_recover_task_that_exited_while_agent_was_down(raw, tmp_path):
    config = task_config(tmp_path, gated("exit 3"))
    handle = start_in_other_agent(config)
    (Path(config.task_dir) / "go").touch()
    pid = handle.driver_state["pid"]
    wait_for(lambda: _assert(not alive(pid), f"pid {pid} still alive"), 10)
    raw.recover(handle)
    assert raw.inspect(config.id).exit_result == ExitResult(exit_code=3)
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=3)


def test_recover_signalled_task_in_new_agent(raw, tmp_path):
    config = task_config(tmp_path, gated("exit 0"))
    handle = start_in_other_agent(config)
    raw.recover(handle)
    raw.stop(config.id, 5.0)
    assert raw.inspect(config.id).exit_result == ExitResult(exit_code=130, signal=2)


def test_recover_escalation_to_sigkill_without_being_parent(raw, tmp_path):
    config = task_config(tmp_path, sh("trap '' INT; echo ready; exec sleep 300"))
    handle = start_in_other_agent(config)
    raw.recover(handle)
    wait_for(log_contains(config, "ready"), timeout=5)
    raw.stop(config.id, 0.2)
    assert raw.inspect(config.id).exit_result == ExitResult(exit_code=137, signal=9)


def test_recover_task_killed_while_agent_was_down_reports_the_kill(raw, tmp_path):
    config = task_config(tmp_path, gated("exit 0"))
    handle = start_in_other_agent(config)
    os.killpg(handle.driver_state["pgid"], signal.SIGKILL)
    pid = handle.driver_state["pid"]
    wait_for(lambda: _assert(proc_state(pid) is None, f"pid {pid} not reaped"), 10)
    raw.recover(handle)
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=137, signal=9)


def test_recover_task_gone_without_a_status_fails(raw, tmp_path):
    config = task_config(tmp_path, sh("exit 0"))
    handle = raw.start(config)
    raw.wait(config.id, CancelToken())
    Path(handle.driver_state["status_path"]).unlink()
    with driver_in(tmp_path) as other, pytest.raises(DriverError, match="no exit status"):
        other.recover(handle)


def test_output_written_while_agent_was_down_is_kept(raw, tmp_path):
    # ~200 KB of output while no agent reads: more than a pipe buffer, so the task
    # blocks (it is not killed by SIGPIPE) until the new agent drains its FIFOs.
    line = "y" * 99
    config = task_config(
        tmp_path, gated(f"i=0; while [ $i -lt 2000 ]; do echo {line}; i=$((i+1)); done; exit 5")
    )
    handle = start_in_other_agent(config)
    (Path(config.task_dir) / "go").touch()
    pid = handle.driver_state["pid"]
    assert_stays(lambda: _assert(alive(pid), "task died with no reader"), 0.3)
    raw.recover(handle)
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=5)
    assert logs(config) == (line + "\n") * 2000


def test_recover_by_second_instance_in_same_process(raw, tmp_path):
    config = task_config(tmp_path, gated("exit 4"))
    with driver_in(tmp_path) as first:
        handle = first.start(config)
    raw.recover(handle)
    (Path(config.task_dir) / "go").touch()
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=4)
    assert proc_state(handle.driver_state["pid"]) is None  # reaped, no zombie


def test_recover_after_exit_in_same_process_reaps(raw, tmp_path):
    config = task_config(tmp_path, sh("exit 6"))
    with driver_in(tmp_path) as first:
        handle = first.start(config)
        # close before the exit is noticed is not guaranteed; wait for the file
    status_file = Path(handle.driver_state["status_path"])
    wait_for(lambda: _assert(status_file.exists(), "no status yet"), 5)
    raw.recover(handle)
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=6)
    wait_for(lambda: _assert(proc_state(handle.driver_state["pid"]) is None, "zombie"), 5)


def test_recover_after_destroy_fails(raw, tmp_path):
    config = task_config(tmp_path, sh("exec sleep 30"))
    handle = raw.start(config)
    raw.destroy(config.id, force=True)
    with driver_in(tmp_path) as other, pytest.raises(DriverError):
        other.recover(handle)


def test_recover_rejects_reused_pid(raw, tmp_path):
    config = task_config(tmp_path, sh("exit 0"))
    handle = raw.start(config)
    raw.wait(config.id, CancelToken())
    raw.destroy(config.id)
    # Our own pid is alive but started at another time than the recorded task.
    state = dict(handle.driver_state)
    state["pid"] = state["pgid"] = os.getpid()
    forged = TaskHandle(driver="raw_exec", config=handle.config, driver_state=state)
    with driver_in(tmp_path) as other, pytest.raises(DriverError, match="no exit status"):
        other.recover(forged)


@pytest.mark.parametrize("key", ["pid", "start_ticks", "status_path"])
def test_recover_rejects_bad_handle(raw, tmp_path, key):
    config = task_config(tmp_path, sh("exit 0"))
    state = {"pid": 1, "pgid": 1, "start_ticks": 1, "status_path": "/nonexistent"}
    state[key] = "bad" if key != "status_path" else 7
    with pytest.raises(DriverError, match=key):
        raw.recover(TaskHandle(driver="raw_exec", config=config, driver_state=state))


def test_close_leaves_tasks_running_and_waiters_get_an_error(tmp_path, no_leftover_processes):
    driver = driver_in(tmp_path)
    config = task_config(tmp_path, sh("exec sleep 30"))
    handle = driver.start(config)
    driver.close()
    driver.close()
    assert alive(handle.driver_state["pid"])
    with pytest.raises(DriverError, match="closed"):
        driver.wait(config.id, CancelToken())
    with driver_in(tmp_path) as other:
        other.recover(handle)
        other.stop(config.id, 5.0)


# --- exit watching by polling ----------------------------------------------------------


@pytest.fixture
def polled(no_leftover_processes, tmp_path):
    driver = driver_in(tmp_path, exit_watch="poll")
    yield driver
    driver.close()
    assert_spawner_retires(spawner_dir(tmp_path))


def test_poll_mode_exit_and_stop(polled, tmp_path):
    config = task_config(tmp_path, sh("echo hi; exit 12"))
    assert run(polled, config) == ExitResult(exit_code=12)
    assert logs(config) == "hi\n"
    long = task_config(tmp_path, sh("exec sleep 30"))
    polled.start(long)
    polled.stop(long.id, 5.0)
    assert polled.inspect(long.id).exit_result == ExitResult(exit_code=130, signal=2)


def test_poll_mode_recovers_non_child(polled, tmp_path):
    config = task_config(tmp_path, gated("exit 8"))
    handle = start_in_other_agent(config)
    polled.recover(handle)
    (Path(config.task_dir) / "go").touch()
    assert polled.wait(config.id, CancelToken()) == ExitResult(exit_code=8)


def test_bad_exit_watch():
    with pytest.raises(ValueError, match="exit_watch"):
        RawExecDriver(exit_watch="inotify")


def _assert(condition: object, message: str) -> None:
    assert condition, message


# --- signals racing the start of the command ------------------------------------------


def test_stop_right_after_start_is_never_lost(raw, tmp_path):
    # A signal sent while the wrapper is still starting the command must still end the
    # task by that signal, not by SIGKILL after the kill timeout.
    for _ in range(25):
        config = task_config(tmp_path, sh("exec sleep 30"))
        raw.start(config)
        t0 = time.monotonic()
        raw.stop(config.id, 10.0)
        assert time.monotonic() - t0 < 5.0
        assert raw.inspect(config.id).exit_result == ExitResult(exit_code=130, signal=2)
        raw.destroy(config.id)


def test_signal_right_after_start_acts_as_on_the_command(raw, tmp_path):
    for _ in range(10):
        config = task_config(tmp_path, sh("exec sleep 30"))
        raw.start(config)
        raw.signal(config.id, "SIGTERM")
        result = raw.wait(config.id, CancelToken())
        assert result == ExitResult(exit_code=143, signal=15)
        raw.destroy(config.id)


@pytest.mark.stress
def test_many_tasks_logging_at_once(raw, tmp_path):
    """Sixteen tasks write interleaved output through the one pump thread while others
    are stopped: every log is complete and every exit code right."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        script = (
            'i=0; while [ $i -lt 300 ]; do echo "$NOMAD_TASK_NAME $i"; i=$((i+1)); done; exit 1'
        )
        configs = [
            task_config(
                tmp_path, sh(script), name=f"t{i}", env={"PATH": PATH, "NOMAD_TASK_NAME": f"t{i}"}
            )
            for i in range(16)
        ]
        sleepers = [task_config(tmp_path, sh("exec sleep 30"), name=f"s{i}") for i in range(6)]
        for config in configs + sleepers:
            raw.start(config)
        for config in sleepers:
            raw.stop(config.id, 5.0)
        for config in configs:
            assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=1)
            expected = "".join(f"{config.name} {i}\n" for i in range(300))
            assert logs(config) == expected
    finally:
        sys.setswitchinterval(old)


def test_task_inherits_no_agent_descriptor(raw, tmp_path):
    read, write = os.pipe()
    os.set_inheritable(write, True)
    try:
        config = task_config(tmp_path, sh("ls /proc/$$/fd"))
        assert run(raw, config) == ExitResult()
        os.close(write)
        write = -1
        # Had the task inherited the write end, the pipe would not be at EOF.
        os.set_blocking(read, False)
        assert os.read(read, 10) == b""
        fds = {int(x) for x in logs(config).split()}
        assert fds <= {0, 1, 2, 3}  # 3: the directory ls itself reads
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def test_handle_start_time_matches_proc(raw, tmp_path):
    # The fork happens within start(), so the range the handle records lies within the
    # boot-clock readings taken around the call, and holds the real start time. How
    # wide it is depends on scheduling, so it is bounded by the readings, not by ticks.
    config = task_config(tmp_path, sh("exec sleep 30"))
    before = boot_ticks()
    handle = raw.start(config)
    after = boot_ticks()
    try:
        low, high = handle.driver_state["start_ticks"]
        found = read_pid_stat(handle.driver_state["pid"])
        assert found is not None
        assert before <= low <= found.start_ticks <= high <= after
    finally:
        raw.stop(config.id, 5.0)


def test_concurrent_recover_of_one_handle(raw, tmp_path):
    config = task_config(tmp_path, gated("exit 2"))
    handle = start_in_other_agent(config)
    errors = []

    def recover():
        try:
            raw.recover(handle)
        except DriverError as err:
            errors.append(err)

    threads = [threading.Thread(target=recover, name=f"recover-{i}") for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    (Path(config.task_dir) / "go").touch()
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=2)


def test_other_user_is_refused(raw, tmp_path):
    config = task_config(tmp_path, sh("exit 0"), user="no-such-user-xyz")
    with pytest.raises(DriverError, match="no-such-user-xyz"):
        raw.start(config)
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    assert run(raw, task_config(tmp_path, sh("exit 0"), user=me)) == ExitResult()


def test_both_log_files_exist_from_the_start(raw, tmp_path):
    """A reader finds an empty stderr log, not a missing one, as with Nomad."""
    config = task_config(tmp_path, sh("echo out"))
    run(raw, config)
    assert (Path(config.logs_dir) / "web.stderr.0").read_text() == ""
    assert (Path(config.logs_dir) / "web.stdout.0").read_text() == "out\n"
