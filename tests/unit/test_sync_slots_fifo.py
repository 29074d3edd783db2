"""`Slots` (a counting semaphore) and `Fifo` (a queue that never blocks) from `_sync`:
the two primitives that replace the hand-made semaphore and queues of the package."""

from __future__ import annotations

import threading

import pytest

from allocrunner import _locking
from allocrunner._locking import make_lock
from allocrunner._sync import Fifo, Slots, ThreadGroup
from allocrunner.errors import CalloutUnderLockError
from allocrunner.testing import wait_for


def test_slots_admit_at_most_count_holders() -> None:
    slots = Slots(2)
    assert slots.acquire(0) and slots.acquire(0)
    assert not slots.acquire(0.01)
    assert slots.free() == 0
    slots.release()
    assert slots.acquire(0)
    slots.release()
    slots.release()
    assert slots.free() == 2
    with pytest.raises(ValueError, match="without a matching acquire"):
        slots.release()
    with pytest.raises(ValueError):
        Slots(0)


def test_a_release_wakes_one_waiter() -> None:
    slots = Slots(1)
    assert slots.acquire()
    got: list[bool] = []
    group = ThreadGroup("slots")
    group.spawn("slots-waiter", lambda: got.append(slots.acquire(10)))
    wait_for(lambda: _assert(slots.free() == 0 and not got))
    slots.release()
    assert group.join(10)
    assert got == [True] and slots.free() == 0


def test_never_more_holders_than_slots_under_contention() -> None:
    slots = Slots(3)
    mutex = threading.Lock()  # test-side tally
    inside = [0, 0]  # now, most

    def work() -> None:
        for _ in range(200):
            assert slots.acquire(10)
            with mutex:
                inside[0] += 1
                inside[1] = max(inside[1], inside[0])
            with mutex:
                inside[0] -= 1
            slots.release()

    group = ThreadGroup("slots-contention")
    for n in range(6):
        group.spawn(f"slots-{n}", work)
    assert group.join(30)
    assert inside[0] == 0 and 1 <= inside[1] <= 3
    assert slots.free() == 3


@pytest.mark.requires_lockcheck
def test_waiting_for_a_slot_under_a_lock_is_a_callout() -> None:
    slots = Slots(1)
    with make_lock("GCQueue._lock"), pytest.raises(CalloutUnderLockError):
        slots.acquire(0)
    assert len(_locking.take_violations()) == 1
    with make_lock("GCQueue._lock"):
        assert slots.free() == 1  # releasing and asking are notify-only


def test_fifo_is_first_in_first_out_and_never_blocks() -> None:
    fifo: Fifo[int] = Fifo([1, 2])
    fifo.put(3)
    assert fifo.take() == 1
    assert fifo.drain() == [2, 3]
    assert fifo.take() is None
    assert fifo.drain() == []


def test_fifo_hands_every_item_to_exactly_one_taker() -> None:
    fifo: Fifo[int] = Fifo(range(1000))
    taken: Fifo[int] = Fifo()

    def work() -> None:
        while (item := fifo.take()) is not None:
            taken.put(item)

    group = ThreadGroup("fifo")
    for n in range(4):
        group.spawn(f"fifo-{n}", work)
    assert group.join(30)
    assert sorted(taken.drain()) == list(range(1000))


def _assert(condition: bool) -> None:
    assert condition
