"""AllocGarbageCollector: the queue (Nomad's TestIndexedGCAllocPQ), mark / collect /
collect_all, the threshold loop (TestAllocGarbageCollector_KeepUsageBelowThreshold)
with injected host stats and allocation counts, bounded parallel destroys, and the
``gc`` thread's start / trigger / stop."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocrunner.config import ClientConfig
from allocrunner.gc import AllocGarbageCollector, GCQueue, HostStats, statvfs_host_stats
from allocrunner.testing import assert_stays, wait_for

from .conftest import FakeRunner


def _config(tmp_path, **overrides) -> ClientConfig:
    return ClientConfig.for_data_dir(tmp_path, **overrides)


def _stats(disk: float = 0.0, inodes: float = 0.0):
    return lambda: HostStats(disk_used_percent=disk, inodes_used_percent=inodes)


def _live(runners):
    return lambda: sum(1 for r in runners if not r.is_destroyed())


def _make(fakes, teardowns, n, teardown=0.02, prefix="a"):
    made = [FakeRunner(f"{prefix}{i}", teardowns, teardown) for i in range(n)]
    fakes.extend(made)
    return made


@pytest.fixture
def collectors():
    made: list[AllocGarbageCollector] = []
    yield made
    for gc in made:
        assert gc.stop(10), "collector threads still alive"


# --- queue (item 83) ----------------------------------------------------------------------


def test_queue_pops_in_first_mark_order_and_ignores_duplicates():
    q = GCQueue()
    assert q.push("a", 1)
    assert q.push("b", 2)
    assert q.push("c", 3)
    assert not q.push("a", 99), "a second mark must not be accepted"
    assert len(q) == 3 and "b" in q
    assert q.ids() == ["a", "b", "c"]
    first = q.pop()
    assert (first.alloc_id, first.runner) == ("a", 1), "a keeps the place of its first mark"
    assert q.remove("b").runner == 2
    assert q.remove("b") is None
    assert [q.pop().alloc_id, q.pop()] == ["c", None]


def test_queue_pop_all_empties_oldest_first():
    q = GCQueue()
    for name in "xyz":
        q.push(name, name)
    assert [e.alloc_id for e in q.pop_all()] == ["x", "y", "z"]
    assert len(q) == 0 and q.pop() is None


def test_queue_rejects_a_bad_id():
    with pytest.raises(ValueError, match="alloc_id"):
        GCQueue().push("", object())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "pop", "remove"]), st.integers(0, 5))))
def test_queue_matches_a_list_model(ops):
    q = GCQueue()
    model: list[str] = []
    for op, n in ops:
        key = f"id{n}"
        if op == "push":
            assert q.push(key, n) == (key not in model)
            if key not in model:
                model.append(key)
        elif op == "pop":
            entry = q.pop()
            assert (entry.alloc_id if entry else None) == (model.pop(0) if model else None)
        else:
            entry = q.remove(key)
            assert (entry is not None) == (key in model)
            if key in model:
                model.remove(key)
        assert q.ids() == model


# --- mark / collect / collect_all (item 84) ------------------------------------------------


def test_mark_for_collection_is_idempotent(tmp_path, fakes, teardowns, collectors):
    gc = AllocGarbageCollector(_config(tmp_path), host_stats=_stats())
    collectors.append(gc)
    (a,) = _make(fakes, teardowns, 1)
    assert gc.mark_for_collection(a.id, a)
    assert not gc.mark_for_collection(a.id, a)
    assert gc.is_marked(a.id) and len(gc) == 1


def test_collect_destroys_and_removes(tmp_path, fakes, teardowns, collectors):
    gc = AllocGarbageCollector(_config(tmp_path), host_stats=_stats())
    collectors.append(gc)
    a, b = _make(fakes, teardowns, 2)
    gc.mark_for_collection(a.id, a)
    gc.mark_for_collection(b.id, b)
    assert gc.collect(a.id)
    assert a.is_destroyed(), "collect returns only once the runner is destroyed"
    assert not b.destroy_launched()
    assert gc.queued() == [b.id]
    assert not gc.collect(a.id), "already garbage collected"
    assert not gc.collect("never-marked")


def test_collect_async_returns_at_once(tmp_path, fakes, teardowns, collectors):
    gc = AllocGarbageCollector(_config(tmp_path), host_stats=_stats())
    collectors.append(gc)
    (a,) = _make(fakes, teardowns, 1, teardown=None)
    gc.mark_for_collection(a.id, a)
    assert gc.collect_async(a.id)
    assert not gc.collect_async(a.id)
    wait_for(lambda: _assert(a.destroy_launched(), "destroy not launched"))
    assert not a.is_destroyed()
    a.finish()
    wait_for(lambda: _assert(a.is_destroyed(), "not destroyed"))


def test_collect_all_empties_the_queue_with_bounded_parallelism(
    tmp_path, fakes, teardowns, collectors
):
    gc = AllocGarbageCollector(_config(tmp_path, gc_parallel_destroys=3), host_stats=_stats())
    collectors.append(gc)
    runners = _make(fakes, teardowns, 10, teardown=0.03)
    for r in runners:
        gc.mark_for_collection(r.id, r)
    assert gc.collect_all() == 10
    assert len(gc) == 0
    assert all(r.is_destroyed() for r in runners)
    assert teardowns.peak == 3, f"peak {teardowns.peak} destroys at once, limit 3"
    assert gc.max_parallel_destroys_seen() == 3
    assert gc.collect_all() == 0


def _assert(cond, message):
    assert cond, message


# --- threshold loop (item 85) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "disk", "inodes", "live", "max_allocs", "marked", "destroyed"),
    [
        ("below every threshold", 50.0, 50.0, 5, 10, 3, 0),
        ("disk over: collects all marked", 85.0, 10.0, 3, 10, 3, 3),
        ("inodes over: collects all marked", 10.0, 75.0, 3, 10, 2, 2),
        ("at the disk threshold is not over", 80.0, 70.0, 3, 10, 3, 0),
        ("max allocs: stops when below", 10.0, 10.0, 8, 5, 6, 3),
        ("max allocs: at the limit is not over", 10.0, 10.0, 5, 5, 5, 0),
        ("max allocs: more needed than marked", 10.0, 10.0, 9, 2, 3, 3),
    ],
)
def test_keep_usage_below_threshold(
    tmp_path, fakes, teardowns, collectors, name, disk, inodes, live, max_allocs, marked, destroyed
):
    runners = _make(fakes, teardowns, live)
    gc = AllocGarbageCollector(
        _config(tmp_path, gc_max_allocs=max_allocs),
        # Constant disk/inode use: once over, every marked alloc goes.
        host_stats=_stats(disk, inodes),
        num_allocs=_live(runners),
    )
    collectors.append(gc)
    for r in runners[:marked]:
        gc.mark_for_collection(r.id, r)
    gc.keep_usage_below_threshold()
    assert [r.id for r in runners if r.is_destroyed()] == [r.id for r in runners[:destroyed]], name
    assert teardowns.order == [r.id for r in runners[:destroyed]], "oldest first"
    assert len(gc) == marked - destroyed


def test_disk_pressure_stops_when_usage_drops_below(tmp_path, fakes, teardowns, collectors):
    runners = _make(fakes, teardowns, 6)

    def stats():
        # Each live allocation holds 10 % of the disk.
        return HostStats(disk_used_percent=30.0 + 10 * _live(runners)(), inodes_used_percent=1.0)

    gc = AllocGarbageCollector(
        _config(tmp_path, gc_parallel_destroys=4), host_stats=stats, num_allocs=_live(runners)
    )
    collectors.append(gc)
    for r in runners:
        gc.mark_for_collection(r.id, r)
    gc.keep_usage_below_threshold()
    # 90 % with 6 live; 80 % (not over) with 5: exactly one destroy, never popped ahead.
    assert [r.id for r in runners if r.is_destroyed()] == [runners[0].id]
    assert teardowns.peak == 1, "a disk reason waits for each destroy before re-checking"
    assert len(gc) == 5


def test_nothing_to_collect_is_logged(tmp_path, collectors, caplog):
    gc = AllocGarbageCollector(_config(tmp_path), host_stats=_stats(disk=99.0))
    collectors.append(gc)
    with caplog.at_level(logging.INFO, logger="allocrunner.gc"):
        assert gc.keep_usage_below_threshold() == 0
    assert "no terminal allocations" in caplog.text


def test_max_allocs_destroys_in_parallel_within_the_limit(tmp_path, fakes, teardowns, collectors):
    runners = _make(fakes, teardowns, 12, teardown=0.05)
    gc = AllocGarbageCollector(
        _config(tmp_path, gc_parallel_destroys=2, gc_max_allocs=2),
        host_stats=_stats(),
        num_allocs=_live(runners),
    )
    collectors.append(gc)
    for r in runners:
        gc.mark_for_collection(r.id, r)
    assert gc.keep_usage_below_threshold() == 10
    assert sum(r.is_destroyed() for r in runners) == 10
    assert teardowns.peak == 2, f"peak {teardowns.peak} destroys at once, limit 2"
    assert gc.max_parallel_destroys_seen() == 2
    assert gc.queued() == [runners[10].id, runners[11].id]


def test_parallel_destroys_below_one_means_one(tmp_path, fakes, teardowns, collectors):
    runners = _make(fakes, teardowns, 4)
    gc = AllocGarbageCollector(
        _config(tmp_path, gc_parallel_destroys=0, gc_max_allocs=0),
        host_stats=_stats(),
        num_allocs=_live(runners),
    )
    collectors.append(gc)
    for r in runners:
        gc.mark_for_collection(r.id, r)
    assert gc.keep_usage_below_threshold() == 4
    assert teardowns.peak == 1


def test_host_stats_error_aborts_the_pass(tmp_path, fakes, teardowns, collectors, caplog):
    def broken():
        raise OSError("statvfs failed")

    gc = AllocGarbageCollector(_config(tmp_path), host_stats=broken)
    collectors.append(gc)
    (a,) = _make(fakes, teardowns, 1)
    gc.mark_for_collection(a.id, a)
    with caplog.at_level(logging.ERROR, logger="allocrunner.gc"):
        assert gc.keep_usage_below_threshold() == 0
    assert "host stats" in caplog.text
    assert gc.is_marked(a.id)


def test_statvfs_host_stats_creates_the_dir(tmp_path):
    where = tmp_path / "missing" / "alloc"
    stats = statvfs_host_stats(where)
    assert where.is_dir()
    assert 0.0 <= stats.disk_used_percent <= 100.0
    assert 0.0 <= stats.inodes_used_percent <= 100.0


def test_default_host_stats_read_the_alloc_dir(tmp_path, collectors):
    config = _config(tmp_path, gc_disk_usage_threshold=100.0, gc_inode_usage_threshold=100.0)
    gc = AllocGarbageCollector(config)
    collectors.append(gc)
    assert gc.keep_usage_below_threshold() == 0
    assert (tmp_path / "alloc").is_dir()


# --- the gc thread ------------------------------------------------------------------------


def test_trigger_runs_a_pass_on_the_gc_thread(tmp_path, fakes, teardowns, collectors):
    runners = _make(fakes, teardowns, 3)
    gc = AllocGarbageCollector(
        _config(tmp_path, gc_interval=3600.0, gc_max_allocs=1),
        host_stats=_stats(),
        num_allocs=_live(runners),
    )
    collectors.append(gc)
    gc.start()
    with pytest.raises(RuntimeError, match="already started"):
        gc.start()
    gc.mark_for_collection(runners[0].id, runners[0])
    assert_stays(lambda: _assert(not runners[0].destroy_launched(), "collected untriggered"), 0.1)
    gc.trigger()
    wait_for(lambda: _assert(runners[0].is_destroyed(), "trigger did not collect"))
    assert gc.stop()
    assert gc.stop(), "stop is idempotent"


def test_interval_runs_a_pass(tmp_path, fakes, teardowns, collectors):
    runners = _make(fakes, teardowns, 2)
    gc = AllocGarbageCollector(
        _config(tmp_path, gc_interval=0.02, gc_max_allocs=1),
        host_stats=_stats(),
        num_allocs=_live(runners),
    )
    collectors.append(gc)
    gc.start()
    gc.mark_for_collection(runners[1].id, runners[1])
    wait_for(lambda: _assert(runners[1].is_destroyed(), "interval did not collect"))


def test_trigger_never_blocks_on_a_slow_destroy(tmp_path, fakes, teardowns, collectors):
    runners = _make(fakes, teardowns, 3, teardown=None)
    gc = AllocGarbageCollector(
        _config(tmp_path, gc_interval=3600.0, gc_max_allocs=0),
        host_stats=_stats(),
        num_allocs=_live(runners),
    )
    collectors.append(gc)
    gc.start()
    for r in runners:
        gc.mark_for_collection(r.id, r)
    started = time.monotonic()
    for _ in range(100):
        gc.trigger()
    assert time.monotonic() - started < 0.5
    wait_for(lambda: _assert(teardowns.active == 2, f"{teardowns.active} destroys in flight"))
    assert_stays(lambda: _assert(teardowns.peak == 2, "over the parallel limit"), 0.1)
    for r in runners:
        r.finish()
    wait_for(lambda: _assert(all(r.is_destroyed() for r in runners), "not all destroyed"))


def test_stop_does_not_hang_on_a_destroy_in_flight(tmp_path, fakes, teardowns, collectors):
    runners = _make(fakes, teardowns, 1, teardown=None)
    gc = AllocGarbageCollector(
        _config(tmp_path, gc_interval=3600.0, gc_max_allocs=0),
        host_stats=_stats(),
        num_allocs=_live(runners),
    )
    gc.start()
    gc.mark_for_collection(runners[0].id, runners[0])
    gc.trigger()
    wait_for(lambda: _assert(runners[0].destroy_launched(), "destroy not launched"))
    started = time.monotonic()
    assert gc.stop(5)
    assert time.monotonic() - started < 2.0
    assert not runners[0].is_destroyed(), "the destroy itself goes on"


def test_collect_after_stop_launches_without_waiting(tmp_path, fakes, teardowns):
    gc = AllocGarbageCollector(_config(tmp_path), host_stats=_stats())
    (a,) = _make(fakes, teardowns, 1, teardown=None)
    gc.mark_for_collection(a.id, a)
    assert gc.stop()
    assert gc.collect(a.id)
    assert a.destroy_launched() and not a.is_destroyed()


def test_concurrent_collect_of_one_alloc_destroys_once(tmp_path, fakes, teardowns, collectors):
    gc = AllocGarbageCollector(_config(tmp_path), host_stats=_stats())
    collectors.append(gc)
    (a,) = _make(fakes, teardowns, 1)
    gc.mark_for_collection(a.id, a)
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(gc.collect(a.id)), name=f"collect-{n}")
        for n in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [False, False, False, True]
    assert a.destroy_calls == 1 and a.is_destroyed()


def test_collect_all_destroys_real_runners(tmp_path, collectors):
    from allocrunner.drivers import MockDriver
    from allocrunner.runner.alloc_runner import AllocRunner
    from allocrunner.state import MemDB
    from allocrunner.testing import mock_alloc, mock_job, mock_task

    config = _config(tmp_path, max_kill_timeout=5.0, kill_retry_base=0.05)
    driver = MockDriver()
    db = MemDB()
    gc = AllocGarbageCollector(config, host_stats=_stats())
    collectors.append(gc)
    runners = []
    try:
        for _ in range(3):
            job = mock_job(mock_task("t", config={"run_for": "10ms"}), job_type="batch")
            ar = AllocRunner(
                mock_alloc(job=job), config, state_db=db, drivers={"mock_driver": driver}
            )
            runners.append(ar)
            ar.start()
        for ar in runners:
            assert ar.wait(10)
            assert ar.alloc_state().client_status == "complete", ar.id
            gc.mark_for_collection(ar.id, ar)
        dirs = [ar.alloc_dir.path for ar in runners]
        assert all(d.is_dir() for d in dirs)
        assert gc.collect(runners[0].id)
        assert runners[0].is_destroyed() and not dirs[0].exists()
        assert gc.collect_all() == 2
        assert all(ar.is_destroyed() for ar in runners)
        assert not any(d.exists() for d in dirs)
        assert db.all_allocations() == []
    finally:
        for ar in runners:
            ar.destroy()
            assert ar.wait_destroyed(10)
            assert ar.close(10)
        driver.close()


def test_mark_is_mark_for_collection(tmp_path, fakes, teardowns, collectors):
    gc = AllocGarbageCollector(_config(tmp_path), host_stats=_stats())
    collectors.append(gc)
    (a,) = _make(fakes, teardowns, 1)
    assert gc.mark(a.id, a)
    assert not gc.mark_for_collection(a.id, a)
    assert gc.queued() == [a.id]
