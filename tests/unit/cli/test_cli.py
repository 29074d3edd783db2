"""The allocrunner command line, end to end with real processes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from allocrunner.cli import main
from allocrunner.testing import wait_for

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

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


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(list(argv))
    finally:
        sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


def test_run_status_logs_and_gc(tmp_path):
    data = str(tmp_path / "data")
    code, out, _ = run_cli("run", str(EXAMPLES / "batch.nomad.hcl"), "--data-dir", data)
    assert code == 0, out
    assert "Terminated" in out and "complete" in out
    assert "tick 3" in out

    code, out, _ = run_cli("status", "--json", "--data-dir", data)
    assert code == 0
    (alloc,) = json.loads(out)
    assert alloc["ClientStatus"] == "complete"
    assert alloc["Name"] == "hello-batch.greet[0]"
    assert [e["Type"] for e in alloc["TaskStates"]["count"]["Events"]][-1] == "Terminated"

    code, out, _ = run_cli("logs", "--data-dir", data, alloc["ID"][:8], "count")
    assert code == 0 and out.splitlines() == ["tick 1", "tick 2", "tick 3"]

    code, out, _ = run_cli("gc", "--data-dir", data)
    assert code == 0 and "collected" in out
    assert not (Path(data) / "alloc" / alloc["ID"]).exists()
    code, out, _ = run_cli("status", "--json", "--data-dir", data)
    assert json.loads(out) == []


def test_failed_task_exits_1_and_bad_input_exits_2(tmp_path):
    job = tmp_path / "bad.nomad.hcl"
    job.write_text(FAILING)
    code, out, _ = run_cli("run", str(job))
    assert code == 1, out
    assert "Not Restarting" in out

    broken = tmp_path / "broken.nomad.hcl"
    broken.write_text('job "x" { group "g" { task "t" { driver = 3 } } }')
    code, _, err = run_cli("run", str(broken))
    assert code == 2
    assert "driver" in err
    code, _, err = run_cli("status", "--data-dir", str(tmp_path / "nothing"))
    assert code == 2 and "no state database" in err


@pytest.mark.timeout(60)
def test_stop_reaches_a_running_agent(tmp_path):
    job = tmp_path / "svc.nomad.hcl"
    job.write_text(SERVICE)
    data = str(tmp_path / "data")
    agent = subprocess.Popen(
        [sys.executable, "-m", "allocrunner", "run", str(job), "--data-dir", data],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def running():
            code, out, _ = run_cli("status", "--json", "--data-dir", data)
            assert code == 0, out
            views = json.loads(out)
            assert views and views[0]["ClientStatus"] == "running", views

        wait_for(running, timeout=30)
        code, out, err = run_cli("stop", "--data-dir", data)
        assert code == 0, (out, err)
        assert agent.wait(30) == 0
        code, out, _ = run_cli("status", "--json", "--data-dir", data)
        (view,) = json.loads(out)
        assert view["ClientStatus"] == "complete"
        assert view["TaskStates"]["sleeper"]["Events"][-1]["Type"] == "Killed"
    finally:
        if agent.poll() is None:
            os.kill(agent.pid, signal.SIGKILL)
            agent.wait(10)
        if agent.stdout is not None:
            agent.stdout.close()
