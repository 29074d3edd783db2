"""The agent driven by an unmodified python-nomad client, with real raw_exec tasks.

Every test runs its own in-process agent on a fresh data dir and talks to it only
through python-nomad (plus /proc, to see the task processes). Before the agent shuts
down (which leaves tasks running), every job is purged and the test waits until no
process of its data dir is left.

The second half ports the cases of python-nomad's own tests/test_client.py,
tests/test_job.py, tests/test_allocations.py and tests/test_allocation.py that fit one
node with raw_exec jobs, under the original case names.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nomad
import pytest
import requests
from nomad.api import exceptions

from allocrunner.agent import Agent, AgentConfig
from allocrunner.drivers._process import read_pid_stat
from allocrunner.jobspec import encode_job, load_job
from allocrunner.testing import wait_for

KILL_TIMEOUT_NS = 200_000_000
SECOND_NS = 1_000_000_000
LOOP = "while :; do sleep 0.1; done"


# --- processes ---------------------------------------------------------------------


def _environ(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def task_processes(data_dir: Path, alloc_id: str | None = None) -> set[int]:
    """Pids of live processes started for `data_dir`'s allocations (their environment
    names an alloc dir under it), or only for `alloc_id`'s."""
    marker = f"{data_dir}/alloc/{alloc_id or ''}".encode()
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid() and marker in _environ(pid):
            found.add(int(pid))
    return found


def _pgid(pid: int) -> int | None:
    found = read_pid_stat(pid)
    return found.pgid if found is not None else None


def _kill_leftovers(data_dir: Path) -> set[int]:
    """Last resort: SIGKILL the process group of every leftover task process."""
    leftover = task_processes(data_dir)
    for pgid in {_pgid(pid) for pid in leftover} - {None, os.getpgid(0)}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return leftover


# --- jobs --------------------------------------------------------------------------


def raw_exec_task(name: str, script: str, **fields: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "Driver": "raw_exec",
        "KillTimeout": KILL_TIMEOUT_NS,
        "Config": {"command": "/bin/sh", "args": ["-c", script]},
        **fields,
    }


def job_body(
    job_id: str,
    script: str,
    *,
    type_: str = "service",
    task: str = "t",
    group: str = "g",
    **fields: Any,
) -> dict[str, Any]:
    """A register body in Nomad's API JSON with one raw_exec task."""
    return {
        "Job": {
            "ID": job_id,
            "Name": job_id,
            "Type": type_,
            "Datacenters": ["dc1"],
            "TaskGroups": [
                {
                    "Name": group,
                    "Count": 1,
                    "RestartPolicy": {
                        "Attempts": 2,
                        "Interval": 60 * SECOND_NS,
                        "Delay": 100_000_000,
                        "Mode": "fail",
                    },
                    "Tasks": [raw_exec_task(task, script)],
                }
            ],
            **fields,
        }
    }


def frames(text: str) -> list[dict[str, Any]]:
    """The JSON frames of a framed stream (concatenated objects, newlines or not)."""
    decoder = json.JSONDecoder()
    out, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return out
        obj, pos = decoder.raw_decode(text, pos)
        out.append(obj)


def frame_data(text: str) -> bytes:
    return b"".join(base64.b64decode(f["Data"]) for f in frames(text) if f.get("Data"))


# --- the agent ---------------------------------------------------------------------


class Env:
    """One agent and a python-nomad client on it."""

    def __init__(self, agent: Agent, client: nomad.Nomad, data_dir: Path) -> None:
        self.agent = agent
        self.n = client
        self.data_dir = data_dir

    def running_alloc(self, job_id: str, task: str = "t", timeout: float = 10) -> dict[str, Any]:
        """The job's one running allocation once its task is running (full alloc)."""

        def check() -> dict[str, Any]:
            live = [
                a
                for a in self.n.job.get_allocations(job_id)
                if a["ClientStatus"] == "running" and a["DesiredStatus"] == "run"
            ]
            assert len(live) == 1, f"running allocations of {job_id}: {live}"
            alloc = self.n.allocation.get_allocation(live[0]["ID"])
            assert alloc["TaskStates"][task]["State"] == "running", alloc["TaskStates"]
            return alloc

        return wait_for(check, timeout=timeout)

    def finished_alloc(self, job_id: str, status: str = "complete") -> dict[str, Any]:
        def check() -> dict[str, Any]:
            allocs = self.n.job.get_allocations(job_id)
            assert allocs and allocs[-1]["ClientStatus"] == status, allocs
            return allocs[-1]

        return wait_for(check, timeout=10)

    def log(self, alloc_id: str, task: str = "t", type_: str = "stdout") -> str:
        return self.n.client.stream_logs.stream(alloc_id, task, type_, plain=True)

    def wait_log(self, alloc_id: str, text: str, task: str = "t") -> str:
        def check() -> str:
            out = self.log(alloc_id, task)
            assert text in out, out
            return out

        return wait_for(check, timeout=10)

    def purge_all(self) -> None:
        """Deregister with purge every job: periodic and parameterized parents first
        (no new child after), then the rest, until none is left."""

        def purged() -> None:
            jobs = self.n.jobs.get_jobs()
            for job in sorted(jobs, key=lambda j: j["ParentID"] != ""):
                with contextlib.suppress(exceptions.URLNotFoundNomadException):
                    self.n.job.deregister_job(job["ID"], purge=True)
            assert not self.n.jobs.get_jobs(), "jobs left after purge"

        wait_for(purged, timeout=10)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    data_dir = tmp_path / "agent"
    agent = Agent(AgentConfig(data_dir=str(data_dir), http_addr="127.0.0.1:0", gc_interval=3600))
    agent.start()
    session = requests.Session()
    client = nomad.Nomad(address=agent.address, timeout=10, session=session)
    leftover: set[int] = set()
    try:
        yield Env(agent, client, data_dir)
    finally:
        try:
            Env(agent, client, data_dir).purge_all()

            def all_destroyed() -> None:
                root = data_dir / "alloc"
                left = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
                assert not left, f"alloc dirs left after purge (not destroyed yet): {left}"

            def no_task_left() -> None:
                assert not task_processes(data_dir), "task processes left after purge"

            # A purged allocation is destroyed, and its dir removed, only after its task
            # runners have ended: from then on nothing can start a task.
            wait_for(all_destroyed, timeout=15)
            wait_for(no_task_left, timeout=15)
        finally:
            leftover = _kill_leftovers(data_dir)
            session.close()
            agent.shutdown()
    assert not leftover, f"task processes killed by the fixture: {sorted(leftover)}"


# --- jobs, allocations, evaluations -----------------------------------------------


def test_register_list_read_jobs(env: Env) -> None:
    n = env.n
    reply = n.jobs.register_job(job_body("svc", f"echo up; {LOOP}"))
    assert reply["EvalID"] and reply["JobModifyIndex"] > 0
    reply = n.job.register_job("once", job_body("once", "echo done", type_="batch"))
    assert reply["EvalID"]

    assert sorted(j["ID"] for j in n.jobs.get_jobs()) == ["once", "svc"]
    assert [j["ID"] for j in n.jobs.get_jobs(prefix="sv")] == ["svc"]
    assert "svc" in n.jobs and "nope" not in n.jobs and len(n.jobs) == 2
    assert n.jobs["once"]["Type"] == "batch"

    job = n.job.get_job("svc")
    assert job["ID"] == "svc" and job["Type"] == "service"
    assert job["TaskGroups"][0]["Tasks"][0]["Driver"] == "raw_exec"
    assert job["TaskGroups"][0]["Tasks"][0]["KillTimeout"] == KILL_TIMEOUT_NS
    alloc = env.running_alloc("svc")
    assert n.job.get_job("svc")["Status"] == "running"
    env.finished_alloc("once")
    assert n.job.get_job("once")["Status"] == "dead"

    summary = n.job.get_summary("svc")
    assert summary["JobID"] == "svc" and summary["Summary"]["g"]["Running"] == 1
    assert n.job.get_summary("once")["Summary"]["g"]["Complete"] == 1

    allocs = n.job.get_allocations("svc")
    assert [a["ID"] for a in allocs] == [alloc["ID"]] and allocs[0]["JobID"] == "svc"
    evals = n.job.get_evaluations("svc")
    assert evals and all(e["JobID"] == "svc" for e in evals)
    assert allocs[0]["EvalID"] in {e["ID"] for e in evals}

    versions = n.job.get_versions("svc")
    assert [v["Version"] for v in versions["Versions"]] == [0]
    n.job.register_job("svc", job_body("svc", f"echo up again; {LOOP}"))
    assert n.job.get_versions("svc")["Versions"][0]["Version"] == 1
    assert n.job.get_job("svc")["Version"] == 1


def test_allocations_list_and_read(env: Env) -> None:
    n = env.n
    n.jobs.register_job(job_body("svc", LOOP))
    alloc = env.running_alloc("svc")
    stubs = n.allocations.get_allocations()
    assert [a["ID"] for a in stubs] == [alloc["ID"]]
    assert stubs[0]["JobID"] == "svc" and stubs[0]["TaskGroup"] == "g"
    assert "Job" not in stubs[0]
    assert [a["ID"] for a in n.allocations.get_allocations(prefix=alloc["ID"][:6])] == [alloc["ID"]]
    assert n.allocations.get_allocations(prefix="zzzz") == []
    with_resources = n.allocations.get_allocations(resources=True)[0]
    assert with_resources["AllocatedResources"]["Tasks"]["t"]["Memory"]["MemoryMB"] > 0

    full = n.allocation.get_allocation(alloc["ID"])
    assert full["Job"]["ID"] == "svc" and full["NodeID"] == n.nodes.get_nodes()[0]["ID"]
    assert full["DesiredStatus"] == "run" and full["ClientStatus"] == "running"
    assert [e["Type"] for e in full["TaskStates"]["t"]["Events"]][-1] == "Started"
    assert alloc["ID"] in n.allocation and n.allocation[alloc["ID"]]["ID"] == alloc["ID"]


def test_alloc_stop_replaces_a_service_alloc(env: Env) -> None:
    n = env.n
    n.jobs.register_job(job_body("svc", f"echo $NOMAD_ALLOC_ID; {LOOP}"))
    old = env.running_alloc("svc")
    old_pids = task_processes(env.data_dir, old["ID"])
    assert old_pids

    reply = n.allocation.stop_allocation(old["ID"])
    assert reply["EvalID"]

    new = env.running_alloc("svc")
    assert new["ID"] != old["ID"] and new["PreviousAllocation"] == old["ID"]
    env.wait_log(new["ID"], new["ID"])
    stopped = n.allocation.get_allocation(old["ID"])
    assert stopped["DesiredStatus"] == "stop"
    wait_for(lambda: _assert_eq(n.allocation.get_allocation(old["ID"])["ClientStatus"], "complete"))
    wait_for(lambda: _assert_eq(task_processes(env.data_dir, old["ID"]), set()))


def test_alloc_stop_links_the_replacement_as_next_allocation(env: Env) -> None:
    # Nomad's state store sets NextAllocation on the previous allocation when its
    # replacement is inserted (upsertAllocsImpl).
    n = env.n
    n.jobs.register_job(job_body("svc", LOOP))
    old = env.running_alloc("svc")
    n.allocation.stop_allocation(old["ID"])
    new = env.running_alloc("svc")
    assert new["PreviousAllocation"] == old["ID"]
    assert n.allocation.get_allocation(old["ID"])["NextAllocation"] == new["ID"]


def _assert_eq(actual: Any, expected: Any) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"


def test_deregister_stops_the_job_and_its_tasks(env: Env) -> None:
    n = env.n
    n.jobs.register_job(job_body("svc", LOOP))
    alloc = env.running_alloc("svc")
    assert task_processes(env.data_dir, alloc["ID"])

    assert n.job.deregister_job("svc")["EvalID"]
    wait_for(lambda: _assert_eq(task_processes(env.data_dir, alloc["ID"]), set()))
    job = n.job.get_job("svc")
    assert job["Stop"] is True
    wait_for(lambda: _assert_eq(n.job.get_job("svc")["Status"], "dead"))
    stopped = n.allocation.get_allocation(alloc["ID"])
    assert stopped["DesiredStatus"] == "stop"
    wait_for(
        lambda: _assert_eq(n.allocation.get_allocation(alloc["ID"])["ClientStatus"], "complete")
    )


def test_deregister_purge_forgets_the_job(env: Env) -> None:
    n = env.n
    n.jobs.register_job(job_body("svc", LOOP))
    alloc = env.running_alloc("svc")
    assert n.job.deregister_job("svc", purge=True)["EvalID"]
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.job.get_job("svc")
    assert "svc" not in n.job and "svc" not in n.jobs
    wait_for(lambda: _assert_eq(task_processes(env.data_dir, alloc["ID"]), set()))


# --- files and logs ---------------------------------------------------------------


def test_logs_plain_and_framed(env: Env) -> None:
    n = env.n
    script = f"echo out-line; echo err-line >&2; {LOOP}"
    n.jobs.register_job(job_body("svc", script))
    alloc_id = env.running_alloc("svc")["ID"]
    assert env.wait_log(alloc_id, "out-line") == "out-line\n"
    assert n.client.stream_logs.stream(alloc_id, "t", "stderr", plain=True) == "err-line\n"

    framed = n.client.stream_logs.stream(alloc_id, "t", "stdout")
    assert frame_data(framed) == b"out-line\n"
    assert frames(framed)[0]["File"] == "alloc/logs/t.stdout.0"
    tail = n.client.stream_logs.stream(alloc_id, "t", "stdout", offset=5, origin="end", plain=True)
    assert tail == "line\n"


def test_fs_ls_cat_stat_readat_stream(env: Env) -> None:
    n = env.n
    script = f"printf 'hello world\\n' > local/greeting.txt; echo ready; {LOOP}"
    n.jobs.register_job(job_body("svc", script))
    alloc_id = env.running_alloc("svc")["ID"]
    env.wait_log(alloc_id, "ready")

    root = {e["Name"]: e for e in n.client.ls.list_files(alloc_id)}
    assert root["alloc"]["IsDir"] and root["t"]["IsDir"]
    names = {e["Name"] for e in n.client.ls.list_files(alloc_id, "/t/local")}
    assert names == {"greeting.txt"}
    logs = {e["Name"] for e in n.client.ls.list_files(alloc_id, "alloc/logs")}
    assert "t.stdout.0" in logs

    path = "/t/local/greeting.txt"
    assert n.client.cat.read_file(alloc_id, path) == "hello world\n"
    info = n.client.stat.stat_file(alloc_id, path)
    assert info["Name"] == "greeting.txt" and info["Size"] == 12 and not info["IsDir"]
    assert n.client.read_at.read_file_offset(alloc_id, 6, 5, path) == "world"

    # python-nomad's stream_file.stream sends no follow flag, and Nomad follows by
    # default; the Requester underneath is used to ask for follow=false.
    text = n.client.stream_file.request(
        alloc_id,
        params={"path": path, "offset": 6, "origin": "start", "follow": False},
        method="get",
    ).text
    assert frame_data(text) == b"world\n"

    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.client.cat.read_file(alloc_id, "/t/local/missing.txt")
    with pytest.raises(exceptions.BaseNomadException):
        n.client.cat.read_file(alloc_id, "/t/secrets/anything")


# --- stats, signal, restart --------------------------------------------------------


def test_alloc_stats_pids_match_proc(env: Env) -> None:
    n = env.n
    n.jobs.register_job(job_body("svc", "sleep 300"))
    alloc_id = env.running_alloc("svc")["ID"]

    def pids_match() -> dict[str, Any]:
        stats = n.client.allocation.read_allocation_stats(alloc_id)
        pids = {int(p) for p in stats["Tasks"]["t"]["Pids"]}
        on_proc = task_processes(env.data_dir, alloc_id)
        assert pids and pids == on_proc, f"stats {sorted(pids)} /proc {sorted(on_proc)}"
        return stats

    stats = wait_for(pids_match, timeout=10)
    assert stats["ResourceUsage"]["MemoryStats"]["RSS"] > 0
    assert stats["Tasks"]["t"]["ResourceUsage"]["MemoryStats"]["RSS"] > 0
    assert stats["Timestamp"] > 0

    host = n.client.stats.read_stats()
    assert host["Memory"]["Total"] > 0 and host["CPU"]
    assert n.client.stats.read_stats(node_id=n.nodes.get_nodes()[0]["ID"])["Memory"]


def test_signal_reaches_the_task(env: Env) -> None:
    n = env.n
    script = f"trap 'echo got USR1' USR1; trap 'echo got USR2' USR2; echo ready; {LOOP}"
    n.jobs.register_job(job_body("svc", script))
    alloc_id = env.running_alloc("svc")["ID"]
    env.wait_log(alloc_id, "ready")

    assert n.client.allocation.signal_allocation(alloc_id, "SIGUSR1") == {}
    env.wait_log(alloc_id, "got USR1")
    n.client.allocation.signal_allocation(alloc_id, "SIGUSR2", task="t")
    env.wait_log(alloc_id, "got USR2")
    # The task's events reach the API through the client's coalesced state reports.
    def signalled() -> None:
        events = n.allocation.get_allocation(alloc_id)["TaskStates"]["t"]["Events"]
        assert [e["Type"] for e in events].count("Signaling") == 2, events

    wait_for(signalled)
    assert n.allocation.get_allocation(alloc_id)["ClientStatus"] == "running"


def test_restart_runs_the_task_again(env: Env) -> None:
    n = env.n
    n.jobs.register_job(job_body("svc", "echo start; sleep 300"))
    alloc_id = env.running_alloc("svc")["ID"]
    before = wait_for(lambda: _nonempty(task_processes(env.data_dir, alloc_id)))

    assert n.client.allocation.restart_allocation(alloc_id) == {}

    def restarted() -> dict[str, Any]:
        state = n.allocation.get_allocation(alloc_id)["TaskStates"]["t"]
        assert state["Restarts"] == 1 and state["State"] == "running", state
        return state

    state = wait_for(restarted, timeout=10)
    assert "Restart Signaled" in [e["Type"] for e in state["Events"]]
    after = wait_for(lambda: _nonempty(task_processes(env.data_dir, alloc_id)))
    assert not before & after, f"old pids {before} still there: {after}"
    stats = n.client.allocation.read_allocation_stats(alloc_id)
    assert {int(p) for p in stats["Tasks"]["t"]["Pids"]} <= after
    env.wait_log(alloc_id, "start\nstart\n")


def _nonempty(pids: set[int]) -> set[int]:
    assert pids
    return pids


# --- dispatch, periodic, GC --------------------------------------------------------


DISPATCH_HCL = """
job "report" {
  type        = "batch"
  datacenters = ["dc1"]
  parameterized {
    payload       = "required"
    meta_required = ["who"]
  }
  group "g" {
    task "t" {
      driver       = "raw_exec"
      kill_timeout = "200ms"
      dispatch_payload {
        file = "input.txt"
      }
      config {
        command = "/bin/sh"
        args    = ["-c", "cat local/input.txt; echo \\"who=$NOMAD_META_who\\""]
      }
    }
  }
}
"""


def test_dispatch_parameterized_job_with_meta_and_payload(env: Env, tmp_path: Path) -> None:
    n = env.n
    path = tmp_path / "report.nomad.hcl"
    path.write_text(DISPATCH_HCL)
    n.jobs.register_job({"Job": encode_job(load_job(path))})
    parent = n.job.get_job("report")
    assert parent["ParameterizedJob"]["Payload"] == "required"
    assert n.job.get_allocations("report") == []

    payload = base64.b64encode(b"payload line\n").decode()
    reply = n.job.dispatch_job("report", payload=payload, meta={"who": "pynomad"})
    child_id = reply["DispatchedJobID"]
    assert child_id.startswith("report/dispatch-") and reply["EvalID"]
    child = n.job.get_job(child_id)
    assert child["ParentID"] == "report" and child["Dispatched"] is True
    assert child["Meta"]["who"] == "pynomad"

    alloc = env.finished_alloc(child_id)
    assert env.log(alloc["ID"]) == "payload line\nwho=pynomad\n"
    assert n.job.get_summary("report")["Children"]["Dead"] == 1

    with pytest.raises(exceptions.BadRequestNomadException, match="who"):
        n.job.dispatch_job("report", payload=payload)
    with pytest.raises(exceptions.BadRequestNomadException):
        n.job.dispatch_job("report", meta={"who": "x"})


def test_dispatch_honours_id_prefix_template(env: Env, tmp_path: Path) -> None:
    # Nomad's DispatchedID: <parent>/dispatch-<IdPrefixTemplate>-<unix>-<8 hex>.
    n = env.n
    path = tmp_path / "report.nomad.hcl"
    path.write_text(DISPATCH_HCL)
    n.jobs.register_job({"Job": encode_job(load_job(path))})
    payload = base64.b64encode(b"x").decode()
    reply = n.job.dispatch_job(
        "report", payload=payload, meta={"who": "a"}, id_prefix_template="run1"
    )
    assert reply["DispatchedJobID"].startswith("report/dispatch-run1-"), reply


def test_periodic_job_launches_children(env: Env) -> None:
    n = env.n
    body = job_body(
        "tick",
        "echo tick",
        type_="batch",
        Periodic={"Enabled": True, "Spec": "* * * * * * *", "SpecType": "cron"},
    )
    n.jobs.register_job(body)
    assert n.job.get_job("tick")["Periodic"]["Spec"] == "* * * * * * *"

    def two_children_done() -> list[dict[str, Any]]:
        children = [j for j in n.jobs.get_jobs(prefix="tick/periodic-")]
        done = [c for c in children if c["Status"] == "dead"]
        assert len(done) >= 2, children
        return done

    done = wait_for(two_children_done, timeout=15)
    for child in done[:2]:
        assert child["ParentID"] == "tick"
        alloc = n.job.get_allocations(child["ID"])[0]
        assert alloc["ClientStatus"] == "complete"
        assert env.log(alloc["ID"]) == "tick\n"
    assert n.job.get_summary("tick")["Children"]["Dead"] >= 2


def test_gc_of_a_finished_alloc_removes_its_dir(env: Env) -> None:
    n = env.n
    n.jobs.register_job(job_body("once", "echo done", type_="batch"))
    alloc_id = env.finished_alloc("once")["ID"]
    alloc_dir = env.data_dir / "alloc" / alloc_id
    assert alloc_dir.is_dir()

    n.client.gc_allocation.garbage_collect(alloc_id)
    wait_for(lambda: _assert_eq(alloc_dir.exists(), False))
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.client.ls.list_files(alloc_id)
    assert n.allocation.get_allocation(alloc_id)["ClientStatus"] == "complete"


# --- agent, nodes, status, events, errors ------------------------------------------


def test_agent_nodes_status_regions(env: Env) -> None:
    n = env.n
    me = n.agent.get_agent()
    assert me["config"]["Region"] == "global" and me["config"]["Datacenter"] == "dc1"
    assert me["member"]["Status"] == "alive"
    members = n.agent.get_members()
    assert [m["Name"] for m in members["Members"]] == [me["member"]["Name"]]

    nodes = n.nodes.get_nodes()
    assert len(nodes) == 1 and nodes[0]["Status"] == "ready"
    assert nodes[0]["Drivers"]["raw_exec"]["Healthy"] is True
    node = n.node.get_node(nodes[0]["ID"])
    assert node["ID"] == nodes[0]["ID"] and node["Datacenter"] == "dc1"
    assert nodes[0]["ID"] in n.nodes and nodes[0]["ID"] in n.node
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.node.get_node(str(uuid.uuid4()))

    leader = n.status.leader.get_leader()
    assert isinstance(leader, str) and leader.startswith("127.0.0.1:")
    assert n.status.peers.get_peers() == [leader]
    assert n.regions.get_regions() == ["global"]


def test_event_stream(env: Env) -> None:
    n = env.n
    n.jobs.register_job(job_body("once", "echo done", type_="batch"))
    thread, stop, events = n.event.stream.get_stream(index=1, topic=["Job"])
    thread.start()
    try:
        first = events.get(timeout=10)
        assert first["Events"][0]["Topic"] == "Job"
        assert first["Events"][0]["Type"] == "JobRegistered"
        assert first["Events"][0]["Key"] == "once"
        assert first["Events"][0]["Payload"]["Job"]["ID"] == "once"
    finally:
        stop.set()
        # The listener notices the stop flag on its next line: cause one.
        n.job.deregister_job("once")
        thread.join(10)
    assert not thread.is_alive()
    seen = []
    while True:
        try:
            seen.append(events.get_nowait())
        except queue.Empty:
            break
    assert {e["Type"] for batch in seen for e in batch["Events"]} <= {"JobDeregistered"}


def test_errors_map_to_python_nomad_exceptions(env: Env) -> None:
    n = env.n
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.job.get_job("missing")
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.job.get_versions("missing")
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.job.deregister_job("missing")
    missing = str(uuid.uuid4())
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.allocation.get_allocation(missing)
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.client.allocation.read_allocation_stats(missing)
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.client.ls.list_files(missing)
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.allocation.stop_allocation(missing)

    bad = job_body("bad", "true")
    bad["Job"]["TaskGroups"][0]["Tasks"][0]["Driver"] = 5
    with pytest.raises(exceptions.BadRequestNomadException) as err:
        n.jobs.register_job(bad)
    assert "Job.TaskGroups[0].Tasks[0].Driver" in str(err.value)
    with pytest.raises(exceptions.BadRequestNomadException, match="does not match"):
        n.job.register_job("other", job_body("bad", "true"))
    with pytest.raises(exceptions.BadRequestNomadException):
        n.jobs.register_job({"NotAJob": {}})
    assert n.jobs.get_jobs() == []


# --- ported from python-nomad's tests/test_client.py --------------------------------

EXAMPLE_SCRIPT = f"trap 'echo got USR1' USR1; echo example; {LOOP}"


@pytest.fixture
def example(env: Env) -> Env:
    """python-nomad's tests register the `example` job first; here a raw_exec one."""
    env.n.job.register_job("example", job_body("example", EXAMPLE_SCRIPT, group="cache"))
    env.running_alloc("example")
    return env


def test_client_register_job(example: Env) -> None:
    n = example.n
    assert "example" in n.job
    wait_for(lambda: _assert_eq(n.job["example"]["Status"], "running"))


def test_client_ls_list_files(example: Env) -> None:
    n = example.n
    a = n.allocations.get_allocations()[0]["ID"]
    assert {e["Name"] for e in n.client.ls.list_files(a)} == {"alloc", "t"}


def test_client_stat_stat_file(example: Env) -> None:
    n = example.n
    a = n.allocations.get_allocations()[0]["ID"]
    assert n.client.stat.stat_file(a)["IsDir"] is True


def test_client_streamfile_fail(example: Env) -> None:
    # Nomad answers a stream of a missing file with 400 (fs.Stat fails in the client's
    # FileSystem.stream), so python-nomad raises BadRequestNomadException.
    n = example.n
    a = n.allocations.get_allocations()[0]["ID"]
    with pytest.raises(exceptions.BadRequestNomadException):
        n.client.stream_file.stream(a, 1, "start", "/redis/executor")


def test_client_read_stats(example: Env) -> None:
    assert example.n.client.stats.read_stats()["Memory"]["Total"] > 0


def test_client_read_allocation_stats(example: Env) -> None:
    n = example.n
    a = n.allocations.get_allocations()[0]["ID"]
    assert "t" in n.client.allocation.read_allocation_stats(a)["Tasks"]


def _running_allocation(n: nomad.Nomad) -> dict[str, Any]:
    return next(a for a in n.allocations.get_allocations() if a["ClientStatus"] == "running")


def test_client_signal_allocation(example: Env) -> None:
    n = example.n
    alloc_id = _running_allocation(n)["ID"]
    n.client.allocation.signal_allocation(alloc_id, signal.SIGUSR1.name)
    example.wait_log(alloc_id, "got USR1")


def test_client_signal_allocation_task(example: Env) -> None:
    n = example.n
    allocation = _running_allocation(n)
    task = next(iter(allocation["TaskStates"]))
    n.client.allocation.signal_allocation(allocation["ID"], signal.SIGUSR1.name, task)
    example.wait_log(allocation["ID"], "got USR1")


def test_client_signal_allocation_invalid_signal(example: Env) -> None:
    # python-nomad matches Docker's "invalid signal"; the agent refuses the name with
    # 400 before any driver sees it (Nomad's raw_exec would send SIGINT instead).
    n = example.n
    alloc_id = _running_allocation(n)["ID"]
    with pytest.raises(exceptions.BaseNomadException, match="unknown signal 'INVALID-SIGNAL'"):
        n.client.allocation.signal_allocation(alloc_id, "INVALID-SIGNAL")


def test_client_gc_all_allocations(example: Env) -> None:
    n = example.n
    node_id = n.nodes.get_nodes()[0]["ID"]
    n.client.gc_all_allocations.garbage_collect(node_id)
    n.client.gc_all_allocations.garbage_collect()
    assert _running_allocation(n)["ClientStatus"] == "running"


def test_client_dunders(env: Env) -> None:
    n = env.n
    for obj in (n.client, n.client.ls, n.client.cat, n.client.stat):
        assert isinstance(str(obj), str) and isinstance(repr(obj), str)
        with pytest.raises(AttributeError):
            obj.does_not_exist  # noqa: B018


# --- ported from python-nomad's tests/test_job.py -----------------------------------


def test_job_get_job(example: Env) -> None:
    assert isinstance(example.n.job.get_job("example"), dict)


def test_job_get_job_unknown_id(example: Env) -> None:
    with pytest.raises(exceptions.BaseNomadException):
        example.n.job.get_job(id_=str(uuid.uuid4()))


def test_job_get_allocations(example: Env) -> None:
    n = example.n
    j = n.job["example"]
    assert j["ID"] == n.job.get_allocations("example")[0]["JobID"]


def test_job_get_evaluations(example: Env) -> None:
    n = example.n
    j = n.job["example"]
    assert j["ID"] == n.job.get_evaluations("example")[0]["JobID"]


def test_job_delete_job(example: Env) -> None:
    n = example.n
    assert "EvalID" in n.job.deregister_job("example")
    n.job.register_job("example", job_body("example", EXAMPLE_SCRIPT, group="cache"))
    example.running_alloc("example", timeout=5)
    assert n.job["example"]["Stop"] is False


PARAMETERIZED = {
    "Job": {
        "ID": "example-batch",
        "Name": "example-batch",
        "Type": "batch",
        "Datacenters": ["dc1"],
        "ParameterizedJob": {"Payload": "optional", "MetaRequired": ["time"]},
        "TaskGroups": [
            {
                "Name": "example-task-group",
                "Count": 0,
                "Tasks": [raw_exec_task("example-task", "echo slept ${NOMAD_META_TIME}ms")],
            }
        ],
    }
}


def test_job_dispatch_job(example: Env) -> None:
    n = example.n
    n.job.register_job("example-batch", PARAMETERIZED)
    reply = n.job.dispatch_job("example-batch", meta={"time": "500"})
    assert "example-batch" in n.job
    child = n.job.get_job(reply["DispatchedJobID"])
    assert child["ParentID"] == "example-batch" and child["Meta"] == {"time": "500"}
    # The group's count is 0, as in python-nomad's example: nothing is placed.
    assert n.job.get_allocations(reply["DispatchedJobID"]) == []


def test_job_summary_job(example: Env) -> None:
    n = example.n
    j = n.job["example"]
    assert "JobID" in n.job.get_summary(j["ID"])


def test_job_get_summary(example: Env) -> None:
    summary = example.n.job.get_summary("example")
    assert isinstance(summary, dict) and summary["JobID"] == "example"
    assert summary["Summary"]["cache"]["Running"] == 1


def test_job_versions_job(example: Env) -> None:
    assert "Versions" in example.n.job.get_versions("example")


def test_job_versions_job_missing(example: Env) -> None:
    with pytest.raises(exceptions.URLNotFoundNomadException):
        example.n.job.get_versions("example1")


def test_job_dunders(example: Env) -> None:
    n = example.n
    assert isinstance(n.job["example"], dict)
    with pytest.raises(KeyError):
        n.job["redis"]
    assert "example" in n.job and "redis" not in n.job
    assert isinstance(str(n.job), str) and isinstance(repr(n.job), str)
    with pytest.raises(AttributeError):
        n.job.does_not_exist  # noqa: B018


def test_job_delete_job_with_purge(example: Env) -> None:
    n = example.n
    assert "EvalID" in n.job.deregister_job("example", purge=True)
    with pytest.raises(exceptions.URLNotFoundNomadException):
        n.job.get_job("example")
    n.job.register_job("example", job_body("example", EXAMPLE_SCRIPT, group="cache"))
    assert n.job.get_job("example")["Version"] == 0


# --- ported from python-nomad's tests/test_allocations.py and test_allocation.py ----


def test_allocations_get_allocations(example: Env) -> None:
    assert isinstance(example.n.allocations.get_allocations(), list)


def test_allocations_get_allocations_prefix(example: Env) -> None:
    n = example.n
    allocations = n.allocations.get_allocations()
    prefix = allocations[0]["ID"][:4]
    assert n.allocations.get_allocations(prefix=prefix)[0]["ID"] == allocations[0]["ID"]


def test_allocations_get_allocations_resources(example: Env) -> None:
    allocations = example.n.allocations.get_allocations(resources=True)
    assert "AllocatedResources" in allocations[0]


def test_allocations_dunders(example: Env) -> None:
    n = example.n
    assert isinstance(str(n.allocations), str) and isinstance(repr(n.allocations), str)
    with pytest.raises(AttributeError):
        n.allocations.does_not_exist  # noqa: B018
    assert hasattr(n.allocations, "__iter__")
    assert [a["JobID"] for a in n.allocations] == ["example"]
    assert len(n.allocations) == 1


def test_allocation_get_and_stop(example: Env) -> None:
    n = example.n
    alloc_id = n.job.get_allocations("example")[0]["ID"]
    assert isinstance(n.allocation.get_allocation(alloc_id), dict)
    assert isinstance(n.allocation[alloc_id], dict)
    assert alloc_id in n.allocation and str(uuid.uuid4()) not in n.allocation
    with pytest.raises(KeyError):
        n.allocation[str(uuid.uuid4())]
    assert isinstance(n.allocation.stop_allocation(alloc_id), dict)
    example.running_alloc("example")
