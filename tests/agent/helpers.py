"""Helpers for agent tests: an agent subprocess, a urllib client, raw_exec jobs, /proc."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from allocrunner.agent.datadir import read_agent_info
from allocrunner.drivers import _process
from allocrunner.testing import wait_for

START_TIMEOUT = 20.0


def api(
    address: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any, dict[str, str]]:
    """One request; (status, decoded JSON or text, headers)."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(address + path, data=data, method=method)
    if token is not None:
        req.add_header("X-Nomad-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        raw, status, headers = err.read(), err.code, dict(err.headers)
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw.decode(errors="replace"), headers


def sleeper_job(job_id: str, *, count: int = 1, seconds: int = 300, kind: str = "service") -> dict:
    """A raw_exec job whose task records its pid in the alloc's data dir, then sleeps."""
    script = f'echo $$ >> "$NOMAD_ALLOC_DIR/data/pids"; exec sleep {seconds}'
    return {
        "Job": {
            "ID": job_id,
            "Type": kind,
            "TaskGroups": [
                {
                    "Name": "g",
                    "Count": count,
                    "Tasks": [
                        {
                            "Name": "sleeper",
                            "Driver": "raw_exec",
                            "Config": {"command": "/bin/sh", "args": ["-c", script]},
                            "KillTimeout": 2_000_000_000,
                        }
                    ],
                }
            ],
        }
    }


def holds(value: Any, what: str = "condition") -> Any:
    """`value` when truthy; else an AssertionError, so `wait_for` keeps waiting."""
    assert value, f"{what} does not hold yet: {value!r}"
    return value


def pid_alive(pid: int) -> bool:
    """True when /proc shows `pid` alive (not a zombie)."""
    return _process.pid_alive(pid)


def recorded_pids(data_dir: Path, alloc_id: str) -> list[int]:
    path = data_dir / "alloc" / alloc_id / "alloc" / "data" / "pids"
    try:
        return [int(line) for line in path.read_text().split()]
    except OSError:
        return []


def kill_groups(pids: list[int]) -> None:
    """Last-resort cleanup: SIGKILL the process groups of `pids`."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


class AgentProcess:
    """`allocrunner agent` in a subprocess on `data_dir`."""

    def __init__(self, data_dir: Path, *extra: str, stdout: Any = subprocess.DEVNULL) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "allocrunner",
                "agent",
                "-data-dir",
                str(data_dir),
                "--http-addr",
                "127.0.0.1:0",
                *extra,
            ],
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.address = ""
        self._stderr: str | None = None

    def wait_ready(self) -> AgentProcess:
        def ready() -> None:
            assert self.proc.poll() is None, f"agent exited {self.proc.returncode}: {self.stderr()}"
            info = read_agent_info(self.data_dir)
            assert info is not None and info.pid == self.proc.pid, "agent.json not written yet"
            self.address = info.address

        wait_for(ready, START_TIMEOUT)
        wait_for(lambda: _healthy(self.address), START_TIMEOUT)
        return self

    def stderr(self) -> str:
        """What the agent wrote to stderr, once it has exited ("" before)."""
        if self.proc.poll() is None:
            return ""
        if self._stderr is None:
            raw = self.proc.stderr.read() if self.proc.stderr else b""
            self._stderr = raw.decode(errors="replace")
        return self._stderr

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code; on a timeout, fail with the end of the agent's log."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log = self.data_dir / "agent.log"
            tail = log.read_text()[-3000:] if log.exists() else "(no agent.log)"
            raise AssertionError(f"agent still running after {timeout}s; log:\n{tail}") from None

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stderr:
            self.proc.stderr.close()


def _healthy(address: str) -> None:
    status, body, _ = api(address, "GET", "/v1/agent/health", timeout=2)
    assert status == 200, body


def job_allocs(address: str, job_id: str) -> list[dict]:
    status, body, _ = api(address, "GET", f"/v1/job/{job_id}/allocations")
    assert status == 200, body
    return body


def wait_running(
    address: str, data_dir: Path, job_id: str, count: int, timeout: float = 20.0
) -> dict[str, int]:
    """Wait until `count` allocations of `job_id` run and recorded a pid; alloc id → pid."""
    found: dict[str, int] = {}

    def check() -> None:
        allocs = [a for a in job_allocs(address, job_id) if a["DesiredStatus"] == "run"]
        assert len(allocs) == count, f"{len(allocs)} allocations, want {count}"
        for alloc in allocs:
            assert alloc["ClientStatus"] == "running", alloc["ClientStatus"]
            pids = recorded_pids(data_dir, alloc["ID"])
            assert pids, f"no pid recorded for {alloc['ID']}"
            found[alloc["ID"]] = pids[-1]

    wait_for(check, timeout)
    return found


def deadline(seconds: float) -> float:
    return time.monotonic() + seconds
