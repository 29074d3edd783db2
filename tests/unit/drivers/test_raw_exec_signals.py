"""raw_exec tasks and signals: a task starts with every signal at its default action and
none blocked, whatever the agent ignores or blocks (an agent under ``nohup`` or started
as a background job of a script ignores SIGHUP, SIGINT and SIGQUIT); and ``start()``
returns only once the command can take a signal, so a stop or a signal sent right after
it is never lost."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import ExitResult, _process, raw_exec
from allocrunner.drivers._process import children_of, read_proc
from allocrunner.drivers.logs import read_logs
from allocrunner.errors import DriverError
from tests.unit.drivers.support import PATH, live_children, sh, task_config

REPO = Path(__file__).resolve().parents[3]
USABLE_SIGNALS = sum(1 << (int(sig) - 1) for sig in signal.valid_signals())

# The agent: a child python process that ignores SIGHUP, SIGINT and SIGQUIT and blocks
# SIGTERM and SIGUSR1 before it builds its driver, runs three tasks and prints what it
# saw as JSON. It waits for nothing longer than 10 s, so a lost signal shows as a slow
# stop or a missing trap line, not as a hang.
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
from tests.unit.drivers.test_raw_exec_signals import command_of, signal_masks

root = Path(sys.argv[1])
seen = {}
raw = RawExecDriver()
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
    seen["masks"] = signal_masks(wait_for(lambda: command_of(pid, b"sleep")))
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


def command_of(wrapper_pid: int, name: bytes) -> int:
    """The pid of the wrapper's child once it has exec'd the command `name`."""
    for child in children_of(wrapper_pid):
        cmdline = read_proc(f"/proc/{child.pid}/cmdline") or b""
        if cmdline.split(b"\0")[0].endswith(name):
            return child.pid
    raise AssertionError(f"wrapper {wrapper_pid} has not started {name!r} yet")


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


def test_start_returns_once_the_command_takes_signals_by_default(raw, tmp_path):
    """When start() returns the wrapper has forked the command and the fork catches no
    terminating signal any more (it only awaits its exec): a signal sent now acts on it,
    never on a shell handler that would forget it. (The command is sleep itself, which
    sets no handler of its own, so the fork may be seen before or after its exec.)"""
    for _ in range(20):
        config = task_config(tmp_path, {"command": "/bin/sleep", "args": ["30"]})
        pid = raw.start(config).driver_state["pid"]
        try:
            children = children_of(pid)
            assert len(children) == 1, f"wrapper {pid} has not forked the command yet"
            caught = int(signal_masks(children[0].pid)["SigCgt"], 16)
            assert caught & ~(1 << (17 - 1)) == 0, f"the command's fork catches {caught:#x}"
        finally:
            raw.stop(config.id, 5.0)
        assert raw.inspect(config.id).exit_result == ExitResult(exit_code=130, signal=2)
        raw.destroy(config.id)


def test_a_wrapper_that_exits_before_the_command_fails_the_start(raw, tmp_path, monkeypatch):
    monkeypatch.setattr(_process, "WRAPPER", "echo cannot >&2; exit 7")
    config = task_config(tmp_path, sh("exit 0"))
    with pytest.raises(DriverError, match="exited before starting it, exit code 7"):
        raw.start(config)
    with pytest.raises(DriverError, match="unknown task"):
        raw.inspect(config.id)


def test_a_wrapper_that_never_starts_the_command_is_killed(raw, tmp_path, monkeypatch):
    monkeypatch.setattr(_process, "WRAPPER", "exec sleep 30")
    monkeypatch.setattr(raw_exec, "START_SETTLE", 0.2)
    config = task_config(tmp_path, sh("exit 0"))
    before = live_children()
    with pytest.raises(DriverError, match=r"did not start the command within 0\.2s"):
        raw.start(config)
    assert live_children() <= before


@pytest.mark.parametrize("oldpwd", [None, "/somewhere/else"])
def test_the_task_sees_its_own_oldpwd_not_the_agents(raw, tmp_path, oldpwd):
    env = {"PATH": PATH} if oldpwd is None else {"PATH": PATH, "OLDPWD": oldpwd}
    config = task_config(tmp_path, sh('echo "${OLDPWD-unset} $PWD"'), env=env)
    raw.start(config)
    assert raw.wait(config.id, CancelToken()) == ExitResult()
    out = read_logs(config.logs_dir, config.name, "stdout").decode()
    assert out == f"{oldpwd or 'unset'} {os.path.realpath(config.task_dir)}\n"


def test_spawn_descriptors_on_numbers_it_assigns_are_moved_out_of_the_way():
    moved = _process._lifted_above_targets(0)
    try:
        assert moved > max(_process._TARGET_FDS)
        assert not os.get_inheritable(moved)
    finally:
        os.close(moved)
    high = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, max(_process._TARGET_FDS) + 1)
    try:
        assert _process._lifted_above_targets(high) == high
    finally:
        os.close(high)
