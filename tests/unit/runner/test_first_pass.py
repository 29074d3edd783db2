"""When an allocation's state handler makes its first pass: a fresh allocation's on
the kick of its first task event (its task starts with no pass made, the lifecycle
gates opened by the run itself) or at once for an update sent before its run began;
one that may wait before any task event (for a previous allocation) at once, so that
it is published while it waits."""

from __future__ import annotations

import threading

import attrs
import pytest

from allocrunner.runner.state_handler import StateHandler
from allocrunner.structs import EVENT_STARTED, new_allocation
from allocrunner.taskrunner import TaskRunner
from allocrunner.testing import lifecycle, mock_job, mock_task, wait_for


@pytest.fixture
def held_passes(monkeypatch):
    """Every state pass blocks until the returned event is set; `entered` counts the
    passes begun."""
    release = threading.Event()
    entered: list[str] = []
    real_step = StateHandler._step

    def held_step(self):
        entered.append(self._alloc_id)
        assert release.wait(10), "the test never released the state passes"
        return real_step(self)

    monkeypatch.setattr(StateHandler, "_step", held_step)
    yield release, entered
    release.set()


def _task_running(ar, name):
    def check():
        got = ar.task_runner(name).task_state().state
        assert got == "running", f"task {name} is {got}"

    return check


def test_a_fresh_allocation_starts_its_task_before_any_state_pass(make_runner, held_passes):
    release, entered = held_passes
    ar = make_runner(new_allocation(mock_job(mock_task("web", config={"run_for": "10s"})), "web"))
    ar.start()
    # Its task started although no pass has run to its end: the run opened the gate.
    wait_for(_task_running(ar, "web"))
    assert ar.alloc_state().client_status == "pending"
    # Its first pass begins on the kick of a task event (Task Setup), and, held, it
    # is the only one: the later kicks wait for it to end.
    wait_for(lambda: _equal(entered.count(ar.id), 1))
    release.set()
    wait_for(lambda: _equal(ar.alloc_state().client_status, "running"))


def test_a_fresh_group_with_a_prestart_task_opens_only_the_prestart_gate(
    make_runner, held_passes
):
    release, _ = held_passes
    job = mock_job(
        mock_task("init", config={"run_for": "10s"}, lifecycle=lifecycle("prestart")),
        mock_task("main", config={"run_for": "10s"}),
    )
    ar = make_runner(new_allocation(job, "web"))
    ar.start()
    wait_for(_task_running(ar, "init"))
    assert ar.task_runner("main").task_state().state == "pending"
    release.set()
    # The passes now see the ephemeral prestart task running: main still waits.
    wait_for(lambda: _equal(ar.alloc_state().task_states["init"].state, "running"))
    assert ar.task_runner("main").task_state().state == "pending"


def test_a_stop_sent_before_a_fresh_run_begins_is_applied_without_a_task_event(
    make_runner, monkeypatch
):
    # The task runner is held before it does anything, so no task event kicks a pass:
    # the stop is applied only if the run's start makes the pass its kick asked for.
    task_runs = threading.Event()
    real_run = TaskRunner.run

    def held_run(self):
        assert task_runs.wait(10), "the test never let the task run"
        return real_run(self)

    monkeypatch.setattr(TaskRunner, "run", held_run)
    alloc = new_allocation(mock_job(mock_task("web", config={"run_for": "10s"})), "web")
    ar = make_runner(alloc)
    stop = attrs.evolve(
        alloc, desired_status="stop", alloc_modify_index=alloc.alloc_modify_index + 1
    )
    ar.update(stop)
    try:
        ar.start()
        # Applied by a pass, which hands it to the task runner last.
        wait_for(lambda: _equal(ar.task_runner("web").alloc().desired_status, "stop"))
    finally:
        task_runs.set()
    assert ar.wait(10)
    state = ar.alloc_state()
    assert state.client_status == "complete", state.client_status
    assert EVENT_STARTED not in [e.type for e in state.task_states["web"].events]


class BlockingWatcher:
    """A previous-allocation watcher that waits until released (or cancelled)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def wait(self, cancel):
        withdraw = cancel.on_cancel(self.release.set)
        try:
            assert self.release.wait(30), "the test never released the watcher"
        finally:
            withdraw()

    def is_waiting(self):
        return not self.release.is_set()


def test_an_allocation_waiting_for_its_previous_one_is_published_while_it_waits(make_runner):
    watcher = BlockingWatcher()
    ar = make_runner(new_allocation(mock_job(mock_task("web")), "web"), prev_watcher=watcher)
    listener = ar.listen()
    try:
        ar.start()
        view = listener.get(10)  # the first pass ran at once: no task event came yet
        assert view.client_status == "pending"
        assert ar.is_waiting()
    finally:
        watcher.release.set()
        listener.close()
    wait_for(lambda: _equal(ar.alloc_state().client_status, "running"))


def _equal(got, want):
    assert got == want, f"{got!r} != {want!r}"
