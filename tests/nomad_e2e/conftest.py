"""The fixtures of Nomad's e2e scenarios. `node`: an agent in this process on a fresh data
dir, a python-nomad client on it and the command line. At teardown every job is purged,
and the test fails if an allocation directory or a task process is left (the fixture
then kills what is left, so nothing outlives the test). `agents`: agent processes on
one data dir, for scenarios that kill the agent.

Threads: the agent's own (joined by its shutdown). Locks: none. Owner: pytest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import nomad
import pytest
import requests

from allocrunner.agent import Agent, AgentConfig
from tests.agent.helpers import AgentProcess
from tests.nomad_e2e.helpers import Node, kill_leftovers


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    data_dir = tmp_path / "agent"
    agent = Agent(AgentConfig(data_dir=str(data_dir), http_addr="127.0.0.1:0", gc_interval=3600))
    agent.start()
    session = requests.Session()
    here = Node(agent, nomad.Nomad(address=agent.address, timeout=10, session=session), data_dir)
    leftover: set[int] = set()
    try:
        yield here
    finally:
        try:
            here.purge_all()
            here.assert_clean()
        finally:
            leftover = kill_leftovers(data_dir)
            session.close()
            agent.shutdown()
    assert not leftover, f"task processes killed by the fixture: {sorted(leftover)}"


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Callable[[], AgentProcess]]:
    """Starts agent processes on one data dir; at the end every one is closed and every
    task process of the data dir is killed (the test fails if one had to be)."""
    data_dir = tmp_path / "data"
    started: list[AgentProcess] = []

    def start() -> AgentProcess:
        agent = AgentProcess(data_dir)
        started.append(agent)
        return agent.wait_ready()

    yield start
    for agent in started:
        agent.close()
    leftover = kill_leftovers(data_dir)
    assert not leftover, f"task processes killed by the fixture: {sorted(leftover)}"
