"""`LocalPrevAlloc.wait` blocks without timed wake-ups: it is woken by a new view of the
previous allocation, by its broadcaster closing, or by its cancel token (which closes
the listener), and it never re-checks on a timer."""

from __future__ import annotations

import pytest

from allocrunner._sync import CancelToken, ThreadGroup, Waiter
from allocrunner.allocwatcher import LocalPrevAlloc, PrevAllocWaitCancelled
from allocrunner.structs import CLIENT_RUNNING
from allocrunner.testing import assert_stays, wait_for

from .helpers import TASKS, PrevRunner, prev_and_next, run_in_thread


@pytest.fixture
def threads():
    group = ThreadGroup("allocwatcher-test")
    yield group
    assert group.join(timeout=10), "a watcher thread did not finish"


@pytest.fixture
def timed_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every `Waiter.wait` given a timeout (the listener's ``get`` blocks on a Waiter)."""
    timed: list[float] = []
    original = Waiter.wait

    def wait(self: Waiter, timeout: float | None = None) -> bool:
        if timeout is not None:
            timed.append(timeout)
        return original(self, timeout)

    monkeypatch.setattr(Waiter, "wait", wait)
    return timed


def _watcher(runner: PrevRunner) -> LocalPrevAlloc:
    return LocalPrevAlloc(runner._client, runner.alloc_dir, runner.listen, TASKS, False)


def _check(value: bool) -> None:
    assert value


def test_cancel_wakes_a_blocked_wait_with_no_timed_wake_up(threads, timed_waits) -> None:
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, None)
    watcher = _watcher(runner)
    cancel = CancelToken()
    done = run_in_thread(threads, "waiter", watcher.wait, cancel)
    wait_for(lambda: _check(runner.broadcaster.blocked_listeners() == 1))
    assert_stays(lambda: _check(not done.done.is_set()), 0.1)
    cancel.cancel("agent shutting down")
    assert done.done.wait(5)
    assert isinstance(done.error, PrevAllocWaitCancelled)
    assert timed_waits == []
    assert runner.broadcaster.blocked_listeners() == 0


def test_views_wake_the_wait_until_one_is_terminal(threads, timed_waits) -> None:
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, None)
    watcher = _watcher(runner)
    done = run_in_thread(threads, "waiter", watcher.wait, CancelToken())
    wait_for(lambda: _check(runner.broadcaster.blocked_listeners() == 1))
    runner.set_status(CLIENT_RUNNING)
    wait_for(lambda: _check(runner.broadcaster.blocked_listeners() == 1))
    assert not done.done.is_set()
    runner.finish()
    assert done.done.wait(5)
    assert done.error is None
    assert timed_waits == []


def test_a_closed_broadcaster_ends_the_wait_and_a_later_cancel_is_harmless(threads) -> None:
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, None)
    watcher = _watcher(runner)
    cancel = CancelToken()
    done = run_in_thread(threads, "waiter", watcher.wait, cancel)
    wait_for(lambda: _check(runner.broadcaster.blocked_listeners() == 1))
    runner.broadcaster.close()
    assert done.done.wait(5)
    assert done.error is None
    cancel.cancel()  # the callback was withdrawn: nothing runs
