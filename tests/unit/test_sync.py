"""CancelToken, Event, Kick, LatestValue and ThreadGroup: the Go context/channel replacements."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from allocrunner import _locking
from allocrunner._locking import make_lock
from allocrunner._sync import CancelToken, Event, Kick, LatestValue, ThreadGroup, Waiter
from allocrunner.errors import CalloutUnderLockError
from allocrunner.testing import assert_stays, wait_for

# --- CancelToken -------------------------------------------------------------------------


def test_cancel_once_keeps_the_first_reason() -> None:
    token = CancelToken()
    assert not token.cancelled() and token.reason is None
    assert token.cancel("shutdown")
    assert not token.cancel("destroy")
    assert token.cancelled() and token.reason == "shutdown"
    assert token.wait(0)


def test_cancel_default_reason() -> None:
    token = CancelToken()
    token.cancel()
    assert token.reason == "cancelled"


def test_wait_times_out_then_wakes_on_cancel() -> None:
    token = CancelToken()
    start = time.monotonic()
    assert not token.wait(0.05)
    assert time.monotonic() - start >= 0.05
    woke: list[bool] = []
    group = ThreadGroup("waiters")
    for i in range(3):
        group.spawn(f"waiter-{i}", lambda: woke.append(token.wait(10)))
    assert_stays(lambda: _assert_equal(woke, []), 0.05)
    token.cancel("go")
    assert group.join(10)
    assert woke == [True, True, True]


def test_any_of_follows_whichever_parent_cancels_first() -> None:
    a, b = CancelToken(), CancelToken()
    joined = CancelToken.any_of(a, b)
    assert not joined.cancelled()
    b.cancel("b went")
    assert joined.cancelled() and joined.reason == "b went"
    a.cancel("a later")
    assert joined.reason == "b went"


def test_any_of_with_an_already_cancelled_parent() -> None:
    a, b = CancelToken(), CancelToken()
    a.cancel("early")
    joined = CancelToken.any_of(b, a)
    assert joined.cancelled() and joined.reason == "early"
    # it no longer hangs on the other parent, which keeps no table for it
    assert b._children is None


def test_any_of_nothing_is_only_cancelled_by_hand() -> None:
    token = CancelToken.any_of()
    assert not token.cancelled()
    token.cancel("own")
    assert token.reason == "own"


def test_child_follows_parent_but_not_the_reverse() -> None:
    parent = CancelToken()
    child = parent.child()
    grandchild = child.child()
    child.cancel("child only")
    assert not parent.cancelled()
    assert grandchild.reason == "child only"
    other = parent.child()
    parent.cancel("parent")
    assert other.reason == "parent"


def children_kept(token: CancelToken) -> int:
    """How many derived tokens `token` keeps a reference to, dead or alive."""
    children = token._children
    if children is None:
        return 0
    return len(children) if isinstance(children, dict) else 1


def test_cancelled_child_is_forgotten_by_its_parent() -> None:
    parent = CancelToken()
    child = parent.child()
    assert children_kept(parent) == 1
    child.cancel("done")
    assert parent._children is None


def test_a_lone_child_is_kept_without_a_table_and_the_second_makes_one() -> None:
    """One child is kept as its weak reference; a second makes the table, and both are
    cancelled with the parent; forgetting them all drops the table."""
    parent = CancelToken()
    first = parent.child()
    assert not isinstance(parent._children, dict)
    second = parent.child()
    assert isinstance(parent._children, dict) and children_kept(parent) == 2
    first.cancel("first")
    second.cancel("second")
    assert parent._children is None
    third, fourth = parent.child(), parent.child()
    parent.cancel("parent")
    assert (third.reason, fourth.reason) == ("parent", "parent")


def test_a_dead_lone_child_gives_its_place_to_the_next() -> None:
    parent = CancelToken()
    parent.child()  # dropped at once
    gc.collect()
    kept = parent.child()
    assert not isinstance(parent._children, dict)
    parent.cancel("stop")
    assert kept.reason == "stop"


def test_parent_does_not_keep_dead_children_alive() -> None:
    parent = CancelToken()
    kept = [parent.child() for _ in range(3)]
    for _ in range(1000):
        parent.child()  # dropped at once, as a finished component drops its token
    gc.collect()
    assert children_kept(parent) < 64
    parent.cancel("stop")
    assert all(child.reason == "stop" for child in kept)


def test_concurrent_cancel_has_one_winner() -> None:
    token = CancelToken()
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait(10)
        if token.cancel(f"r{i}"):
            wins.append(f"r{i}")

    group = ThreadGroup("cancel-race")
    for i in range(8):
        group.spawn(f"cancel-{i}", race, i)
    assert group.join(10)
    assert len(wins) == 1 and token.reason == wins[0]


@pytest.mark.requires_lockcheck
def test_wait_under_a_lock_is_a_callout() -> None:
    lock = make_lock("AllocBroadcaster._lock")
    with lock, pytest.raises(CalloutUnderLockError):
        CancelToken().wait(0)
    assert len(_locking.take_violations()) == 1


def test_cancel_under_a_lock_is_allowed() -> None:
    lock = make_lock("AllocBroadcaster._lock")
    token = CancelToken()
    with lock:
        token.cancel("notify-only")
    assert token.cancelled()


# --- Event -------------------------------------------------------------------------------


def test_event_is_set_once_and_stays_set() -> None:
    event = Event()
    assert not event.is_set()
    assert not event.wait(0)
    assert event.set()
    assert not event.set()  # a second set changes nothing and says so
    assert event.is_set()
    assert event.wait(0) and event.wait(None)


def test_event_wakes_every_waiter_present_and_future() -> None:
    event = Event()
    woke: list[bool] = []
    group = ThreadGroup("event-waiters")
    for i in range(3):
        group.spawn(f"event-waiter-{i}", lambda: woke.append(event.wait(10)))
    assert_stays(lambda: _assert_equal(woke, []), 0.05)
    event.set()
    assert group.join(10)
    assert woke == [True, True, True]
    assert event.wait(0)  # a waiter that comes later does not block


def test_event_wait_times_out() -> None:
    event = Event()
    start = time.monotonic()
    assert not event.wait(0.05)
    assert time.monotonic() - start >= 0.05


def test_concurrent_event_set_has_one_winner() -> None:
    event = Event()
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait(10)
        if event.set():
            wins.append(i)

    group = ThreadGroup("event-race")
    for i in range(8):
        group.spawn(f"event-set-{i}", race, i)
    assert group.join(10)
    assert len(wins) == 1 and event.is_set()


@pytest.mark.requires_lockcheck
def test_event_set_under_a_lock_is_allowed_but_waiting_is_not() -> None:
    lock = make_lock("AllocBroadcaster._lock")
    event = Event()
    with lock:
        event.set()
        with pytest.raises(CalloutUnderLockError):
            event.wait(0)
    assert len(_locking.take_violations()) == 1
    assert event.wait(0)


# --- Kick --------------------------------------------------------------------------------


def test_kicks_coalesce() -> None:
    kick = Kick()
    assert not kick.pending()
    for _ in range(5):
        kick.kick()
    assert kick.pending()
    assert kick.wait(0)
    assert not kick.pending()
    assert not kick.wait(0.01)


def test_kick_wakes_a_waiter() -> None:
    kick = Kick()
    got: list[bool] = []
    group = ThreadGroup("kick")
    group.spawn("kick-waiter", lambda: got.append(kick.wait(10)))
    assert_stays(lambda: _assert_equal(got, []), 0.05)
    kick.kick()
    assert group.join(10)
    assert got == [True] and not kick.pending()


@pytest.mark.requires_lockcheck
def test_kick_under_a_lock_is_allowed_but_waiting_is_not() -> None:
    lock = make_lock("AllocBroadcaster._lock")
    kick = Kick()
    with lock:
        kick.kick()
        with pytest.raises(CalloutUnderLockError):
            kick.wait(0)
    assert len(_locking.take_violations()) == 1
    assert kick.wait(0)


# --- LatestValue -------------------------------------------------------------------------


def test_latest_value_newest_wins() -> None:
    box: LatestValue[int] = LatestValue()
    assert box.poll() is None and box.peek() is None
    assert box.offer(1) and box.offer(2) and box.offer(3)
    assert box.peek() == 3
    assert box.take(0) == 3
    assert box.poll() is None


def test_latest_value_keep_pending() -> None:
    box: LatestValue[int] = LatestValue()

    def keep_higher(pending: int, new: int) -> bool:
        return pending >= new

    assert box.offer(5, keep_pending=keep_higher)
    assert not box.offer(3, keep_pending=keep_higher)
    assert box.peek() == 5
    assert box.offer(7, keep_pending=keep_higher)
    assert box.take(0) == 7
    # with nothing pending the rule does not apply
    assert box.offer(1, keep_pending=keep_higher)
    assert box.poll() == 1


def test_latest_value_take_timeout() -> None:
    box: LatestValue[str] = LatestValue()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        box.take(0.05)
    assert time.monotonic() - start >= 0.05


def test_latest_value_take_wakes_on_offer() -> None:
    box: LatestValue[str] = LatestValue()
    got: list[str] = []
    group = ThreadGroup("latest")
    group.spawn("latest-taker", lambda: got.append(box.take(10)))
    assert_stays(lambda: _assert_equal(got, []), 0.05)
    box.offer("hello")
    assert group.join(10)
    assert got == ["hello"]


def test_latest_value_close() -> None:
    box: LatestValue[str] = LatestValue()
    box.offer("last")
    box.close()
    assert not box.offer("dropped")
    assert box.take(0) == "last"
    with pytest.raises(EOFError):
        box.take(0)
    with pytest.raises(EOFError):
        box.take(None)


def test_latest_value_close_wakes_a_taker() -> None:
    box: LatestValue[str] = LatestValue()
    errors: list[BaseException] = []

    def take() -> None:
        try:
            box.take(10)
        except EOFError as err:
            errors.append(err)

    group = ThreadGroup("latest-close")
    group.spawn("latest-closed-taker", take)
    assert_stays(lambda: _assert_equal(errors, []), 0.05)
    box.close()
    assert group.join(10)
    assert len(errors) == 1


# --- ThreadGroup -------------------------------------------------------------------------


def test_thread_group_names_and_joins() -> None:
    group = ThreadGroup("alloc-12345678")
    release = threading.Event()
    names: list[str] = []

    def work() -> None:
        names.append(threading.current_thread().name)
        release.wait(10)

    a = group.spawn("task-12345678-web", work)
    b = group.spawn("task-12345678-log", work)
    assert group.name == "alloc-12345678"
    assert a.daemon and b.daemon
    wait_for(lambda: _assert_equal(sorted(names), ["task-12345678-log", "task-12345678-web"]))
    assert set(group.alive()) == {a, b}
    assert not group.join(0.05)
    release.set()
    assert group.join(10)
    assert group.alive() == []


def test_thread_group_threads_share_their_started_event_and_excepthook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group's threads keep no started Event and no excepthook closure of their own
    (fifteen objects each for the collector to walk), and behave as threads: alive
    until their target returns, joinable, and an exception in one reaches the
    `threading.excepthook` in force when it is raised."""
    caught: list[tuple[str, str]] = []
    monkeypatch.setattr(
        threading,
        "excepthook",
        lambda args: caught.append((args.thread.name, str(args.exc_value))),
    )
    group = ThreadGroup("lean")
    release = threading.Event()

    def fail() -> None:
        release.wait(10)
        raise RuntimeError("boom")

    a = group.spawn("lean-a", release.wait, 10)
    b = group.spawn("lean-b", fail)
    assert a._started is b._started and a._started.is_set()  # type: ignore[attr-defined]
    assert a._invoke_excepthook is b._invoke_excepthook  # type: ignore[attr-defined]
    assert a.is_alive() and b.is_alive() and "started" in repr(a)
    release.set()
    assert group.join(10)
    assert not a.is_alive() and not b.is_alive()
    assert caught == [("lean-b", "boom")]


def test_thread_group_join_skips_the_calling_thread() -> None:
    group = ThreadGroup("self-join")
    result: list[bool] = []
    group.spawn("self-joiner", lambda: result.append(group.join(1)))
    wait_for(lambda: _assert_equal(result, [True]))
    assert group.join(10)


def test_thread_group_forgets_finished_threads() -> None:
    group = ThreadGroup("churn")
    for i in range(500):
        group.spawn(f"churn-{i}", lambda: None).join(10)
        # The record is purged of the dead once it reaches 16 (twice the live ones,
        # at least 16): it never grows with the number of finished threads.
        assert len(group._threads) <= 16, f"{len(group._threads)} threads recorded"
    assert group.join(10)
    assert group.alive() == []


@pytest.mark.requires_lockcheck
def test_thread_group_join_under_a_lock_is_a_callout() -> None:
    group = ThreadGroup("locked-join")
    lock = make_lock("AllocBroadcaster._lock")
    with lock, pytest.raises(CalloutUnderLockError):
        group.join(0)
    assert len(_locking.take_violations()) == 1


def _assert_equal(actual: object, expected: object) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"


# --- Waiter ------------------------------------------------------------------------------


def test_waiter_wakes_a_blocked_thread() -> None:
    waiter = Waiter()
    got: list[bool] = []
    group = ThreadGroup("waiter")
    group.spawn("blocked-waiter", lambda: got.append(waiter.wait(10)))
    assert_stays(lambda: _assert_equal(got, []), 0.05)
    waiter.wake()
    assert group.join(10)
    assert got == [True]


def test_waiter_wake_before_wait_is_not_lost_and_extra_wakes_are_harmless() -> None:
    waiter = Waiter()
    waiter.wake()
    waiter.wake()
    assert waiter.wait(0)


def test_waiter_timeout() -> None:
    waiter = Waiter()
    start = time.monotonic()
    assert not waiter.wait(0.05)
    assert time.monotonic() - start >= 0.05
    assert not waiter.wait(0)
    assert not waiter.wait(-1)


@pytest.mark.requires_lockcheck
def test_waiter_wake_under_a_lock_is_allowed_but_waiting_is_not() -> None:
    lock = make_lock("AllocBroadcaster._lock")
    waiter = Waiter()
    with lock:
        waiter.wake()
        with pytest.raises(CalloutUnderLockError):
            waiter.wait(0)
    assert len(_locking.take_violations()) == 1
    assert waiter.wait(0)
