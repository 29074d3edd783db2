"""A real ``kill -9`` of a process running a Client (SQLite state DB, raw_exec tasks)
at a named step of building or destroying an allocation; then a second Client on the
same data dir. What the server hears of the allocation (from both lives) never says
failed and ends right, and /proc shows its task neither lost nor running twice.

The first life is `crash_child.py`; the same crashes simulated in-process are in
`test_crash_restore.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.jobspec import encode_allocation
from allocrunner.structs import Allocation, new_allocation
from allocrunner.testing import assert_stays, mock_job, mock_task, wait_for

from .conftest import Upstream
from .crash_child import CRASH_POINT

REPO = Path(__file__).resolve().parents[3]
CHILD_TIMEOUT = 60.0


def _sleep_alloc(marker: str) -> Allocation:
    task = mock_task(
        "web",
        driver="raw_exec",
        config={"command": "/bin/sleep", "args": [marker]},
        kill_timeout=2.0,
    )
    return new_allocation(mock_job(task), "web")


def _processes(marker: str) -> list[int]:
    """Pids of the live ``/bin/sleep <marker>`` processes (the task, not its wrapper)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        ours = len(argv) >= 2 and argv[0].endswith(b"sleep") and argv[1] == marker.encode()
        if ours and state != "Z":
            found.append(int(entry.name))
    return found


@attrs.define
class FirstLife:
    """Not thread-safe; owned by one test. The allocation and what the killed process
    reported of it."""

    alloc: Allocation
    marker: str
    upstream_log: Path

    def reported(self) -> list[str]:
        if not self.upstream_log.exists():
            return []
        lines = self.upstream_log.read_text().splitlines()
        return [json.loads(line)["status"] for line in lines if line.strip()]


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique argument for the task's sleep; every process carrying it is killed at
    the end, whatever the test left behind."""
    value = f"3600.{uuid.uuid4().int % 10**9:09d}"
    yield value
    for pid in _processes(value):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _kill_at(tmp_path: Path, marker: str, scenario: str, step: str) -> FirstLife:
    alloc = _sleep_alloc(marker)
    life = FirstLife(alloc, marker, tmp_path / "upstream.jsonl")
    spec = {
        "data_dir": str(tmp_path / "data"),
        "alloc": encode_allocation(alloc),
        "scenario": scenario,
        "step": step,
        "upstream": str(life.upstream_log),
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.client.crash_child", json.dumps(spec)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the child is at the step (or dies)
        assert line.split() == [CRASH_POINT, step], f"the child said {line!r}"
    finally:
        child.kill()  # SIGKILL
        child.wait(CHILD_TIMEOUT)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return life


@pytest.fixture
def second_life(tmp_path: Path, upstream: Upstream) -> Iterator[Client]:
    config = ClientConfig.for_data_dir(tmp_path / "data", gc_interval=3600.0)
    client = Client(config, state_updater=upstream, update_interval=0.01)
    yield client
    assert client.shutdown(30)


def _statuses(life: FirstLife, upstream: Upstream) -> list[str]:
    return life.reported() + [v.client_status for v in upstream.views_of(life.alloc.id)]


def _assert_told(life: FirstLife, upstream: Upstream, want: str) -> None:
    told = _statuses(life, upstream)
    assert "failed" not in told, f"the server was told failed: {told}"
    assert told and told[-1] == want, f"the server was told {told}, want it to end with {want}"


def _assert_count(marker: str, want: int) -> None:
    got = _processes(marker)
    assert len(got) == want, f"{len(got)} task processes {got}, want {want}"


def _assert_gone(client: Client, life: FirstLife) -> None:
    path = Path(client.config.alloc_dir) / life.alloc.id
    assert not path.exists(), f"{path} is still there"
    assert client.state_db.all_allocations() == [], "its state is still saved"


@pytest.mark.parametrize(
    "step",
    ["build-enter", "build-dir-made", "handle-queued", "task-running", "running-state-saved"],
)
def test_kill9_while_building_loses_no_task_and_runs_none_twice(
    tmp_path: Path, marker: str, step: str, second_life: Client, upstream: Upstream
) -> None:
    life = _kill_at(tmp_path, marker, "run", step)
    second_life.start()
    second_life.run_allocs([life.alloc])  # the server's view has not changed
    wait_for(lambda: _assert_told(life, upstream, "running"), 20)
    wait_for(lambda: _assert_count(marker, 1), 20)
    assert_stays(lambda: _assert_count(marker, 1), 0.3)


@pytest.mark.parametrize("step", ["destroy-enter", "destroy-dir-gone", "state-delete"])
def test_kill9_while_collecting_a_stopped_alloc_is_never_reported_failed(
    tmp_path: Path, marker: str, step: str, second_life: Client, upstream: Upstream
) -> None:
    life = _kill_at(tmp_path, marker, "stop-collect", step)
    _assert_count(marker, 0)
    second_life.start()
    stopped = attrs.evolve(
        life.alloc, desired_status="stop", alloc_modify_index=life.alloc.alloc_modify_index + 1
    )
    second_life.run_allocs([stopped])  # the server still lists it
    wait_for(lambda: _assert_gone(second_life, life), 20)
    wait_for(lambda: _assert_told(life, upstream, "complete"), 20)
    _assert_count(marker, 0)


def test_kill9_before_a_removed_alloc_was_stopped_stops_its_task(
    tmp_path: Path, marker: str, second_life: Client, upstream: Upstream
) -> None:
    life = _kill_at(tmp_path, marker, "remove", "kill-enter")
    _assert_count(marker, 1)  # the task outlived the agent
    second_life.start()
    second_life.run_allocs([])  # the server no longer lists it
    wait_for(lambda: _assert_gone(second_life, life), 20)
    wait_for(lambda: _assert_count(marker, 0), 20)
    wait_for(lambda: _assert_told(life, upstream, "complete"), 20)
