"""raw_exec's oom_score_adj, with the outcome Nomad's e2e rawexec suite asserts (its job
file is newer than v1.6; the one here is written for this suite): a task reading
/proc/self/oom_score_adj prints 0, even when the agent runs with another value (tasks
do not inherit the agent's, as Nomad's executor resets it), and prints the configured
value when the task sets `oom_score_adj`.

The agent runs as a process of its own here, started with oom_score_adj 300, so that
every process it starts (the raw_exec spawner included) would pass that value on to a
task unless raw_exec sets it; the test process is not touched.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner.testing import wait_for
from tests.agent.helpers import AgentProcess, api
from tests.nomad_e2e.helpers import kill_leftovers, task_processes
from tests.unit.cli.helpers import run_cli

pytestmark = pytest.mark.timeout(60)

AGENT_OOM_SCORE_ADJ = 300

JOB = """
job "oomadj" {
  type = "batch"
  group "group" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "cat" {
      driver = "raw_exec"
      config {
        command = "/bin/cat"
        args    = ["/proc/self/oom_score_adj"]
%s
      }
    }
  }
}
"""


class _AdjustedAgent(AgentProcess):
    """`allocrunner agent` exec'd by a shell that first sets its oom_score_adj."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                f'echo {AGENT_OOM_SCORE_ADJ} > /proc/self/oom_score_adj && exec "$@"',
                "sh",
                sys.executable,
                "-m",
                "allocrunner",
                "agent",
                "-data-dir",
                str(data_dir),
                "--http-addr",
                "127.0.0.1:0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.address = ""
        self._stderr = None


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    """An agent process started with oom_score_adj AGENT_OOM_SCORE_ADJ."""
    running = _AdjustedAgent(tmp_path / "data").wait_ready()
    try:
        yield running
        status, body, _ = api(running.address, "DELETE", "/v1/job/oomadj?purge=true")
        assert status == 200, body

        def destroyed() -> None:
            root = running.data_dir / "alloc"
            assert not (root.is_dir() and any(root.iterdir())), "alloc dirs left"
            assert not task_processes(running.data_dir), "task processes left"

        wait_for(destroyed, 20)
    finally:
        running.close()
        leftover = kill_leftovers(running.data_dir)
    assert not leftover, f"task processes killed by the fixture: {sorted(leftover)}"


def _run_and_read(agent: AgentProcess, tmp_path: Path, setting: str) -> str:
    job = tmp_path / "oomadj.nomad.hcl"
    job.write_text(JOB % setting)
    code, out, err = run_cli("job", "run", "-address", agent.address, str(job))
    assert code == 0, (out, err)
    status, allocs, _ = api(agent.address, "GET", "/v1/job/oomadj/allocations")
    assert status == 200 and len(allocs) == 1, allocs
    path = f"/v1/client/fs/logs/{allocs[0]['ID']}?task=cat&type=stdout&plain=true"
    with urllib.request.urlopen(agent.address + path, timeout=10) as reply:
        return reply.read().decode()


def test_a_task_does_not_inherit_the_agents_oom_score_adj(agent, tmp_path: Path) -> None:
    assert Path(f"/proc/{agent.proc.pid}/oom_score_adj").read_text() == "300\n"
    inherited = subprocess.run(
        [
            "/bin/sh",
            "-c",
            "echo 300 > /proc/self/oom_score_adj && exec cat /proc/self/oom_score_adj",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert inherited.stdout == "300\n"  # a child keeps its parent's value unless reset
    assert _run_and_read(agent, tmp_path, "") == "0\n"


def test_a_task_gets_the_oom_score_adj_it_asks_for(agent, tmp_path: Path) -> None:
    assert _run_and_read(agent, tmp_path, "        oom_score_adj = 700") == "700\n"
