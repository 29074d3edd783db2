"""The agent hands its fingerprinted node to the client it builds: the variables a
task may interpolate (``${node.unique.id}``, ``${attr.*}``, the agent's node
``${meta.*}``, class and datacenter) are the node's, and the id stays across restarts;
the ports placement gives an allocation reach its task as ``NOMAD_*_<label>``. End
to end, a raw_exec task's args see those values, none of which become environment
variables of the task, and the node id is the same after a restart."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner.agent import Agent, AgentConfig
from allocrunner.testing import wait_for
from tests.agent.helpers import api, holds, job_allocs

pytestmark = pytest.mark.timeout(90)

GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}
REFS = [
    "${node.unique.id}",
    "${attr.kernel.name}",
    "${attr.cpu.arch}",
    "${meta.rack}",
    "${node.datacenter}",
    "${node.class}",
]


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


def writer_job(
    job_id: str, args: list[str], env: dict[str, str], networks: list[dict] | None = None
) -> dict:
    """A batch job whose task writes `args` and its environment to the alloc dir."""
    script = (
        'printf "%s\\n" "$@" > "$NOMAD_ALLOC_DIR/data/args"; env -0 > "$NOMAD_ALLOC_DIR/data/env"'
    )
    group: dict = {"Name": "g", "RestartPolicy": {"Attempts": 0, "Mode": "fail"}}
    if networks is not None:
        group["Networks"] = networks
    group["Tasks"] = [
        {
            "Name": "t",
            "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", script, "t", *args]},
            "Env": env,
        }
    ]
    return {"Job": {"ID": job_id, "Type": "batch", "Datacenters": ["dc9"], "TaskGroups": [group]}}


def port_job(job_id: str) -> dict:
    """A batch job with a dynamic port "http" whose task writes its args and env."""
    return writer_job(
        job_id,
        ["${NOMAD_PORT_http}"],
        {"WEB": "${NOMAD_ADDR_http}"},
        networks=[{"DynamicPorts": [{"Label": "http"}]}],
    )


def test_allocated_ports_reach_the_task_args_and_env(agent, data_dir) -> None:
    alloc_id, args, environ = run_to_completion(agent, data_dir, port_job("ports"))
    status, alloc, _ = api(agent.address, "GET", f"/v1/allocation/{alloc_id}")
    assert status == 200, alloc
    [port] = alloc["AllocatedResources"]["Shared"]["Ports"]
    value, host_ip = str(port["Value"]), port["HostIP"] or "127.0.0.1"
    assert args == [value]
    assert environ["NOMAD_PORT_http"] == environ["NOMAD_HOST_PORT_http"] == value
    assert environ["NOMAD_IP_http"] == host_ip
    assert environ["WEB"] == environ["NOMAD_ADDR_http"] == f"{host_ip}:{value}"


# --- a task's view of the node, end to end ---------------------------------------


def print_node_job(job_id: str) -> dict:
    """A batch job whose task writes its args and its environment to the alloc dir."""
    return writer_job(job_id, REFS, {"RACK": "${meta.rack}", "NODE": "${node.unique.id}"})


def run_to_completion(agent: Agent, data_dir: Path, job: dict) -> tuple[str, list[str], dict]:
    """Register `job`, wait for its one allocation to complete; (alloc id, the args and
    environ its task wrote)."""
    job_id = job["Job"]["ID"]
    status, body, _ = api(agent.address, "PUT", "/v1/jobs", job)
    assert status == 200, body

    def complete() -> str:
        allocs = job_allocs(agent.address, job_id)
        assert len(allocs) == 1, allocs
        assert allocs[0]["ClientStatus"] == "complete", allocs[0]["ClientStatus"]
        return allocs[0]["ID"]

    alloc_id = wait_for(complete, 30)
    data = data_dir / "alloc" / alloc_id / "alloc" / "data"
    args = (data / "args").read_text().splitlines()
    environ = dict(
        item.split("=", 1) for item in (data / "env").read_text().split("\0") if "=" in item
    )
    return alloc_id, args, environ


def test_task_args_see_the_fingerprinted_node(agent, data_dir) -> None:
    node_id = node_id_of(agent)
    _, args, environ = run_to_completion(agent, data_dir, print_node_job("node-vars"))
    kernel = os.uname().sysname.lower()
    arch = GO_ARCH.get(platform.machine(), platform.machine())
    assert args == [node_id, kernel, arch, "r7", "dc9", "batchers"]
    assert environ["RACK"] == "r7"
    assert environ["NODE"] == node_id
    assert environ["NOMAD_DC"] == "dc9"
    assert not [k for k in environ if k.startswith(("node.", "attr.", "meta."))]
    # Node meta is no NOMAD_META_ variable: those are the job's, group's and task's.
    assert not [k for k in environ if k.upper() == "NOMAD_META_RACK"]


def test_node_id_seen_by_tasks_survives_an_agent_restart(data_dir) -> None:
    first = start_agent(data_dir)
    try:
        _, before, _ = run_to_completion(first, data_dir, print_node_job("before"))
    finally:
        first.shutdown()
    second = start_agent(data_dir)
    try:
        _, after, _ = run_to_completion(second, data_dir, print_node_job("after"))
        assert holds(after[0] == before[0] == node_id_of(second), "same node id")
    finally:
        second.shutdown()
