"""Nomad's e2e/clientstate TestClientState_Kill on one node: sleeper.nomad, whose task
sits at job level (so it becomes a group of its own name), runs under an agent process;
the agent is killed with SIGKILL and started again on the same data dir, twice. As the
Go test asserts: the task's process lives on through each kill, its `pid` file (each
start appends a line) keeps the one pid, so no duplicate task was started, the task
stays running with no restart, and its file system is readable only while an agent
runs. Afterwards the job is purged and /proc shows no process of the data dir left.
"""

from __future__ import annotations

import pytest

from allocrunner.drivers._process import pid_alive
from allocrunner.testing import wait_for
from tests.agent.helpers import api
from tests.nomad_e2e.helpers import e2e_file, task_processes
from tests.unit.cli.helpers import run_cli

pytestmark = pytest.mark.timeout(120)

KILLS = 2


def _alloc(address: str) -> dict:
    status, allocs, _ = api(address, "GET", "/v1/job/sleeper/allocations")
    assert status == 200 and len(allocs) == 1, allocs
    status, alloc, _ = api(address, "GET", f"/v1/allocation/{allocs[0]['ID']}")
    assert status == 200, alloc
    return alloc


def _healthy(address: str) -> dict:
    alloc = _alloc(address)
    state = (alloc["TaskStates"] or {}).get("sleeper")
    assert state is not None and state["State"] == "running", alloc["TaskStates"]
    assert state["Restarts"] == 0, state
    return alloc


def _pid_lines(address: str, alloc_id: str) -> list[int]:
    status, text, _ = api(address, "GET", f"/v1/client/fs/cat/{alloc_id}?path=sleeper/pid")
    assert status == 200, text
    lines = [int(line) for line in str(text).split()]
    assert lines, "no pid written yet"
    return lines


def test_kill9_and_restart_never_starts_the_task_twice(agents) -> None:
    agent = agents()
    code, out, err = run_cli(
        "job",
        "run",
        "-detach",
        "-address",
        agent.address,
        str(e2e_file("clientstate/sleeper.nomad")),
    )
    assert code == 0, (out, err)
    alloc = wait_for(lambda: _healthy(agent.address), 20)
    assert (alloc["TaskGroup"], alloc["Name"]) == ("sleeper", "sleeper.sleeper[0]")
    [pid] = wait_for(lambda: _pid_lines(agent.address, alloc["ID"]), 20)

    for _ in range(KILLS):
        agent.kill9()
        assert pid_alive(pid), "the task died with its agent"
        with pytest.raises(OSError):  # no agent: the file system is out of reach
            _pid_lines(agent.address, alloc["ID"])
        agent = agents()
        assert wait_for(lambda a=agent: _pid_lines(a.address, alloc["ID"]), 20) == [pid]
        wait_for(lambda a=agent: _healthy(a.address), 20)
        assert pid_alive(pid)

    status, body, _ = api(agent.address, "DELETE", "/v1/job/sleeper?purge=true")
    assert status == 200, body

    def stopped() -> None:
        assert not pid_alive(pid), "the task outlived its purged job"
        assert not task_processes(agent.data_dir), "processes of the data dir are left"

    wait_for(stopped, 20)
