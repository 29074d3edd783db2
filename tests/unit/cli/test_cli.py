"""The older command forms (`run`, `status`, `logs`, `stop`, `gc` with `--data-dir`), end
to end: with no agent running they start one inside the command; with one running
they talk to it."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from allocrunner.agent.datadir import find_agent
from allocrunner.testing import wait_for
from tests.unit.cli.helpers import (
    EXAMPLES,
    cli_process,
    run_cli,
    run_process,
    start_agent,
    stop_agent,
)

SERVICE = """
job "svc" {
  type = "service"
  group "g" {
    task "sleeper" {
      driver = "raw_exec"
      config {
        command = "/bin/sleep"
        args    = ["30"]
      }
      kill_timeout = "2s"
    }
  }
}
"""

ECHO = """
job "echo" {
  type = "batch"
  group "g" {
    task "say" {
      driver = "raw_exec"
      config {
        command = "/bin/echo"
        args    = ["hello"]
      }
    }
  }
}
"""

FAILING = """
job "bad" {
  type = "batch"
  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "oops" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo broken >&2; exit 3"]
      }
    }
  }
}
"""


def test_readme_demo_runs_in_a_temporary_data_dir(tmp_path, data_dir):
    data_dir.mkdir()
    demo = str(EXAMPLES / "batch.nomad.hcl")
    proc = cli_process("run", demo, env_extra={"TMPDIR": str(data_dir)})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith(f"==> data dir: {data_dir}/allocrunner-")
    assert any(line.endswith("count: Terminated - Exit Code: 0") for line in lines)
    assert "==> hello-batch.greet[0]: complete (hello=dead, count=dead)" in lines
    assert "--- count stdout ---\ntick 1\ntick 2\ntick 3\n" in out
    assert err == ""


def test_run_status_logs_with_embedded_agents_then_gc(tmp_path, data_dir):
    data = str(data_dir)
    code, out, err = run_cli("run", str(EXAMPLES / "batch.nomad.hcl"), "--data-dir", data)
    assert code == 0, (out, err)
    assert "Terminated" in out and "complete" in out and "tick 3" in out

    code, out, _ = run_cli("status", "--json", "--data-dir", data)
    assert code == 0
    (alloc,) = json.loads(out)
    assert alloc["ClientStatus"] == "complete"
    assert alloc["Name"] == "hello-batch.greet[0]"
    assert [e["Type"] for e in alloc["TaskStates"]["count"]["Events"]][-1] == "Terminated"

    code, out, _ = run_cli("status", "--data-dir", data)
    assert code == 0 and alloc["ID"][:8] in out and "complete" in out

    code, out, _ = run_cli("logs", "--data-dir", data, alloc["ID"][:8], "count")
    assert code == 0 and out.splitlines() == ["tick 1", "tick 2", "tick 3"]
    code, out, err = run_cli("logs", "--data-dir", data, alloc["ID"][:8], "count", "--stderr")
    assert (code, out, err) == (0, "", "")  # the task wrote no stderr: an empty log

    agent = start_agent(data_dir)  # the older forms against a live agent
    try:
        code, out, _ = run_cli("run", str(EXAMPLES / "batch.nomad.hcl"), "--data-dir", data)
        assert code == 0 and "hello-batch.greet[0]: complete" in out, out
        code, out, _ = run_cli("status", "--json", "--data-dir", data)
        assert [a["ID"] for a in json.loads(out)] == [alloc["ID"]], "a completed batch job reruns"
        job = tmp_path / "echo.nomad.hcl"
        job.write_text(ECHO)
        code, out, err = run_cli("run", str(job), "--data-dir", data)
        assert code == 0 and "--- say stdout ---\nhello\n" in out, (out, err)
        code, out, _ = run_cli("status", "--json", "--data-dir", data)
        (echo,) = [a for a in json.loads(out) if a["Name"] == "echo.g[0]"]
        code, out, err = run_cli("gc", "--data-dir", data, echo["ID"][:8])
        assert code == 0 and "==> collected echo.g[0]" in out, (out, err)
        assert not (data_dir / "alloc" / echo["ID"]).exists()
    finally:
        stop_agent(agent)


def test_failed_task_exits_1(tmp_path, data_dir):
    job = tmp_path / "bad.nomad.hcl"
    job.write_text(FAILING)
    code, out, _ = run_cli("run", str(job), "--data-dir", str(data_dir))
    assert code == 1, out
    assert "Not Restarting" in out
    assert "==> bad.g[0]: failed (oops=failed)" in out


@pytest.mark.timeout(60)
def test_stop_reaches_a_running_run(tmp_path, data_dir):
    job = tmp_path / "svc.nomad.hcl"
    job.write_text(SERVICE)
    data = str(data_dir)
    runner = cli_process("run", str(job), "--data-dir", data, stderr=subprocess.STDOUT)
    try:

        def serving():  # before that, `status` would start an agent of its own
            assert runner.poll() is None, runner.communicate()
            assert find_agent(data_dir), "the run's agent has not published its address"

        def running():
            code, out, _ = run_cli("status", "--json", "--data-dir", data)
            assert code == 0, out
            views = json.loads(out)
            assert views and views[0]["ClientStatus"] == "running", views

        wait_for(serving, timeout=30, interval=0.02)
        wait_for(running, timeout=30, interval=0.1)
        code, out, err = run_cli("stop", "--data-dir", data)
        assert code == 0, (out, err)
        assert "==> stopped svc.g[0]" in out
        assert runner.wait(30) == 0
        code, out, _ = run_cli("status", "--json", "--data-dir", data)
        (view,) = json.loads(out)
        assert view["ClientStatus"] == "complete"
        assert view["TaskStates"]["sleeper"]["Events"][-1]["Type"] == "Killed"
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGKILL)
        runner.communicate(timeout=10)


def test_the_older_forms_refuse_unknown_allocations(data_dir):
    agent = start_agent(data_dir)
    try:
        code, _, err = run_process("logs", "--data-dir", str(data_dir), "ffff", "web")
        assert code == 2 and err.startswith("allocrunner: No allocation") and "Trace" not in err
        code, _, err = run_process("stop", "--data-dir", str(data_dir), "ffff")
        assert code == 2
    finally:
        stop_agent(agent)
