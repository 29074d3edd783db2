"""The agent's HTTP API: read latency, parked blocking queries, their wake-up, ``logs -f``.

1. ``GET /v1/allocation/:id`` p50 through an in-process `Agent` (one mock_driver
   allocation registered with ``PUT /v1/jobs``) against a bare stdlib
   ``ThreadingHTTPServer`` handler (HTTP/1.1, keep-alive, TCP_NODELAY) answering the
   same bytes; one persistent ``http.client.HTTPConnection`` to each, rounds
   interleaved. Goal: within 2x of the bare server. The same handler with the stdlib's
   defaults (Nagle on) is shown too. Requests per round adapt to the latency probed.
2. 500 blocking queries (``GET /v1/allocations?index=<current>&wait=60s``, each on
   its own connection and thread of this process) parked on an agent run as a
   subprocess (``python -m allocrunner agent``); the agent's CPU from
   ``/proc/<pid>/stat`` over ~5 s, in windows interleaved with windows where the same
   500 connections are open but idle. Goal: < 0.5 % of one CPU.
3. Those 500 queries woken by a change (a job registered): p50/p99 of each query's
   response time minus the time the register request was sent. Goal: p99 < 50 ms.
   Peer, in interleaved rounds: a bare stdlib server in a subprocess whose 500 parked
   GETs wait on one Condition and answer the same bytes.
4. ``logs -f``: a raw_exec task prints a wall-clock timestamp every 100 ms, followed
   with ``GET /v1/client/fs/logs/:id?follow=true&plain=true``; latency = receive time
   minus the timestamp in the line. Goal: p99 < 100 ms; the floor is the alloc dir's
   polling interval (`allocrunner.allocdir.POLL_INTERVAL`).

The agent subprocess is stopped with SIGTERM once every job is purged and its task
processes are gone (an agent leaves its tasks running when it stops).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["ALLOCRUNNER_LOCKCHECK"] = "0"  # production locks, before allocrunner loads
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import gc
import http.client
import json
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from allocrunner import _locking
from allocrunner.agent import Agent, AgentConfig
from allocrunner.allocdir import POLL_INTERVAL
from allocrunner.drivers._process import pid_alive, read_pid_stat
from benchmarks import Table, machine_note, percentile

assert not _locking.CHECK, "benchmarks run with the lock check off"

ROOT = Path(__file__).resolve().parent.parent
PARKED = 500
WAKE_ROUNDS = 5  # measured rounds, after one warm-up round
CPU_WINDOW = 1.0  # seconds per CPU window; WAKE_ROUNDS windows each, parked and idle
LOG_SECONDS = 8.0
START_TIMEOUT = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- HTTP helpers ------------------------------------------------------------------------


def _connect(address: str, timeout: float = 30.0) -> http.client.HTTPConnection:
    host, _, port = address.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.connect()
    return conn


def _call(
    conn: http.client.HTTPConnection, method: str, path: str, body: Any = None
) -> tuple[int, int, bytes]:
    """(status, X-Nomad-Index or 0, body) of one request on a kept-alive connection."""
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data)
    response = conn.getresponse()
    payload = response.read()
    return response.status, int(response.getheader("X-Nomad-Index") or 0), payload


def _ok(conn: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> Any:
    status, _, payload = _call(conn, method, path, body)
    if status != 200:
        raise RuntimeError(f"{method} {path}: {status} {payload[:200]!r}")
    return json.loads(payload) if payload else None


def _job(job_id: str, task: dict[str, Any]) -> dict[str, Any]:
    """A register body (``PUT /v1/jobs``): one batch group of one task (a batch job: no
    deployment health, which would change the allocation again seconds later)."""
    return {
        "Job": {
            "ID": job_id,
            "Name": job_id,
            "Type": "batch",
            "Datacenters": ["dc1"],
            "TaskGroups": [
                {
                    "Name": "g",
                    "Count": 1,
                    "RestartPolicy": {"Attempts": 0, "Mode": "fail"},
                    "Tasks": [task],
                }
            ],
        }
    }


def _mock_task() -> dict[str, Any]:
    return {"Name": "t", "Driver": "mock_driver", "Config": {"run_for": "1h"}}


def _wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _settled_allocs(address: str, count: int, quiet: float = 0.3) -> int:
    """Wait until `count` allocations run and the alloc index stays put for `quiet` s;
    returns that index."""
    last = -1
    since = time.monotonic()
    deadline = since + 30
    while time.monotonic() < deadline:
        conn = _connect(address)
        try:
            status, index, payload = _call(conn, "GET", "/v1/allocations")
        finally:
            conn.close()
        allocs = json.loads(payload) if status == 200 else []
        running = sum(1 for a in allocs if a.get("ClientStatus") == "running")
        if index != last or running != count:
            last, since = index, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return index
        time.sleep(0.02)
    raise TimeoutError(f"allocations did not settle at {count} running")


# --- 1. read latency ---------------------------------------------------------------------


class _BareHandler(BaseHTTPRequestHandler):
    """The floor: the stdlib server answering fixed bytes, nothing else. Headers and
    body go out in two writes, as from the agent's handler; with Nagle's algorithm on
    (the stdlib default) the body waits for the client's delayed ACK of the headers."""

    protocol_version = "HTTP/1.1"
    server_version = "allocrunner"
    body = b""
    index = "0"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Nomad-Index", self.index)
        self.send_header("X-Nomad-KnownLeader", "true")
        self.send_header("X-Nomad-LastContact", "0")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _BareServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True


class _Bare:
    """Not thread-safe; owned by the benchmark. A bare server on its own thread."""

    def __init__(self, body: bytes, index: int, nodelay: bool) -> None:
        fields = {"body": body, "index": str(index), "disable_nagle_algorithm": nodelay}
        self.server = _BareServer(("127.0.0.1", 0), type("Handler", (_BareHandler,), fields))
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.5}, name="bench-bare"
        )
        self.thread.start()
        self.address = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        self.server.server_close()  # joins the request threads (clients closed first)


def _get_times(conn: http.client.HTTPConnection, path: str, n: int, out: list[float]) -> bytes:
    body = b""
    for _ in range(n):
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        out.append(time.perf_counter() - start)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status}")
    return body


def bench_read_latency(rounds: int = 20, budget: float = 8.0) -> list[Table]:
    """`budget`: about how many seconds the timed rounds may take, whatever the latency."""
    with tempfile.TemporaryDirectory(prefix="allocrunner-bench-agent-") as tmp:
        agent = Agent(AgentConfig(data_dir=tmp, http_addr="127.0.0.1:0"))
        agent.start()
        bares: list[_Bare] = []
        conns: dict[str, http.client.HTTPConnection] = {}
        try:
            api = conns["agent"] = _connect(agent.address)
            _ok(api, "PUT", "/v1/jobs", _job("read", _mock_task()))
            _settled_allocs(agent.address, 1)
            alloc_id = _ok(api, "GET", "/v1/allocations")[0]["ID"]
            path = f"/v1/allocation/{alloc_id}"
            status, index, body = _call(api, "GET", path)
            assert status == 200 and json.loads(body)["ID"] == alloc_id
            for name, nodelay in (("bare", True), ("stdlib", False)):
                bares.append(_Bare(body, index, nodelay))
                conns[name] = _connect(bares[-1].address)

            probe: dict[str, list[float]] = {name: [] for name in conns}
            for name, conn in conns.items():  # warm-up, and the cost of one request
                assert _get_times(conn, path, 10, probe[name]) == body
            per_round = {
                name: max(5, min(200, int(budget / 3 / rounds / percentile(times, 50))))
                for name, times in probe.items()
            }
            times: dict[str, list[float]] = {name: [] for name in conns}
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                for _ in range(rounds):  # interleaved, so load changes hit all alike
                    for name, conn in conns.items():
                        _get_times(conn, path, per_round[name], times[name])
            finally:
                if gc_was_enabled:
                    gc.enable()
            _ok(api, "DELETE", "/v1/job/read?purge=true")
            _wait(lambda: agent.client.runner(alloc_id) is None, 30, "the allocation's removal")
        finally:
            for conn in conns.values():
                conn.close()
            for bare in bares:
                bare.close()
            agent.shutdown()

    table = Table(
        f"GET /v1/allocation/:id ({len(body)} B body), one keep-alive connection each, "
        f"{rounds} interleaved rounds"
    )
    for q in (50, 90, 99):
        mine = percentile(times["agent"], q)
        floor_s = percentile(times["bare"], q)
        table.add(
            f"agent p{q} ({len(times['agent'])} requests)",
            mine,
            floor_s,
            unit="s",
            goal="<= 2x" if q == 50 else "",
            ok=(mine <= 2 * floor_s) if q == 50 else None,
            baseline_name=f"bare http.server, TCP_NODELAY, {len(times['bare'])} requests",
        )
    table.add(
        f"stdlib defaults p50 ({len(times['stdlib'])} requests)",
        percentile(times["stdlib"], 50),
        percentile(times["bare"], 50),
        unit="s",
        baseline_name="bare http.server, TCP_NODELAY",
    )
    return [table]


# --- the agent subprocess ----------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    found = read_pid_stat(pid)
    if found is None:
        raise ProcessLookupError(f"process {pid} is gone")
    return (found.utime + found.stime) / CLK_TCK


def _threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _alive(pid: int) -> bool:
    return pid_alive(pid)


class AgentProcess:
    """Not thread-safe; owned by the benchmark. ``python -m allocrunner agent`` on a
    fresh data dir; `stop()` purges every job, waits for the task processes in
    `task_pids` to be gone, then sends SIGTERM and waits."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.task_pids: list[int] = []
        env = dict(os.environ, ALLOCRUNNER_LOCKCHECK="0")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("NOMAD_ADDR", None)
        self._log = open(data_dir.parent / "agent-stderr.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "allocrunner",
                "agent",
                "--data-dir",
                str(data_dir),
                "--http-addr",
                "127.0.0.1:0",
                "--log-level",
                "WARN",
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.pid = self.proc.pid
        try:
            info = _wait(self._info, START_TIMEOUT, "agent.json", interval=0.05)
        except BaseException:
            self._kill()
            raise
        self.address: str = info["address"]

    def _info(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {self.proc.returncode}: {self._stderr()}")
        try:
            info = json.loads((self.data_dir / "agent.json").read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == self.pid else None

    def _stderr(self) -> str:
        self._log.flush()
        return (self.data_dir.parent / "agent-stderr.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                conn = _connect(self.address)
                try:
                    for job in _ok(conn, "GET", "/v1/jobs") or ():
                        _ok(conn, "DELETE", f"/v1/job/{job['ID']}?purge=true")
                    _wait(lambda: not _ok(conn, "GET", "/v1/allocations"), 30, "no allocations")
                finally:
                    conn.close()
            _wait(lambda: not any(_alive(p) for p in self.task_pids), 30, "the tasks to exit")
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        finally:
            self._kill()

    def _kill(self) -> None:
        """The last resort: nothing this benchmark started outlives it."""
        for pid in self.task_pids:
            with contextlib.suppress(ProcessLookupError):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


# --- 2 and 3. parked blocking queries and their wake-up ----------------------------------


class ParkedQueries:
    """Thread-safe. `count` threads, each with its own keep-alive connection to the
    agent; `park(index)` has every one send ``GET /v1/allocations?index=..&wait=60s``
    (or `path`) and records when each answer arrives."""

    def __init__(
        self, address: str, count: int, path: str = "/v1/allocations?index={}&wait=60s"
    ) -> None:
        self.path = path
        self.body = b""  # the last answer
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # a new round (or closing)
        self._done = threading.Condition(self._lock)  # all sent, or all answered
        self._round = 0
        self._index = 0
        self._closing = False
        self._sent = 0
        self._answered: list[float] = []
        self._failures: list[str] = []
        self._conns = [_connect(address, timeout=90) for _ in range(count)]
        self._threads = [
            threading.Thread(target=self._run, args=(conn,), name=f"bench-parked-{i}")
            for i, conn in enumerate(self._conns)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, conn: http.client.HTTPConnection) -> None:
        seen = 0
        while True:
            with self._cond:
                while not self._closing and self._round == seen:
                    self._cond.wait()
                if self._closing:
                    return
                seen, index = self._round, self._index
            try:
                conn.request("GET", self.path.format(index))
                with self._lock:
                    self._sent += 1
                    if self._sent == len(self._threads):
                        self._done.notify_all()
                response = conn.getresponse()
                body = response.read()
                answered = time.perf_counter()
                failure = "" if response.status == 200 else f"status {response.status}"
            except (OSError, http.client.HTTPException) as err:
                answered, failure, body = time.perf_counter(), repr(err), b""
            with self._lock:
                self.body = body
                self._answered.append(answered)
                if failure:
                    self._failures.append(failure)
                if len(self._answered) == len(self._threads):
                    self._done.notify_all()

    def park(self, index: int) -> None:
        """Every thread sends its query; returns once all are sent."""
        with self._cond:
            self._sent = 0
            self._answered = []
            self._index = index
            self._round += 1
            self._cond.notify_all()
            if not self._done.wait_for(lambda: self._sent == len(self._threads), timeout=30):
                raise TimeoutError(f"{self._sent} of {len(self._threads)} queries sent")

    def failures(self) -> list[str]:
        with self._cond:
            return list(self._failures)

    def answered(self) -> list[float]:
        with self._cond:
            return list(self._answered)

    def wait_answered(self, timeout: float) -> list[float]:
        with self._lock:
            self._done.wait_for(lambda: len(self._answered) == len(self._threads), timeout)
            if self._failures:
                raise RuntimeError(f"blocking queries failed: {self._failures[:3]}")
            if len(self._answered) != len(self._threads):
                raise TimeoutError(
                    f"{len(self._answered)} of {len(self._threads)} queries answered"
                )
            return list(self._answered)

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for conn in self._conns:  # a thread still parked gets an error and ends
            with contextlib.suppress(OSError):
                conn.close()
        for thread in self._threads:
            thread.join(30)


# The peer of the wake-up: a bare stdlib ThreadingHTTPServer in its own process whose
# GET handlers all wait on one Condition that a PUT notifies; each then answers the
# bytes the PUT carried (the agent's answer of the same round). TCP_NODELAY, as the floor
# of the read latency.
FLOOR_SERVER = """\
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
cond = threading.Condition()
state = {"generation": 0, "body": b""}
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *args):
        pass
    def answer(self, data):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        with cond:
            seen = state["generation"]
            cond.wait_for(lambda: state["generation"] != seen, timeout=60)
            data = state["body"]
        self.answer(data)
    def do_PUT(self):
        data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with cond:
            state["generation"] += 1
            state["body"] = data
            cond.notify_all()
        self.answer(b"{}")
class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class FloorProcess:
    """Not thread-safe; owned by the benchmark. `FLOOR_SERVER` in a subprocess."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FLOOR_SERVER],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.pid = self.proc.pid
        self.address = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def trigger(self, body: bytes) -> None:
        conn = _connect(self.address)
        try:
            conn.request("PUT", "/trigger", body=body)
            conn.getresponse().read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _quiet(pid: int, window: float = 0.2, timeout: float = 10.0) -> None:
    """Wait until the process uses no CPU tick over `window` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = _cpu_seconds(pid)
        time.sleep(window)
        if _cpu_seconds(pid) == before:
            return


def _cpu_window(pid: int, seconds: float) -> tuple[float, float]:
    """(CPU seconds used, wall seconds) by `pid` over about `seconds`."""
    cpu, wall = _cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    return _cpu_seconds(pid) - cpu, time.perf_counter() - wall


def bench_blocking(agent: AgentProcess) -> Table:
    pid = agent.pid
    parked: ParkedQueries | None = None
    floor: FloorProcess | None = None
    floor_parked: ParkedQueries | None = None
    try:
        index = _settled_allocs(agent.address, 0)
        _quiet(pid)
        fresh_cpu, fresh_wall = _cpu_window(pid, 2 * CPU_WINDOW)
        threads_before = _threads_of(pid)
        parked = ParkedQueries(agent.address, PARKED)
        cpu = {"parked": [0.0, 0.0], "open": [0.0, 0.0]}
        wake: list[float] = []
        floor_wake: list[float] = []
        register_rtt: list[float] = []
        wake_cpu = [0.0, 0.0]  # CPU seconds of the agent, of this process, while they wake
        wake_wall = 0.0
        threads_parked = 0
        for n in range(WAKE_ROUNDS + 1):  # round 0 warms up
            parked.park(index)
            _quiet(pid)
            threads_parked = max(threads_parked, _threads_of(pid) - threads_before)
            used, wall = _cpu_window(pid, CPU_WINDOW)
            early = parked.answered()
            if early:
                raise RuntimeError(
                    f"round {n}: {len(early)} blocking queries answered before any change"
                    f" (failures: {parked.failures()[:3]})"
                )
            if n:
                cpu["parked"][0] += used
                cpu["parked"][1] += wall
            api = _connect(agent.address)  # idle ones time out on the agent's side
            try:
                agent_cpu, own_cpu = _cpu_seconds(pid), time.process_time()
                changed = time.perf_counter()
                _ok(api, "PUT", "/v1/jobs", _job(f"wake-{n}", _mock_task()))
                register_rtt.append(time.perf_counter() - changed)
            finally:
                api.close()
            answered = parked.wait_answered(30)
            if n:
                wake.extend(t - changed for t in answered)
                wake_cpu[0] += _cpu_seconds(pid) - agent_cpu
                wake_cpu[1] += time.process_time() - own_cpu
                wake_wall += max(answered) - changed
            index = _settled_allocs(agent.address, n + 1)
            _quiet(pid)
            used, wall = _cpu_window(pid, CPU_WINDOW)  # the same connections, idle
            if n:
                cpu["open"][0] += used
                cpu["open"][1] += wall

            if floor is None or floor_parked is None:  # started once the agent's are in
                floor = FloorProcess()
                floor_parked = ParkedQueries(floor.address, PARKED, "/park")
            floor_parked.park(0)  # the floor's round, interleaved with the agent's
            _quiet(floor.pid)
            time.sleep(0.2)
            changed = time.perf_counter()
            floor.trigger(parked.body)
            answered = floor_parked.wait_answered(30)
            if n:
                floor_wake.extend(t - changed for t in answered)
    finally:
        for queries in (parked, floor_parked):
            if queries is not None:
                queries.close()
        if floor is not None:
            floor.stop()

    table = Table(
        f"{PARKED} blocking queries (GET /v1/allocations?index=N&wait=60s) on an agent "
        f"subprocess, {WAKE_ROUNDS} rounds"
    )
    goal_cpu = 0.5
    parked_pct = 100 * cpu["parked"][0] / cpu["parked"][1]
    table.add(
        f"agent CPU, {PARKED} parked ({cpu['parked'][1]:.1f} s)",
        parked_pct,
        goal_cpu,
        unit="%",
        goal="< 0.5 %",
        ok=parked_pct < goal_cpu,
        baseline_name="goal",
    )
    for name, (used, wall) in (
        (f"agent CPU, same {PARKED} connections idle ({cpu['open'][1]:.1f} s)", cpu["open"]),
        (f"agent CPU, no connection ({fresh_wall:.1f} s)", (fresh_cpu, fresh_wall)),
    ):
        table.add(name, 100 * used / wall, goal_cpu, unit="%", baseline_name="goal")
    table.add(
        f"agent threads added by {PARKED} connections",
        threads_parked,
        PARKED,
        unit="",
        baseline_name="connections",
    )
    goal_wake = 0.050
    for q in (50, 99):
        value = percentile(wake, q)
        table.add(
            f"wake-up p{q}: register sent -> each query answered ({len(wake)})",
            value,
            goal_wake,
            unit="s",
            goal="< 50 ms" if q == 99 else "",
            ok=(value < goal_wake) if q == 99 else None,
            baseline_name="goal",
        )
    table.add(
        "wake-up max",
        max(wake),
        goal_wake,
        unit="s",
        baseline_name="goal",
    )
    for q in (50, 99):
        table.add(
            f"wake-up p{q} vs the bare-server peer",
            percentile(wake, q),
            percentile(floor_wake, q),
            unit="s",
            baseline_name="bare http.server, 500 parked on a Condition",
        )
    answers = WAKE_ROUNDS * PARKED
    table.add(
        "agent CPU per woken query (register to last answer)",
        wake_cpu[0] / answers,
        wake_wall / answers,
        unit="s",
        baseline_name="wall time / query",
    )
    table.add(
        "benchmark client CPU per answer, same span",
        wake_cpu[1] / answers,
        wake_wall / answers,
        unit="s",
        baseline_name="wall time / query",
    )
    table.add(
        "PUT /v1/jobs round trip while they wake (p50)",
        percentile(register_rtt[1:], 50),
        goal_wake,
        unit="s",
        baseline_name="goal",
    )
    return table


# --- 4. logs -f --------------------------------------------------------------------------

TICKER = """\
import os, sys, time
print("pid", os.getpid(), flush=True)
while True:
    print(f"{time.time():.6f}", flush=True)
    time.sleep(0.1)
"""


def _follow_lines(
    response: http.client.HTTPResponse, until: float
) -> Iterator[tuple[float, bytes]]:
    """(receive wall time, line) of each complete line until `until` (perf_counter)."""
    pending = b""
    while time.perf_counter() < until:
        data = response.read1(65536)
        received = time.time()
        if not data:
            return
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield received, line


def bench_logs_follow(agent: AgentProcess) -> Table:
    api = _connect(agent.address)
    try:
        task = {
            "Name": "ticker",
            "Driver": "raw_exec",
            "Config": {"command": sys.executable, "args": ["-u", "-c", TICKER]},
            "KillTimeout": 2_000_000_000,
        }
        _ok(api, "PUT", "/v1/jobs", _job("ticker", task))
        alloc_id = _wait(
            lambda: next(
                (
                    a["ID"]
                    for a in _ok(api, "GET", "/v1/job/ticker/allocations")
                    if a["ClientStatus"] == "running"
                ),
                None,
            ),
            30,
            "the ticker to run",
        )
        query = "task=ticker&type=stdout&follow=true&plain=true"
        path = f"/v1/client/fs/logs/{alloc_id}?{query}"

        def first_line() -> bytes | None:
            status, _, body = _call(api, "GET", path.replace("follow=true", "follow=false"))
            line = body.split(b"\n", 1)[0]
            return line if status == 200 and line.startswith(b"pid ") else None

        head = _wait(first_line, 30, "the ticker's first line")
        agent.task_pids.append(int(head.split()[1]))

        stream = _connect(agent.address)
        try:
            started = time.time()
            stream.request("GET", path)
            response = stream.getresponse()
            if response.status != 200:
                raise RuntimeError(f"GET {path}: {response.status} {response.read()[:200]!r}")
            latencies = []
            for received, line in _follow_lines(response, time.perf_counter() + LOG_SECONDS):
                if line.startswith(b"pid"):
                    continue
                written = float(line)
                if written > started + 0.3:  # lines already in the file came as a backlog
                    latencies.append(received - written)
        finally:
            stream.close()
    finally:
        api.close()

    table = Table(
        f"logs -f: raw_exec task line (every 100 ms) -> client, {len(latencies)} lines "
        f"over {LOG_SECONDS:.0f} s"
    )
    goal = 0.100
    for q in (50, 99):
        value = percentile(latencies, q)
        table.add(
            f"latency p{q} vs goal",
            value,
            goal,
            unit="s",
            goal="< 100 ms" if q == 99 else "",
            ok=(value < goal) if q == 99 else None,
            baseline_name="goal",
        )
        table.add(
            f"latency p{q} vs polling floor",
            value,
            POLL_INTERVAL,
            unit="s",
            baseline_name="alloc dir POLL_INTERVAL",
        )
    table.add("latency max", max(latencies), goal, unit="s", baseline_name="goal")
    return table


def bench_subprocess() -> list[Table]:
    with tempfile.TemporaryDirectory(prefix="allocrunner-bench-agent-") as tmp:
        agent = AgentProcess(Path(tmp) / "data")
        try:
            tables = [bench_blocking(agent), bench_logs_follow(agent)]
        except BaseException:
            with contextlib.suppress(Exception):
                agent.stop()
            raise
        agent.stop()
        if agent.proc.returncode != 0:
            raise RuntimeError(f"the agent exited with {agent.proc.returncode}")
    return tables


def main() -> None:
    if __name__ == "__main__":  # the runner prints this once for all benchmarks
        print(machine_note())
    before = set(threading.enumerate())
    misses = 0
    for bench in (bench_read_latency, bench_subprocess):
        for table in bench():
            table.print()
            misses += table.misses()
    leaked = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    if leaked:
        print(f"\nthreads left running: {', '.join(leaked)}")
    print(f"\nbench_agent: {'all goals met' if not misses else f'{misses} goal(s) missed'}")


if __name__ == "__main__":
    main()
