"""Placement on a real agent: constraints, resources and host ports, as Nomad reports them.

Each test runs an in-process agent on a fresh data dir and reads it through python-nomad
(evaluations, summaries, allocations) or plain HTTP; the CLI cases run real `allocrunner`
processes. Tasks are mock tasks (no process to clean up) unless a test needs one to
survive an agent restart.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nomad
import pytest
import requests

from allocrunner.agent import Agent, AgentConfig
from allocrunner.placement import port_is_free
from allocrunner.testing import wait_for
from tests.agent.helpers import api, holds, kill_groups, pid_alive, recorded_pids

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]


def _task(**resources: int) -> dict[str, Any]:
    return {
        "Name": "t",
        "Driver": "mock_driver",
        "Config": {"run_for": "300s"},
        "KillTimeout": 100_000_000,
        "Resources": {"CPUShares": 10, "MemoryMB": 10, **_resources(resources)},
    }


def _resources(resources: dict[str, int]) -> dict[str, int]:
    keys = {"memory": "MemoryMB", "cpu": "CPUShares"}
    return {keys[k]: v for k, v in resources.items()}


def _job(
    job_id: str,
    *,
    count: int = 1,
    constraints: list[dict[str, str]] | None = None,
    static: dict[str, int] | None = None,
    dynamic: tuple[str, ...] = (),
    task: dict[str, Any] | None = None,
) -> dict[str, Any]:
    group: dict[str, Any] = {
        "Name": "g",
        "Count": count,
        "Tasks": [task or _task()],
        "EphemeralDisk": {"SizeMB": 10},
    }
    if constraints:
        group["Constraints"] = constraints
    if static or dynamic:
        group["Networks"] = [
            {
                "ReservedPorts": [{"Label": k, "Value": v} for k, v in (static or {}).items()],
                "DynamicPorts": [{"Label": label} for label in dynamic],
            }
        ]
    return {"Job": {"ID": job_id, "Type": "service", "TaskGroups": [group]}}


WINDOWS = {"LTarget": "${attr.kernel.name}", "RTarget": "windows", "Operand": "="}


class Env:
    """One agent and a python-nomad client on it."""

    def __init__(self, agent: Agent, client: nomad.Nomad, data_dir: Path) -> None:
        self.agent = agent
        self.n = client
        self.data_dir = data_dir

    @property
    def address(self) -> str:
        return self.agent.address

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        status, reply, _ = api(self.address, "PUT", "/v1/jobs", body)
        assert status == 200, reply
        return reply

    def evaluation(self, eval_id: str) -> dict[str, Any]:
        return self.n.evaluation.get_evaluation(eval_id)

    def live_allocs(self, job_id: str) -> list[dict[str, Any]]:
        return [a for a in self.n.job.get_allocations(job_id) if a["DesiredStatus"] == "run"]

    def ports_of(self, alloc_id: str) -> dict[str, int]:
        alloc = self.n.allocation.get_allocation(alloc_id)
        ports = alloc["AllocatedResources"]["Shared"]["Ports"] or []
        return {p["Label"]: p["Value"] for p in ports}


def _start(data_dir: Path) -> Agent:
    agent = Agent(AgentConfig(data_dir=str(data_dir), http_addr="127.0.0.1:0", gc_interval=3600))
    agent.start()
    return agent


def _purge(agent: Agent) -> None:
    for job in list(agent.cluster.state().jobs.values()):
        api(agent.address, "DELETE", f"/v1/job/{job.id}?purge=true")

    def gone() -> None:
        assert not agent.cluster.state().allocs, "allocations left after purge"

    wait_for(gone, timeout=15)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    data_dir = tmp_path / "agent"
    agent = _start(data_dir)
    session = requests.Session()
    try:
        yield Env(agent, nomad.Nomad(address=agent.address, timeout=10, session=session), data_dir)
    finally:
        try:
            _purge(agent)
        finally:
            session.close()
            agent.shutdown()


# --- constraints and resources -----------------------------------------------------------


def test_a_constraint_that_filters_the_node_places_nothing_and_says_why(env: Env) -> None:
    reply = env.register(_job("win", constraints=[WINDOWS]))
    evaluation = env.evaluation(reply["EvalID"])
    assert evaluation["Status"] == "complete"
    metric = evaluation["FailedTGAllocs"]["g"]
    assert metric["NodesEvaluated"] == 1
    assert metric["NodesFiltered"] == 1
    assert metric["ConstraintFiltered"] == {"${attr.kernel.name} = windows": 1}
    assert metric["NodesExhausted"] == 0
    assert metric["CoalescedFailures"] == 0
    assert evaluation["QueuedAllocations"] == {"g": 1}
    assert env.n.job.get_allocations("win") == []
    blocked = env.evaluation(evaluation["BlockedEval"])
    assert blocked["Status"] == "blocked"
    assert blocked["TriggeredBy"] == "queued-allocs"
    assert blocked["PreviousEval"] == evaluation["ID"]
    listed = {e["ID"]: e for e in env.n.job.get_evaluations("win")}
    assert listed[evaluation["ID"]]["FailedTGAllocs"] == evaluation["FailedTGAllocs"]
    assert env.n.job.get_summary("win")["Summary"]["g"]["Queued"] == 1


def test_a_satisfied_constraint_places_and_leaves_no_failure(env: Env) -> None:
    linux = {"LTarget": "${attr.kernel.name}", "RTarget": "linux", "Operand": "="}
    reply = env.register(_job("lin", constraints=[linux]))
    evaluation = env.evaluation(reply["EvalID"])
    assert evaluation["FailedTGAllocs"] is None
    assert evaluation["BlockedEval"] == ""
    assert len(env.live_allocs("lin")) == 1
    assert env.n.job.get_summary("lin")["Summary"]["g"]["Queued"] == 0


def test_a_new_evaluation_cancels_the_jobs_blocked_one(env: Env) -> None:
    first = env.evaluation(env.register(_job("again", constraints=[WINDOWS]))["EvalID"])
    env.register(_job("again"))
    assert env.evaluation(first["BlockedEval"])["Status"] == "canceled"
    assert len(env.live_allocs("again")) == 1


def test_memory_larger_than_the_node_exhausts_memory(env: Env) -> None:
    reply = env.register(_job("huge", count=2, task=_task(memory=10**9)))
    metric = env.evaluation(reply["EvalID"])["FailedTGAllocs"]["g"]
    assert metric["NodesExhausted"] == 1
    assert metric["DimensionExhausted"] == {"memory": 1}
    assert metric["ConstraintFiltered"] is None
    assert metric["CoalescedFailures"] == 1
    assert env.n.job.get_allocations("huge") == []
    assert env.n.job.get_summary("huge")["Summary"]["g"]["Queued"] == 2


def test_memory_counts_the_live_allocations_of_the_node(env: Env) -> None:
    nodes = env.n.nodes.get_nodes(resources=True)
    memory = nodes[0]["NodeResources"]["Memory"]["MemoryMB"]
    half = memory // 2 + 1
    reply = env.register(_job("halves", count=3, task=_task(memory=half)))
    evaluation = env.evaluation(reply["EvalID"])
    assert len(env.live_allocs("halves")) == 1
    assert evaluation["FailedTGAllocs"]["g"]["DimensionExhausted"] == {"memory": 1}
    assert evaluation["QueuedAllocations"] == {"g": 2}


def test_freed_capacity_places_what_was_queued(env: Env) -> None:
    """Nomad unblocks a blocked evaluation when capacity is freed: a batch job whose
    allocations fit one at a time runs them all, one after the other."""
    memory = env.n.nodes.get_nodes(resources=True)[0]["NodeResources"]["Memory"]["MemoryMB"]
    task = {**_task(memory=memory // 2 + 1), "Config": {"run_for": "100ms"}}
    body = _job("serial", count=3, task=task)
    body["Job"]["Type"] = "batch"
    first = env.evaluation(env.register(body)["EvalID"])
    assert first["QueuedAllocations"] == {"g": 2}

    def all_complete() -> None:
        allocs = env.n.job.get_allocations("serial")
        assert sorted(a["Name"] for a in allocs if a["ClientStatus"] == "complete") == [
            "serial.g[0]",
            "serial.g[1]",
            "serial.g[2]",
        ], allocs

    wait_for(all_complete, timeout=30)
    evals = env.n.job.get_evaluations("serial")
    assert not [e for e in evals if e["Status"] == "blocked"]
    assert env.evaluation(first["BlockedEval"])["Status"] == "complete"
    assert env.n.job.get_summary("serial")["Summary"]["g"]["Queued"] == 0


# --- ports ---------------------------------------------------------------------------


def test_fifty_dynamic_ports_at_once_are_distinct_and_free(env: Env) -> None:
    replies: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def register(n: int) -> None:
        try:
            replies.append(env.register(_job(f"dyn{n}", count=5, dynamic=("http",))))
        except BaseException as err:  # reported below, on the test's thread
            errors.append(err)

    threads = [threading.Thread(target=register, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert all(env.evaluation(r["EvalID"])["FailedTGAllocs"] is None for r in replies)
    allocs = [a for n in range(10) for a in env.live_allocs(f"dyn{n}")]
    assert len(allocs) == 50
    ports = [env.ports_of(a["ID"])["http"] for a in allocs]
    assert len(set(ports)) == 50
    assert all(20000 <= p <= 32000 for p in ports)
    assert all(port_is_free(p) for p in ports)  # mock tasks bind nothing: free on the host
    assert env.agent.cluster.ports.held() == frozenset(ports)


def test_a_static_port_busy_on_the_host_fails_the_placement(env: Env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        reply = env.register(_job("busy", static={"http": port}))
        metric = env.evaluation(reply["EvalID"])["FailedTGAllocs"]["g"]
    assert metric["DimensionExhausted"] == {f"network: reserved port collision http={port}": 1}
    assert metric["NodesExhausted"] == 1
    assert env.n.job.get_allocations("busy") == []
    assert port not in env.agent.cluster.ports.held()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ports_are_released_on_stop_and_given_again(env: Env) -> None:
    port = _free_port()
    env.register(_job("first", static={"http": port}, dynamic=("aux",)))
    [first] = env.live_allocs("first")
    assert env.ports_of(first["ID"])["http"] == port
    taken = env.evaluation(env.register(_job("second", static={"http": port}))["EvalID"])
    assert taken["FailedTGAllocs"]["g"]["DimensionExhausted"] == {
        f"network: reserved port collision http={port}": 1
    }
    env.n.job.deregister_job("first")

    def released() -> None:
        # Held while the stopped allocation shuts down (Nomad's scheduler counts it
        # until its client status is terminal), then freed.
        assert env.agent.cluster.ports.ports_of(first["ID"]) == ()

    wait_for(released, 30)
    again = env.evaluation(env.register(_job("second", static={"http": port}))["EvalID"])
    assert again["FailedTGAllocs"] is None
    [second] = env.live_allocs("second")
    assert env.ports_of(second["ID"]) == {"http": port}


def test_a_stopped_allocation_frees_its_port_for_the_replacement(env: Env) -> None:
    port = _free_port()
    env.register(_job("svc", static={"http": port}))
    [old] = env.live_allocs("svc")
    env.n.allocation.stop_allocation(old["ID"])
    [new] = env.live_allocs("svc")
    assert new["ID"] != old["ID"]
    assert env.ports_of(new["ID"]) == {"http": port}


def test_a_job_for_other_datacenters_is_not_placed(env: Env) -> None:
    from tests.unit.cli.helpers import run_cli

    body = _job("far")
    body["Job"]["Datacenters"] = ["us-east-*"]
    reply = env.register(body)
    evaluation = env.evaluation(reply["EvalID"])
    metric = evaluation["FailedTGAllocs"]["g"]
    assert metric["NodesEvaluated"] == 0
    assert metric["NodesAvailable"] == {"us-east-*": 0}
    assert env.n.job.get_allocations("far") == []
    env.n.job.deregister_job("far", purge=True)
    job_file = env.data_dir / "far.nomad.hcl"
    job_file.write_text(
        'job "far2" {\n  datacenters = ["us-east-*"]\n  group "g" {\n    task "t" {\n'
        '      driver = "mock_driver"\n      config {\n        run_for = "1s"\n      }\n'
        "    }\n  }\n}\n"
    )
    code, out, _ = run_cli("job", "run", "-address", env.address, str(job_file))
    assert code == 2, out
    assert "* No nodes were eligible for evaluation" in out
    assert '* No nodes are available in datacenter "us-east-*"' in out


def test_alloc_status_lists_the_allocation_addresses(env: Env) -> None:
    from tests.unit.cli.helpers import run_cli

    port = _free_port()
    env.register(_job("addrs", static={"http": port}, dynamic=("db",)))
    [stub] = env.live_allocs("addrs")
    alloc = env.n.allocation.get_allocation(stub["ID"])
    db = {p["Label"]: p["Value"] for p in alloc["AllocatedResources"]["Shared"]["Ports"]}["db"]
    code, out, err = run_cli("alloc", "status", "-address", env.address, stub["ID"])
    assert code == 0, err
    block = out.split('Allocation Addresses (mode = "host"):\n', 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in block.splitlines()]
    assert rows[0] == ["Label", "Dynamic", "Address"]
    assert sorted(rows[1:]) == sorted(
        [["*http", "yes", f"127.0.0.1:{port}"], ["*db", "yes", f"127.0.0.1:{db}"]]
    )


def test_allocated_ports_are_in_the_allocations_json(env: Env) -> None:
    port = _free_port()
    env.register(_job("json", static={"http": port}, dynamic=("db",)))
    [stub] = env.live_allocs("json")
    alloc = env.n.allocation.get_allocation(stub["ID"])
    shared = alloc["AllocatedResources"]["Shared"]
    by_label = {p["Label"]: p for p in shared["Ports"]}
    assert by_label["http"] == {"Label": "http", "Value": port, "To": 0, "HostIP": "127.0.0.1"}
    assert 20000 <= by_label["db"]["Value"] <= 32000
    [network] = shared["Networks"]
    assert network["Mode"] == "host"
    assert [p["Label"] for p in network["ReservedPorts"]] == ["http"]
    assert [p["Label"] for p in network["DynamicPorts"]] == ["db"]
    job = env.n.job.get_job("json")
    assert job["TaskGroups"][0]["Networks"][0]["ReservedPorts"][0]["Value"] == port
    assert job["TaskGroups"][0]["Networks"][0]["DynamicPorts"][0]["Label"] == "db"


def test_concurrent_registers_for_one_static_port_place_exactly_one(env: Env) -> None:
    port = _free_port()
    replies: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def register(n: int) -> None:
        try:
            replies.append(env.register(_job(f"race{n}", static={"http": port})))
        except BaseException as err:  # reported below, on the test's thread
            errors.append(err)

    threads = [threading.Thread(target=register, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    failed = [r for r in replies if env.evaluation(r["EvalID"])["FailedTGAllocs"]]
    assert len(failed) == 7
    placed = [a for n in range(8) for a in env.live_allocs(f"race{n}")]
    assert len(placed) == 1
    assert env.ports_of(placed[0]["ID"]) == {"http": port}


BIND_AND_LINGER = """
import os, signal, socket, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("0.0.0.0", int(os.environ["NOMAD_PORT_http"])))
sock.listen()
signal.signal(signal.SIGTERM, lambda *_: None)
with open(os.path.join(os.environ["NOMAD_ALLOC_DIR"], "data", "pids"), "a") as fh:
    fh.write(str(os.getpid()) + chr(10))
time.sleep(300)
"""


def test_a_destructive_update_gives_the_port_of_the_stopping_allocation(env: Env) -> None:
    """Nomad frees a port for placement once its allocation is told to stop, though its
    task may still hold it: the replacement gets the same static port."""
    port = _free_port()
    task = {
        "Name": "t",
        "Driver": "raw_exec",
        "Config": {"command": sys.executable, "args": ["-c", BIND_AND_LINGER]},
        "KillTimeout": 2_000_000_000,
        "Resources": {"CPUShares": 10, "MemoryMB": 10},
    }
    env.register(_job("web", static={"http": port}, task=task))
    [old] = env.live_allocs("web")
    wait_for(lambda: holds(recorded_pids(env.data_dir, old["ID"]), "task pid"), timeout=15)
    assert not port_is_free(port)
    changed = {**task, "Env": {"VERSION": "2"}}
    reply = env.register(_job("web", static={"http": port}, task=changed))
    assert env.evaluation(reply["EvalID"])["FailedTGAllocs"] is None
    [new] = env.live_allocs("web")
    assert new["ID"] != old["ID"] and new["PreviousAllocation"] == old["ID"]
    assert env.ports_of(new["ID"]) == {"http": port}
    pids = recorded_pids(env.data_dir, old["ID"])
    env.n.job.deregister_job("web", purge=True)
    wait_for(lambda: holds([p for p in pids if pid_alive(p)] == [], "old task gone"), 20)


@pytest.mark.parametrize("lose_cluster_state", [False, True])
def test_ports_survive_an_agent_restart(tmp_path: Path, lose_cluster_state: bool) -> None:
    """From the saved cluster state, or (when that is lost) from the allocations the
    client restores out of its state database."""
    data_dir = tmp_path / "agent"
    port = _free_port()
    script = 'echo $$ >> "$NOMAD_ALLOC_DIR/data/pids"; exec sleep 300'
    task = {
        "Name": "t",
        "Driver": "raw_exec",
        "Config": {"command": "/bin/sh", "args": ["-c", script]},
        "KillTimeout": 1_000_000_000,
        "Resources": {"CPUShares": 10, "MemoryMB": 10},
    }
    agent = _start(data_dir)
    pids: list[int] = []
    try:
        status, reply, _ = api(
            agent.address, "PUT", "/v1/jobs", _job("keep", static={"http": port}, task=task)
        )
        assert status == 200, reply
        [alloc] = [a for a in agent.cluster.state().allocs.values() if a.job_id == "keep"]
        wait_for(lambda: holds(recorded_pids(data_dir, alloc.id), "task pid"), timeout=15)
        pids = recorded_pids(data_dir, alloc.id)
        before = alloc.allocated_ports
        agent.shutdown()
        if lose_cluster_state:
            (data_dir / "server" / "state.json").unlink()
        agent = _start(data_dir)
        restored = agent.cluster.state().allocs[alloc.id]
        assert restored.allocated_ports == before
        assert agent.cluster.ports.ports_of(alloc.id) == before
        status, reply, _ = api(
            agent.address, "PUT", "/v1/jobs", _job("clash", static={"http": port})
        )
        _, evaluation, _ = api(agent.address, "GET", f"/v1/evaluation/{reply['EvalID']}")
        assert evaluation["FailedTGAllocs"]["g"]["DimensionExhausted"] == {
            f"network: reserved port collision http={port}": 1
        }
    finally:
        try:
            _purge(agent)
            wait_for(lambda: holds([p for p in pids if pid_alive(p)] == [], "tasks gone"), 20)
        finally:
            agent.shutdown()
            kill_groups([p for p in pids if pid_alive(p)])


# --- the CLI -------------------------------------------------------------------------

WINDOWS_HCL = """
job "win" {
  type = "batch"
  group "g" {
    constraint {
      attribute = "${attr.kernel.name}"
      value     = "windows"
    }
    task "t" {
      driver = "mock_driver"
      config {
        run_for = "1s"
      }
    }
  }
}
"""


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NOMAD_ADDR", None)
    return subprocess.run(
        [sys.executable, "-m", "allocrunner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_failure_block(stdout: str) -> None:
    lines = stdout.splitlines()
    header = [i for i, line in enumerate(lines) if "but failed to place all allocations:" in line]
    assert header, stdout
    i = header[0]
    assert lines[i].startswith("==> ")
    assert 'finished with status "complete"' in lines[i]
    assert lines[i + 1].startswith("    ")
    assert lines[i + 1].endswith('Task Group "g" (failed to place 1 allocation):')
    assert lines[i + 2] == (
        '      * Constraint "${attr.kernel.name} = windows": 1 nodes excluded by filter'
    )
    assert "waiting for additional capacity to place remainder" in lines[i + 3]


def test_job_run_prints_the_placement_failure_and_exits_2(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "win.nomad.hcl"
    path.write_text(WINDOWS_HCL)
    done = _cli("job", "run", "-address", env.address, str(path), cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    _assert_failure_block(done.stdout)
    assert "Traceback" not in done.stderr


def test_legacy_run_prints_the_placement_failure_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "win.nomad.hcl"
    path.write_text(WINDOWS_HCL)
    data_dir = tmp_path / "data"
    done = _cli("run", "--data-dir", str(data_dir), str(path), cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    _assert_failure_block(done.stdout)
    with contextlib.suppress(FileNotFoundError):
        assert not any((data_dir / "alloc").iterdir())


def test_job_status_shows_queued_and_the_placement_failure(env: Env, tmp_path: Path) -> None:
    env.register(_job("win", count=2, constraints=[WINDOWS]))
    done = _cli("job", "status", "-address", env.address, "win", cwd=tmp_path)
    assert done.returncode == 0, (done.stdout, done.stderr)
    lines = done.stdout.splitlines()
    summary = lines.index("Summary")
    assert lines[summary + 2].split() == ["g", "2", "0", "0", "0", "0", "0"]
    failure = lines.index("Placement Failure")
    assert lines[failure + 1 : failure + 3] == [
        'Task Group "g":',
        '  * Constraint "${attr.kernel.name} = windows": 1 nodes excluded by filter',
    ]


def test_job_dispatch_reports_a_child_that_cannot_be_placed(env: Env, tmp_path: Path) -> None:
    body = _job("param", constraints=[WINDOWS])
    body["Job"]["Type"] = "batch"
    body["Job"]["ParameterizedJob"] = {"Payload": "optional"}
    env.register(body)
    done = _cli("job", "dispatch", "-address", env.address, "param", cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    _assert_failure_block(done.stdout)
