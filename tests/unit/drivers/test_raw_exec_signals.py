"""raw_exec tasks and signals: a task starts with every signal at its default action and
none blocked, whatever the agent ignores or blocks (an agent under ``nohup`` or started
as a background job of a script ignores SIGHUP, SIGINT and SIGQUIT); and ``start()``
returns only once the command can take a signal, so a stop or a signal sent right after
it is never lost."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import ExitResult, RawExecDriver
from allocrunner.drivers._process import read_proc
from allocrunner.drivers.logs import read_logs
from allocrunner.errors import DriverError
from allocrunner.testing import wait_for
from tests.unit.drivers.raw_exec_support import assert_spawner_retires
from tests.unit.drivers.support import PATH, sh, task_config

REPO = Path(__file__).resolve().parents[3]
USABLE_SIGNALS = sum(1 << (int(sig) - 1) for sig in signal.valid_signals())

# The agent: a child python process that ignores SIGHUP, SIGINT and SIGQUIT and blocks
# SIGTERM and SIGUSR1 before it builds its driver (which launches the spawner, in a
# fresh dir), runs three tasks and prints what it saw as JSON. It waits for nothing
# longer than 10 s, so a lost signal shows as a slow stop or a missing trap line, not
# as a hang.
AGENT = r"""
import json, signal, sys, time
from pathlib import Path

for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
    signal.signal(sig, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1})

from allocrunner.drivers import RawExecDriver
from allocrunner.drivers.logs import read_logs
from allocrunner.testing import wait_for
from tests.unit.drivers.support import sh, task_config
from tests.unit.drivers.test_raw_exec_signals import signal_masks

root = Path(sys.argv[1])
seen = {}
raw = RawExecDriver(state_dir=str(root / "spawner"))
started = []


def start(name, script):
    config = task_config(root, sh(script), name=name)
    handle = raw.start(config)
    started.append(config.id)
    return config, handle.driver_state["pid"]


def stop(config, signal_name):
    t0 = time.monotonic()
    raw.stop(config.id, 10.0, signal_name)
    result = raw.inspect(config.id).exit_result
    return {"seconds": time.monotonic() - t0, "exit_code": result.exit_code}


try:
    config, pid = start("sleeper", "exec sleep 30")
    seen["masks"] = signal_masks(pid)
    seen["stop_sigint"] = stop(config, "SIGINT")

    config, _ = start("term", "exec sleep 30")
    seen["stop_sigterm"] = stop(config, "SIGTERM")

    script = "trap 'echo got HUP' HUP; echo ready; while :; do sleep 0.01; done"
    config, _ = start("trapper", script)

    def logged(text):
        def check():
            out = read_logs(config.logs_dir, config.name, "stdout").decode()
            assert text in out, out
        return check

    wait_for(logged("ready\n"), timeout=10)
    raw.signal(config.id, "SIGHUP")
    try:
        wait_for(logged("got HUP\n"), timeout=5)
        seen["hup_trapped"] = True
    except AssertionError:
        seen["hup_trapped"] = False
finally:
    for task_id in started:
        raw.destroy(task_id, force=True)
    raw.close()
print(json.dumps(seen))
"""


def signal_masks(pid: int) -> dict[str, str]:
    """The ignored, blocked and caught signal masks of process `pid`."""
    status = (read_proc(f"/proc/{pid}/status") or b"").decode()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return {key: fields[key].strip() for key in ("SigIgn", "SigBlk", "SigCgt")}


def test_tasks_of_an_agent_that_ignores_and_blocks_signals_get_them(tmp_path):
    """An agent ignoring SIGHUP/SIGINT/SIGQUIT and blocking SIGTERM: its tasks start with
    nothing ignored or blocked, so a stop ends them by the stop signal at once (not by
    SIGKILL after the kill timeout) and a signal reaches the command's trap."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", AGENT, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_spawner_retires(tmp_path / "spawner")
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # The C library's own signals (32 and 33 with glibc, not signals a program can use)
    # are its business: its spawn leaves them ignored, and its start-up takes them over.
    assert int(seen["masks"]["SigIgn"], 16) & USABLE_SIGNALS == 0, seen
    assert int(seen["masks"]["SigBlk"], 16) == 0, seen
    assert seen["stop_sigint"]["exit_code"] == 130, seen
    assert seen["stop_sigint"]["seconds"] < 5.0, seen
    assert seen["stop_sigterm"]["exit_code"] == 143, seen
    assert seen["stop_sigterm"]["seconds"] < 5.0, seen
    assert seen["hup_trapped"], seen


@pytest.fixture
def raw(no_leftover_processes, tmp_path):
    driver = RawExecDriver(state_dir=str(tmp_path / "spawner"))
    yield driver
    driver.close()
    assert_spawner_retires(tmp_path / "spawner")


def test_start_returns_once_the_command_has_been_execd(raw, tmp_path):
    """When start() returns, the task's pid is the command itself, exec'd with every
    signal at its default action and none blocked: a signal sent now acts on it."""
    for _ in range(20):
        config = task_config(tmp_path, {"command": "/bin/sleep", "args": ["30"]})
        pid = raw.start(config).driver_state["pid"]
        try:
            # The exec is past its point of no return (the kernel may still be setting
            # up the new program's memory, so its command line is waited for).
            masks = signal_masks(pid)
            assert int(masks["SigCgt"], 16) == 0, masks
            assert int(masks["SigBlk"], 16) == 0, masks
            assert int(masks["SigIgn"], 16) & USABLE_SIGNALS == 0, masks
            wait_for(functools.partial(_execd, pid, [b"/bin/sleep", b"30"]), timeout=5)
        finally:
            raw.stop(config.id, 5.0)
        assert raw.inspect(config.id).exit_result == ExitResult(exit_code=130, signal=2)
        raw.destroy(config.id)


def _execd(pid: int, argv: list[bytes]) -> None:
    cmdline = read_proc(f"/proc/{pid}/cmdline") or b""
    assert cmdline.split(b"\0")[: len(argv)] == argv, cmdline


def test_a_command_that_cannot_be_execd_fails_the_start(raw, tmp_path):
    config = task_config(tmp_path, {"command": "./broken"})
    script = Path(config.task_dir) / "broken"
    script.write_text("#!/no/such/interpreter\n")
    script.chmod(0o755)
    with pytest.raises(DriverError, match="cannot start"):
        raw.start(config)
    with pytest.raises(DriverError, match="unknown task"):
        raw.inspect(config.id)


def test_a_script_without_interpreter_line_runs_under_the_shell(raw, tmp_path):
    config = task_config(tmp_path, {"command": "./plain", "args": ["a b"]})
    script = Path(config.task_dir) / "plain"
    script.write_text('echo "got $1"; exit 3\n')
    script.chmod(0o755)
    raw.start(config)
    assert raw.wait(config.id, CancelToken()) == ExitResult(exit_code=3)
    assert read_logs(config.logs_dir, config.name, "stdout") == b"got a b\n"


@pytest.mark.parametrize("oldpwd", [None, "/somewhere/else"])
def test_the_task_sees_its_own_oldpwd_not_the_agents(raw, tmp_path, oldpwd):
    env = {"PATH": PATH} if oldpwd is None else {"PATH": PATH, "OLDPWD": oldpwd}
    config = task_config(tmp_path, sh('echo "${OLDPWD-unset} $PWD"'), env=env)
    raw.start(config)
    assert raw.wait(config.id, CancelToken()) == ExitResult()
    out = read_logs(config.logs_dir, config.name, "stdout").decode()
    assert out == f"{oldpwd or 'unset'} {os.path.realpath(config.task_dir)}\n"
