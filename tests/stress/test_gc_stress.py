"""Stress: the garbage collector's destroy pool under every way of asking for a destroy
at once (collect, collect_async, collect_all, threshold passes), with stop() racing the
first use, and the interpreter switching threads as often as it can. Every caller
returns, every runner handed over has its destroy launched exactly once, the bound holds
and stop() joins every collector thread."""

from __future__ import annotations

import random
import threading
import time

import pytest

from allocrunner._sync import ThreadGroup
from allocrunner.config import ClientConfig
from allocrunner.gc import AllocGarbageCollector, HostStats
from tests.unit.gc.conftest import FakeRunner, Teardowns

pytestmark = pytest.mark.timeout(60)

PARALLEL = 3


def _round(tmp_path, rng: random.Random, n: int) -> None:
    teardowns = Teardowns()
    runners = [
        FakeRunner(f"s{n}-{i}", teardowns, rng.choice([0.0, 0.001, None])) for i in range(24)
    ]
    gc = AllocGarbageCollector(
        ClientConfig.for_data_dir(
            tmp_path / str(n), gc_parallel_destroys=PARALLEL, gc_max_allocs=0, gc_interval=3600.0
        ),
        host_stats=lambda: HostStats(disk_used_percent=0.0, inodes_used_percent=0.0),
        num_allocs=lambda: sum(1 for r in runners if not r.is_destroyed()),
    )
    if rng.random() < 0.5:
        gc.start()
    for r in runners:
        gc.mark_for_collection(r.id, r)
    callers = ThreadGroup("gc-stress-callers")
    for i, r in enumerate(runners[:12]):
        call = gc.collect if i % 2 else gc.collect_async
        callers.spawn(f"stress-collect-{i}", call, r.id)
    callers.spawn("stress-collect-all", gc.collect_all)
    callers.spawn("stress-threshold", gc.keep_usage_below_threshold)
    gc.trigger()
    if rng.random() < 0.5:
        for r in runners:
            r.finish()
    # Until stop, every destroy runs on the pool: never more than PARALLEL at once.
    peak_before_stop = teardowns.peak
    stop_ok = gc.stop(10)
    for r in runners:
        r.finish()
    assert stop_ok, "collector threads outlived stop"
    assert callers.join(10), f"callers still waiting: {callers.alive()}"
    assert not [t.name for t in threading.enumerate() if t.name.startswith("gc-destroy")]
    handed = [r for r in runners if not gc.is_marked(r.id)]
    for r in runners:
        assert r.destroy_calls <= 1, f"{r.id} destroyed {r.destroy_calls} times"
    for r in handed:
        assert r.destroy_launched(), f"{r.id} left the queue but was never destroyed"
    assert peak_before_stop <= PARALLEL, f"peak {peak_before_stop} before stop"
    assert gc.max_parallel_destroys_seen() <= PARALLEL
    for r in runners:
        assert r.close(10)


@pytest.mark.stress
def test_pool_under_racing_callers_and_stop(tmp_path, fast_switching):
    rng = random.Random(11)
    deadline = time.monotonic() + 4.0
    rounds = 0
    while time.monotonic() < deadline and rounds < 25:
        _round(tmp_path, rng, rounds)
        rounds += 1
    assert rounds > 0
