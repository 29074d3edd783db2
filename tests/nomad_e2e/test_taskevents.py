"""Nomad's e2e/taskevents suite on one node: the four job files of its input/ run as
they are, and each task's events are asserted as TestTaskEvents_* assert them: the
first N event types in order, `Failed`, and where the Go test checks it the
allocation's client status and the event that fails the task. Only the task named
like the job is inspected, as there."""

from __future__ import annotations

from typing import Any

import pytest

from tests.nomad_e2e.helpers import Node, e2e_file, event_types

pytestmark = pytest.mark.timeout(60)


def _events_reached(job_id: str, count: int) -> Any:
    def check(alloc: dict[str, Any]) -> None:
        state = alloc["TaskStates"].get(job_id) if alloc["TaskStates"] else None
        assert state is not None, f"no task state for {job_id} yet"
        assert len(state["Events"]) >= count, event_types(state)

    return check


def _run_until_events(node: Node, job_id: str, count: int) -> tuple[dict, dict]:
    node.run(e2e_file(f"taskevents/input/{job_id}.nomad"))
    alloc = node.alloc_when(job_id, _events_reached(job_id, count))
    return alloc, alloc["TaskStates"][job_id]


def test_simple_batch(node: Node) -> None:
    _, state = _run_until_events(node, "simple_batch", 4)
    assert not state["Failed"], event_types(state)
    assert event_types(state)[:4] == ["Received", "Task Setup", "Started", "Terminated"]


def test_failed_batch(node: Node) -> None:
    _, state = _run_until_events(node, "failed_batch", 4)
    assert state["Failed"], event_types(state)
    assert event_types(state)[:4] == ["Received", "Task Setup", "Driver Failure", "Not Restarting"]
    assert state["Events"][3]["FailsTask"] is True


def test_completed_leader(node: Node) -> None:
    _, state = _run_until_events(node, "completed_leader", 7)
    assert not state["Failed"], event_types(state)
    assert event_types(state)[:7] == [
        "Received",
        "Task Setup",
        "Started",
        "Leader Task Dead",
        "Killing",
        "Terminated",
        "Killed",
    ]


def test_failed_sibling(node: Node) -> None:
    _, state = _run_until_events(node, "failed_sibling", 7)
    assert not state["Failed"], event_types(state)
    alloc = node.finished("failed_sibling", "failed")
    assert event_types(state)[:7] == [
        "Received",
        "Task Setup",
        "Started",
        "Sibling Task Failed",
        "Killing",
        "Terminated",
        "Killed",
    ]
    failure = alloc["TaskStates"]["failure"]
    assert failure["Failed"] is True
    assert next(e for e in failure["Events"] if e["Type"] == "Terminated")["ExitCode"] == 99
