"""AllocGarbageCollector's destroy pool: a fixed set of `gc_parallel_destroys` worker
threads fed by a queue, never one thread per allocation; the bound holds for every way
of asking for a destroy; waits end on destroy-done or on stop, never by polling; stop
ends the loop and the workers even when a destroy never finishes."""

from __future__ import annotations

import threading

import pytest

from allocrunner._sync import ThreadGroup
from allocrunner.config import ClientConfig
from allocrunner.gc import AllocGarbageCollector, HostStats
from allocrunner.testing import assert_stays, wait_for

from .conftest import FakeRunner, LegacyFakeRunner, Teardowns

pytestmark = pytest.mark.timeout(60)


def _gc(tmp_path, **overrides) -> AllocGarbageCollector:
    return AllocGarbageCollector(
        ClientConfig.for_data_dir(tmp_path, **overrides),
        host_stats=lambda: HostStats(disk_used_percent=0.0, inodes_used_percent=0.0),
    )


def _make(fakes, teardowns, n, teardown=None, cls=FakeRunner) -> list[FakeRunner]:
    made = [cls(f"p{i:03d}", teardowns, teardown) for i in range(n)]
    fakes.extend(made)
    return made


def _gc_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gc" or t.name.startswith("gc-")]


def _destroy_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("gc-destroy"))


def _assert(cond: bool, message: str) -> None:
    assert cond, message


@pytest.fixture
def collectors():
    made: list[AllocGarbageCollector] = []
    yield made
    for gc in made:
        assert gc.stop(10), "collector threads still alive"


@pytest.mark.parametrize("how", ["collect_all", "collect_async", "collect"])
def test_200_allocations_use_a_fixed_pool_of_destroy_threads(
    tmp_path, fakes, teardowns: Teardowns, collectors, how
):
    gc = _gc(tmp_path, gc_parallel_destroys=4)
    collectors.append(gc)
    runners = _make(fakes, teardowns, 200)
    for r in runners:
        gc.mark_for_collection(r.id, r)
    callers = ThreadGroup("pool-callers")
    if how == "collect_all":
        callers.spawn("caller-all", gc.collect_all)
    elif how == "collect_async":
        for r in runners:
            assert gc.collect_async(r.id)
    else:
        for r in runners:
            callers.spawn(f"caller-{r.id}", gc.collect, r.id)

    # Every destroy is blocked: the pool is full and stays at its size.
    wait_for(lambda: _assert(teardowns.active == 4, f"{teardowns.active} destroys in flight"))
    pool = [f"gc-destroy-{n}" for n in range(4)]

    def bounded() -> None:
        assert _destroy_threads() == pool, f"destroy threads: {_destroy_threads()}"
        assert teardowns.active == 4 and teardowns.peak == 4, f"peak {teardowns.peak}"

    assert_stays(bounded, 0.2)
    # Let them go in order; the pool must stay the same four threads throughout.
    for r in runners:
        r.finish()
        assert len(_destroy_threads()) == 4
    wait_for(lambda: _assert(all(r.is_destroyed() for r in runners), "not all destroyed"))
    assert callers.join(30)
    assert teardowns.peak == 4, f"peak {teardowns.peak} destroys at once, limit 4"
    assert gc.max_parallel_destroys_seen() == 4
    assert len(gc) == 0
    assert _destroy_threads() == pool, "the pool outlives its work until stop"
    assert gc.stop(10)
    assert _destroy_threads() == []


def test_an_unused_collector_starts_no_thread(tmp_path, collectors):
    before = _gc_threads()
    gc = _gc(tmp_path, gc_parallel_destroys=3)
    collectors.append(gc)
    gc.mark_for_collection("x", object())  # type: ignore[arg-type]
    assert _gc_threads() == before
    assert gc.stop(10)
    assert _gc_threads() == before


def test_start_runs_the_loop_and_the_pool_and_stop_ends_them(tmp_path, fakes, teardowns):
    gc = _gc(tmp_path, gc_parallel_destroys=3, gc_interval=3600.0)
    gc.start()
    names = sorted(t.name for t in _gc_threads())
    assert names == ["gc", "gc-destroy-0", "gc-destroy-1", "gc-destroy-2"]
    (a,) = _make(fakes, teardowns, 1, teardown=0.01)
    gc.mark_for_collection(a.id, a)
    assert gc.collect(a.id) and a.is_destroyed()
    assert gc.stop(10)
    assert _gc_threads() == [], f"still alive: {_gc_threads()}"
    assert gc.stop(10), "stop is idempotent"


def test_a_destroy_blocked_forever_does_not_block_stop(tmp_path, fakes, teardowns):
    gc = _gc(tmp_path, gc_parallel_destroys=2, gc_interval=3600.0, gc_max_allocs=0)
    gc.start()
    runners = _make(fakes, teardowns, 5)  # teardown None: never ends until finish()
    for r in runners:
        gc.mark_for_collection(r.id, r)
    callers = ThreadGroup("blocked-callers")
    one: list[bool] = []
    rest: list[int] = []
    callers.spawn("caller-one", lambda: one.append(gc.collect(runners[0].id)))
    wait_for(lambda: _assert(runners[0].destroy_launched(), "first destroy not launched"))
    callers.spawn("caller-rest", lambda: rest.append(gc.collect_all()))
    wait_for(lambda: _assert(teardowns.active == 2, f"{teardowns.active} in flight"))
    assert_stays(lambda: _assert(one == [] and rest == [], "a caller returned early"), 0.05)

    assert gc.stop(10), "a blocked destroy held stop"
    assert _gc_threads() == []
    assert callers.join(10), "a caller is still waiting after stop"
    assert one == [True] and rest == [4]
    # The destroys go on: those in flight and those still queued were all launched.
    assert all(r.destroy_launched() for r in runners)
    assert not any(r.is_destroyed() for r in runners)


def test_stop_wakes_a_threshold_pass_waiting_for_its_destroys(tmp_path, fakes, teardowns):
    runners = _make(fakes, teardowns, 6)
    gc = AllocGarbageCollector(
        ClientConfig.for_data_dir(tmp_path, gc_parallel_destroys=2, gc_max_allocs=0),
        host_stats=lambda: HostStats(disk_used_percent=0.0, inodes_used_percent=0.0),
        num_allocs=lambda: sum(1 for r in runners if not r.is_destroyed()),
    )
    for r in runners:
        gc.mark_for_collection(r.id, r)
    passes = ThreadGroup("threshold-pass")
    got: list[int] = []
    passes.spawn("threshold-caller", lambda: got.append(gc.keep_usage_below_threshold()))
    wait_for(lambda: _assert(teardowns.active == 2, f"{teardowns.active} in flight"))
    assert_stays(lambda: _assert(got == [], "the pass ended with destroys in flight"), 0.05)
    assert gc.stop(10)
    assert passes.join(10)
    assert got == [2], "two launched, the rest left queued"
    assert len(gc) == 4


def test_collect_waits_for_a_pool_slot(tmp_path, fakes, teardowns, collectors):
    gc = _gc(tmp_path, gc_parallel_destroys=1)
    collectors.append(gc)
    a, b = _make(fakes, teardowns, 2)
    gc.mark_for_collection(a.id, a)
    gc.mark_for_collection(b.id, b)
    assert gc.collect_async(a.id)
    wait_for(lambda: _assert(a.destroy_launched(), "a not launched"))
    callers = ThreadGroup("slot-caller")
    got: list[bool] = []
    callers.spawn("caller-b", lambda: got.append(gc.collect(b.id)))
    assert_stays(lambda: _assert(not b.destroy_launched(), "b went over the bound"), 0.1)
    a.finish()
    wait_for(lambda: _assert(b.destroy_launched(), "b not launched after a"))
    assert got == []
    b.finish()
    assert callers.join(10)
    assert got == [True] and b.is_destroyed()
    assert gc.max_parallel_destroys_seen() == 1


def test_a_runner_without_on_destroyed_is_still_collected(tmp_path, fakes, teardowns, collectors):
    gc = _gc(tmp_path, gc_parallel_destroys=2)
    collectors.append(gc)
    runners = _make(fakes, teardowns, 5, teardown=0.01, cls=LegacyFakeRunner)
    for r in runners:
        gc.mark_for_collection(r.id, r)
    assert gc.collect(runners[0].id) and runners[0].is_destroyed()
    assert gc.collect_all() == 4
    assert all(r.is_destroyed() for r in runners)
    assert teardowns.peak <= 2


def test_a_failing_destroy_does_not_kill_a_worker(tmp_path, fakes, teardowns, collectors):
    class Broken(FakeRunner):
        def destroy(self) -> None:
            raise RuntimeError("destroy exploded")

    gc = _gc(tmp_path, gc_parallel_destroys=1)
    collectors.append(gc)
    bad = Broken("bad", teardowns, 0.01)
    (good,) = _make(fakes, teardowns, 1, teardown=0.01)
    gc.mark_for_collection(bad.id, bad)
    gc.mark_for_collection(good.id, good)
    assert gc.collect(bad.id), "a failed destroy still ends the wait"
    assert gc.collect(good.id) and good.is_destroyed()
    assert _destroy_threads() == ["gc-destroy-0"]
