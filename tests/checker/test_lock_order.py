"""LOCK_ORDER tells the truth: declared locks are never nested except along the edges
listed in `NESTED_LOCKS`; some code path takes each listed edge (a test here drives
it and sees it recorded), and any other nesting raises at once in check mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from allocrunner import _locking
from allocrunner._locking import (
    LOCK_ORDER,
    NESTED_LOCKS,
    lock_rank,
    make_lock,
    make_rwlock,
    observed_nestings,
)
from allocrunner.agent.cluster import Cluster
from allocrunner.drivers import MockDriver, TaskConfig
from allocrunner.errors import LockOrderError
from allocrunner.structs import Job, Task, TaskGroup

pytestmark = pytest.mark.requires_lockcheck


def register_a_job(tmp_path: Path) -> None:
    """Cluster.register publishes the new state while holding the cluster lock."""
    task = Task(name="t", driver="mock_driver", config={"run_for": "1s"})
    job = Job(id="web", type="batch", task_groups=(TaskGroup(name="g", tasks=(task,)),))
    cluster = Cluster(tmp_path, "node-1", lambda allocs, index: None, lambda alloc_id: False)
    cluster.load()
    cluster.start()
    try:
        cluster.register(job)
    finally:
        cluster.close()


def signal_a_mock_task(tmp_path: Path) -> None:
    """The mock driver's table asks the task whether it still runs, under the table."""
    driver = MockDriver()
    try:
        config = TaskConfig(
            id="a/t", alloc_id="a", name="t", driver_config={"run_for": "1h"}, task_dir=""
        )
        driver.start(config)
        driver.signal(config.id, "SIGHUP")
        driver.stop(config.id, 0.0)
        driver.destroy(config.id)
    finally:
        driver.close()


# How a test makes the package take each listed edge.
EXERCISES: dict[tuple[str, str], Callable[[Path], None]] = {
    ("Cluster._lock", "AllocBroadcaster._lock"): register_a_job,
    ("Driver._lock", "MockTask._lock"): signal_a_mock_task,
}


def test_every_listed_edge_has_an_exercise() -> None:
    assert set(EXERCISES) == set(NESTED_LOCKS)


@pytest.mark.parametrize("edge", sorted(NESTED_LOCKS), ids=" -> ".join)
def test_a_listed_edge_goes_down_the_order(edge: tuple[str, str]) -> None:
    outer, inner = edge
    assert outer in LOCK_ORDER and inner in LOCK_ORDER
    assert lock_rank(outer) < lock_rank(inner)


@pytest.fixture
def fresh_record() -> Iterator[None]:
    with _locking._violations_lock:
        saved = set(_locking._nestings)
        _locking._nestings.clear()
    yield
    with _locking._violations_lock:
        _locking._nestings.update(saved)


@pytest.mark.parametrize("edge", sorted(NESTED_LOCKS), ids=" -> ".join)
def test_package_code_takes_each_listed_edge(
    edge: tuple[str, str], tmp_path: Path, fresh_record: None
) -> None:
    assert edge not in observed_nestings()
    EXERCISES[edge](tmp_path)
    assert edge in observed_nestings()


def test_an_unlisted_nesting_raises_even_in_rank_order() -> None:
    outer = make_rwlock("AllocRunner._state_lock")
    inner = make_lock("AllocRunner._alloc_lock")
    assert ("AllocRunner._state_lock", "AllocRunner._alloc_lock") not in NESTED_LOCKS
    with pytest.raises(LockOrderError, match="never nested"), outer.read(), inner:
        pass
    assert len(_locking.take_violations()) == 1


def test_an_inverted_nesting_raises() -> None:
    outer = make_lock("AllocBroadcaster._lock")
    inner = make_lock("Cluster._lock")
    with pytest.raises(LockOrderError, match="breaks LOCK_ORDER"), outer, inner:
        pass
    assert len(_locking.take_violations()) == 1


def test_every_declared_lock_is_made_by_the_package() -> None:
    from tests.test_lock_annotations import SOURCES, lock_names

    made = {name for tree in SOURCES.values() for _, name in lock_names(tree)}
    assert set(LOCK_ORDER) <= made, set(LOCK_ORDER) - made
