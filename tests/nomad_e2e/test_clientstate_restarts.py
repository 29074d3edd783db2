"""Nomad's e2e/clientstate TestClientState_KillDuringRestart on one node: restarter.nomad
(a task that writes its pid and exits 99 at once, restarted again and again; here with
a 0.2s restart delay and a 0.2s run instead of 3s and 1s) runs under an agent process
that is killed with SIGKILL and started again, four times, alternately while the task
runs and while it waits to restart. As the Go test asserts, the restart count never
goes down and restarts happen; and no two of the task's processes are ever alive at
once (every pid it wrote is distinct, at most one alive), so no kill made the agent
start the task twice.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from allocrunner.drivers._process import pid_alive
from allocrunner.testing import wait_for
from tests.agent.helpers import api
from tests.nomad_e2e.helpers import e2e_file, task_processes
from tests.unit.cli.helpers import run_cli

pytestmark = pytest.mark.timeout(120)

KILLS = 4


def _fast_restarter(tmp_path: Path) -> Path:
    text = e2e_file("clientstate/restarter.nomad").read_text()
    for old, new in (('delay    = "3s"', 'delay    = "200ms"'), ("sleep 1 &&", "sleep 0.2 &&")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path = tmp_path / "restarter.nomad"
    path.write_text(text)
    return path


def _task_state(address: str) -> dict:
    status, allocs, _ = api(address, "GET", "/v1/job/restarter/allocations")
    assert status == 200 and len(allocs) == 1, allocs
    status, alloc, _ = api(address, "GET", f"/v1/allocation/{allocs[0]['ID']}")
    assert status == 200, alloc
    state = (alloc["TaskStates"] or {}).get("restarter")
    assert state is not None, "no task state yet"
    return {**state, "AllocID": alloc["ID"]}


def _pids(data_dir: Path, alloc_id: str) -> list[int]:
    path = data_dir / "alloc" / alloc_id / "restarter" / "pid"
    try:
        return [int(word) for word in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _progressed(address: str, restarts: int, waiting: bool) -> dict:
    """The task state once it restarted more than `restarts` times and is running (or,
    `waiting`, has just been told to restart)."""
    state = _task_state(address)
    assert state["Restarts"] > restarts, (state["Restarts"], restarts)
    last = state["Events"][-1]["Type"]
    assert (last == "Restarting") if waiting else (state["State"] == "running"), last
    return state


def _at_most_one_alive(pids: list[int]) -> None:
    assert len(pids) == len(set(pids)), f"a pid written twice: {pids}"
    alive = [p for p in pids if pid_alive(p)]
    assert len(alive) <= 1, f"two task processes alive at once: {alive}"


def test_kill9_during_restarts_never_loses_or_doubles_them(agents, tmp_path: Path) -> None:
    agent = agents()
    code, out, err = run_cli(
        "job", "run", "-detach", "-address", agent.address, str(_fast_restarter(tmp_path))
    )
    assert code == 0, (out, err)
    restarts = 0
    for kill in range(KILLS):
        waiting = kill % 2 == 1

        state = wait_for(partial(_progressed, agent.address, restarts, waiting), 20)
        _at_most_one_alive(_pids(agent.data_dir, state["AllocID"]))
        restarts = state["Restarts"]
        agent.kill9()
        agent = agents()
        after = wait_for(partial(_task_state, agent.address), 20)
        assert after["Restarts"] >= restarts, "the restart count went down"
        _at_most_one_alive(_pids(agent.data_dir, after["AllocID"]))

    status, body, _ = api(agent.address, "DELETE", "/v1/job/restarter?purge=true")
    assert status == 200, body

    def stopped() -> None:
        assert not task_processes(agent.data_dir), "processes of the data dir are left"
        assert not (agent.data_dir / "alloc").is_dir() or not any(
            (agent.data_dir / "alloc").iterdir()
        ), "alloc dirs left"

    wait_for(stopped, 20)
