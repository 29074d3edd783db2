"""The client status an allocation's task states add up to (Nomad's getClientStatus),
and the status strings and predicates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocrunner.structs import TaskState, client_status_from_task_states
from allocrunner.structs import status as status_module
from allocrunner.structs.status import (
    CLIENT_COMPLETE,
    CLIENT_FAILED,
    CLIENT_LOST,
    CLIENT_PENDING,
    CLIENT_RUNNING,
    CLIENT_STATUSES,
    DESC_COMPLETE,
    DESC_FAILED,
    DESC_PENDING,
    DESC_RUNNING,
    DESIRED_EVICT,
    DESIRED_RUN,
    DESIRED_STATUSES,
    DESIRED_STOP,
    TASK_DEAD,
    TASK_PENDING,
    TASK_RUNNING,
    is_client_terminal,
    is_server_terminal,
)

PENDING = TaskState(state=TASK_PENDING)
RUNNING = TaskState(state=TASK_RUNNING)
COMPLETE = TaskState(state=TASK_DEAD)
FAILED = TaskState(state=TASK_DEAD, failed=True)

DESCRIPTIONS = {
    CLIENT_FAILED: DESC_FAILED,
    CLIENT_RUNNING: DESC_RUNNING,
    CLIENT_PENDING: DESC_PENDING,
    CLIENT_COMPLETE: DESC_COMPLETE,
    "": "",
}


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([], ""),
        ([PENDING], CLIENT_PENDING),
        ([RUNNING], CLIENT_RUNNING),
        ([COMPLETE], CLIENT_COMPLETE),
        ([FAILED], CLIENT_FAILED),
        # a failed task wins over everything, even a running sibling
        ([RUNNING, FAILED, PENDING], CLIENT_FAILED),
        ([COMPLETE, FAILED], CLIENT_FAILED),
        # running wins over pending and complete
        ([PENDING, RUNNING, COMPLETE], CLIENT_RUNNING),
        # pending wins over complete: a poststop task not yet started keeps it pending
        ([COMPLETE, PENDING], CLIENT_PENDING),
        ([COMPLETE, COMPLETE], CLIENT_COMPLETE),
    ],
)
def test_nomads_rule(states: list[TaskState], expected: str) -> None:
    assert client_status_from_task_states(states) == (expected, DESCRIPTIONS[expected])


def test_failed_counts_only_once_the_task_is_dead() -> None:
    # `failed` is sticky, but a task restarted after a failure is running again.
    restarted = TaskState(state=TASK_RUNNING, failed=True)
    waiting = TaskState(state=TASK_PENDING, failed=True)
    assert client_status_from_task_states([restarted]) == (CLIENT_RUNNING, DESC_RUNNING)
    assert client_status_from_task_states([waiting, COMPLETE]) == (CLIENT_PENDING, DESC_PENDING)


def test_unknown_task_states_count_for_nothing() -> None:
    odd = TaskState(state="unknown")
    assert client_status_from_task_states([odd]) == ("", "")
    assert client_status_from_task_states([odd, COMPLETE]) == (CLIENT_COMPLETE, DESC_COMPLETE)


def test_a_mapping_is_read_by_its_values() -> None:
    by_name = {"web": RUNNING, "init": COMPLETE}
    assert client_status_from_task_states(by_name) == client_status_from_task_states(
        list(by_name.values())
    )


def test_any_iterable_is_read_once() -> None:
    assert client_status_from_task_states(iter([FAILED, RUNNING]))[0] == CLIENT_FAILED


# --- the rule as a property -----------------------------------------------------------

task_states = st.builds(
    TaskState,
    state=st.sampled_from((TASK_PENDING, TASK_RUNNING, TASK_DEAD)),
    failed=st.booleans(),
)


def expected_status(states: list[TaskState]) -> str:
    """The rule stated as a ranking: the highest-ranked kind of task decides."""
    ranks = {CLIENT_COMPLETE: 1, CLIENT_PENDING: 2, CLIENT_RUNNING: 3, CLIENT_FAILED: 4}
    kinds = []
    for state in states:
        if state.state == TASK_DEAD:
            kinds.append(CLIENT_FAILED if state.failed else CLIENT_COMPLETE)
        elif state.state == TASK_RUNNING:
            kinds.append(CLIENT_RUNNING)
        else:
            kinds.append(CLIENT_PENDING)
    return max(kinds, key=ranks.__getitem__, default="")


@given(st.lists(task_states, max_size=8))
def test_the_highest_ranked_task_decides(states: list[TaskState]) -> None:
    status, description = client_status_from_task_states(states)
    assert status == expected_status(states)
    assert description == DESCRIPTIONS[status]


@given(st.lists(task_states, max_size=8), st.randoms(use_true_random=False))
def test_the_order_of_tasks_does_not_matter(states: list[TaskState], rnd) -> None:
    shuffled = list(states)
    rnd.shuffle(shuffled)
    assert client_status_from_task_states(shuffled) == client_status_from_task_states(states)


@given(st.lists(task_states, min_size=1, max_size=8))
def test_a_failed_dead_task_always_fails_the_alloc(states: list[TaskState]) -> None:
    assert client_status_from_task_states([*states, FAILED])[0] == CLIENT_FAILED


@given(st.lists(task_states, max_size=8))
def test_the_status_is_never_lost(states: list[TaskState]) -> None:
    # `lost` is the server's verdict on a node, never derived from task states.
    assert client_status_from_task_states(states)[0] != CLIENT_LOST


# --- strings and predicates -------------------------------------------------------------


def test_nomads_status_strings() -> None:
    assert CLIENT_STATUSES == ("pending", "running", "complete", "failed", "lost")
    assert DESIRED_STATUSES == ("run", "stop", "evict")
    assert (TASK_PENDING, TASK_RUNNING, TASK_DEAD) == ("pending", "running", "dead")


@pytest.mark.parametrize("status", CLIENT_STATUSES)
def test_client_terminal(status: str) -> None:
    assert is_client_terminal(status) == (status in ("complete", "failed", "lost"))


@pytest.mark.parametrize("status", [*DESIRED_STATUSES, ""])
def test_server_terminal(status: str) -> None:
    assert is_server_terminal(status) == (status in (DESIRED_STOP, DESIRED_EVICT))
    assert not is_server_terminal(DESIRED_RUN)


def test_all_lists_every_public_name_once() -> None:
    public = {
        name
        for name, value in vars(status_module).items()
        if not name.startswith("_") and (name.isupper() or callable(value))
    }
    public -= {"TYPE_CHECKING", "Iterable", "Mapping"}
    assert sorted(status_module.__all__) == sorted(public)
    assert len(set(status_module.__all__)) == len(status_module.__all__)
