"""TaskState and TaskEvent: Nomad's bookkeeping as new immutable values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocrunner.structs import FrozenDict, TaskEvent, TaskState, utcnow
from allocrunner.structs import task_state as task_state_module
from allocrunner.structs.status import TASK_DEAD, TASK_PENDING, TASK_RUNNING
from allocrunner.structs.task_state import (
    EVENT_RESTARTING,
    EVENT_STARTED,
    EVENT_TERMINATED,
    MAX_EVENTS,
)

T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_defaults() -> None:
    state = TaskState()
    assert (state.state, state.failed, state.restarts) == (TASK_PENDING, False, 0)
    assert state.last_restart is state.started_at is state.finished_at is None
    assert state.events == () and state.last_event() is None


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


def test_an_event_is_stamped_now_by_default() -> None:
    before = utcnow()
    event = TaskEvent(EVENT_STARTED)
    assert event.time is not None and before <= event.time <= utcnow()
    assert TaskEvent(EVENT_STARTED, time=None).time is None


@pytest.mark.parametrize("field", ["last_restart", "started_at", "finished_at"])
def test_naive_times_are_refused(field: str) -> None:
    naive: dict[str, Any] = {field: datetime(2024, 5, 1)}
    with pytest.raises(ValueError, match="timezone-aware"):
        TaskState(**naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        attrs.evolve(TaskState(), **naive)


def test_a_naive_event_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        TaskEvent(EVENT_STARTED, time=datetime(2024, 5, 1))


def test_values_are_frozen_and_hashable() -> None:
    event = TaskEvent(EVENT_STARTED, time=T0, details={"k": "v"})
    state = TaskState(events=[event])
    assert isinstance(event.details, FrozenDict) and isinstance(state.events, tuple)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        state.state = TASK_DEAD  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.message = "x"  # type: ignore[misc]
    assert hash(state) == hash(
        TaskState(events=(TaskEvent(EVENT_STARTED, time=T0, details={"k": "v"}),))
    )


def test_with_details_merges_strings_into_a_copy() -> None:
    event = TaskEvent("Driver", time=T0, details={"a": "1"})
    detailed = event.with_details(b=2, c=None)
    assert detailed.details == {"a": "1", "b": "2", "c": "None"}
    assert event.details == {"a": "1"}
    assert detailed.with_details(a="x").details["a"] == "x"


def test_with_event_appends_and_keeps_the_newest() -> None:
    state = TaskState()
    for n in range(MAX_EVENTS + 3):
        state = state.with_event(TaskEvent("Driver", time=at(n), message=str(n)))
    assert len(state.events) == MAX_EVENTS == 10
    assert [e.message for e in state.events] == [str(n) for n in range(3, MAX_EVENTS + 3)]
    assert state.last_event() == state.events[-1]


def test_failed_is_sticky() -> None:
    state = TaskState().with_event(TaskEvent("Driver Failure", time=T0, fails_task=True))
    assert state.failed
    state = state.with_event(TaskEvent(EVENT_STARTED, time=at(1)))
    assert state.failed, "a later event does not clear failed"


def test_restarting_counts_and_stamps_the_restart() -> None:
    state = TaskState().with_event(TaskEvent(EVENT_RESTARTING, time=at(5)))
    assert (state.restarts, state.last_restart) == (1, at(5))
    state = state.with_event(TaskEvent(EVENT_RESTARTING, time=at(9)))
    assert (state.restarts, state.last_restart) == (2, at(9))
    state = state.with_event(TaskEvent(EVENT_TERMINATED, time=at(10)))
    assert (state.restarts, state.last_restart) == (2, at(9))


def test_with_event_leaves_the_original_alone() -> None:
    original = TaskState()
    original.with_event(TaskEvent(EVENT_RESTARTING, time=T0, fails_task=True))
    assert original == TaskState()


def test_with_state_stamps_start_and_finish() -> None:
    pending = TaskState()
    running = pending.with_state(TASK_RUNNING, at(1))
    assert (running.state, running.started_at, running.finished_at) == (TASK_RUNNING, at(1), None)
    dead = running.with_state(TASK_DEAD, at(2))
    assert (dead.state, dead.started_at, dead.finished_at) == (TASK_DEAD, at(1), at(2))
    # a restart starts it again; the first finish time stays (Nomad sets it once)
    again = dead.with_state(TASK_RUNNING, at(3)).with_state(TASK_DEAD, at(4))
    assert (again.started_at, again.finished_at) == (at(3), at(2))


def test_with_state_to_the_same_state_is_the_same_object() -> None:
    running = TaskState().with_state(TASK_RUNNING, at(1))
    assert running.with_state(TASK_RUNNING, at(2)) is running


def test_with_state_defaults_to_now() -> None:
    before = utcnow()
    running = TaskState().with_state(TASK_RUNNING)
    assert running.started_at is not None and before <= running.started_at <= utcnow()


def test_predicates() -> None:
    assert TaskState(state=TASK_DEAD).successful()
    assert not TaskState(state=TASK_DEAD, failed=True).successful()
    assert not TaskState(state=TASK_RUNNING).successful()
    assert TaskState(state=TASK_RUNNING).is_running() and not TaskState().is_running()
    assert TaskState(state=TASK_DEAD).is_dead() and not TaskState().is_dead()


events = st.builds(
    TaskEvent,
    type=st.sampled_from((EVENT_STARTED, EVENT_TERMINATED, EVENT_RESTARTING, "Driver")),
    time=st.integers(0, 10**6).map(at),
    fails_task=st.booleans(),
)


@given(st.lists(events, max_size=25))
def test_a_history_of_events(history: list[TaskEvent]) -> None:
    state = TaskState()
    for event in history:
        state = state.with_event(event)
    restarts = [e for e in history if e.type == EVENT_RESTARTING]
    assert state.events == tuple(history[-MAX_EVENTS:])
    assert state.failed == any(e.fails_task for e in history)
    assert state.restarts == len(restarts)
    assert state.last_restart == (restarts[-1].time if restarts else None)


@given(st.lists(st.sampled_from((TASK_PENDING, TASK_RUNNING, TASK_DEAD)), max_size=12))
def test_a_history_of_states(moves: list[str]) -> None:
    state = TaskState()
    for n, move in enumerate(moves):
        state = state.with_state(move, at(n))
    assert state.state == (moves[-1] if moves else TASK_PENDING)
    previous = [TASK_PENDING, *moves]
    changes = [(n, move) for n, move in enumerate(moves) if move != previous[n]]
    starts = [n for n, move in changes if move == TASK_RUNNING]
    deaths = [n for n, move in changes if move == TASK_DEAD]
    assert state.started_at == (at(starts[-1]) if starts else None), "the latest start"
    assert state.finished_at == (at(deaths[0]) if deaths else None), "the first finish"


def test_all_lists_the_modules_own_names() -> None:
    names = task_state_module.__all__
    assert len(set(names)) == len(names)
    assert {"TaskEvent", "TaskState", "utcnow", "MAX_EVENTS", "EVENT_STARTED"} <= set(names)
    assert all(hasattr(task_state_module, name) for name in names)
