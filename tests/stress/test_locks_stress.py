"""Time-boxed stress of the lock toolkit and the broadcaster with a tiny switch
interval, so that threads are preempted inside every critical section."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import attrs
import pytest

from allocrunner._locking import (
    CheckedRWLock,
    RWLock,
    acquire_many,
    held_locks,
    make_lock,
)
from allocrunner._sync import CancelToken, Kick, LatestValue, ThreadGroup
from allocrunner.broadcaster import AllocBroadcaster, AllocListener
from allocrunner.errors import BroadcasterClosed
from allocrunner.testing import mock_alloc

pytestmark = [pytest.mark.stress, pytest.mark.usefixtures("fast_switching")]

DURATION = 1.5  # seconds of hammering per test


@pytest.mark.parametrize("factory", [RWLock, CheckedRWLock], ids=["RWLock", "CheckedRWLock"])
def test_rwlock_invariants_under_preemption(factory: Callable[[str], RWLock]) -> None:
    lock = factory("AllocDir._lock")
    mutex = threading.Lock()  # guards the tally below (test-side, not under test)
    inside = {"readers": 0, "writers": 0, "max_readers": 0}
    done = {"reads": 0, "writes": 0, "timeouts": 0}
    errors: list[str] = []
    stop = time.monotonic() + DURATION
    group = ThreadGroup("rw-stress")

    def enter(write: bool) -> None:
        with mutex:
            key = "writers" if write else "readers"
            inside[key] += 1
            inside["max_readers"] = max(inside["max_readers"], inside["readers"])
            if inside["writers"] > 1 or (inside["writers"] and inside["readers"]):
                errors.append(f"overlap: {inside}")
            done["writes" if write else "reads"] += 1

    def leave(write: bool) -> None:
        with mutex:
            inside["writers" if write else "readers"] -= 1

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            write = rng.random() < 0.2
            timed = rng.random() < 0.3
            timeout = rng.choice((0.0, 0.0005, 0.002)) if timed else None
            if write:
                ok = lock.acquire_write(timeout=timeout)
            else:
                ok = lock.acquire_read(timeout=timeout)
            if not ok:
                with mutex:
                    done["timeouts"] += 1
                continue
            enter(write)
            if rng.random() < 0.5:
                time.sleep(0)
            leave(write)
            if write:
                lock.release_write()
            else:
                lock.release_read()

    for i in range(8):
        group.spawn(f"rw-stress-{i}", worker, i)
    assert group.join(DURATION + 20), "a thread is stuck in the lock"
    assert errors == []
    assert done["reads"] > 100 and done["writes"] > 20, done
    assert inside["max_readers"] >= 2
    # nothing leaked: no reader, writer or waiter is left recorded
    assert (lock._readers, lock._writer, lock._readers_waiting, lock._writers_waiting) == (
        0,
        False,
        0,
        0,
    )
    assert lock.acquire_write(timeout=0)
    lock.release_write()


def test_acquire_many_under_preemption() -> None:
    locks = [make_lock("AllocDir._lock") for _ in range(4)]
    counts = [0] * len(locks)
    stop = time.monotonic() + DURATION
    group = ThreadGroup("many-stress")

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            picked = rng.sample(range(len(locks)), rng.randint(1, 3))
            with acquire_many(*(locks[i] for i in picked)):
                for i in picked:
                    counts[i] += 1  # each count is guarded by its own lock
            assert held_locks() == []

    for i in range(6):
        group.spawn(f"many-stress-{i}", worker, i)
    assert group.join(DURATION + 20), "acquire_many deadlocked"
    assert all(count > 0 for count in counts)
    assert not any(lock.locked() for lock in locks)


def test_condition_over_checked_lock_ping_pong() -> None:
    lock = make_lock("AllocBroadcaster._lock")
    cond = threading.Condition(lock)
    state = {"turn": 0, "rounds": 0}
    stop = time.monotonic() + DURATION
    group = ThreadGroup("ping-pong")

    def player(me: int) -> None:
        while True:
            with cond:
                while state["turn"] != me and time.monotonic() < stop:
                    cond.wait(0.05)
                if time.monotonic() >= stop:
                    cond.notify_all()
                    return
                state["turn"] = 1 - me
                state["rounds"] += 1
                cond.notify_all()

    group.spawn("ping", player, 0)
    group.spawn("pong", player, 1)
    assert group.join(DURATION + 20)
    assert state["rounds"] > 50


def test_sync_primitives_under_preemption() -> None:
    kick = Kick()
    box: LatestValue[int] = LatestValue()
    stop_token = CancelToken()
    children = [stop_token.child() for _ in range(20)]
    group = ThreadGroup("sync-stress")
    seen_box: list[int] = []
    kicks = [0]

    def kicker() -> None:
        n = 0
        while not stop_token.cancelled():
            n += 1
            kick.kick()
            box.offer(n)

    def kick_waiter() -> None:
        while not stop_token.cancelled():
            if kick.wait(0.01):
                kicks[0] += 1

    def box_taker() -> None:
        while True:
            try:
                seen_box.append(box.take(0.05))
            except TimeoutError:
                continue
            except EOFError:
                return

    group.spawn("kicker", kicker)
    group.spawn("kick-waiter", kick_waiter)
    group.spawn("box-taker", box_taker)
    stop = time.monotonic() + DURATION
    n = 0
    while time.monotonic() < stop:  # meanwhile, children come and go
        n += 1
        child = stop_token.child()
        if n % 50 == 0:
            children.append(child)
    stop_token.cancel("stress over")
    box.close()
    assert group.join(20)
    assert kicks[0] > 0
    assert seen_box == sorted(set(seen_box)) and len(seen_box) > 0
    assert all(child.reason == "stress over" for child in children)


def test_broadcaster_under_preemption() -> None:
    base = mock_alloc()
    b = AllocBroadcaster()
    group = ThreadGroup("bcast-stress")
    mutex = threading.Lock()
    results: dict[str, list[int]] = {}
    stop = time.monotonic() + DURATION
    sent = [0]

    def consume(name: str, listener: AllocListener, close_after: int | None) -> None:
        got: list[int] = []
        with listener:
            for value in listener:
                got.append(value.alloc_modify_index)
                if close_after is not None and len(got) >= close_after:
                    break
        with mutex:
            results[name] = got

    def churn_listeners() -> None:
        # short-lived listeners come and go while sends run
        n = 0
        while time.monotonic() < stop:
            n += 1
            with b.listen() as listener:
                try:
                    first = listener.get(timeout=0.01)
                except (TimeoutError, BroadcasterClosed):
                    continue
                assert first.alloc_modify_index >= 1

    for i in range(8):
        close_after = 50 if i % 2 else None
        group.spawn(f"bcast-consumer-{i}", consume, f"c{i}", b.listen(), close_after)
    group.spawn("bcast-churn", churn_listeners)
    while time.monotonic() < stop:
        sent[0] += 1
        b.send(attrs.evolve(base, alloc_modify_index=sent[0]))
    b.close()
    assert group.join(20), "a consumer did not end after close"
    assert len(results) == 8
    for name, got in results.items():
        assert got == sorted(set(got)), f"{name} went backwards"
        assert got and got[-1] <= sent[0]
    for i in range(0, 8, 2):  # the ones that never stopped early end on the last value
        assert results[f"c{i}"][-1] == sent[0]
