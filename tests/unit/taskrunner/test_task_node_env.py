"""Node variables and port variables in the task environment (Nomad's
client/taskenv/env.go): ``${node.*}``, ``${attr.*}`` and ``${meta.*}`` are interpolated
into the env block, the driver config and templates but never exported to the task;
an allocation's ports give their ``NOMAD_*_<label>`` variables."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from allocrunner.agent.fingerprint import fingerprint, with_node_vars
from allocrunner.config import ClientConfig
from allocrunner.drivers._process import children_of
from allocrunner.structs import AllocatedPort, Allocation, Task
from allocrunner.structs.job import Template
from allocrunner.taskrunner import TaskRunner
from allocrunner.taskrunner.env import interpolate, interpolation_scope, nomad_env
from allocrunner.testing import mock_task, wait_for
from tests.unit.taskrunner.conftest import alloc_of, event_types, kill_quietly, wait_state

NODE_ID = "8d3c7a2e-51f0-4c1b-9a77-0e5f3b1c2d44"
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}


def node_config(tmp_path: Path, **fields: object) -> ClientConfig:
    """A config fingerprinted as the agent does it, with node meta rack=r7."""
    config = ClientConfig.for_data_dir(
        tmp_path / "data", node_id=NODE_ID, meta={"rack": "r7"}, datacenter="dc9", **fields
    )
    return with_node_vars(config, fingerprint(config))


def with_ports(alloc: Allocation, *ports: AllocatedPort) -> Allocation:
    return attrs.evolve(alloc, allocated_ports=ports)


def env_of(alloc: Allocation, task: Task, node_vars: dict[str, str]) -> dict[str, str]:
    return nomad_env(
        alloc, task, alloc_dir="/a", local_dir="/l", secrets_dir="/s", node_vars=node_vars
    )


# --- the pure parts -------------------------------------------------------------------


def test_config_alone_knows_the_node_it_describes(tmp_path) -> None:
    config = ClientConfig.for_data_dir(
        tmp_path, node_id=NODE_ID, datacenter="dc2", region="eu", meta={"rack": "r1"}
    )
    assert dict(config.task_node_vars()) == {
        "node.unique.id": NODE_ID,
        "node.datacenter": "dc2",
        "node.region": "eu",
        "node.class": "",
        "node.pool": "default",
        "meta.rack": "r1",
        "node.meta.rack": "r1",
    }
    # Without a fingerprint the node's attributes are unknown: references stay.
    assert interpolate("${attr.kernel.name}", config.task_node_vars()) == "${attr.kernel.name}"


def test_config_without_node_id_leaves_the_id_reference_as_written(tmp_path) -> None:
    scope = ClientConfig.for_data_dir(tmp_path).task_node_vars()
    assert interpolate("${node.unique.id}", scope) == "${node.unique.id}"


def test_config_refuses_node_meta_that_is_not_text(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"meta\['rack'\]"):
        ClientConfig.for_data_dir(tmp_path, meta={"rack": 3})


def test_fingerprinted_config_carries_the_node(tmp_path) -> None:
    scope = node_config(tmp_path, node_class="batch").task_node_vars()
    assert scope["node.unique.id"] == NODE_ID
    assert scope["node.datacenter"] == "dc9"
    assert scope["node.class"] == "batch"
    assert scope["attr.kernel.name"] == os.uname().sysname.lower()
    assert scope["attr.cpu.arch"] == GO_ARCH.get(platform.machine(), platform.machine())
    assert scope["meta.rack"] == "r7"
    assert scope["node.meta.rack"] == "r7"
    # The node's address is where its ports are given: loopback, as a -dev agent's.
    assert scope["attr.unique.network.ip-address"] == "127.0.0.1"


def test_node_meta_wins_over_task_meta_and_task_meta_fills_the_rest() -> None:
    task = mock_task(meta={"rack": "task-rack", "owner": "ops"})
    alloc = alloc_of(task)
    env = env_of(alloc, task, {"meta.rack": "r7"})
    scope = interpolation_scope(env, {"meta.rack": "r7"})
    assert interpolate("${meta.rack} ${meta.owner} ${NOMAD_META_rack}", scope) == (
        "r7 ops task-rack"
    )


def test_nomad_env_holds_no_node_variable_and_takes_the_node_datacenter() -> None:
    task = mock_task(meta={"where": "${attr.kernel.name}/${node.unique.id}"})
    node = {"node.unique.id": NODE_ID, "node.datacenter": "dc9", "attr.kernel.name": "linux"}
    env = env_of(alloc_of(task), task, node)
    assert env["NOMAD_DC"] == "dc9"
    # Task meta values are interpolated against the node, as Nomad does.
    assert env["NOMAD_META_where"] == f"linux/{NODE_ID}"
    assert not [k for k in env if k.startswith(("node.", "attr.", "meta."))]


def test_allocated_ports_give_their_variables() -> None:
    task = mock_task()
    alloc = with_ports(
        alloc_of(task),
        AllocatedPort("http", 8080, to=80, host_ip="10.0.0.5"),
        AllocatedPort("db", 25000),
    )
    env = env_of(alloc, task, {})
    assert {k: v for k, v in env.items() if k.endswith(("_http", "_db"))} == {
        "NOMAD_ADDR_http": "10.0.0.5:8080",
        "NOMAD_HOST_ADDR_http": "10.0.0.5:8080",
        "NOMAD_IP_http": "10.0.0.5",
        "NOMAD_HOST_IP_http": "10.0.0.5",
        "NOMAD_PORT_http": "80",
        "NOMAD_ALLOC_PORT_http": "80",
        "NOMAD_HOST_PORT_http": "8080",
        "NOMAD_ADDR_db": "127.0.0.1:25000",
        "NOMAD_HOST_ADDR_db": "127.0.0.1:25000",
        "NOMAD_IP_db": "127.0.0.1",
        "NOMAD_HOST_IP_db": "127.0.0.1",
        "NOMAD_PORT_db": "25000",
        "NOMAD_ALLOC_PORT_db": "25000",
        "NOMAD_HOST_PORT_db": "25000",
    }


def test_a_port_without_host_ip_takes_the_node_address() -> None:
    task = mock_task()
    alloc = with_ports(alloc_of(task), AllocatedPort("db", 25000))
    env = env_of(alloc, task, {"attr.unique.network.ip-address": "192.0.2.7"})
    assert env["NOMAD_ADDR_db"] == "192.0.2.7:25000"


# --- a real process -------------------------------------------------------------------


@pytest.fixture
def no_leftover_processes(harness) -> Iterator[None]:
    before = {child.pid for child in children_of(os.getpid())}
    yield
    harness.close()
    leftover: set[int] = set()

    def none_left() -> None:
        leftover.clear()
        leftover.update({child.pid for child in children_of(os.getpid())} - before)
        assert not leftover, f"processes {sorted(leftover)} left running"

    try:
        wait_for(none_left, timeout=5)
    finally:
        for pid in leftover:
            kill_quietly(pid)


def read_when_written(path: Path) -> str:
    def check() -> str:
        assert path.exists(), f"{path} not written yet"
        text = path.read_text()
        assert text.endswith("\n"), f"{path} incomplete: {text!r}"
        return text

    return wait_for(check, 10.0)


def proc_strings(pid: int, name: str) -> list[str]:
    return Path(f"/proc/{pid}/{name}").read_bytes().rstrip(b"\0").decode().split("\0")


NODE_REFS = [
    "${node.unique.id}",
    "${attr.kernel.name}",
    "${attr.cpu.arch}",
    "${meta.rack}",
    "${node.datacenter}",
    "${NOMAD_PORT_http}",
]


def node_task(**fields: Any) -> Task:
    script = 'echo $$ > "$NOMAD_TASK_DIR/pid"; while :; do sleep 0.05; done'
    return mock_task(
        driver="raw_exec",
        config={"command": "/bin/sh", "args": ["-c", script, "task", *NODE_REFS]},
        env={"RACK": "${meta.rack}", "KERNEL": "${attr.kernel.name}", "WEB": "${NOMAD_ADDR_http}"},
        templates=(
            Template(
                dest_path="local/node.txt",
                embedded_tmpl='{{ env "node.unique.id" }} {{ env "attr.kernel.name" }}\n',
            ),
        ),
        **fields,
    )


@pytest.mark.usefixtures("no_leftover_processes")
def test_raw_exec_task_sees_the_node_in_args_env_and_templates(harness, tmp_path) -> None:
    config = node_config(tmp_path)
    alloc = with_ports(alloc_of(node_task()), AllocatedPort("http", 23456, host_ip="127.0.0.1"))
    tr: TaskRunner = harness.runner(alloc, node_vars=config.task_node_vars())
    pid = int(read_when_written(tr.task_dir.local_dir / "pid"))
    assert wait_state(tr, "running").state == "running"
    kernel = os.uname().sysname.lower()
    arch = GO_ARCH.get(platform.machine(), platform.machine())

    assert proc_strings(pid, "cmdline")[4:] == [NODE_ID, kernel, arch, "r7", "dc9", "23456"]
    environ = dict(line.split("=", 1) for line in proc_strings(pid, "environ"))
    assert environ["RACK"] == "r7"
    assert environ["KERNEL"] == kernel
    assert environ["WEB"] == "127.0.0.1:23456"
    assert environ["NOMAD_PORT_http"] == "23456"
    assert environ["NOMAD_DC"] == "dc9"
    assert not [k for k in environ if k.startswith(("node.", "attr.", "meta."))]
    assert (tr.task_dir.local_dir / "node.txt").read_text() == f"{NODE_ID} {kernel}\n"
    assert tr.kill(timeout=10), event_types(tr.task_state())


@pytest.mark.usefixtures("no_leftover_processes")
def test_without_node_variables_node_references_stay_as_written(harness) -> None:
    tr: TaskRunner = harness.runner(alloc_of(node_task()))
    pid = int(read_when_written(tr.task_dir.local_dir / "pid"))
    args = proc_strings(pid, "cmdline")[4:]
    assert args == NODE_REFS
    environ = dict(line.split("=", 1) for line in proc_strings(pid, "environ"))
    assert environ["RACK"] == "${meta.rack}"
    assert tr.kill(timeout=10)
