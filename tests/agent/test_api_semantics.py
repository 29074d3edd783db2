"""The agent's HTTP API through urllib and raw sockets: blocking queries, updates that
replace allocations, the event stream, log follow across rotation, and bad input."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request

import pytest

from allocrunner.agent import Agent, AgentConfig, AgentError
from allocrunner.testing import wait_for
from tests.agent.helpers import (
    api,
    holds,
    job_allocs,
    kill_groups,
    pid_alive,
    recorded_pids,
    sleeper_job,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def agent(tmp_path):
    data_dir = tmp_path / "data"
    agent = Agent(
        AgentConfig(
            data_dir=str(data_dir), http_addr="127.0.0.1:0", gc_interval=3600, read_timeout=2.0
        )
    )
    agent.start()
    try:
        yield agent
    finally:
        state = agent.cluster.state()
        for job in list(state.jobs.values()):
            api(agent.address, "DELETE", f"/v1/job/{job.id}?purge=true")
        pids = [p for a in state.allocs for p in recorded_pids(data_dir, a)]
        wait_for(lambda: holds([p for p in pids if pid_alive(p)] == []), 20)
        agent.shutdown()
        kill_groups([p for p in pids if pid_alive(p)])


def batch_job(job_id: str, script: str, **task: object) -> dict:
    return {
        "Job": {
            "ID": job_id,
            "Type": "batch",
            "TaskGroups": [
                {
                    "Name": "g",
                    "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
                    "Tasks": [
                        {
                            "Name": "t",
                            "Driver": "raw_exec",
                            "Config": {"command": "/bin/sh", "args": ["-c", script]},
                            "KillTimeout": 1_000_000_000,
                            **task,
                        }
                    ],
                }
            ],
        }
    }


# --- blocking queries ------------------------------------------------------------------


def test_blocking_query_wakes_on_change(agent):
    _, _, headers = api(agent.address, "GET", "/v1/jobs")
    index = int(headers["X-Nomad-Index"])
    result: dict[str, object] = {}

    def park() -> None:
        start = time.monotonic()
        status, body, hdrs = api(
            agent.address, "GET", f"/v1/jobs?index={index}&wait=30s", timeout=40
        )
        result.update(
            status=status,
            body=body,
            index=int(hdrs["X-Nomad-Index"]),
            waited=time.monotonic() - start,
        )

    waiter = threading.Thread(target=park)
    waiter.start()
    wait_for(lambda: holds(agent.cluster.parked() == 1), 10)
    status, _, _ = api(agent.address, "PUT", "/v1/jobs", sleeper_job("wake"))
    assert status == 200
    waiter.join(20)
    assert result["status"] == 200
    assert result["index"] > index
    assert [j["ID"] for j in result["body"]] == ["wake"]
    assert result["waited"] < 10


def test_blocking_query_times_out_without_change(agent):
    _, _, headers = api(agent.address, "GET", "/v1/allocations")
    index = int(headers["X-Nomad-Index"])
    start = time.monotonic()
    status, body, hdrs = api(agent.address, "GET", f"/v1/allocations?index={index}&wait=1s")
    waited = time.monotonic() - start
    assert status == 200 and body == []
    assert int(hdrs["X-Nomad-Index"]) == index
    assert 0.9 <= waited < 5


def test_500_parked_watchers_are_all_answered_after_one_change(agent):
    host, port = agent.address.removeprefix("http://").split(":")
    _, _, headers = api(agent.address, "GET", "/v1/jobs")
    index = int(headers["X-Nomad-Index"])
    request = (
        f"GET /v1/jobs?index={index}&wait=60s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ).encode()
    socks = []
    try:
        for _ in range(500):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(request)
            socks.append(s)
        wait_for(lambda: holds(agent.cluster.parked() == 500), 30)
        api(agent.address, "PUT", "/v1/jobs", sleeper_job("many"))
        for s in socks:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                assert chunk, "connection closed before the answer"
                data += chunk
            head = data.split(b"\r\n\r\n")[0].decode()
            assert head.startswith("HTTP/1.1 200"), head
            assert f"X-Nomad-Index: {index}" not in head
    finally:
        for s in socks:
            s.close()


def test_read_of_one_alloc_blocks_on_that_alloc(agent):
    api(agent.address, "PUT", "/v1/jobs", batch_job("one", "sleep 0.5; echo done"))
    (alloc,) = wait_for(lambda: holds(job_allocs(agent.address, "one")), 10)
    _, body, headers = api(agent.address, "GET", f"/v1/allocation/{alloc['ID']}")
    index = int(headers["X-Nomad-Index"])
    assert body["ModifyIndex"] == index
    seen = []
    while True:
        _, body, headers = api(
            agent.address, "GET", f"/v1/allocation/{alloc['ID']}?index={index}&wait=10s", timeout=20
        )
        new = int(headers["X-Nomad-Index"])
        assert new > index, "a blocking read returned without a change"
        index = new
        seen.append(body["ClientStatus"])
        if body["ClientStatus"] == "complete":
            break
    assert seen[-1] == "complete"


# --- placement -------------------------------------------------------------------------


def test_changed_job_replaces_allocations_with_previous_allocation_set(agent):
    job = sleeper_job("web", count=2)
    api(agent.address, "PUT", "/v1/jobs", job)
    first = wait_for(lambda: _running(agent, "web", 2), 20)
    job["Job"]["TaskGroups"][0]["Tasks"][0]["Env"] = {"VERSION": "2"}
    status, body, _ = api(agent.address, "POST", "/v1/job/web", job)
    assert status == 200 and body["JobModifyIndex"] > 0
    second = wait_for(lambda: _running(agent, "web", 2, exclude=first), 20)
    by_name = {a["Name"]: a for a in second}
    for old in first:
        assert by_name[old["Name"]]["PreviousAllocation"] == old["ID"]
    _, job_now, _ = api(agent.address, "GET", "/v1/job/web")
    assert job_now["Version"] == 1
    stopped = [a for a in job_allocs(agent.address, "web") if a["ID"] in {o["ID"] for o in first}]
    assert {a["DesiredStatus"] for a in stopped} == {"stop"}


def test_unchanged_register_keeps_allocations(agent):
    api(agent.address, "PUT", "/v1/jobs", sleeper_job("same"))
    first = wait_for(lambda: _running(agent, "same", 1), 20)
    api(agent.address, "PUT", "/v1/jobs", sleeper_job("same"))
    assert [a["ID"] for a in job_allocs(agent.address, "same")] == [first[0]["ID"]]
    _, job, _ = api(agent.address, "GET", "/v1/job/same")
    assert job["Version"] == 0


def _running(agent, job_id, count, exclude=()):
    ids = {a["ID"] for a in exclude}
    allocs = [
        a
        for a in job_allocs(agent.address, job_id)
        if a["ID"] not in ids and a["DesiredStatus"] == "run" and a["ClientStatus"] == "running"
    ]
    assert len(allocs) == count, f"{len(allocs)} running, want {count}"
    return allocs


# --- event stream ----------------------------------------------------------------------


def test_event_stream_reports_job_and_allocation_changes(agent):
    url = agent.address + "/v1/event/stream?topic=Job&topic=Allocation:ev"
    lines: list[dict] = []
    done = threading.Event()

    def read() -> None:
        with urllib.request.urlopen(url, timeout=30) as resp:
            for raw in resp:
                line = json.loads(raw)
                if line:
                    lines.append(line)
                if any(
                    e["Topic"] == "Allocation"
                    and e["Payload"]["Allocation"]["ClientStatus"] == "complete"
                    for ln in lines
                    for e in ln["Events"]
                ):
                    done.set()
                    return

    reader = threading.Thread(target=read)
    reader.start()
    wait_for(lambda: holds(agent.cluster.parked() >= 1), 10)
    api(agent.address, "PUT", "/v1/jobs", batch_job("ev", "echo hi"))
    assert done.wait(30)
    reader.join(10)
    events = [e for ln in lines for e in ln["Events"]]
    assert events[0]["Topic"] == "Job" and events[0]["Type"] == "JobRegistered", lines[:2]
    assert {e["Key"] for e in events if e["Topic"] == "Allocation"} == {
        job_allocs(agent.address, "ev")[0]["ID"]
    }
    indexes = [ln["Index"] for ln in lines]
    assert indexes == sorted(indexes)


# --- logs follow -----------------------------------------------------------------------


def test_logs_follow_across_rotation_in_order_none_lost(agent):
    # Log files rotate at 1 MiB (the smallest LogConfig size), so each line is padded
    # to make 30 lines span several files.
    script = (
        "i=0; while [ $i -lt 30 ]; do head -c 40000 /dev/zero | tr '\\0' x; echo; "
        "echo line-$i; i=$((i+1)); sleep 0.1; done"
    )
    job = batch_job("follow", script, LogConfig={"MaxFiles": 10, "MaxFileSizeMB": 1})
    api(agent.address, "PUT", "/v1/jobs", job)
    (alloc,) = wait_for(lambda: _running(agent, "follow", 1), 10)
    url = (
        f"{agent.address}/v1/client/fs/logs/{alloc['ID']}?task=t&type=stdout"
        "&follow=true&plain=true&origin=start"
    )
    received = bytearray()
    with urllib.request.urlopen(url, timeout=30) as resp:
        for chunk in iter(lambda: resp.read1(65536), b""):
            received += chunk
            if b"line-29\n" in received:
                break
    lines = [ln for ln in received.decode().splitlines() if ln.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(30)]
    rotated = [p.name for p in (agent.client.runner(alloc["ID"]).alloc_dir.logs_dir).iterdir()]
    assert "t.stdout.1" in rotated, rotated


def test_a_follow_ends_once_the_task_is_dead(agent):
    api(agent.address, "PUT", "/v1/jobs", batch_job("short", "echo one; sleep 1; echo two"))
    (alloc,) = wait_for(lambda: _running(agent, "short", 1), 10)
    url = (
        f"{agent.address}/v1/client/fs/logs/{alloc['ID']}?task=t&type=stdout"
        "&follow=true&plain=true"
    )
    start = time.monotonic()
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()  # returns only when the agent ends the stream
    assert body == b"one\ntwo\n"
    assert time.monotonic() - start < 10


def test_a_client_that_hangs_up_a_plain_follow_frees_its_threads(agent):
    api(agent.address, "PUT", "/v1/jobs", sleeper_job("quiet"))
    (alloc,) = wait_for(lambda: _running(agent, "quiet", 1), 20)
    before = {t.name for t in threading.enumerate()}
    host, port = agent.address.removeprefix("http://").split(":")
    path = f"/v1/client/fs/logs/{alloc['ID']}?task=sleeper&type=stderr&follow=true&plain=true"
    # the task writes nothing to stderr: the follow waits on an empty file
    (agent.client.runner(alloc["ID"]).alloc_dir.logs_dir / "sleeper.stderr.0").touch()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        wait_for(lambda: holds({t.name for t in threading.enumerate()} - before, "stream threads"))
    wait_for(
        lambda: holds(not ({t.name for t in threading.enumerate()} - before), "threads ended"), 10
    )


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("PUT", "/v1/jobs", b"{not json", 400, "malformed JSON"),
        (
            "PUT",
            "/v1/jobs",
            {"Job": {"ID": "x", "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t"}]}]}},
            400,
            "Job.TaskGroups[0].Tasks[0].Driver",
        ),
        (
            "PUT",
            "/v1/jobs",
            {"Job": {"ID": "x", "Type": "nope", "TaskGroups": [{"Name": "g"}]}},
            400,
            "Type",
        ),
        ("PUT", "/v1/jobs", {"NoJob": 1}, 400, "Job"),
        ("POST", "/v1/job/other", sleeper_job("x"), 400, "does not match"),
        ("GET", "/v1/job/missing", None, 404, "job not found"),
        ("GET", "/v1/allocation/missing", None, 404, "alloc not found"),
        ("GET", "/v1/client/fs/ls/missing?path=/", None, 404, "unknown allocation"),
        ("GET", "/v1/jobs?index=abc", None, 400, "index"),
        ("GET", "/v1/jobs?index=1&wait=forever", None, 400, "wait"),
        ("GET", "/v1/no/such/endpoint", None, 404, "no handler"),
        ("DELETE", "/v1/jobs", None, 405, "not allowed"),
        (
            "PUT",
            "/v1/jobs",
            {
                "Job": {
                    "ID": "big",
                    "TaskGroups": [
                        {
                            "Name": "g",
                            "Count": 100000000,
                            "Tasks": [{"Name": "t", "Driver": "mock_driver"}],
                        }
                    ],
                }
            },
            400,
            "at most",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and v.startswith("/") else None,
)
def test_bad_requests_get_clear_errors_and_the_agent_lives_on(
    agent, method, path, body, status, needle
):
    got, text, _ = api(agent.address, method, path, body)
    assert got == status, text
    assert needle in str(text), text
    assert api(agent.address, "GET", "/v1/agent/health")[0] == 200


def test_paths_are_checked_through_the_alloc_dir(agent):
    api(agent.address, "PUT", "/v1/jobs", sleeper_job("fs"))
    (alloc,) = wait_for(lambda: _running(agent, "fs", 1), 20)
    for path in ("/../../etc/passwd", "/sleeper/secrets/x", "/alloc/../../x"):
        status, text, _ = api(agent.address, "GET", f"/v1/client/fs/cat/{alloc['ID']}?path={path}")
        assert status == 403, (path, status, text)
    status, listing, _ = api(agent.address, "GET", f"/v1/client/fs/ls/{alloc['ID']}?path=/")
    assert status == 200 and {e["Name"] for e in listing} >= {"alloc", "sleeper"}


def test_an_oversized_body_is_refused_before_it_is_read(agent):
    host, port = agent.address.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"PUT /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert api(agent.address, "GET", "/v1/agent/health")[0] == 200


def test_a_slow_client_loses_its_connection_not_a_thread(agent):
    host, port = agent.address.removeprefix("http://").split(":")
    before = threading.active_count()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")  # never finishes the headers
        start = time.monotonic()
        assert s.recv(4096) == b"", "the server closes a connection whose headers never end"
        waited = time.monotonic() - start
    assert waited < 8, "the read timeout (2 s) should have closed the connection"
    wait_for(lambda: holds(threading.active_count() <= before), 10)
    assert api(agent.address, "GET", "/v1/agent/health")[0] == 200


def test_a_token_is_required_when_configured(tmp_path):
    agent = Agent(
        AgentConfig(data_dir=str(tmp_path / "d"), http_addr="127.0.0.1:0", token="s3cret")
    )
    agent.start()
    try:
        assert api(agent.address, "GET", "/v1/jobs")[0] == 403
        assert api(agent.address, "GET", "/v1/jobs", token="wrong")[0] == 403
        assert api(agent.address, "GET", "/v1/jobs", token="s3cret")[0] == 200
    finally:
        agent.shutdown()


def test_a_port_in_use_fails_the_start_and_frees_the_data_dir(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        agent = Agent(AgentConfig(data_dir=str(tmp_path / "d"), http_addr=f"127.0.0.1:{port}"))
        with pytest.raises(AgentError, match=f"cannot listen on 127.0.0.1:{port}"):
            agent.start()
        agent.shutdown()
    again = Agent(AgentConfig(data_dir=str(tmp_path / "d"), http_addr="127.0.0.1:0"))
    again.start()  # the lock was released
    try:
        assert api(again.address, "GET", "/v1/agent/health")[0] == 200
    finally:
        again.shutdown()
