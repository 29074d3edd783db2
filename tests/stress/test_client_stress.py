"""Client under concurrent use: several threads apply desired sets, read the client
views and collect, while allocations finish and the collector runs. Afterwards the
registry must match the last set applied, every removed allocation be destroyed, and
no update be lost: for every allocation, the last view its runner reported is the last
one the client sent upstream (compared view by view, not counted)."""

from __future__ import annotations

import random
import sys
import threading
import time

import attrs
import pytest

from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver
from allocrunner.state import MemDB
from allocrunner.structs import Allocation, new_allocation
from allocrunner.testing import mock_job, mock_task, wait_for

DURATION = 2.0


class LastViews:
    """Thread-safe. The last view of each allocation seen by one side: what the runners
    reported to the client, or what the client sent upstream."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._views: dict[str, Allocation] = {}

    def record(self, views: list[Allocation]) -> None:
        with self._mutex:
            for view in views:
                self._views[view.id] = view

    def snapshot(self) -> dict[str, Allocation]:
        with self._mutex:
            return dict(self._views)


def spy_on_reports(monkeypatch: pytest.MonkeyPatch, reported: LastViews) -> None:
    """Record every view a runner reports to its client, then let the client have it.
    The client's own handling is not serialised by the spy."""
    original = Client._record_update

    def record_update(self: Client, view: Allocation) -> None:
        reported.record([view])
        original(self, view)

    monkeypatch.setattr(Client, "_record_update", record_update)


def check_no_update_lost(reported: LastViews, upstream: LastViews) -> None:
    reports = reported.snapshot()
    sent = upstream.snapshot()
    assert reports, "no runner reported anything"
    lost = sorted(i[:8] for i in reports if sent.get(i) != reports[i])
    assert not lost, f"the last view of {len(lost)} allocation(s) never went upstream: {lost}"


@pytest.mark.stress
def test_run_allocs_allocs_and_collect_from_many_threads(tmp_path, monkeypatch):
    config = ClientConfig.for_data_dir(
        tmp_path, max_kill_timeout=2.0, kill_retry_base=0.05, gc_interval=0.05, gc_max_allocs=4
    )
    driver = MockDriver()
    reported, upstream = LastViews(), LastViews()
    spy_on_reports(monkeypatch, reported)
    client = Client(
        config,
        state_db=MemDB(),
        drivers={"mock_driver": driver},
        state_updater=upstream.record,
        update_interval=0.01,
    )
    jobs = [
        mock_job(mock_task("t", config={"run_for": "20ms"}), job_type="batch"),
        mock_job(mock_task("t", config={"run_for": "30s"})),
    ]
    pool = [new_allocation(jobs[n % 2], "web", index=n) for n in range(12)]
    pool_lock = threading.Lock()
    known = {a.id for a in pool}
    errors: list[BaseException] = []
    stop = threading.Event()
    final: list = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    client.start()
    try:

        def applier(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                with pool_lock:
                    chosen = rng.sample(pool, rng.randint(0, 6))
                chosen = [
                    attrs.evolve(a, alloc_modify_index=a.alloc_modify_index + rng.randint(0, 2))
                    for a in chosen
                ]
                if rng.random() < 0.3:
                    fresh = new_allocation(jobs[seed % 2], "web", index=100 + seed)
                    with pool_lock:
                        pool.append(fresh)
                    chosen.append(fresh)
                client.run_allocs(chosen)
                stop.wait(0.005)

        def reader() -> None:
            while not stop.is_set():
                views = client.allocs()
                with pool_lock:  # after the read: every id it shows was added before it
                    known.update(a.id for a in pool)
                    ids = set(known)
                for view in views:
                    assert view.id in ids
                client.num_allocs()

        def collector(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                with pool_lock:
                    target = rng.choice(pool)
                client.collect(target.id)
                if rng.random() < 0.05:
                    client.collect_all()

        def guard(fn, *args):
            try:
                fn(*args)
            except BaseException as err:  # reported by the test thread
                errors.append(err)

        threads = [
            threading.Thread(target=guard, args=(applier, 1), name="stress-apply-1"),
            threading.Thread(target=guard, args=(applier, 2), name="stress-apply-2"),
            threading.Thread(target=guard, args=(reader,), name="stress-read"),
            threading.Thread(target=guard, args=(collector, 3), name="stress-collect"),
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + DURATION
        while time.monotonic() < deadline and not errors:
            stop.wait(0.05)
        stop.set()
        for t in threads:
            t.join(30)
            assert not t.is_alive(), f"{t.name} is stuck"
        sys.setswitchinterval(old)
        assert not errors, errors

        # Fresh ids: ids removed during the run are never run again.
        final = [new_allocation(jobs[n % 2], "web", index=200 + n) for n in range(3)]
        client.run_allocs(final)
        assert {a.id for a in client.allocs()} == {a.id for a in final}
        live = [client.runner(a.id) for a in final]

        def settled():
            for a, ar in zip(final, live, strict=True):
                status = ar.alloc_state().client_status
                assert status in ("running", "complete"), f"{a.id} is {status}"

        wait_for(settled, timeout=20)
        wait_for(lambda: check_no_update_lost(reported, upstream), timeout=20)
    finally:
        sys.setswitchinterval(old)
        stop.set()
        assert client.shutdown(30)
        driver.close()
    root = tmp_path / "alloc"
    leftovers = [p.name for p in root.iterdir()] if root.exists() else []
    assert set(leftovers) <= {a.id for a in final}, "a removed alloc was not destroyed"
