"""Helpers for Nomad's e2e scenarios on one node: where the fixtures are, an agent in
this process with a python-nomad client, the command line run in this process, and
what /proc shows of the task processes an agent's data dir started.

Threads: none of its own (the agent's belong to it). Locks: none. Owner: the tests of
tests/nomad_e2e/ and their conftest.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import nomad
from nomad.api import exceptions

from allocrunner.agent import Agent
from allocrunner.drivers._process import pid_alive, read_pid_stat
from allocrunner.testing import wait_for
from tests.unit.cli.helpers import run_cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nomad"
E2E = FIXTURES / "e2e"
SETTLE_TIMEOUT = 20.0


def e2e_file(relative: str) -> Path:
    """A copied Nomad e2e file, by its path under Nomad's `e2e/`."""
    path = E2E / relative
    assert path.is_file(), f"no fixture {relative}"
    return path


def _environ(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def task_processes(data_dir: Path) -> set[int]:
    """Pids of live processes an agent on `data_dir` started: their environment names
    an allocation directory under it (every raw_exec task has NOMAD_ALLOC_DIR)."""
    marker = f"{data_dir}/alloc/".encode()
    found = set()
    for pid in os.listdir("/proc"):
        if (
            pid.isdigit()
            and int(pid) != os.getpid()
            and marker in _environ(pid)
            and pid_alive(int(pid))
        ):
            found.add(int(pid))
    return found


def kill_leftovers(data_dir: Path) -> set[int]:
    """Last resort after a failed test: SIGKILL the group of every task process left."""
    leftover = task_processes(data_dir)
    groups = set()
    for pid in leftover:
        stat = read_pid_stat(pid)
        if stat is not None and stat.pgid != os.getpgid(0):
            groups.add(stat.pgid)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return leftover


class Node:
    """One agent on a fresh data dir, a python-nomad client on it, and the CLI."""

    def __init__(self, agent: Agent, client: nomad.Nomad, data_dir: Path) -> None:
        self.agent = agent
        self.n = client
        self.data_dir = data_dir

    def cli(self, *argv: str) -> tuple[int, str, str]:
        """`allocrunner <argv…> -address <agent>` in this process: code, stdout, stderr."""
        return run_cli(*argv[:2], "-address", self.agent.address, *argv[2:])

    def run(self, path: Path, *flags: str, detach: bool = True) -> str:
        """`allocrunner job run [flags] FILE`; the command's stdout (exit code 0 asserted)."""
        extra = ("-detach",) if detach else ()
        code, out, err = self.cli("job", "run", *extra, *flags, str(path))
        assert code == 0, f"job run exited {code}: {out}\n{err}"
        return out

    def only_alloc(self, job_id: str) -> dict[str, Any]:
        """The job's one allocation, in full, once it is placed."""

        def placed() -> str:
            allocs = self.n.job.get_allocations(job_id)
            assert len(allocs) == 1, f"allocations of {job_id}: {allocs}"
            return allocs[0]["ID"]

        return self.n.allocation.get_allocation(wait_for(placed, SETTLE_TIMEOUT))

    def alloc_when(self, job_id: str, check: Any) -> dict[str, Any]:
        """The job's one allocation once `check(alloc)` stops raising AssertionError."""

        def ready() -> dict[str, Any]:
            alloc = self.only_alloc(job_id)
            check(alloc)
            return alloc

        return wait_for(ready, SETTLE_TIMEOUT)

    def finished(self, job_id: str, status: str) -> dict[str, Any]:
        """The job's one allocation once its client status is `status` (terminal)."""

        def done(alloc: dict[str, Any]) -> None:
            assert alloc["ClientStatus"] == status, (alloc["ClientStatus"], alloc["TaskStates"])

        return self.alloc_when(job_id, done)

    def stdout(self, alloc_id: str, task: str) -> str:
        return self.n.client.stream_logs.stream(alloc_id, task, "stdout", plain=True)

    def purge_all(self) -> None:
        """Deregister with purge every job until none is left."""

        def purged() -> None:
            for job in self.n.jobs.get_jobs():
                with contextlib.suppress(exceptions.URLNotFoundNomadException):
                    self.n.job.deregister_job(job["ID"], purge=True)
            assert not self.n.jobs.get_jobs(), "jobs left after purge"

        wait_for(purged, SETTLE_TIMEOUT)

    def assert_clean(self) -> None:
        """Every allocation destroyed and no task process left, as /proc shows."""

        def destroyed() -> None:
            root = self.data_dir / "alloc"
            left = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
            assert not left, f"alloc dirs left after purge: {left}"

        def no_process() -> None:
            assert not task_processes(self.data_dir), "task processes left after purge"

        wait_for(destroyed, SETTLE_TIMEOUT)
        wait_for(no_process, SETTLE_TIMEOUT)


def event_types(task_state: dict[str, Any]) -> list[str]:
    return [event["Type"] for event in task_state["Events"]]
