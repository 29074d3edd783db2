"""AllocBroadcaster / AllocListener: ports of Nomad's broadcaster tests (semantics §9
items 1-5) plus the latest-only guarantees of DESIGN.md §5.3."""

from __future__ import annotations

import threading
import time

import attrs
import pytest

from allocrunner import _locking
from allocrunner._locking import make_lock
from allocrunner._sync import ThreadGroup
from allocrunner.broadcaster import AllocBroadcaster, AllocListener
from allocrunner.errors import BroadcasterClosed, CalloutUnderLockError
from allocrunner.structs import Allocation
from allocrunner.testing import assert_stays, mock_alloc, wait_for

BASE = mock_alloc()


def alloc(index: int) -> Allocation:
    return attrs.evolve(BASE, alloc_modify_index=index)


def _assert_equal(actual: object, expected: object) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"


# --- Nomad's tests ------------------------------------------------------------------------


def test_send_recv() -> None:
    """TestAllocBroadcaster_SendRecv: nothing until a send; two quick sends → the last."""
    b = AllocBroadcaster()
    with b.listen() as listener:
        with pytest.raises(TimeoutError):
            listener.get(timeout=0.05)
        b.send(alloc(1))
        assert listener.get(timeout=1.0).alloc_modify_index == 1
        b.send(alloc(2))
        b.send(alloc(3))
        assert listener.get(timeout=1.0).alloc_modify_index == 3
        with pytest.raises(TimeoutError):
            listener.get(timeout=0.05)
    b.close()


def test_recv_blocks() -> None:
    """TestAllocBroadcaster_RecvBlocks: two listeners block until one send reaches both."""
    b = AllocBroadcaster()
    got: list[int] = []
    lock = threading.Lock()
    group = ThreadGroup("recv-blocks")

    def receive(listener: AllocListener) -> None:
        with listener:
            value = listener.get(timeout=10)
        with lock:
            got.append(value.alloc_modify_index)

    for i in range(2):
        group.spawn(f"receiver-{i}", receive, b.listen())
    assert_stays(lambda: _assert_equal(got, []), 0.1)
    b.send(alloc(7))
    assert group.join(10)
    assert got == [7, 7]
    b.close()


def test_concurrency_never_goes_backwards() -> None:
    """TestAllocBroadcaster_Concurrency: 10 listeners x 200 sends, some listeners close
    mid-stream; indexes never go backwards; send after close fails; all listeners end."""
    b = AllocBroadcaster()
    listeners = [b.listen() for _ in range(10)]
    seen: dict[int, list[int]] = {i: [] for i in range(10)}
    ended: dict[int, str] = {}
    group = ThreadGroup("concurrency")

    def consume(i: int, listener: AllocListener) -> None:
        try:
            while True:
                value = listener.get(timeout=10)
                seen[i].append(value.alloc_modify_index)
                if i % 3 == 0 and len(seen[i]) >= 5:
                    listener.close()  # closing mid-stream, from the consumer itself
        except BroadcasterClosed as err:
            ended[i] = str(err)

    for i, listener in enumerate(listeners):
        group.spawn(f"consumer-{i}", consume, i, listener)
    for index in range(1, 201):
        b.send(alloc(index))
        if index == 100:
            listeners[1].close()  # and from another thread
        if index % 20 == 0:
            time.sleep(0.001)  # let consumers run between bursts
    wait_for(lambda: _assert_consumers_caught_up(seen, ended, 200), 10)
    b.close()
    with pytest.raises(BroadcasterClosed):
        b.send(alloc(201))
    assert group.join(10)
    assert sorted(ended) == list(range(10))
    for i, values in seen.items():
        assert values == sorted(set(values)), f"listener {i} went backwards: {values}"
        assert all(1 <= v <= 200 for v in values)
    assert "closed AllocListener" in ended[1] and all(v <= 100 for v in seen[1])
    for i in (0, 3, 6, 9):  # closed themselves after 5 values (if they got that many)
        assert "closed AllocListener" in ended[i] or seen[i][-1] == 200
    for i in (2, 4, 5, 7, 8):
        assert seen[i][-1] == 200 and "every value was seen" in ended[i]


def _assert_consumers_caught_up(
    seen: dict[int, list[int]], ended: dict[int, str], last: int
) -> None:
    behind = [i for i, values in seen.items() if i not in ended and (values or [0])[-1] != last]
    assert not behind, f"listeners not at {last} yet: {behind}"


def test_prime_listener() -> None:
    """TestAllocBroadcaster_PrimeListener: a late listener gets the last value at once."""
    b = AllocBroadcaster()
    b.send(alloc(1))
    b.send(alloc(2))
    with b.listen() as listener:
        assert listener.pending()
        assert listener.get(timeout=0).alloc_modify_index == 2
        assert not listener.pending()
    b.close()


def test_closed() -> None:
    """TestAllocBroadcaster_Closed: listening after close gives the primed value, then
    BroadcasterClosed."""
    b = AllocBroadcaster()
    b.send(alloc(9))
    b.close()
    with b.listen() as listener:
        assert listener.get(timeout=1.0).alloc_modify_index == 9
        with pytest.raises(BroadcasterClosed):
            listener.get(timeout=1.0)
    with b.listen() as listener:
        assert [a.alloc_modify_index for a in listener] == [9]


# --- the latest-only contract --------------------------------------------------------------


def test_slow_listener_gets_only_the_newest() -> None:
    b = AllocBroadcaster()
    with b.listen() as slow:
        for index in range(1, 101):
            b.send(alloc(index))
        assert slow.get(timeout=0).alloc_modify_index == 100
        with pytest.raises(TimeoutError):
            slow.get(timeout=0)
    b.close()


def test_no_value_before_the_first_send() -> None:
    b = AllocBroadcaster()
    listener = b.listen()
    assert not listener.pending() and b.last() is None
    b.close()
    with pytest.raises(BroadcasterClosed):
        listener.get(timeout=1.0)
    listener.close()


def test_pending_value_survives_close() -> None:
    b = AllocBroadcaster()
    with b.listen() as listener:
        b.send(alloc(4))
        b.close()
        assert listener.get(timeout=0).alloc_modify_index == 4
        with pytest.raises(BroadcasterClosed):
            listener.get(timeout=0)


def test_iteration_until_close() -> None:
    b = AllocBroadcaster()
    got: list[int] = []
    group = ThreadGroup("iterate")
    started = threading.Event()

    def iterate(listener: AllocListener) -> None:
        with listener:
            started.set()
            for value in listener:
                got.append(value.alloc_modify_index)

    group.spawn("iterator", iterate, b.listen())
    assert started.wait(10)
    for index in (1, 2, 3):
        b.send(alloc(index))
        wait_for(lambda index=index: _assert_equal(got[-1:], [index]), 10)
    b.close()
    assert group.join(10)
    assert got == [1, 2, 3]


def test_close_is_idempotent() -> None:
    b = AllocBroadcaster()
    listener = b.listen()
    b.close()
    b.close()
    assert b.is_closed()
    listener.close()
    listener.close()
    with pytest.raises(BroadcasterClosed):
        b.send(alloc(1))


def test_listener_close_wakes_a_blocked_get() -> None:
    b = AllocBroadcaster()
    listener = b.listen()
    errors: list[BaseException] = []
    group = ThreadGroup("listener-close")
    waiting = threading.Event()

    def block() -> None:
        waiting.set()
        try:
            listener.get(timeout=30)
        except BroadcasterClosed as err:
            errors.append(err)

    group.spawn("blocked-get", block)
    assert waiting.wait(10)
    assert_stays(lambda: _assert_equal(errors, []), 0.05)
    listener.close()
    assert group.join(5), "close did not wake the blocked get"
    assert len(errors) == 1 and "closed AllocListener" in str(errors[0])
    b.send(alloc(1))  # the broadcaster carries on for others
    with pytest.raises(BroadcasterClosed):
        listener.get(timeout=0)
    assert not listener.pending()
    b.close()


def test_broadcaster_close_wakes_every_blocked_get() -> None:
    b = AllocBroadcaster()
    ended: list[str] = []
    lock = threading.Lock()
    group = ThreadGroup("close-wakes")

    def block(listener: AllocListener) -> None:
        with listener:
            try:
                listener.get(timeout=30)
            except BroadcasterClosed:
                with lock:
                    ended.append(threading.current_thread().name)

    for i in range(5):
        group.spawn(f"blocked-{i}", block, b.listen())
    assert_stays(lambda: _assert_equal(ended, []), 0.05)
    b.close()
    assert group.join(5), "close did not wake the blocked gets"
    assert len(ended) == 5


def test_get_timeout_is_honoured() -> None:
    b = AllocBroadcaster()
    with b.listen() as listener:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            listener.get(timeout=0.1)
        assert 0.1 <= time.monotonic() - start < 5
    b.close()


def test_send_refuses_what_is_not_an_allocation() -> None:
    b = AllocBroadcaster()
    with pytest.raises(TypeError, match="Allocation, got dict"):
        b.send({"ID": "x"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="NoneType"):
        b.send(None)  # type: ignore[arg-type]
    assert b.last() is None
    b.close()


def test_last_and_repr() -> None:
    b = AllocBroadcaster()
    b.send(alloc(3))
    assert b.last() == alloc(3)
    listener = b.listen()
    assert "version=1" in repr(b)
    assert "seen=0" in repr(listener)
    listener.get(0)
    assert "seen=1" in repr(listener)
    b.close()


@pytest.mark.requires_lockcheck
def test_send_is_allowed_under_a_lock_but_get_is_a_callout() -> None:
    outer = make_lock("Cluster._lock")  # the one declared nesting: Cluster -> broadcaster
    b = AllocBroadcaster()
    listener = b.listen()
    with outer:
        b.send(alloc(1))  # a leaf lock taken under an outer one: legal
        with pytest.raises(CalloutUnderLockError):
            listener.get(timeout=0)
    assert len(_locking.take_violations()) == 1
    assert listener.get(timeout=0).alloc_modify_index == 1
    b.close()


def test_send_never_waits_for_listeners() -> None:
    """A thousand listeners that never read cost a send nothing: it only bumps the slot."""
    b = AllocBroadcaster()
    idle = [b.listen() for _ in range(1000)]
    start = time.monotonic()
    for index in range(1, 101):
        b.send(alloc(index))
    assert time.monotonic() - start < 5
    assert all(listener.get(timeout=0).alloc_modify_index == 100 for listener in idle)
    b.close()


def test_blocked_listeners_are_counted_and_forgotten() -> None:
    b = AllocBroadcaster()
    listeners = [b.listen() for _ in range(3)]
    group = ThreadGroup("blocked-count")
    outcomes: list[str] = []
    lock = threading.Lock()

    def block(listener: AllocListener, timeout: float) -> None:
        try:
            listener.get(timeout=timeout)
            outcome = "value"
        except TimeoutError:
            outcome = "timeout"
        except BroadcasterClosed:
            outcome = "closed"
        with lock:
            outcomes.append(outcome)

    group.spawn("times-out", block, listeners[0], 0.2)
    group.spawn("gets-closed", block, listeners[1], 30)
    group.spawn("gets-a-value", block, listeners[2], 30)
    wait_for(lambda: _assert_equal(b.blocked_listeners(), 3), 10)
    wait_for(lambda: _assert_equal(outcomes, ["timeout"]), 10)
    assert b.blocked_listeners() == 2  # the timed-out wait left nothing behind
    listeners[1].close()
    wait_for(lambda: _assert_equal(sorted(outcomes), ["closed", "timeout"]), 5)
    assert b.blocked_listeners() == 1
    b.send(alloc(1))
    assert group.join(5)
    assert sorted(outcomes) == ["closed", "timeout", "value"]
    assert b.blocked_listeners() == 0
    b.close()
