"""Nomad's e2e/overlap TestOverlap on one node, with overlap/testdata/overlap.nomad (its
task's shutdown_delay cut from 8s to 2s): a job holding static port 7234 is stopped;
while its allocation waits out the shutdown delay (desired stop, not yet terminal) a
second job asking for the same port cannot be placed and gets a blocked evaluation
(Nomad's scheduler counts an allocation's ports until its client status is terminal);
once the first allocation is complete, no earlier than the delay, the second job's
allocation is placed and runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from allocrunner.testing import wait_for
from tests.nomad_e2e.helpers import SETTLE_TIMEOUT, Node, e2e_file

pytestmark = pytest.mark.timeout(60)

DELAY = 2.0


def _jobs(tmp_path: Path) -> tuple[Path, Path]:
    text = e2e_file("overlap/testdata/overlap.nomad").read_text()
    assert text.count('shutdown_delay = "8s"') == 1
    first = tmp_path / "overlap.nomad"
    first.write_text(text.replace('shutdown_delay = "8s"', f'shutdown_delay = "{DELAY:g}s"'))
    second = tmp_path / "overlap2.nomad"
    second.write_text(
        text.replace('job "overlap"', 'job "overlap2"').replace('shutdown_delay = "8s"', "")
    )
    return first, second


def _task_running(alloc: dict[str, Any]) -> None:
    state = (alloc["TaskStates"] or {}).get("test")
    assert state is not None and state["State"] == "running", alloc["TaskStates"]
    assert alloc["ClientStatus"] == "running", alloc["ClientStatus"]


def test_a_static_port_blocks_the_next_job_until_the_shutdown_delay_is_over(
    node: Node, tmp_path: Path
) -> None:
    first, second = _jobs(tmp_path)
    node.run(first)
    original = node.alloc_when("overlap", _task_running)
    ports = original["AllocatedResources"]["Shared"]["Ports"]
    assert [(p["Label"], p["Value"]) for p in ports] == [("hack", 7234)]

    node.n.job.deregister_job("overlap", purge=False)
    stopped_at = time.monotonic()

    def stopping(alloc: dict[str, Any]) -> None:
        # Nomad's task runner marks a task pending while it waits out its shutdown
        # delay, so the allocation is stopping but not terminal: pending, or running
        # until the client has heard of the stop.
        assert alloc["DesiredStatus"] == "stop", alloc["DesiredStatus"]
        assert alloc["ClientStatus"] in ("pending", "running"), alloc["ClientStatus"]
        events = [e["Type"] for e in alloc["TaskStates"]["test"]["Events"]]
        assert events[-1] == "Waiting for shutdown delay", events

    node.alloc_when("overlap", stopping)

    node.run(second)
    [register] = [
        e for e in node.n.job.get_evaluations("overlap2") if e["TriggeredBy"] == "job-register"
    ]
    assert register["BlockedEval"], register
    assert register["FailedTGAllocs"]["overlap"], register

    node.finished("overlap", "complete")
    assert time.monotonic() - stopped_at >= DELAY - 0.1

    def replacement_runs() -> None:
        allocs = node.n.job.get_allocations("overlap2")
        assert len(allocs) == 1, f"allocations of overlap2: {allocs}"
        _task_running(node.n.allocation.get_allocation(allocs[0]["ID"]))

    wait_for(replacement_runs, SETTLE_TIMEOUT)
