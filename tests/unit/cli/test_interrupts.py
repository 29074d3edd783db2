"""Ctrl-C and SIGTERM: an embedded `run` stops its job's tasks before it exits 130; a
`job run` watching a separate agent only stops watching."""

from __future__ import annotations

import json
import signal

import pytest

from allocrunner.agent.datadir import find_agent
from allocrunner.testing import wait_for
from tests.unit.cli.helpers import cli_process, processes_using, run_cli

SERVICE = """
job "svc" {
  type = "service"
  group "g" {
    task "sleeper" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["300"]
      }
      kill_timeout = "2s"
    }
  }
}
"""


def _started(proc, data_dir) -> None:
    """The task runs (its process names the data dir in its environment)."""

    def running() -> None:
        assert proc.poll() is None, proc.communicate()
        address = find_agent(data_dir)
        assert address, "no agent yet"
        code, out, _ = run_cli("status", "--json", "-address", address)
        views = json.loads(out) if code == 0 else []
        assert views and views[0]["ClientStatus"] == "running", views

    wait_for(running, timeout=30, interval=0.05)


def _task_pids(data_dir, runner_pid: int) -> list[int]:
    return [p for p in processes_using(data_dir) if p != runner_pid]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_stops_its_tasks_then_exits_130(tmp_path, data_dir, signum):
    job = tmp_path / "svc.nomad.hcl"
    job.write_text(SERVICE)
    runner = cli_process("run", str(job), "--data-dir", str(data_dir))
    try:
        _started(runner, data_dir)
        assert _task_pids(data_dir, runner.pid), "the task process is visible"
        runner.send_signal(signum)
        out, err = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 130, (out, err)
    assert "==> interrupted: stopping the job's allocations" in out
    assert "sleeper: Killed" in out and "==> stopped svc.g[0]" in out
    assert err == ""

    def no_task_left() -> None:
        assert not _task_pids(data_dir, runner.pid)

    wait_for(no_task_left, timeout=10)


def test_interrupting_a_watch_of_another_agent_leaves_the_job_running(tmp_path, agent):
    job = tmp_path / "svc.nomad.hcl"
    job.write_text(SERVICE)
    watcher = cli_process("job", "run", "-address", agent.address, str(job))
    try:
        _started(watcher, agent.data_dir)
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.communicate()
    assert watcher.returncode == 130, (out, err)
    # The interrupt may come before the watcher printed any event: what counts is that
    # it detached and nothing was stopped.
    assert "==> detached: the job keeps running" in out and "Killing" not in out
    code, out, _ = run_cli("status", "--json", "-address", agent.address)
    assert code == 0 and json.loads(out)[0]["ClientStatus"] == "running"


STUBBORN = """
job "stubborn" {
  type = "service"
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "trap '' INT TERM; while true; do sleep 0.1; done"]
      }
      kill_timeout = "30s"
    }
  }
}
"""


def test_a_second_interrupt_exits_at_once_and_quietly(tmp_path, data_dir):
    job = tmp_path / "stubborn.nomad.hcl"
    job.write_text(STUBBORN)
    runner = cli_process("run", str(job), "--data-dir", str(data_dir))
    try:
        _started(runner, data_dir)
        runner.send_signal(signal.SIGTERM)

        def killing() -> None:
            address = find_agent(data_dir)
            assert address, "the run's agent is gone"
            code, out, _ = run_cli("status", "--json", "-address", address)
            assert code == 0
            events = json.loads(out)[0]["TaskStates"]["t"]["Events"]
            assert events[-1]["Type"] == "Killing", events

        wait_for(killing, timeout=20, interval=0.05)
        runner.send_signal(signal.SIGINT)
        out, err = runner.communicate(timeout=10)  # the task would take 30 s to die
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 130
    assert "==> interrupted: stopping the job's allocations" in out
    assert "==> stopped" not in out and err == ""
