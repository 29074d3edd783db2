"""`place_job` on its own: feasibility order, resource accounting, failures per group, and
what a destructive update does when its replacement cannot be placed."""

from __future__ import annotations

import attrs

from allocrunner.agent.placement import (
    NodeView,
    PortGrants,
    group_port_asks,
    place_job,
)
from allocrunner.placement import AllocatedPort, Capacity
from allocrunner.structs import FrozenDict, Job, Resources, Task, TaskGroup
from allocrunner.structs.job import Constraint, NetworkResource, Port

NODE = NodeView(
    node_vars=FrozenDict(
        {"attr.kernel.name": "linux", "attr.driver.raw_exec": "1", "node.datacenter": "dc1"}
    ),
    capacity=Capacity(cpu_mhz=1000, memory_mb=1000, disk_mb=10_000),
    datacenter="dc1",
)


def _job(
    job_id: str = "j",
    *,
    count: int = 1,
    memory: int = 100,
    driver: str = "raw_exec",
    constraints: tuple[Constraint, ...] = (),
    group_constraints: tuple[Constraint, ...] = (),
    networks: tuple[NetworkResource, ...] = (),
) -> Job:
    task = Task(name="t", driver=driver, resources=Resources(cpu=100, memory_mb=memory))
    group = TaskGroup(
        name="g", tasks=(task,), count=count, constraints=group_constraints, networks=networks
    )
    return Job(id=job_id, type="service", task_groups=(group,), constraints=constraints)


def _place(job: Job, existing=(), node_allocs=(), grants: PortGrants | None = None):
    return place_job(
        job,
        tuple(existing),
        index=10,
        node_id="n",
        eval_id="e",
        node_allocs=tuple(node_allocs),
        node=NODE,
        grants=grants,
    )


def test_job_constraints_come_before_drivers_and_group_constraints() -> None:
    windows = Constraint("${attr.kernel.name}", "windows", "=")
    job = _job(driver="docker", constraints=(windows,), group_constraints=(windows,))
    failure = _place(job).failed["g"]
    assert failure.filtered is not None and failure.filtered.reason == str(windows)
    assert _place(_job(driver="docker")).failed["g"].filtered.reason == "missing drivers"  # type: ignore[union-attr]


def test_memory_is_counted_across_the_group_and_the_live_allocations() -> None:
    placed = _place(_job(count=4, memory=300))
    assert len(placed.created) == 3
    failure = placed.failed["g"]
    assert failure.exhausted == "memory" and failure.count == 1
    metric = failure.metric_json()
    assert metric["DimensionExhausted"] == {"memory": 1}
    assert metric["NodesAvailable"] == {"dc1": 1}
    other = _place(_job("other", memory=200), node_allocs=placed.created)
    assert other.failed["g"].exhausted == "memory"


def test_allocations_free_their_resources_once_their_client_status_is_terminal() -> None:
    """As Nomad's ProposedAllocs (v1.6): a stopped allocation still shutting down
    keeps its resources; one whose client status is terminal frees them."""
    placed = _place(_job(count=3, memory=300))
    stopping = [attrs.evolve(a, desired_status="stop") for a in placed.created]
    assert _place(_job("other", memory=900), node_allocs=stopping).failed["g"].exhausted == (
        "memory"
    )
    ended = [attrs.evolve(a, client_status="complete") for a in stopping]
    assert not _place(_job("other", memory=900), node_allocs=ended).failed


def test_distinct_hosts_admits_one_allocation_of_the_job() -> None:
    job = _job(count=2, constraints=(Constraint("", "", "distinct_hosts"),))
    placed = _place(job)
    assert len(placed.created) == 1
    assert placed.failed["g"].filtered.reason == "distinct_hosts"  # type: ignore[union-attr]


def test_a_failed_replacement_keeps_the_old_allocation_running() -> None:
    first = _place(_job(memory=100)).created
    bigger = _job(memory=5000)
    placed = _place(bigger, existing=first, node_allocs=first)
    assert placed.created == ()
    assert placed.changed == ()  # the stop of the old allocation is taken back
    assert placed.failed["g"].exhausted == "memory"


def test_ports_come_from_the_grants_and_a_refusal_fails_the_group() -> None:
    network = NetworkResource(reserved_ports=(Port("http", 8080),), dynamic_ports=(Port("db"),))
    job = _job(networks=(network,))
    assert [a.label for a in group_port_asks(job.task_groups[0])] == ["http", "db"]
    dry = _place(job)
    [alloc] = dry.created
    assert alloc.allocated_ports == ()
    ports = (AllocatedPort("http", 8080), AllocatedPort("db", 23456))
    granted = PortGrants(ids=FrozenDict({("g", 0): alloc.id}), ports=FrozenDict({alloc.id: ports}))
    [placed] = _place(job, grants=granted).created
    assert placed.id == alloc.id and placed.allocated_ports == ports
    refused = PortGrants(
        ids=FrozenDict({("g", 0): alloc.id}),
        refused=FrozenDict({alloc.id: "network: reserved port collision http=8080"}),
    )
    failure = _place(job, grants=refused).failed["g"]
    assert failure.metric_json()["DimensionExhausted"] == {
        "network: reserved port collision http=8080": 1
    }


def test_without_a_node_nothing_is_checked() -> None:
    job = _job(driver="docker", memory=10**9)
    placed = place_job(job, (), index=1, node_id="n", eval_id="e")
    assert len(placed.created) == 1 and not placed.failed


def test_only_blocked_evaluations_short_of_capacity_are_retried() -> None:
    from allocrunner.agent import cluster_state
    from allocrunner.agent.cluster_state import ClusterState, blocked_evals, register_job

    windows = Constraint("${attr.kernel.name}", "windows", "=")
    state = ClusterState()
    for job in (_job("win", group_constraints=(windows,)), _job("big", memory=5000)):
        change, _ = register_job(state, job, node_id="n", eval_id=f"eval-{job.id}", node=NODE)
        state = cluster_state.with_events(change)
    blocked = {state.evals[i].job_id for i in blocked_evals(state)}
    assert blocked == {"big"}
    statuses = sorted((e.job_id, e.status) for e in state.evals.values())
    assert statuses == [
        ("big", "blocked"),
        ("big", "complete"),
        ("win", "blocked"),
        ("win", "complete"),
    ]


def test_failures_and_queued_counts_outlive_a_restart(tmp_path) -> None:
    from allocrunner.agent.cluster_persist import read_state, write_state
    from allocrunner.agent.cluster_state import ClusterState, register_job, with_events

    change, _ = register_job(ClusterState(), _job("big", count=2, memory=600), **_REGISTER)
    state = with_events(change)
    write_state(tmp_path / "state.json", state)
    restored = read_state(tmp_path / "state.json")
    assert restored.queued == {"default/big": {"g": 1}}
    assert {e.id: e.to_api() for e in restored.evals.values()} == {
        e.id: e.to_api() for e in state.evals.values()
    }
    [blocked] = [e for e in restored.evals.values() if e.status == "blocked"]
    assert blocked.waits_for_capacity()


_REGISTER = {"node_id": "n", "eval_id": "e1", "node": NODE}


def test_a_job_places_only_where_one_of_its_datacenters_matches() -> None:
    for datacenters in (("*",), ("dc1",), ("dc*",), ("us-east", "d*1"), ("*c*",)):
        job = attrs.evolve(_job(count=2), datacenters=datacenters)
        placed = _place(job)
        assert len(placed.created) == 2 and not placed.failed, datacenters


def test_a_node_outside_the_jobs_datacenters_is_not_evaluated() -> None:
    """Nomad's readyNodesInDCs: no node of the node's datacenter is ready for the job,
    so none is evaluated and each datacenter it asked for shows 0 available."""
    job = attrs.evolve(_job(count=2), datacenters=("us-east", "eu-*"))
    placed = _place(job)
    assert placed.created == ()
    failure = placed.failed["g"]
    assert failure.count == 2
    metric = failure.metric_json()
    assert metric["NodesEvaluated"] == 0
    assert metric["NodesAvailable"] == {"us-east": 0, "eu-*": 0}
    assert metric["ConstraintFiltered"] is None and metric["DimensionExhausted"] is None
    assert metric["CoalescedFailures"] == 1


def test_a_replacement_outside_the_datacenters_keeps_the_old_allocation() -> None:
    job = _job()
    [old] = _place(job).created
    moved = attrs.evolve(job, datacenters=("elsewhere",), version=1)
    moved = attrs.evolve(
        moved,
        task_groups=(attrs.evolve(moved.task_groups[0], meta=FrozenDict({"v": "2"})),),
    )
    placed = _place(moved, existing=(old,), node_allocs=(old,))
    assert placed.created == ()
    assert all(a.id != old.id or a.desired_status == "run" for a in placed.changed)


def test_an_outside_failure_survives_the_evaluation_json() -> None:
    from allocrunner.agent.evaluations import _failure_from_api

    job = attrs.evolve(_job(), datacenters=("us-east",))
    failure = _place(job).failed["g"]
    assert _failure_from_api(failure.metric_json()) == failure
