"""Client soak: rounds of many allocations under concurrent updates, stops, restarts
and destroys, as a server would send them, with the lock checker on.

Each round places `N` allocations (``ALLOCRUNNER_SOAK_N``, default 1,000), waits for
them to run, then four threads play the server and an operator at once: one sends
newer versions of allocations, one stops allocations, one removes them (the client
destroys them), one restarts tasks through the runners. When they are done, every
allocation left must settle in the state its last version asks for, and no update
may be lost: for every allocation, the last view its runner reported is the last one
the client sent upstream, compared view by view. The round ends by removing every
allocation and waiting until each runner is destroyed.

After the rounds the client is shut down, and the threads and file descriptors of the
process must be back to what they were before it started. The RSS after round 2 is
compared with the one after round 1 (a generous bound, not a timing): a per-round leak
of anything per allocation would show there (a runner kept per allocation is over
30 KB each). The two rounds of 1,000 take about a minute on 2 cores with the checker
on.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import threading
import time
from collections.abc import Callable

import attrs
import pytest

from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver
from allocrunner.errors import AllocRunnerError
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.structs import EVENT_RESTART_SIGNAL, Allocation, TaskEvent, new_allocation
from allocrunner.testing import lifecycle, mock_job, mock_task, wait_for
from tests.stress.test_client_stress import LastViews, check_no_update_lost, spy_on_reports

N = int(os.environ.get("ALLOCRUNNER_SOAK_N", "1000"))
ROUNDS = 2
SETTLE = 60.0 + N / 10  # seconds for one condition to settle (generous: the checker is on)
# RSS may grow this much from round 1 to round 2 (allocator noise, caches warming up):
# 16 KB per allocation, at least 8 MiB; a leak of one runner per allocation is over
# twice that.
RSS_SLACK = max(8 << 20, N * 16 * 1024)


def _rss() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Server:
    """Thread-safe. The server's desired set for the node: every change makes a new
    version (a higher index) and sends the whole set, as the server does."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._mutex = threading.Lock()
        self._desired: dict[str, Allocation] = {}
        self._index = 0

    def place(self, allocs: list[Allocation]) -> None:
        self._change(lambda desired: desired.update({a.id: a for a in allocs}))

    def clear(self) -> None:
        self._change(lambda desired: desired.clear())

    def desired(self) -> dict[str, Allocation]:
        with self._mutex:
            return dict(self._desired)

    def pick(self, rng: random.Random) -> Allocation | None:
        with self._mutex:
            live = [a for a in self._desired.values() if not a.terminal()]
        return rng.choice(live) if live else None

    def bump(self, alloc_id: str, **changes: object) -> None:
        def change(desired: dict[str, Allocation]) -> None:
            old = desired.get(alloc_id)
            if old is not None and not old.terminal():
                index = old.alloc_modify_index + 1
                desired[alloc_id] = attrs.evolve(old, alloc_modify_index=index, **changes)

        self._change(change)

    def remove(self, alloc_id: str) -> None:
        self._change(lambda desired: desired.pop(alloc_id, None))

    def _change(self, change: Callable[[dict[str, Allocation]], object]) -> None:
        with self._mutex:
            change(self._desired)
            self._index += 1
            index, allocs = self._index, list(self._desired.values())
        self._client.run_allocs(allocs, index=index)


def _jobs() -> list:
    return [
        mock_job(mock_task("web", config={"run_for": "1h"}, kill_timeout=0.05)),
        mock_job(
            mock_task("leader", config={"run_for": "1h"}, leader=True, kill_timeout=0.05),
            mock_task(
                "proxy",
                config={"run_for": "1h"},
                kill_timeout=0.05,
                lifecycle=lifecycle("prestart", True),
            ),
        ),
    ]


def _settled(client: Client, server: Server) -> None:
    desired = server.desired()
    tracked = {ar.id: ar for ar in client.runners()}
    assert set(tracked) == set(desired), "the registry is not the desired set"
    for alloc_id, alloc in desired.items():
        status = tracked[alloc_id].alloc_state().client_status
        want = "complete" if alloc.terminal() else "running"
        assert status == want, f"{alloc_id[:8]} is {status}, want {want}"


def _final_views_went_upstream(runners: list[AllocRunner], upstream: LastViews) -> None:
    sent = upstream.snapshot()
    wrong = []
    for ar in runners:
        final = ar.client_alloc()
        got = sent.get(ar.id)
        if got is None or got.client_status != final.client_status:
            wrong.append(ar.id[:8])
            continue
        states = {name: ts.state for name, ts in final.task_states.items()}
        if {name: ts.state for name, ts in got.task_states.items()} != states:
            wrong.append(ar.id[:8])
    assert not wrong, f"the final view of {len(wrong)} allocation(s) is not upstream: {wrong}"


def _chaos(client: Client, server: Server, seed: int, ops: int) -> None:
    """Updates, stops, removals and restarts from four threads at once."""
    errors: list[BaseException] = []
    restart = TaskEvent(EVENT_RESTART_SIGNAL, message="soak")

    def update(rng: random.Random) -> None:
        alloc = server.pick(rng)
        if alloc is not None:
            server.bump(alloc.id)

    def stop(rng: random.Random) -> None:
        alloc = server.pick(rng)
        if alloc is not None:
            server.bump(alloc.id, desired_status="stop")

    def remove(rng: random.Random) -> None:
        alloc = server.pick(rng)
        if alloc is not None:
            server.remove(alloc.id)

    def restart_tasks(rng: random.Random) -> None:
        alloc = server.pick(rng)
        ar = client.runner(alloc.id) if alloc is not None else None
        if ar is None:
            return
        with contextlib.suppress(AllocRunnerError):  # stopped or removed meanwhile
            ar.restart_running(restart)

    def worker(action: Callable[[random.Random], None], n: int) -> None:
        rng = random.Random(seed * 10 + n)
        try:
            for _ in range(ops):
                action(rng)
        except BaseException as err:  # reported by the test thread
            errors.append(err)

    actions = (update, stop, remove, restart_tasks)
    threads = [
        threading.Thread(target=worker, args=(action, n), name=f"soak-{action.__name__}")
        for n, action in enumerate(actions)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SETTLE)
        assert not t.is_alive(), f"{t.name} is stuck"
    assert not errors, errors


def _round(client: Client, server: Server, upstream: LastViews, seed: int) -> None:
    jobs = _jobs()
    allocs = [new_allocation(jobs[k % len(jobs)], "web", index=k) for k in range(N)]
    server.place(allocs)
    wait_for(lambda: _settled(client, server), SETTLE)
    _chaos(client, server, seed, ops=max(N // 8, 4))
    wait_for(lambda: _settled(client, server), SETTLE)
    runners = client.runners()
    wait_for(lambda: _final_views_went_upstream(runners, upstream), SETTLE)
    server.clear()
    assert client.runners() == []

    def destroyed() -> None:
        left = [ar.id[:8] for ar in runners if not ar.is_destroyed()]
        assert not left, f"{len(left)} removed allocation(s) not destroyed: {left[:5]}"

    wait_for(destroyed, SETTLE)


@pytest.mark.stress
@pytest.mark.timeout(max(120, N))
def test_client_soak_loses_no_update_and_leaks_nothing(tmp_path, monkeypatch):
    threads_before = {t.ident for t in threading.enumerate()}
    fds_before = _fds()
    config = ClientConfig.for_data_dir(
        tmp_path, max_kill_timeout=1.0, kill_retry_base=0.05, gc_interval=0.05
    )
    driver = MockDriver()
    reported, upstream = LastViews(), LastViews()
    spy_on_reports(monkeypatch, reported)
    client = Client(
        config, drivers={"mock_driver": driver}, state_updater=upstream.record, update_interval=0.05
    )
    client.start()
    rss: list[int] = []
    started = time.monotonic()
    try:
        server = Server(client)
        for n in range(ROUNDS):
            _round(client, server, upstream, seed=n)
            wait_for(lambda: check_no_update_lost(reported, upstream), SETTLE)
            gc.collect()
            rss.append(_rss())
    finally:
        assert client.shutdown(30)
        driver.close()
    elapsed = time.monotonic() - started
    print(f"soak: N={N}, {ROUNDS} rounds in {elapsed:.1f}s, RSS after each round {rss}")

    def back_to_baseline() -> None:
        extra = [t.name for t in threading.enumerate() if t.ident not in threads_before]
        assert not extra, f"threads left: {extra[:10]}"
        assert _fds() <= fds_before, f"{_fds() - fds_before} file descriptor(s) left open"

    wait_for(back_to_baseline, 10)
    assert rss[1] - rss[0] <= RSS_SLACK, f"RSS grew {(rss[1] - rss[0]) >> 20} MiB in round 2"
