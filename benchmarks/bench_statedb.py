"""State DB benchmarks: what a task-state write costs, and what de-duplication saves.

Baseline: a bare ``INSERT OR REPLACE`` of an already-encoded JSON value through
Python's sqlite3, with the same file settings as SQLiteStateDB (WAL,
synchronous=NORMAL, autocommit). Against it:

- Encoding alone (the jobspec codec plus json.dumps), which any store of Nomad-shaped
  JSON pays; the store's own overhead is what a write costs beyond encode + baseline.
- SQLiteStateDB.put_task_state with a changed value each time, timed through a final
  `flush()` (so the writer thread's commits are paid for) and amortised per put: the
  caller encodes and queues, the writer commits what is queued in one transaction,
  the last value of the key winning. Goal: within 1.5x of encode + baseline.
- The same with every put to a different key, so each one reaches the file (group
  commit without coalescing).
- The same call with an unchanged value, which de-duplication turns into a skipped
  write (compare + lock only). Goal: at most 0.1x a real write.
- put_allocation, changed vs unchanged (a larger value: a whole job).
- MemDB.put_task_state, for scale.
"""

from __future__ import annotations

import os

os.environ.pop("ALLOCRUNNER_LOCKCHECK", None)

import itertools
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from allocrunner import _locking
from allocrunner.jobspec import encode_task_state
from allocrunner.state import MemDB, SQLiteStateDB
from allocrunner.structs import TaskEvent, TaskState
from allocrunner.testing import mock_alloc, mock_task

assert not _locking.CHECK, "benchmarks run with the lock check off"

N = 3000
REPEATS = 5


def _states(n: int) -> list[TaskState]:
    base = TaskState().with_state("running")
    for i in range(5):
        base = base.with_event(TaskEvent("Started", message=f"event {i}"))
    return [attrs.evolve(base, restarts=i) for i in range(n)]


def _per_op_us(fn: Callable[[int], None], n: int = N, repeats: int = REPEATS) -> float:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for i in range(n):
            fn(i)
        runs.append((time.perf_counter_ns() - start) / n / 1000)
    return statistics.median(runs)


def _through_flush_us(put: Callable[[int], None], flush: Callable[[], None], n: int = N) -> float:
    """Per-put cost of `n` puts and the flush that makes them durable."""
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for i in range(n):
            put(i)
        flush()
        runs.append((time.perf_counter_ns() - start) / n / 1000)
    return statistics.median(runs)


def _row(name: str, value: float, base: float, goal: str = "", ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("PASS" if ok else "MISS")
    print(f"  {name:<52} {value:9.2f} us/op  {value / base:6.2f}x baseline  {goal} {verdict}")


def main() -> None:
    states = _states(N)
    encoded = [json.dumps(encode_task_state(s), separators=(",", ":")) for s in states]
    with tempfile.TemporaryDirectory(prefix="bench-statedb-") as tmp:
        root = Path(tmp)

        conn = sqlite3.connect(root / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE entries (alloc_id TEXT, task TEXT, kind TEXT, value TEXT, "
            "PRIMARY KEY (alloc_id, task, kind)) WITHOUT ROWID"
        )

        def raw(i: int) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)",
                ("alloc", "web", "task_state", encoded[i]),
            )

        baseline = _per_op_us(raw)
        conn.close()
        encode = _per_op_us(
            lambda i: json.dumps(encode_task_state(states[i]), separators=(",", ":"))
        )

        db = SQLiteStateDB(root / "state.db")
        changed = _through_flush_us(
            lambda i: db.put_task_state("alloc", "web", states[i]), db.flush
        )
        fresh_keys = itertools.count()  # a new key every put, across the repeats too
        spread = _through_flush_us(
            lambda i: db.put_task_state("alloc", f"task-{next(fresh_keys)}", states[i]),
            db.flush,
        )
        same = states[0]
        db.put_task_state("alloc", "web", same)
        unchanged = _per_op_us(lambda i: db.put_task_state("alloc", "web", same))
        alloc = mock_alloc(mock_task("web"), mock_task("db"), mock_task("cache"))
        allocs = [attrs.evolve(alloc, alloc_modify_index=i) for i in range(N)]
        alloc_changed = _per_op_us(lambda i: db.put_allocation(allocs[i]), n=N // 3)
        alloc_same = _per_op_us(lambda i: db.put_allocation(alloc), n=N // 3)
        db.flush()
        stats = db.stats()
        db.close()

        mem = MemDB()
        mem_changed = _per_op_us(lambda i: mem.put_task_state("alloc", "web", states[i]))

    print(f"state DB writes ({N} per run, median of {REPEATS}; lock check off)")
    print(f"  {'baseline: raw sqlite3 INSERT OR REPLACE (pre-encoded)':<52} {baseline:9.2f} us/op")
    _row("encode a TaskState (codec + json.dumps)", encode, baseline)
    floor = encode + baseline
    _row(
        "SQLiteStateDB.put_task_state, changed, thru flush",
        changed,
        baseline,
        f"goal <= 1.5x encode+baseline ({changed / floor:.2f}x)",
        changed <= 1.5 * floor,
    )
    _row(
        "  the same, each put to another key",
        spread,
        baseline,
        f"({spread / floor:.2f}x encode+baseline)",
    )
    _row(
        "SQLiteStateDB.put_task_state, unchanged (de-dup)",
        unchanged,
        baseline,
        f"goal <= 0.1x changed ({unchanged / changed:.2f}x)",
        unchanged <= 0.1 * changed,
    )
    _row("SQLiteStateDB.put_allocation, changed", alloc_changed, baseline)
    _row(
        "SQLiteStateDB.put_allocation, unchanged (de-dup)",
        alloc_same,
        baseline,
        f"({alloc_same / alloc_changed:.2f}x changed)",
    )
    _row("MemDB.put_task_state, changed value", mem_changed, baseline)
    print(
        f"  writes={stats.writes} skipped={stats.skipped} commits={stats.commits} "
        f"coalesced={stats.coalesced} (counters of the SQLite run)"
    )


if __name__ == "__main__":
    main()
