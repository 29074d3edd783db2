"""AllocBroadcaster against a broadcaster built from one ``queue.Queue(maxsize=1)`` per
listener (drain the stale value, put the new one), the direct translation of Nomad's
capacity-1 channels.

1. Send cost with 0 / 1 / 10 / 100 listeners that are registered but not reading.
   Goals: with 100 listeners within 1.5x of the cost with none (a send is O(1));
   at 100 listeners at least 50x faster than the queue version.
2. Wake-up latency: 100 listener threads blocked in ``get()``; the time from
   ``send()`` until every one of them holds the new value, p50 and p99 over many
   rounds, against the queue version. Goal: our p99 no worse.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["ALLOCRUNNER_LOCKCHECK"] = "0"  # production locks, before allocrunner loads
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib
import queue
import threading
import time
from collections.abc import Callable

import attrs

from allocrunner import _locking
from allocrunner.broadcaster import AllocBroadcaster
from allocrunner.structs import Allocation
from allocrunner.testing import mock_alloc
from benchmarks import Table, interleaved_ns_per_op, machine_note, percentile

assert not _locking.CHECK, "benchmarks run with the lock check off"


class QueueBroadcaster:
    """Thread-safe. The baseline: one capacity-1 queue per listener, drained and
    refilled on every send (Nomad's channel per listener, in Python)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: list[queue.Queue[Allocation]] = []

    def listen(self) -> queue.Queue[Allocation]:
        q: queue.Queue[Allocation] = queue.Queue(maxsize=1)
        with self._lock:
            self._queues = [*self._queues, q]
        return q

    def send(self, alloc: Allocation) -> None:
        with self._lock:
            for q in self._queues:
                with contextlib.suppress(queue.Empty):
                    q.get_nowait()
                q.put_nowait(alloc)


ALLOCS = [attrs.evolve(mock_alloc(), alloc_modify_index=i) for i in range(64)]


# --- 1. send cost ----------------------------------------------------------------------------


def bench_send_cost() -> Table:
    counts = (0, 1, 10, 100)
    candidates: dict[str, Callable[[int], None]] = {}
    keep: list[object] = []  # listeners stay registered (and unread) during the run
    for count in counts:
        ours = AllocBroadcaster()
        keep.extend(ours.listen() for _ in range(count))
        base = QueueBroadcaster()
        keep.extend(base.listen() for _ in range(count))
        candidates[f"ours {count}"] = _sender(ours.send)
        candidates[f"queue {count}"] = _sender(base.send)
    ns = interleaved_ns_per_op(candidates, n=1_000, rounds=40, overhead=_sender(lambda _a: None))
    table = Table("Send cost per listener count (listeners registered, not reading)")
    for count in counts:
        row_ok = None
        goal = ""
        if count == 100:
            row_ok = ns["ours 100"] <= 1.5 * ns["ours 0"]
            goal = "<= 1.5x 0 listeners"
        table.add(
            f"AllocBroadcaster.send, {count} listeners",
            ns[f"ours {count}"],
            ns["ours 0"],
            goal=goal,
            ok=row_ok,
            baseline_name="ours, 0 listeners",
        )
    for count in counts:
        ours_ns = ns[f"ours {count}"]
        queue_ns = ns[f"queue {count}"]
        table.add(
            f"queue version send, {count} listeners (speed-up of ours)",
            queue_ns,
            ours_ns,
            goal=">= 50x" if count == 100 else "",
            ok=(queue_ns >= 50 * ours_ns) if count == 100 else None,
            baseline_name="ours",
        )
    keep.clear()
    return table


def _sender(send: Callable[[Allocation], None]) -> Callable[[int], None]:
    def run(n: int) -> None:
        allocs = ALLOCS
        for i in range(n):
            send(allocs[i & 63])

    return run


# --- 2. wake-up latency ----------------------------------------------------------------------


class WakeHarness:
    """Not thread-safe; owned by the benchmark. `listeners` threads blocked in get() on
    one broadcaster (ours or the queue version); each round sends one value and times
    how long until every thread holds it."""

    def __init__(self, kind: str, listeners: int = 100) -> None:
        self.kind = kind
        self.listeners = listeners
        if kind == "ours":
            self._ours = AllocBroadcaster()
            self._send: Callable[[Allocation], None] = self._ours.send
            self._receivers: list[Callable[[], object]] = [
                self._ours.listen().get for _ in range(listeners)
            ]
        else:
            base = QueueBroadcaster()
            self._send = base.send
            self._receivers = [base.listen().get for _ in range(listeners)]
        self._received = [0.0] * listeners
        self._all_in = threading.Barrier(listeners + 1)
        self._arrivals = 0  # listeners about to block in get(), over all rounds
        self._arrivals_lock = threading.Lock()
        self._rounds = 0
        self._stop = False
        self._threads = [
            threading.Thread(target=self._receive, args=(i,), name=f"{kind}-listener-{i}")
            for i in range(listeners)
        ]
        for thread in self._threads:
            thread.start()

    def _receive(self, i: int) -> None:
        get = self._receivers[i]
        while True:
            with self._arrivals_lock:
                self._arrivals += 1
            get()
            self._received[i] = time.perf_counter()
            self._all_in.wait()
            if self._stop:
                return

    def round(self, last: bool = False) -> float:
        """One send; seconds until all listeners hold the value."""
        while True:  # every listener is back in get() before the next send
            with self._arrivals_lock:
                if self._arrivals == self.listeners * (self._rounds + 1):
                    break
            time.sleep(0.0002)
        time.sleep(0.001)  # and has had the time to block there
        self._stop = last
        sent_at = time.perf_counter()
        self._send(ALLOCS[self._rounds & 63])
        self._all_in.wait()
        self._rounds += 1
        return max(self._received) - sent_at

    def close(self) -> None:
        self.round(last=True)
        for thread in self._threads:
            thread.join()
        if self.kind == "ours":
            self._ours.close()


def bench_wakeup(rounds: int = 150) -> Table:
    harnesses = [WakeHarness("ours"), WakeHarness("queue")]
    latencies: dict[str, list[float]] = {"ours": [], "queue": []}
    try:
        for harness in harnesses:
            harness.round()  # warm-up
        for _ in range(rounds):  # alternate, so that load changes hit both alike
            for harness in harnesses:
                latencies[harness.kind].append(harness.round())
    finally:
        for harness in harnesses:
            harness.close()
    table = Table(
        f"Wake-up latency: send() until all 100 blocked listeners hold the value ({rounds} rounds)"
    )
    for q in (50, 90, 99):
        mine = percentile(latencies["ours"], q)
        theirs = percentile(latencies["queue"], q)
        table.add(
            f"AllocBroadcaster p{q}",
            mine,
            theirs,
            unit="s",
            goal="<= queue version" if q == 99 else "",
            ok=(mine <= theirs) if q == 99 else None,
            baseline_name="queue version",
        )
    return table


def main() -> None:
    if __name__ == "__main__":  # the runner prints this once for all benchmarks
        print(machine_note())
    misses = 0
    for bench in (bench_send_cost, bench_wakeup):
        table = bench()
        table.print()
        misses += table.misses()
    print(f"\nbench_broadcaster: {'all goals met' if not misses else f'{misses} goal(s) missed'}")


if __name__ == "__main__":
    main()
