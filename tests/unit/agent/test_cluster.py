"""The one-node cluster's store on its own: indexes, placement on register, forgetting."""

from __future__ import annotations

import pytest

from allocrunner.agent import cluster_state
from allocrunner.agent.cluster import Cluster
from allocrunner.structs import Job, Task, TaskGroup


def _job(job_id: str, *, parent: str = "", stop: bool = False, count: int = 1) -> Job:
    task = Task(name="t", driver="mock_driver", config={"run_for": "1s"})
    group = TaskGroup(name="g", tasks=(task,), count=count)
    return Job(id=job_id, type="batch", task_groups=(group,), parent_id=parent, stop=stop)


@pytest.fixture
def store(tmp_path):
    pushed: list[tuple[int, int]] = []
    c = Cluster(
        tmp_path,
        "node-1",
        lambda allocs, index: pushed.append((len(allocs), index)),
        lambda alloc_id: False,
    )
    c.load()
    c.start()
    yield c, pushed
    c.close()


def test_register_places_every_group_times_count_and_pushes_the_set(store):
    cluster, pushed = store
    result = cluster.register(_job("web", count=3))
    state = cluster.state()
    allocs = state.job_allocs("web")
    assert sorted(a.name for a in allocs) == ["web.g[0]", "web.g[1]", "web.g[2]"]
    assert {a.create_index for a in allocs} == {result.index} == {state.alloc_index}
    assert pushed[-1] == (3, result.index)


def test_indexes_only_grow(store):
    cluster, _ = store
    seen = [cluster.state().index]
    for n in range(5):
        cluster.register(_job(f"j{n}"))
        seen.append(cluster.state().index)
    cluster.deregister("j0", purge=True)
    seen.append(cluster.state().index)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_old_evaluations_are_forgotten(store, monkeypatch):
    cluster, _ = store
    monkeypatch.setattr(cluster_state, "EVAL_LIMIT", 5)
    for n in range(8):
        cluster.register(_job("same", stop=n % 2 == 1))
    evals = cluster.state().evals
    assert len(evals) == 5
    assert min(e.create_index for e in evals.values()) > 3


def test_finished_children_beyond_the_limit_are_forgotten_with_their_allocations(
    store, monkeypatch
):
    cluster, _ = store
    monkeypatch.setattr(cluster_state, "DEAD_CHILDREN_KEPT", 3)
    cluster.register(_job("live-child", parent="p"))
    for n in range(6):
        cluster.register(_job(f"p/periodic-{n}", parent="p", stop=True))
    state = cluster.state()
    children = sorted(j.id for j in state.jobs.values() if j.parent_id == "p")
    assert children == ["live-child", "p/periodic-3", "p/periodic-4", "p/periodic-5"]
    assert {a.job_id for a in state.allocs.values()} <= {"live-child", *children}
