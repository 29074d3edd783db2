"""The `node` fixture of Nomad's e2e scenarios: an agent in this process on a fresh data
dir, a python-nomad client on it and the command line. At teardown every job is purged,
and the test fails if an allocation directory or a task process is left (the fixture
then kills what is left, so nothing outlives the test).

Threads: the agent's own (joined by its shutdown). Locks: none. Owner: pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nomad
import pytest
import requests

from allocrunner.agent import Agent, AgentConfig
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
