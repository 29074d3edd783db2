"""The agent hands its fingerprinted node to the client it builds: the variables a
task may interpolate (``${node.unique.id}``, ``${attr.*}``, the agent's node
``${meta.*}``, class and datacenter) are the node's, and the id stays across restarts."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner.agent import Agent, AgentConfig
from tests.agent.helpers import api

pytestmark = pytest.mark.timeout(90)

GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}


def start_agent(data_dir: Path) -> Agent:
    agent = Agent(
        AgentConfig(
            data_dir=str(data_dir),
            http_addr="127.0.0.1:0",
            datacenter="dc9",
            node_class="batchers",
            meta={"rack": "r7"},
            gc_interval=3600,
        )
    )
    agent.start()
    return agent


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def agent(data_dir) -> Iterator[Agent]:
    agent = start_agent(data_dir)
    try:
        yield agent
    finally:
        agent.shutdown()


def node_id_of(agent: Agent) -> str:
    status, nodes, _ = api(agent.address, "GET", "/v1/nodes")
    assert status == 200 and len(nodes) == 1, nodes
    return nodes[0]["ID"]


def test_client_config_carries_the_fingerprinted_node(agent) -> None:
    scope = agent.client.config.task_node_vars()
    assert scope["node.unique.id"] == node_id_of(agent)
    assert scope["attr.kernel.name"] == os.uname().sysname.lower()
    assert scope["attr.cpu.arch"] == GO_ARCH.get(platform.machine(), platform.machine())
    assert scope["meta.rack"] == "r7"
    assert scope["node.datacenter"] == "dc9"
    assert scope["node.class"] == "batchers"
    assert scope["node.pool"] == "default"


def test_node_id_given_to_tasks_survives_an_agent_restart(data_dir) -> None:
    first = start_agent(data_dir)
    try:
        before = first.client.config.task_node_vars()["node.unique.id"]
    finally:
        first.shutdown()
    second = start_agent(data_dir)
    try:
        after = second.client.config.task_node_vars()["node.unique.id"]
        assert after == before == node_id_of(second)
    finally:
        second.shutdown()
