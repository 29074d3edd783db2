"""Allocation, AllocState and new_allocation: derived properties, evolve, validation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocrunner.structs import (
    Allocation,
    AllocDeploymentStatus,
    AllocState,
    DesiredTransition,
    FrozenDict,
    Job,
    Task,
    TaskGroup,
    TaskState,
    new_allocation,
)
from allocrunner.structs.status import CLIENT_STATUSES, DESIRED_STATUSES
from tests.unit.jobspec import strategies as s


def two_group_job() -> Job:
    task = Task(name="t", driver="mock_driver")
    groups = [TaskGroup(name="web", tasks=[task]), TaskGroup(name="db", tasks=[task])]
    return Job(id="shop", namespace="prod", type="batch", task_groups=groups)


def test_defaults_are_a_pending_run() -> None:
    alloc = Allocation(id="a")
    assert (alloc.desired_status, alloc.client_status, alloc.namespace) == (
        "run",
        "pending",
        "default",
    )
    assert alloc.task_states == {} and isinstance(alloc.task_states, FrozenDict)
    assert alloc.desired_transition == DesiredTransition()
    assert alloc.job is None and alloc.group() is None and alloc.deployment_status is None
    state = AllocState()
    assert (state.client_status, state.client_description, state.task_states) == (
        "pending",
        "",
        {},
    )


def test_group_is_looked_up_in_the_job() -> None:
    job = two_group_job()
    alloc = Allocation(id="a", job=job, task_group="db")
    assert alloc.group() is job.task_groups[1]
    assert attrs.evolve(alloc, task_group="gone").group() is None


@pytest.mark.parametrize("desired", DESIRED_STATUSES)
@pytest.mark.parametrize("client", CLIENT_STATUSES)
def test_terminal_is_either_side(desired: str, client: str) -> None:
    alloc = Allocation(id="a", desired_status=desired, client_status=client)
    assert alloc.server_terminal() == (desired in ("stop", "evict"))
    assert alloc.client_terminal() == (client in ("complete", "failed", "lost"))
    assert alloc.terminal() == (alloc.server_terminal() or alloc.client_terminal())


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("shop.web[3]", 3),
        ("shop.web[0]", 0),
        ("a[1].b[12]", 12),
        ("shop.web", 0),
        ("shop.web[x]", 0),
        ("shop.web[3]x", 0),
        ("", 0),
    ],
)
def test_index_comes_from_the_name(name: str, index: int) -> None:
    assert Allocation(id="a", name=name).index() == index


def test_task_states_are_frozen_through_evolve() -> None:
    alloc = Allocation(id="a", task_states={"t": TaskState()})
    assert isinstance(alloc.task_states, FrozenDict)
    changed = attrs.evolve(alloc, task_states={"t": TaskState(state="dead")})
    assert isinstance(changed.task_states, FrozenDict)
    assert alloc.task_states["t"].state == "pending"
    with pytest.raises(TypeError):
        changed.task_states["u"] = TaskState()  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        changed.client_status = "failed"  # type: ignore[misc]
    assert isinstance(AllocState(task_states={"t": TaskState()}).task_states, FrozenDict)


def test_deployment_status() -> None:
    unknown = AllocDeploymentStatus()
    assert not unknown.has_health() and not unknown.is_healthy() and not unknown.is_unhealthy()
    healthy = AllocDeploymentStatus(healthy=True, timestamp=datetime(2024, 5, 1, tzinfo=UTC))
    assert healthy.has_health() and healthy.is_healthy() and not healthy.is_unhealthy()
    unhealthy = AllocDeploymentStatus(healthy=False)
    assert unhealthy.has_health() and unhealthy.is_unhealthy() and not unhealthy.is_healthy()
    with pytest.raises(ValueError, match="timezone-aware"):
        AllocDeploymentStatus(timestamp=datetime(2024, 5, 1))


@pytest.mark.parametrize(("migrate", "expected"), [(None, False), (False, False), (True, True)])
def test_desired_transition_migrate(migrate: bool | None, expected: bool) -> None:
    assert DesiredTransition(migrate=migrate).should_migrate() is expected


# --- new_allocation ----------------------------------------------------------------------


def test_new_allocation_places_a_group_as_a_scheduler_would() -> None:
    job = two_group_job()
    alloc = new_allocation(job, "db", index=2)
    uuid.UUID(alloc.id)
    assert alloc.name == "shop.db[2]" and alloc.index() == 2
    assert (alloc.namespace, alloc.job_id, alloc.job, alloc.task_group) == (
        "prod",
        "shop",
        job,
        "db",
    )
    assert (alloc.desired_status, alloc.client_status) == ("run", "pending")
    assert (alloc.create_index, alloc.modify_index, alloc.alloc_modify_index) == (1, 1, 1)
    assert alloc.previous_allocation == "" and alloc.task_states == {}
    assert alloc.group() is job.task_groups[1]


def test_new_allocation_ids_are_fresh() -> None:
    job = two_group_job()
    ids = {new_allocation(job, "web").id for _ in range(50)}
    assert len(ids) == 50


def test_previous_is_an_allocation_or_its_id() -> None:
    job = two_group_job()
    first = new_allocation(job, "web")
    assert new_allocation(job, "web", previous=first).previous_allocation == first.id
    assert new_allocation(job, "web", previous="abc").previous_allocation == "abc"
    assert new_allocation(job, "web", previous=None).previous_allocation == ""


def test_an_unknown_group_names_the_groups_there_are() -> None:
    with pytest.raises(KeyError, match=r"'cache'.*web, db"):
        new_allocation(two_group_job(), "cache")
    with pytest.raises(KeyError, match="groups: none"):
        new_allocation(Job(id="empty"), "web")


@given(st.integers(0, 10**6))
def test_the_index_round_trips_through_the_name(index: int) -> None:
    assert new_allocation(two_group_job(), "web", index=index).index() == index


@given(s.allocations)
def test_every_allocation_is_hashable_and_evolves_to_an_equal_copy(alloc: Allocation) -> None:
    copy = attrs.evolve(alloc, task_states=dict(alloc.task_states))
    assert copy == alloc and hash(copy) == hash(alloc)
    assert alloc.terminal() == (alloc.server_terminal() or alloc.client_terminal())
    stopped = attrs.evolve(alloc, desired_status="stop")
    assert stopped.server_terminal() and stopped.terminal()
    assert (stopped == alloc) == (alloc.desired_status == "stop")
