"""The interleaving harness: unarmed checkpoints do nothing, a hold stops the first
thread that reaches its point until released (or until another hold was passed),
marks only record, a stall delays every thread, and leaving the harness releases
everything. The list of checkpoints matches the ones placed in the package."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from allocrunner import _checkpoints
from allocrunner._checkpoints import CHECKPOINTS, Hold, Stall, armed, checkpoint, mark
from allocrunner._locking import CalloutUnderLockError, make_lock


def _spawn(target, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread


def test_unarmed_checkpoint_is_a_no_op():
    assert _checkpoints._armed is None
    checkpoint("anything", "at all")


def test_a_hold_stops_the_first_thread_until_released():
    hold = Hold("point")
    order: list[str] = []
    with armed(hold):
        first = _spawn(lambda: (checkpoint("point"), order.append("first")), "cp-first")
        assert hold.wait_arrived(5)
        second = _spawn(lambda: (checkpoint("point"), order.append("second")), "cp-second")
        second.join(5)
        assert order == ["second"], "a later thread goes by a hold already taken"
        assert not hold.passed()
        hold.release()
        first.join(5)
    assert order == ["second", "first"]
    assert hold.passed() and not hold.timed_out()


def test_a_hold_matches_its_subject_only():
    hold = Hold("point", "b")
    with armed(hold):
        checkpoint("point", "a")  # not held: another subject
        assert not hold.arrived()
        thread = _spawn(lambda: checkpoint("point", "b"), "cp-b")
        assert hold.wait_arrived(5)
        hold.release()
        thread.join(5)


def test_two_holds_on_one_point_stop_its_first_two_threads_in_order():
    one, two = Hold("point"), Hold("point")
    with armed(one, two):
        a = _spawn(lambda: checkpoint("point"), "cp-a")
        assert one.wait_arrived(5)
        b = _spawn(lambda: checkpoint("point"), "cp-b")
        assert two.wait_arrived(5)
        two.release()
        assert two.wait_passed(5) and not one.passed()
        one.release()
        for t in (a, b):
            t.join(5)


def test_after_releases_a_hold_once_the_other_was_passed():
    gate = Hold("first")
    follower = Hold("second", after=gate)
    order: list[str] = []
    with armed(gate, follower):
        b = _spawn(lambda: (checkpoint("second"), order.append("second")), "cp-second")
        assert follower.wait_arrived(5)
        a = _spawn(lambda: (checkpoint("first"), order.append("first")), "cp-first")
        assert gate.wait_arrived(5)
        assert order == []
        gate.release()
        for t in (a, b):
            t.join(5)
    assert follower.passed()
    assert set(order) == {"first", "second"}


def test_a_mark_records_without_stopping_and_does_not_take_the_hold():
    seen = mark("point")
    hold = Hold("point")
    with armed(seen, hold):
        thread = _spawn(lambda: checkpoint("point"), "cp-marked")
        assert hold.wait_arrived(5), "the mark's thread is still held by the hold"
        assert seen.passed()
        hold.release()
        thread.join(5)


def test_leaving_the_harness_releases_every_held_thread():
    hold = Hold("point")
    with armed(hold):
        thread = _spawn(lambda: checkpoint("point"), "cp-held")
        assert hold.wait_arrived(5)
    thread.join(5)
    assert not thread.is_alive()
    assert _checkpoints._armed is None


def test_only_one_harness_at_a_time():
    with armed(), pytest.raises(RuntimeError, match="armed already"), armed():
        pass


@pytest.mark.requires_lockcheck
def test_a_checkpoint_under_a_declared_lock_is_refused_in_check_mode():
    lock = make_lock("AllocRunner._destroyed_lock")
    with lock, pytest.raises(CalloutUnderLockError):
        checkpoint("point")
    from allocrunner import _locking

    _locking.take_violations()


def test_a_stall_delays_every_thread_and_leaving_cuts_it_short():
    stall = Stall("point", 60.0)
    with armed(stall):
        threads = [_spawn(lambda: checkpoint("point"), f"cp-stalled-{n}") for n in range(2)]
        for t in threads:
            t.join(0.05)
            assert t.is_alive(), "a stalled thread went on before its time"
    for t in threads:
        t.join(5)
        assert not t.is_alive()


def test_every_checkpoint_in_the_package_is_listed_and_every_listed_one_is_placed():
    package = Path(_checkpoints.__file__).parent
    placed: set[str] = set()
    for path in package.rglob("*.py"):
        if path.name != "_checkpoints.py":
            placed.update(re.findall(r'checkpoint\("([\w.]+)"', path.read_text()))
    assert placed == set(CHECKPOINTS)
