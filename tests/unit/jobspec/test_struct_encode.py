"""`Struct.encode` walks a plan made once per struct (one getter for the fields, no call
for a field encoded as itself or for a None encoded as a constant). These tests hold it
to the plain field-by-field walk it replaces, over generated jobs, allocations and
task states, and pin the edge cases: a one-field struct, omitted empty fields, None
times, and `encode_with`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings

from allocrunner.jobspec import codec
from allocrunner.jobspec._kinds import GO_ZERO_TIME_TEXT, Kind, ListOf, MapOf, Struct
from allocrunner.structs import Allocation, Job, TaskEvent, TaskState
from tests.unit.jobspec import strategies as s

EXAMPLES = settings(max_examples=60, deadline=None)


def walk(kind: Kind, value: Any) -> Any:
    """The reference encoding: every field read and encoded one by one, recursively."""
    if isinstance(kind, Struct):
        if value is None:
            return None
        out: dict[str, Any] = {}
        for f in kind.fields:
            item = getattr(value, f.attr)
            if f.omit_empty and not item:
                continue
            out[f.key] = walk(f.kind, item)
        return out
    if isinstance(kind, ListOf):
        return [walk(kind.item, v) for v in value]
    if isinstance(kind, MapOf):
        return {k: walk(kind.item, v) for k, v in value.items()}
    return kind.encode(value)


@EXAMPLES
@given(s.jobs)
def test_a_job_encodes_as_the_field_walk_does(job: Job) -> None:
    assert codec.JOB.encode(job) == walk(codec.JOB, job)


@EXAMPLES
@given(s.allocations)
def test_an_allocation_encodes_as_the_field_walk_does(alloc: Allocation) -> None:
    assert codec.ALLOCATION.encode(alloc) == walk(codec.ALLOCATION, alloc)


@EXAMPLES
@given(s.task_states)
def test_a_task_state_encodes_as_the_field_walk_does(state: TaskState) -> None:
    assert codec.TASK_STATE.encode(state) == walk(codec.TASK_STATE, state)


@EXAMPLES
@given(s.allocations)
def test_encode_with_takes_the_given_encoding_for_its_field(alloc: Allocation) -> None:
    given_job = {"ID": "given"}
    expected = walk(codec.ALLOCATION, alloc)
    expected["Job"] = given_job
    assert codec.ALLOCATION.encode_with(alloc, "job", given_job) == expected


def test_a_one_field_struct_encodes_its_field() -> None:
    assert codec.DISPATCH_PAYLOAD_CONFIG.encode(codec.DispatchPayloadConfig(file="in.json")) == {
        "File": "in.json"
    }


def test_unset_times_encode_as_go_zero_time_and_zero_nanoseconds() -> None:
    state = TaskState()
    encoded = codec.TASK_STATE.encode(state)
    assert encoded["StartedAt"] == GO_ZERO_TIME_TEXT
    assert encoded["FinishedAt"] == GO_ZERO_TIME_TEXT
    assert codec.TASK_EVENT.encode(TaskEvent("Started", time=None))["Time"] == 0
    when = datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)
    later = state.with_state("running")
    assert codec.TASK_STATE.encode(later)["StartedAt"] != GO_ZERO_TIME_TEXT
    assert codec.TASK_EVENT.encode(TaskEvent("Started", time=when))["Time"] == (1714564800500000000)


def test_a_none_struct_encodes_as_null() -> None:
    assert codec.TASK_STATE.encode(None) is None
