"""A group's shutdown_delay: a stopped allocation's tasks are told to stop only after
it, while its state keeps being published; no_shutdown_delay skips it, and a destroy
ends it."""

from __future__ import annotations

import threading
import time

import attrs

from allocrunner.errors import BroadcasterClosed
from allocrunner.structs import EVENT_KILLING, Allocation, DesiredTransition
from allocrunner.testing import mock_alloc, mock_task, wait_for

HOUR = 3600.0


class KillingSeen:
    """A state updater recording, with monotonic time, when a Killing event is first
    reported (called on the state handler's thread right after it is published)."""

    def __init__(self) -> None:
        self.at: float | None = None
        self._lock = threading.Lock()

    def __call__(self, alloc: Allocation) -> None:
        now = time.monotonic()
        killing = any(
            e.type == EVENT_KILLING for ts in alloc.task_states.values() for e in ts.events
        )
        with self._lock:
            if killing and self.at is None:
                self.at = now

    def first(self) -> float:
        with self._lock:
            assert self.at is not None, "no Killing event was reported"
            return self.at


def _threads_of(alloc: Allocation) -> list[str]:
    return [t.name for t in threading.enumerate() if alloc.id[:8] in t.name]


def _stopped(alloc: Allocation, **transition: bool) -> Allocation:
    return attrs.evolve(
        alloc,
        desired_status="stop",
        desired_transition=DesiredTransition(**transition),
        alloc_modify_index=alloc.alloc_modify_index + 1,
    )


def _running(ar, task="web"):
    got = ar.alloc_state().task_states[task].state
    assert got == "running", f"{task} is {got}"


def _killing(ar, task="web"):
    return [e for e in ar.alloc_state().task_states[task].events if e.type == EVENT_KILLING]


def _started(make_runner, delay: float, **kwargs):
    alloc = mock_alloc(mock_task("web", config={"run_for": "60s"}), shutdown_delay=delay)
    ar = make_runner(alloc, **kwargs)
    ar.start()
    wait_for(lambda: _running(ar))
    return alloc, ar


def _wait_stop_published(ar) -> Allocation:
    """The first view whose desired status is stop (the state handler went on
    publishing after taking in the stop)."""
    with ar.listen() as listener:
        while True:
            try:
                view = listener.get(timeout=10)
            except BroadcasterClosed:
                raise AssertionError("the broadcaster closed before the stop was seen") from None
            if view.desired_status == "stop":
                return view


def test_the_kill_waits_at_least_the_delay(make_runner):
    delay = 0.4
    seen = KillingSeen()
    alloc, ar = _started(make_runner, delay, state_updater=seen)
    stopped_at = time.monotonic()
    ar.update(_stopped(alloc))
    view = _wait_stop_published(ar)
    assert view.task_states["web"].state == "running"
    assert not [e for e in view.task_states["web"].events if e.type == EVENT_KILLING]
    assert len(_threads_of(alloc)) <= 2, _threads_of(alloc)  # the wait has no thread
    assert ar.wait(20)
    assert seen.first() - stopped_at >= delay
    assert ar.alloc_state().client_status == "complete"
    assert len(_killing(ar)) == 1


def test_no_shutdown_delay_skips_it(make_runner):
    alloc, ar = _started(make_runner, HOUR)
    ar.update(_stopped(alloc, no_shutdown_delay=True))
    assert ar.wait(20)
    assert ar.alloc_state().client_status == "complete"


def test_a_later_no_shutdown_delay_update_ends_the_wait(make_runner):
    alloc, ar = _started(make_runner, HOUR)
    stopped = _stopped(alloc)
    ar.update(stopped)
    _wait_stop_published(ar)
    _running(ar)
    ar.update(_stopped(stopped, no_shutdown_delay=True))
    assert ar.wait(20)
    assert ar.alloc_state().client_status == "complete"


def test_destroy_during_the_delay_ends_the_wait(make_runner):
    alloc, ar = _started(make_runner, HOUR)
    ar.update(_stopped(alloc))
    _wait_stop_published(ar)
    _running(ar)
    ar.destroy()
    assert ar.wait_destroyed(20)
    assert ar.alloc_state().task_states["web"].state == "dead"


def test_agent_shutdown_during_the_delay_leaves_the_task_running(make_runner):
    alloc, ar = _started(make_runner, HOUR)
    ar.update(_stopped(alloc))
    _wait_stop_published(ar)
    ar.shutdown()
    assert ar.wait_shutdown(20)
    assert ar.task_runner("web").is_running()
    assert not _killing(ar)
    ar.destroy()  # a later destroy still kills it
    assert ar.wait_destroyed(20)
    assert not ar.task_runner("web").is_running()


def test_the_delay_ends_on_time_beside_a_later_run_deadline(make_runner):
    """The state handler wakes for the earlier of its two deadlines: the end of the
    shutdown delay, not the group's max_run_duration an hour away."""
    delay = 0.3
    seen = KillingSeen()
    alloc = mock_alloc(
        mock_task("web", config={"run_for": "60s"}),
        job_type="batch",
        shutdown_delay=delay,
        max_run_duration=HOUR,
    )
    ar = make_runner(alloc, state_updater=seen)
    ar.start()
    wait_for(lambda: _running(ar))
    stopped_at = time.monotonic()
    ar.update(_stopped(alloc))
    assert ar.wait(20)
    assert seen.first() - stopped_at >= delay
    assert ar.alloc_state().client_status == "complete"


def test_a_group_that_completes_on_its_own_does_not_wait(make_runner):
    alloc = mock_alloc(
        mock_task("web", config={"run_for": "10ms"}), job_type="batch", shutdown_delay=HOUR
    )
    ar = make_runner(alloc)
    ar.start()
    assert ar.wait(20)
    assert ar.alloc_state().client_status == "complete"
