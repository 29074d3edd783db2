"""Stress: 20 API client threads against one agent while jobs are registered and stopped.

Readers list and read jobs and allocations (plain and blocking), follow logs, signal and
restart tasks, while a writer registers, updates and deregisters jobs of mock_driver and
raw_exec tasks. Nothing may deadlock (every request has a deadline), only documented
statuses may come back, no thread may leak (the harness checks), and no response may be
older than one the same thread saw before: per endpoint, `X-Nomad-Index` never goes
back. At the end every job is purged and no task process is left.
"""

from __future__ import annotations

import random
import sys
import threading
import time
import traceback
import urllib.request

import pytest

from allocrunner.agent import Agent, AgentConfig
from allocrunner.testing import wait_for
from tests.agent.helpers import api, holds, pid_alive, recorded_pids

pytestmark = [pytest.mark.stress, pytest.mark.timeout(120)]

DURATION = 6.0
MIN_REQUESTS = 200
STALL_LIMIT = 60.0  # seconds past DURATION before a slow agent counts as stalled
READERS = 20
OK = {200, 400, 404}  # 400: a task not running (restart/signal); 404: a purged alloc or job


def _job(job_id: str, version: int, kind: str) -> dict:
    if kind == "mock":
        task = {
            "Name": "m",
            "Driver": "mock_driver",
            "Config": {"run_for": f"{random.choice([50, 200, 800])}ms"},
            "Env": {"V": str(version)},
        }
    else:
        script = 'echo $$ >> "$NOMAD_ALLOC_DIR/data/pids"; trap "echo sig" USR1; ' + (
            "while true; do echo tick; sleep 0.2; done"
        )
        task = {
            "Name": "r",
            "Driver": "raw_exec",
            "Config": {"command": "/bin/sh", "args": ["-c", script]},
            "Env": {"V": str(version)},
            "KillTimeout": 1_000_000_000,
        }
    return {
        "Job": {
            "ID": job_id,
            "Type": "service",
            "TaskGroups": [{"Name": "g", "Count": random.choice([1, 2]), "Tasks": [task]}],
        }
    }


def test_api_clients_and_job_changes_together(tmp_path):
    data_dir = tmp_path / "data"
    agent = Agent(AgentConfig(data_dir=str(data_dir), http_addr="127.0.0.1:0", gc_interval=3600))
    agent.start()
    address = agent.address
    stop = threading.Event()
    errors: list[str] = []
    requests = [0]
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)

    def guard(fn):
        def run() -> None:
            try:
                fn()
            except Exception:
                errors.append(traceback.format_exc())
                stop.set()

        return run

    def check(status: int, what: str, body: object) -> None:
        requests[0] += 1
        if status not in OK:
            errors.append(f"{what}: {status} {body}")
            stop.set()

    def writer() -> None:
        version = 0
        while not stop.is_set():
            version += 1
            job_id = f"job{random.randrange(4)}"
            kind = "raw" if job_id == "job0" else "mock"
            if random.random() < 0.25:
                status, body, _ = api(address, "DELETE", f"/v1/job/{job_id}?purge=true")
            else:
                status, body, _ = api(address, "PUT", "/v1/jobs", _job(job_id, version, kind))
            check(status, f"write {job_id}", body)
            time.sleep(0.05)

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        last: dict[str, int] = {}
        while not stop.is_set():
            allocs = api(address, "GET", "/v1/allocations")[1]
            action = rnd.choice(["jobs", "allocs", "alloc", "block", "logs", "signal", "restart"])
            target = rnd.choice(allocs)["ID"] if allocs else "none"
            if action == "jobs":
                path = "/v1/jobs"
            elif action == "allocs":
                path = "/v1/allocations"
            elif action == "block":
                path = f"/v1/allocations?index={last.get('/v1/allocations', 1)}&wait=200ms"
            elif action == "alloc":
                path = f"/v1/allocation/{target}"
            elif action == "logs":
                _follow(address, target, rnd)
                continue
            else:
                body = {"Signal": "SIGUSR1"} if action == "signal" else {}
                status, text, _ = api(
                    address, "POST", f"/v1/client/allocation/{target}/{action}", body
                )
                check(status, action, text)
                continue
            status, body, headers = api(address, "GET", path, timeout=20)
            check(status, path, body)
            if status == 200:
                key = path.split("?")[0]
                index = int(headers["X-Nomad-Index"])
                if key != "/v1/allocation/" + target or target != "none":
                    if index < last.get(key, 0):
                        errors.append(f"{path}: index {index} after {last[key]}")
                        stop.set()
                    last[key] = max(index, last.get(key, 0))

    threads = [threading.Thread(target=guard(writer), name="stress-writer")]
    threads += [
        threading.Thread(target=guard(lambda s=i: reader(s)), name=f"stress-reader-{i}")
        for i in range(READERS)
    ]
    try:
        for t in threads:
            t.start()
        # At least DURATION of load and at least MIN_REQUESTS answers (a loaded machine
        # answers fewer per second); the long bound only catches an agent that stalls.
        busy_until = time.monotonic() + DURATION

        def enough_load() -> None:
            assert stop.is_set() or (
                time.monotonic() >= busy_until and requests[0] >= MIN_REQUESTS
            ), f"only {requests[0]} requests answered"

        wait_for(enough_load, timeout=DURATION + STALL_LIMIT, interval=0.1)
        stop.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), f"{t.name} is stuck"
    finally:
        sys.setswitchinterval(old_switch)
        state = agent.cluster.state()
        for job in state.jobs.values():
            api(address, "DELETE", f"/v1/job/{job.id}?purge=true")
        pids = [p for a in state.allocs for p in recorded_pids(data_dir, a)]
        wait_for(lambda: holds([p for p in pids if pid_alive(p)] == [], "tasks gone"), 30)
        agent.shutdown()
    assert not errors, errors[0]
    assert requests[0] >= MIN_REQUESTS, f"only {requests[0]} requests answered"


def _follow(address: str, alloc_id: str, rnd: random.Random) -> None:
    """Follow an allocation's logs briefly, then hang up."""
    url = f"{address}/v1/client/fs/logs/{alloc_id}?task=r&type=stdout&follow=true&plain=true"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            deadline = time.monotonic() + rnd.uniform(0.05, 0.3)
            while time.monotonic() < deadline and resp.read1(4096):
                pass
    except OSError:
        pass  # 4xx for a mock task, a purged alloc or a log not written yet
