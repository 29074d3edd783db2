"""Stress: task runners persisting while their allocations are deleted and re-added,
with the interpreter switching threads as often as it can; and a process writing
through a SQLiteStateDB killed -9 at random points, 30 times."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from allocrunner._sync import ThreadGroup
from allocrunner.state import LocalState, MemDB, SQLiteStateDB
from allocrunner.structs import TaskState
from allocrunner.testing import mock_alloc

from .statedb_crash_child import ALLOC, KEYS

DURATION = 1.5
REPO = Path(__file__).resolve().parents[2]
KILLS = 30


@pytest.mark.stress
@pytest.mark.parametrize("kind", ["memdb", "sqlite"])
def test_persist_delete_readd_race(tmp_path, fast_switching, kind):
    db = MemDB() if kind == "memdb" else SQLiteStateDB(tmp_path / "state.db")
    allocs = [mock_alloc() for _ in range(4)]
    stop = threading.Event()
    errors: list[BaseException] = []
    group = ThreadGroup("statedb-stress")

    def persister(alloc, seed):
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                n = rng.randrange(4)
                db.put_task_state(alloc.id, "web", TaskState(restarts=n))
                db.put_task_local_state(alloc.id, "web", LocalState(run_complete=n % 2 == 0))
        except BaseException as err:
            errors.append(err)

    def reader():
        try:
            while not stop.is_set():
                for alloc in db.all_allocations():
                    db.task_runner_state(alloc.id, "web")
        except BaseException as err:
            errors.append(err)

    for i, alloc in enumerate(allocs):
        db.put_allocation(alloc)
        group.spawn(f"persist-{i}", persister, alloc, i)
    group.spawn("reader", reader)
    rng = random.Random(42)
    deadline = time.monotonic() + DURATION
    rounds = 0
    while time.monotonic() < deadline and rounds < 2000:
        alloc = rng.choice(allocs)
        db.delete_allocation(alloc.id)
        # gone at once, whatever the persisters do meanwhile
        assert alloc.id not in {a.id for a in db.all_allocations()}
        assert db.task_runner_state(alloc.id, "web") == (None, None)
        db.put_allocation(alloc)
        rounds += 1
    for alloc in allocs:
        db.delete_allocation(alloc.id)
    stop.set()
    assert group.join(timeout=30)
    assert errors == []
    assert rounds > 10
    assert db.all_allocations() == []
    for alloc in allocs:
        assert db.task_runner_state(alloc.id, "web") == (None, None)
    db.close()


class _CrashServer:
    """Not thread-safe; owned by one test. The fork server of `statedb_crash_child`."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.stress.statedb_crash_child"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _line(self) -> list[str]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the crash server died"
        return line.split()

    def kill_after(self, path: Path, seed: int, acks: int) -> tuple[int, int]:
        """Start a writer on `path`, SIGKILL it once it acknowledged `acks` flushes;
        (the highest flush it acknowledged, its wait status)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"db": str(path), "seed": seed}) + "\n")
        self.proc.stdin.flush()
        pid, acked, killed = 0, 0, False
        while True:
            words = self._line()
            if words[0] == "pid":
                pid = int(words[1])
            elif words[0] == "ack":
                acked = max(acked, int(words[1]))
                acks -= 1
            elif words[0] == "exit":
                return acked, int(words[2])
            if pid and acks <= 0 and not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def _assert_consistent_prefix(path: Path, acked: int) -> None:
    db = SQLiteStateDB(path)
    try:
        values = []
        for task in KEYS:
            _, state = db.task_runner_state(ALLOC, task)
            assert state is not None, f"{task}: lost, though flush {acked} was acknowledged"
            values.append(state.restarts)
    finally:
        db.close()
    assert min(values) >= acked, f"values {values} older than acknowledged flush {acked}"
    # rounds write the keys in order, so a prefix of the writes is some rounds in
    # full and the next one for the first keys only
    assert values == sorted(values, reverse=True), f"not a prefix of the writes: {values}"
    assert values[0] - values[-1] <= 1, f"not a prefix of the writes: {values}"


@pytest.mark.stress
@pytest.mark.timeout(120)
def test_kill9_keeps_a_prefix_holding_every_acknowledged_flush(tmp_path):
    rng = random.Random(7)
    server = _CrashServer()
    try:
        for i in range(KILLS):
            path = tmp_path / f"state-{i}.db"
            acked, status = server.kill_after(path, seed=i, acks=rng.randint(1, 25))
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
                f"round {i}: the writer ended by itself (status {status})"
            )
            _assert_consistent_prefix(path, acked)
    finally:
        server.close()
