"""A group's max_run_duration through the agent and its command line (`allocrunner job
run` against an agent process): the job files under tests/fixtures/jobs/batch_timeout/
are a batch job stopped at its deadline (complete, Nomad's description, its poststop
task never started, its process gone) and one that finishes well before it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agent.helpers import (
    AgentProcess,
    api,
    holds,
    job_allocs,
    kill_groups,
    pid_alive,
    recorded_pids,
)
from tests.unit.cli.helpers import cli_process

pytestmark = pytest.mark.timeout(120)

JOBS = Path(__file__).resolve().parents[1] / "fixtures" / "jobs" / "batch_timeout"
TIMED_OUT = "allocation exceeded max_run_duration"
NEVER = (None, "", "0001-01-01T00:00:00Z")  # Nomad's JSON for a zero time


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    running = AgentProcess(tmp_path / "data").wait_ready()
    try:
        yield running
    finally:
        pids = [
            pid
            for entry in (running.data_dir / "alloc").glob("*")
            for pid in recorded_pids(running.data_dir, entry.name)
        ]
        if running.proc.poll() is None:
            running.signal(signal.SIGTERM)
            running.wait()
        running.close()
        kill_groups([p for p in pids if pid_alive(p)])


def _job_run(agent: AgentProcess, job_file: str) -> tuple[int, str, str]:
    proc = cli_process("job", "run", "-address", agent.address, str(JOBS / job_file))
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def _only_alloc(agent: AgentProcess, job_id: str) -> dict:
    (summary,) = job_allocs(agent.address, job_id)
    status, alloc, _ = api(agent.address, "GET", f"/v1/allocation/{summary['ID']}")
    assert status == 200, alloc
    return alloc


def test_job_run_of_a_job_past_its_deadline(agent: AgentProcess) -> None:
    code, out, err = _job_run(agent, "sleeps_past_deadline.nomad.hcl")
    assert code == 0, (out, err)
    alloc = _only_alloc(agent, "deadline-sleeper")
    assert alloc["ClientStatus"] == "complete", alloc["ClientStatus"]
    assert alloc["ClientDescription"] == TIMED_OUT
    nap, cleanup = alloc["TaskStates"]["nap"], alloc["TaskStates"]["cleanup"]
    assert nap["State"] == "dead" and not nap["Failed"], nap
    killing = [e for e in nap["Events"] if e["Type"] == "Killing"]
    assert [e["DisplayMessage"] for e in killing] == [TIMED_OUT]
    assert cleanup["State"] == "dead" and cleanup["StartedAt"] in NEVER, cleanup
    data = agent.data_dir / "alloc" / alloc["ID"] / "alloc" / "data"
    assert not (data / "cleanup-started").exists()
    pids = holds(recorded_pids(agent.data_dir, alloc["ID"]), "a recorded pid")
    assert not [p for p in pids if pid_alive(p)], f"still alive in /proc: {pids}"


def test_job_run_of_a_job_that_finishes_first(agent: AgentProcess) -> None:
    code, out, err = _job_run(agent, "finishes_in_time.nomad.hcl")
    assert code == 0, (out, err)
    alloc = _only_alloc(agent, "quick-greeter")
    assert alloc["ClientStatus"] == "complete"
    assert alloc["ClientDescription"] != TIMED_OUT
