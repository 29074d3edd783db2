"""The agent as a process: crash and restart, signals, one owner per data dir, a dead
terminal, a stale record. Every check is what /proc shows of the real task processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from allocrunner.agent.datadir import find_agent, read_agent_info
from allocrunner.testing import assert_stays, wait_for
from tests.agent.helpers import (
    AgentProcess,
    api,
    holds,
    job_allocs,
    kill_groups,
    pid_alive,
    recorded_pids,
    sleeper_job,
    wait_running,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def agents(tmp_path):
    """Agents started by a test; every task they ran is stopped (or killed) afterwards."""
    started: list[AgentProcess] = []
    data_dir = tmp_path / "data"

    def start(*extra: str, stdout=subprocess.DEVNULL, ready: bool = True) -> AgentProcess:
        agent = AgentProcess(data_dir, *extra, stdout=stdout)
        started.append(agent)
        return agent.wait_ready() if ready else agent

    yield start
    pids: list[int] = []
    alloc_root = data_dir / "alloc"
    if alloc_root.is_dir():
        for alloc_dir in alloc_root.iterdir():
            pids += recorded_pids(data_dir, alloc_dir.name)
    for agent in started:
        agent.close()
    kill_groups([p for p in pids if pid_alive(p)])


def _stop_job(address: str, job_id: str, *, purge: bool = True) -> None:
    status, body, _ = api(address, "DELETE", f"/v1/job/{job_id}?purge={str(purge).lower()}")
    assert status == 200, body


def _wait_gone(pids) -> None:
    wait_for(lambda: holds([p for p in pids if pid_alive(p)] == []), 20)


def test_kill9_then_restart_adopts_the_same_pids_and_can_stop_them(agents, tmp_path):
    first = agents()
    status, body, _ = api(first.address, "PUT", "/v1/jobs", sleeper_job("web", count=2))
    assert status == 200, body
    pids = wait_running(first.address, first.data_dir, "web", 2)

    first.kill9()
    assert all(pid_alive(p) for p in pids.values()), "tasks must survive the agent's crash"

    second = agents()
    again = wait_running(second.address, second.data_dir, "web", 2)
    assert again == pids, "the restarted agent must adopt the same processes"
    for alloc_id in pids:
        assert len(recorded_pids(second.data_dir, alloc_id)) == 1, "a task was started twice"
    assert_stays(lambda: holds(len(job_allocs(second.address, "web")) == 2), 1.0)

    _stop_job(second.address, "web")
    _wait_gone(pids.values())


def test_sigterm_leaves_tasks_running_for_the_next_agent(agents):
    first = agents()
    api(first.address, "PUT", "/v1/jobs", sleeper_job("svc"))
    pids = wait_running(first.address, first.data_dir, "svc", 1)

    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    assert "Traceback" not in first.stderr()
    assert all(pid_alive(p) for p in pids.values())
    assert find_agent(first.data_dir) is None
    assert read_agent_info(first.data_dir) is None, "agent.json removed on a clean shutdown"

    second = agents()
    assert wait_running(second.address, second.data_dir, "svc", 1) == pids
    _stop_job(second.address, "svc")
    _wait_gone(pids.values())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_sigint_and_sighup_shut_down_cleanly(agents, sig):
    agent = agents()
    agent.signal(sig)
    assert agent.wait(30) == 0
    assert "Traceback" not in agent.stderr()


def test_a_second_agent_on_the_same_data_dir_exits_2_naming_the_holder(agents):
    first = agents()
    api(first.address, "PUT", "/v1/jobs", sleeper_job("one"))
    pids = wait_running(first.address, first.data_dir, "one", 1)
    state_before = (first.data_dir / "client" / "state.db").stat().st_mtime_ns

    second = agents(ready=False)
    assert second.wait(20) == 2
    err = second.stderr()
    assert f"pid {first.proc.pid}" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert read_agent_info(first.data_dir).pid == first.proc.pid
    assert find_agent(first.data_dir) == first.address
    assert (first.data_dir / "client" / "state.db").stat().st_mtime_ns == state_before
    assert all(pid_alive(p) for p in pids.values())

    _stop_job(first.address, "one")
    _wait_gone(pids.values())


def test_a_closed_stdout_changes_nothing(agents):
    agent = agents(stdout=subprocess.PIPE)
    agent.proc.stdout.close()  # the reader is gone: every write to stdout now fails
    api(agent.address, "PUT", "/v1/jobs", sleeper_job("quiet"))
    pids = wait_running(agent.address, agent.data_dir, "quiet", 1)
    (alloc_id,) = pids

    assert_stays(lambda: holds(agent.proc.poll() is None and pid_alive(pids[alloc_id])), 1.5)
    assert find_agent(agent.data_dir) == agent.address
    _, alloc, _ = api(agent.address, "GET", f"/v1/allocation/{alloc_id}")
    events = [e["Type"] for e in alloc["TaskStates"]["sleeper"]["Events"]]
    assert "Terminated" not in events, events

    _stop_job(agent.address, "quiet", purge=False)
    _wait_gone(pids.values())
    assert_stays(
        lambda: holds(len(recorded_pids(agent.data_dir, alloc_id)) == 1, "one start, no restart"),
        1.0,
    )
    _stop_job(agent.address, "quiet")
    agent.signal(signal.SIGTERM)
    assert agent.wait(30) == 0


def test_a_stale_agent_record_is_harmless(agents, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data_dir / "agent.json").write_text(
        json.dumps({"address": "http://127.0.0.1:1", "pid": dead.pid, "started": time.time()})
    )
    (data_dir / "agent.lock").write_text(f"{dead.pid}\n")
    assert find_agent(data_dir) is None, "a record whose owner holds no lock is stale"

    agent = agents()
    assert read_agent_info(data_dir).pid == agent.proc.pid
    assert find_agent(data_dir) == agent.address


def test_a_second_signal_during_shutdown_exits_at_once_quietly(agents):
    agent = agents()
    api(agent.address, "PUT", "/v1/jobs", sleeper_job("busy", count=3))
    pids = wait_running(agent.address, agent.data_dir, "busy", 3)

    os.kill(agent.proc.pid, signal.SIGTERM)
    os.kill(agent.proc.pid, signal.SIGTERM)
    code = agent.wait(15)
    assert code in (0, 1), code
    assert "Traceback" not in agent.stderr()
    assert all(pid_alive(p) for p in pids.values()), "a shutdown never kills tasks"

    second = agents()
    assert wait_running(second.address, second.data_dir, "busy", 3) == pids
    _stop_job(second.address, "busy")
    _wait_gone(pids.values())


def test_a_non_loopback_address_needs_a_token(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "allocrunner",
            "agent",
            "--data-dir",
            str(tmp_path / "d2"),
            "--http-addr",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--token" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "d2" / "agent.lock").exists(), "refused before touching the dir"
