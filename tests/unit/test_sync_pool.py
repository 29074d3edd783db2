"""The `_sync` pieces of a fixed worker pool: `WorkQueue` (blocking take, close),
`Event.on_set` and `Event.wait(cancel=...)` (wake on an event or a token, no polling),
and a `ThreadGroup` whose record of threads stays proportional to the live ones."""

from __future__ import annotations

import threading

import pytest

from allocrunner._sync import CancelToken, Event, ThreadGroup, WorkQueue
from allocrunner.testing import assert_stays, wait_for

pytestmark = pytest.mark.timeout(30)


def _assert(cond: bool, message: str = "condition not met") -> None:
    assert cond, message


# --- WorkQueue -----------------------------------------------------------------------------


def test_work_queue_is_first_in_first_out() -> None:
    q: WorkQueue[int] = WorkQueue()
    for i in range(5):
        assert q.put(i)
    assert len(q) == 5
    assert [q.take() for _ in range(5)] == [0, 1, 2, 3, 4]
    assert len(q) == 0


def test_work_queue_take_blocks_until_an_item_comes() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    group = ThreadGroup("wq")
    group.spawn("wq-taker", lambda: got.append(q.take()))
    assert_stays(lambda: _assert(got == [], f"took {got} from an empty queue"), 0.05)
    q.put("job")
    wait_for(lambda: _assert(got == ["job"], f"got {got}"))
    assert group.join(10)


def test_work_queue_close_wakes_every_taker_and_returns_the_rest() -> None:
    q: WorkQueue[int] = WorkQueue()
    got: list[int | None] = []
    group = ThreadGroup("wq-close")
    for i in range(3):
        group.spawn(f"wq-taker-{i}", lambda: got.append(q.take()))
    wait_for(lambda: _assert(len(group.alive()) == 3, "takers not started"))
    assert q.close() == []
    assert group.join(10)
    assert got == [None, None, None]
    assert q.closed()
    assert not q.put(7), "a closed queue refuses work"
    assert q.take() is None


def test_work_queue_close_hands_back_untaken_items_oldest_first() -> None:
    q: WorkQueue[int] = WorkQueue()
    for i in range(4):
        q.put(i)
    assert q.take() == 0
    assert q.close() == [1, 2, 3]
    assert q.close() == [], "close is idempotent"
    assert q.take() is None


def test_work_queue_each_item_is_taken_once_by_a_pool() -> None:
    q: WorkQueue[int] = WorkQueue()
    taken: list[int] = []
    mutex = threading.Lock()

    def work() -> None:
        while (item := q.take()) is not None:
            with mutex:
                taken.append(item)

    group = ThreadGroup("wq-pool")
    for n in range(4):
        group.spawn(f"wq-worker-{n}", work)
    for i in range(1000):
        q.put(i)
    wait_for(lambda: _assert(len(taken) == 1000, f"{len(taken)} of 1000 taken"))
    q.close()
    assert group.join(10)
    assert sorted(taken) == list(range(1000))


# --- Event.on_set / wait(cancel=...) ---------------------------------------------------


def test_on_set_runs_once_when_set_and_at_once_when_already_set() -> None:
    event = Event()
    calls: list[str] = []
    event.on_set(lambda: calls.append("a"))
    withdraw = event.on_set(lambda: calls.append("withdrawn"))
    withdraw()
    assert calls == []
    assert event.set()
    assert not event.set()
    assert calls == ["a"]
    event.on_set(lambda: calls.append("late"))()
    assert calls == ["a", "late"]


def test_event_wait_wakes_on_the_set() -> None:
    event = Event()
    token = CancelToken()
    got: list[bool] = []
    group = ThreadGroup("ev")
    group.spawn("ev-waiter", lambda: got.append(event.wait(cancel=token)))
    assert_stays(lambda: _assert(got == [], "woke early"), 0.05)
    event.set()
    assert group.join(10)
    assert got == [True]


def test_event_wait_wakes_on_the_token_and_reports_not_set() -> None:
    event = Event()
    token = CancelToken()
    got: list[bool] = []
    group = ThreadGroup("ev-cancel")
    group.spawn("ev-waiter", lambda: got.append(event.wait(cancel=token)))
    assert_stays(lambda: _assert(got == [], "woke early"), 0.05)
    token.cancel("stop")
    assert group.join(10)
    assert got == [False]
    assert not event.is_set()


def test_event_wait_with_a_token_keeps_its_timeout() -> None:
    event = Event()
    assert not event.wait(0.01, cancel=CancelToken())
    event.set()
    assert event.wait(0, cancel=CancelToken())


def test_event_wait_withdraws_its_callbacks() -> None:
    event = Event()
    token = CancelToken()
    for _ in range(100):
        assert not event.wait(0, cancel=token)
    assert event._callbacks == ()
    assert token._callbacks == ()


# --- ThreadGroup ---------------------------------------------------------------------------


def test_thread_group_record_stays_proportional_to_live_threads() -> None:
    group = ThreadGroup("mixed")
    release = threading.Event()
    for i in range(10):
        group.spawn(f"mixed-long-{i}", release.wait, 10)
    peak_alive = 0
    for i in range(1000):
        # A purge keeps the live threads and waits for the record to double: the record
        # stays within twice the most threads ever alive, however many have ended.
        peak_alive = max(peak_alive, len(group.alive()) + 1)
        group.spawn(f"mixed-short-{i}", lambda: None)
        assert len(group._threads) <= max(16, 2 * peak_alive) + 1
    assert len(group.alive()) >= 10
    release.set()
    assert group.join(10)
    assert group.alive() == []


def test_thread_group_join_waits_for_every_live_thread() -> None:
    group = ThreadGroup("join-all")
    release = threading.Event()
    for i in range(40):
        group.spawn(f"join-short-{i}", lambda: None)
    group.spawn("join-long", release.wait, 10)
    assert not group.join(0.01)
    assert "join-long" in [t.name for t in group.alive()]
    release.set()
    assert group.join(10)
    assert not any(t.name.startswith("join-") for t in threading.enumerate())
