"""TaskMailbox: the run phase, restart requests that always end with `done` set, update
flags, and the wake token every post cancels."""

from __future__ import annotations

import random
import threading

import pytest

from allocrunner._sync import ThreadGroup
from allocrunner.errors import AllocRunnerError, TaskNotRunningError
from allocrunner.taskrunner.lifecycle import RunPhase, TaskMailbox


@pytest.fixture
def box() -> TaskMailbox:
    return TaskMailbox("web")


# --- the run phase ------------------------------------------------------------------------


def test_open_once(box) -> None:
    assert box.phase() is RunPhase.NEW
    assert box.open()
    assert box.phase() is RunPhase.RUNNING
    with pytest.raises(AllocRunnerError, match="called twice"):
        box.open()
    box.close()
    assert box.phase() is RunPhase.ENDED
    with pytest.raises(AllocRunnerError, match="called twice"):
        box.open()


def test_preempt_only_before_open(box) -> None:
    assert box.preempt()
    assert not box.preempt()  # once
    assert box.phase() is RunPhase.PREEMPTED
    assert not box.open()  # run() then returns at once
    other = TaskMailbox("web")
    assert other.open()
    assert not other.preempt()
    assert other.phase() is RunPhase.RUNNING


def test_run_thread_identity(box) -> None:
    assert not box.on_run_thread()
    box.open()
    assert box.on_run_thread()
    seen: list[bool] = []
    group = ThreadGroup("mailbox-other")
    group.spawn("mailbox-other", lambda: seen.append(box.on_run_thread()))
    assert group.join(10)
    assert seen == [False]
    box.close()
    assert not box.on_run_thread()


def test_a_run_begun_on_one_thread_is_adopted_by_another(box) -> None:
    # `TaskRunner.start_first` opens the mailbox on the launching thread, and the
    # thread that goes on adopts the run: from then on it alone is the run thread.
    box.open()
    seen: list[tuple[bool, bool]] = []
    group = ThreadGroup("mailbox-adopter")
    group.spawn("mailbox-adopter", lambda: seen.append((box.adopt(), box.on_run_thread())))
    assert group.join(10)
    assert seen == [(True, True)]
    assert not box.on_run_thread()
    assert box.phase() is RunPhase.RUNNING


def test_a_preempted_or_ended_run_is_not_adopted(box) -> None:
    assert box.preempt()
    assert not box.adopt()  # the thread that goes on then waits for the runner's end
    assert box.phase() is RunPhase.PREEMPTED
    ended = TaskMailbox("web")
    ended.open()
    ended.close()
    assert not ended.adopt()
    assert not ended.on_run_thread()


def test_parked_only_while_running(box) -> None:
    box.set_parked(True)
    assert not box.is_parked()
    box.open()
    box.set_parked(True)
    assert box.is_parked()
    box.close()
    assert not box.is_parked()


# --- restart requests -----------------------------------------------------------------------


def test_requests_for_one_target_are_joined_and_a_failure_wins(box) -> None:
    first = box.post_restart("t1", failure=False)
    second = box.post_restart("t1", failure=True)
    assert second.done is first.done and second.failure
    assert box.look().restart is second
    assert box.post_restart("t1", failure=False) is second  # a failure stays a failure


def test_a_request_for_another_target_supersedes(box) -> None:
    old = box.post_restart("t1", failure=False)
    new = box.post_restart(None, failure=False)
    assert old.done.is_set() and not new.done.is_set()
    assert box.look().restart is new


def test_take_consumes_a_matching_request_and_drops_a_stale_one(box) -> None:
    req = box.post_restart("t1", failure=False)
    assert box.take_restart(req, "t1")
    assert not req.done.is_set()  # the taker sets it once it acted
    assert box.look().restart is None
    assert not box.take_restart(req, "t1")  # no longer pending
    stale = box.post_restart("t1", failure=False)
    assert not box.take_restart(stale, "t2")
    assert stale.done.is_set() and box.look().restart is None


def test_withdraw_and_drop_release_the_waiter(box) -> None:
    req = box.post_restart("t1", failure=False)
    box.drop_restart_of("t2")
    assert not req.done.is_set()
    box.drop_restart_of("t1")
    assert req.done.is_set() and box.look().restart is None
    other = box.post_restart("t1", failure=False)
    box.withdraw(req)  # not the pending one: nothing happens
    assert not other.done.is_set()
    box.withdraw(other)
    assert other.done.is_set()


@pytest.mark.parametrize("end", ["close", "preempt"])
def test_the_end_of_the_run_releases_and_refuses_requests(box, end) -> None:
    if end == "close":
        box.open()
    req = box.post_restart("t1", failure=False)
    box.post_update()
    if end == "close":
        box.close()
    else:
        box.preempt()
    assert req.done.is_set()
    inbox = box.look()
    assert inbox.restart is None and not inbox.update
    with pytest.raises(TaskNotRunningError, match="run complete"):
        box.post_restart("t1", failure=False)
    box.post_update()  # dropped
    assert not box.look().update


# --- updates and the wake token -------------------------------------------------------------


def test_update_is_a_flag_taken_once(box) -> None:
    assert not box.take_update()
    box.post_update()
    box.post_update()
    assert box.look().update
    assert box.take_update()
    assert not box.take_update()


@pytest.mark.parametrize("post", ["update", "restart"])
def test_every_post_cancels_the_wake_token_seen_before_it(box, post) -> None:
    before = box.look()
    assert not before.wake.cancelled()
    if post == "update":
        box.post_update()
    else:
        box.post_restart("t1", failure=False)
    assert before.wake.cancelled()
    after = box.look()
    assert after.wake is not before.wake and not after.wake.cancelled()


def test_no_request_is_left_waiting(fast_switching, box) -> None:
    """Posters race a taker that acts on some requests, drops others, and then ends the
    run: every request any poster got ends with `done` set."""
    box.open()
    posted: list[object] = []
    mutex = threading.Lock()
    stop = threading.Event()
    group = ThreadGroup("mailbox-race")

    def poster(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            try:
                req = box.post_restart(rng.choice(["t1", "t2", None]), rng.random() < 0.5)
            except TaskNotRunningError:
                return
            with mutex:
                posted.append(req)
            if rng.random() < 0.2:
                box.withdraw(req)

    def taker() -> None:
        rng = random.Random(99)
        for _ in range(2000):
            req = box.look().restart
            if req is not None and box.take_restart(req, rng.choice(["t1", "t2", None])):
                req.done.set()
        box.close()
        stop.set()

    for n in range(4):
        group.spawn(f"mailbox-poster-{n}", poster, n)
    group.spawn("mailbox-taker", taker)
    assert group.join(30)
    assert posted
    assert all(req.done.is_set() for req in posted)
