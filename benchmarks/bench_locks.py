"""RWLock against threading.Lock and the PyPI reader-writer locks (DESIGN.md §4 rule 8).

1. Uncontended ``with lock.read():`` acquire+release. Goals: at most 4x
   ``with threading.Lock()``; at least 2x faster than every peer (readerwriterlock's
   RWLockRead / RWLockWrite / RWLockFair, fasteners' ReaderWriterLock).
2. Mixed load: 4 CPU-bound reader threads copying a 10-entry dict under the read
   lock, one writer taking the write lock every 1 ms. Goals: reads/s at least 2x the
   best peer; the writer's wait inside acquire p99 under 1 ms. The end-to-end writer
   wait (from the end of its 1 ms sleep until it holds the lock) is printed beside
   the same figure for threading.Lock, which is the interpreter's GIL hand-off, and
   for readers that take no lock at all (4 CPU-bound threads: the GIL's own floor).
3. Writer starvation: 8 readers whose critical section releases the GIL
   (``time.sleep(0)``), a writer attempting 1,000 times in one second. Goals: at
   least 70 % of the attempts get in within the second, max wait under 20 ms.
   readerwriterlock's reader-preferring RWLockRead is shown starving the writer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["ALLOCRUNNER_LOCKCHECK"] = "0"  # production locks, before allocrunner loads
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import fasteners
from readerwriterlock import rwlock

from allocrunner import _locking
from allocrunner._locking import make_rwlock
from benchmarks import Table, interleaved_ns_per_op, machine_note, percentile

assert not _locking.CHECK, "benchmarks run with the lock check off"

Side = Callable[[], AbstractContextManager[object]]


@dataclass
class Subject:
    """Immutable. A lock under test: per-thread factories of its read and write sides."""

    name: str
    reader: Callable[[], Side]  # called once per thread; returns the read-side factory
    writer: Callable[[], Side]


def ours() -> Subject:
    lock = make_rwlock("AllocRunner._state_lock")
    return Subject("RWLock (ours)", lambda: lock.read, lambda: lock.write)


def plain_lock() -> Subject:
    lock = threading.Lock()
    return Subject("threading.Lock", lambda: lambda: lock, lambda: lambda: lock)


def readerwriterlock(kind: str) -> Subject:
    lock = getattr(rwlock, kind)()

    def reader() -> Side:
        side = lock.gen_rlock()  # one reader object per thread, as the library wants
        return lambda: side

    def writer() -> Side:
        side = lock.gen_wlock()
        return lambda: side

    return Subject(f"readerwriterlock {kind}", reader, writer)


def fasteners_lock() -> Subject:
    lock = fasteners.ReaderWriterLock()
    return Subject("fasteners ReaderWriterLock", lambda: lock.read_lock, lambda: lock.write_lock)


class _NoLock:
    """Immutable. A context manager that does nothing: readers and writer unsynchronised."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        return None


def no_lock() -> Subject:
    nothing = _NoLock()
    return Subject("no lock", lambda: lambda: nothing, lambda: lambda: nothing)


PEERS = ("RWLockRead", "RWLockWrite", "RWLockFair")


def peers() -> list[Subject]:
    return [*(readerwriterlock(kind) for kind in PEERS), fasteners_lock()]


# --- 1. uncontended --------------------------------------------------------------------------


def bench_uncontended() -> Table:
    plain = threading.Lock()
    mine = make_rwlock("AllocRunner._state_lock")
    peer_sides = {f"readerwriterlock {kind}": getattr(rwlock, kind)().gen_rlock() for kind in PEERS}
    fast = fasteners.ReaderWriterLock()

    def empty(n: int) -> None:
        for _ in range(n):
            pass

    def with_lock(n: int) -> None:
        lock = plain
        for _ in range(n):
            with lock:
                pass

    def with_read(n: int) -> None:
        lock = mine
        for _ in range(n):
            with lock.read():
                pass

    def with_write(n: int) -> None:
        lock = mine
        for _ in range(n):
            with lock.write():
                pass

    def peer_loop(side: AbstractContextManager[object]) -> Callable[[int], None]:
        def run(n: int) -> None:
            r = side
            for _ in range(n):
                with r:
                    pass

        return run

    def with_fasteners(n: int) -> None:
        lock = fast
        for _ in range(n):
            with lock.read_lock():
                pass

    candidates = {
        "threading.Lock": with_lock,
        "ours read": with_read,
        "ours write": with_write,
        **{name: peer_loop(side) for name, side in peer_sides.items()},
        "fasteners ReaderWriterLock": with_fasteners,
    }
    ns = interleaved_ns_per_op(candidates, n=10_000, rounds=41, overhead=empty)
    table = Table("Uncontended acquire+release (with lock.read(): pass), best of 41 rounds")
    base = ns["threading.Lock"]
    read = ns["ours read"]
    table.add(
        "RWLock read (ours)",
        read,
        base,
        goal="<= 4x Lock",
        ok=read <= 4 * base,
        baseline_name="threading.Lock",
    )
    table.add("RWLock write (ours)", ns["ours write"], base, baseline_name="threading.Lock")
    for name in [*peer_sides, "fasteners ReaderWriterLock"]:
        table.add(
            f"{name} read",
            ns[name],
            read,
            goal=">= 2x ours",
            ok=ns[name] >= 2 * read,
            baseline_name="ours",
        )
    return table


# --- 2. mixed load ---------------------------------------------------------------------------


@dataclass
class MixedResult:
    """Immutable. What one mixed-load run measured."""

    reads_per_s: float
    inside: list[float]  # seconds the writer spent inside acquire
    end_to_end: list[float]  # seconds from the end of its sleep until it held the lock


def run_mixed(subject: Subject, seconds: float = 1.0, readers: int = 4) -> MixedResult:
    data = {i: f"value-{i}" for i in range(10)}
    stop = [False]
    counts = [0] * readers
    inside: list[float] = []
    end_to_end: list[float] = []
    ready = threading.Barrier(readers + 2)
    clock = time.perf_counter

    def reader(i: int) -> None:
        read = subject.reader()
        ready.wait()
        n = 0
        while not stop[0]:
            with read():
                data.copy()
            n += 1
        counts[i] = n

    def writer() -> None:
        write = subject.writer()
        ready.wait()
        n = 0
        while not stop[0]:
            slept_at = clock()
            time.sleep(0.001)
            wanted_at = slept_at + 0.001
            side = write()
            before = clock()
            side.__enter__()
            held_at = clock()
            n += 1
            data[n % 10] = f"value-{n}"
            side.__exit__(None, None, None)
            inside.append(held_at - before)
            end_to_end.append(held_at - wanted_at)

    threads = [threading.Thread(target=reader, args=(i,), name=f"reader-{i}") for i in range(4)]
    threads.append(threading.Thread(target=writer, name="writer"))
    for thread in threads:
        thread.start()
    ready.wait()
    start = clock()
    time.sleep(seconds)  # the measuring window
    stop[0] = True
    for thread in threads:
        thread.join()
    elapsed = clock() - start
    return MixedResult(sum(counts) / elapsed, inside, end_to_end)


def merge_mixed(parts: list[MixedResult]) -> MixedResult:
    """One result from several equally long runs."""
    return MixedResult(
        sum(part.reads_per_s for part in parts) / len(parts),
        [wait for part in parts for wait in part.inside],
        [wait for part in parts for wait in part.end_to_end],
    )


def bench_mixed(passes: int = 3, seconds: float = 0.4) -> Table:
    # Several short passes over the subjects in turn, so that a change in the machine's
    # load during the run hits every subject alike.
    subjects = [ours(), *peers(), plain_lock(), no_lock()]
    runs: dict[str, list[MixedResult]] = {subject.name: [] for subject in subjects}
    for _ in range(passes):
        for subject in subjects:
            runs[subject.name].append(run_mixed(subject, seconds))
    results = {name: merge_mixed(parts) for name, parts in runs.items()}
    mine = results["RWLock (ours)"]
    lock = results["threading.Lock"]
    unlocked = results["no lock"]
    peer_names = [
        name for name in results if name not in ("RWLock (ours)", "threading.Lock", "no lock")
    ]
    best = max(peer_names, key=lambda name: results[name].reads_per_s)
    table = Table(
        f"Mixed load: 4 readers copying a 10-entry dict, 1 writer every 1 ms "
        f"({passes} x {seconds} s each, interleaved)"
    )
    table.add(
        "reads/s, RWLock (ours)",
        mine.reads_per_s,
        results[best].reads_per_s,
        unit="/s",
        goal=">= 2x best peer",
        ok=mine.reads_per_s >= 2 * results[best].reads_per_s,
        baseline_name=best,
    )
    for name in peer_names:
        table.add(
            f"reads/s, {name}",
            results[name].reads_per_s,
            mine.reads_per_s,
            unit="/s",
            baseline_name="ours",
        )
    table.add(
        "reads/s, threading.Lock (readers exclusive)",
        lock.reads_per_s,
        mine.reads_per_s,
        unit="/s",
        baseline_name="ours",
    )
    p99 = percentile(mine.inside, 99)
    table.add("writer wait inside acquire p99 (ours)", p99, unit="s", goal="< 1 ms", ok=p99 < 1e-3)
    table.add("writer wait inside acquire p50 (ours)", percentile(mine.inside, 50), unit="s")
    table.add("writer wait inside acquire max (ours)", max(mine.inside), unit="s")
    table.add("writes timed (ours)", len(mine.inside), unit="")
    for q in (50, 99):
        table.add(
            f"writer end-to-end wait p{q} (ours)",
            percentile(mine.end_to_end, q),
            percentile(lock.end_to_end, q),
            unit="s",
            baseline_name="threading.Lock: GIL hand-off",
        )
        table.add(
            f"writer end-to-end wait p{q}, no lock at all",
            percentile(unlocked.end_to_end, q),
            percentile(mine.end_to_end, q),
            unit="s",
            baseline_name="ours",
        )
    for name in peer_names:
        table.add(
            f"writer wait inside acquire p99, {name}",
            percentile(results[name].inside, 99),
            unit="s",
        )
    return table


# --- 3. writer starvation --------------------------------------------------------------------


@dataclass
class StarvationResult:
    """Immutable. What one starvation run measured."""

    got_in: int  # attempts that held the lock within the second
    attempts: int  # attempts started within the second
    waits: list[float]
    reads: int


def run_starvation(subject: Subject, readers: int = 8, seconds: float = 1.0) -> StarvationResult:
    stop = [False]
    counts = [0] * readers
    waits: list[float] = []
    got_in = [0]
    ready = threading.Barrier(readers + 2)
    clock = time.perf_counter
    window: list[float] = []

    def reader(i: int) -> None:
        read = subject.reader()
        ready.wait()
        n = 0
        while not stop[0]:
            with read():
                time.sleep(0)  # a critical section that lets the GIL go
            n += 1
        counts[i] = n

    def writer() -> None:
        write = subject.writer()
        ready.wait()
        start = clock()
        end = start + seconds
        window.append(end)
        for i in range(1000):
            target = start + i * seconds / 1000
            now = clock()
            if now >= end:
                break
            if now < target:
                time.sleep(target - now)
            before = clock()
            with write():
                held_at = clock()
            waits.append(held_at - before)
            if held_at <= end:
                got_in[0] += 1

    threads = [
        threading.Thread(target=reader, args=(i,), name=f"reader-{i}") for i in range(readers)
    ]
    threads.append(threading.Thread(target=writer, name="writer"))
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(seconds + 0.01)  # the window; readers stop after it, freeing a starved writer
    stop[0] = True
    for thread in threads:
        thread.join()
    return StarvationResult(got_in[0], len(waits), waits, sum(counts))


def bench_starvation() -> Table:
    subjects = [ours(), *peers()]
    results = {subject.name: run_starvation(subject) for subject in subjects}
    table = Table(
        "Writer starvation: 8 readers (critical section sleeps 0), writer tries 1000x in 1 s"
    )
    for name, result in results.items():
        share = 100.0 * result.got_in / 1000
        longest = max(result.waits) if result.waits else float("nan")
        if name == "RWLock (ours)":
            table.add(
                f"attempts in within the second, {name}",
                share,
                unit="%",
                goal=">= 70 %",
                ok=share >= 70,
            )
            table.add(
                f"max writer wait, {name}", longest, unit="s", goal="< 20 ms", ok=longest < 0.020
            )
        else:
            starving = " (starved)" if share < 10 else ""
            table.add(f"attempts in within the second, {name}{starving}", share, unit="%")
            table.add(f"max writer wait, {name}", longest, unit="s")
    table.add("reads during the second, RWLock (ours)", results["RWLock (ours)"].reads, unit="")
    return table


def main() -> None:
    if __name__ == "__main__":  # the runner prints this once for all benchmarks
        print(machine_note())
    misses = 0
    for bench in (bench_uncontended, bench_mixed, bench_starvation):
        table = bench()
        table.print()
        misses += table.misses()
    print(f"\nbench_locks: {'all goals met' if not misses else f'{misses} goal(s) missed'}")


if __name__ == "__main__":
    main()
