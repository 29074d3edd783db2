"""`AllocRunner.launch`: a fresh single-task allocation whose start never waits makes
that start on the calling thread, and its own thread waits on the task from there; any
other allocation starts as `start()` does. What the allocation does and reports is the
same either way."""

from __future__ import annotations

import threading
from typing import Any

import attrs
import pytest

from allocrunner._sync import ThreadGroup
from allocrunner.drivers.mock import MockDriver
from allocrunner.errors import DriverError
from allocrunner.state import SQLiteStateDB, sqlite_writer
from allocrunner.structs import (
    EVENT_RESTART_SIGNAL,
    EVENT_STARTED,
    RestartPolicy,
    TaskEvent,
    new_allocation,
)
from allocrunner.structs.job import Template
from allocrunner.taskrunner.hook_phases import TaskHookPhases
from allocrunner.testing import assert_stays, mock_job, mock_task, wait_for

from ..statedb_file import handle_on_disk


class NotingDriver:
    """Thread-safe (its lists are only appended to, one item at a time). A mock driver
    that notes which thread started each task and which waited on it."""

    def __init__(self) -> None:
        self.inner = MockDriver()
        self.started_on: list[str] = []
        self.waited_on: list[str] = []
        self.task_ids: list[str] = []

    def start(self, config: Any) -> Any:
        self.started_on.append(threading.current_thread().name)
        handle = self.inner.start(config)
        self.task_ids.append(handle.task_id)
        return handle

    def wait(self, task_id: str, cancel: Any) -> Any:
        self.waited_on.append(threading.current_thread().name)
        return self.inner.wait(task_id, cancel)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def noting():
    driver = NotingDriver()
    yield driver
    driver.inner.close()


def _equal(got, want):
    assert got == want, f"{got!r}, want {want!r}"


def _events(ar, task="web"):
    return [e.type for e in ar.alloc_state().task_states[task].events]


def _stopped(alloc):
    return attrs.evolve(
        alloc, desired_status="stop", alloc_modify_index=alloc.alloc_modify_index + 1
    )


def test_a_fresh_single_task_start_is_made_on_the_launching_thread(make_runner, noting):
    alloc = new_allocation(mock_job(mock_task("web", config={"run_for": "30s"})), "web")
    ar = make_runner(alloc, drivers={"mock_driver": noting})
    ar.launch()
    # The start was made before launch returned, on this thread.
    assert noting.started_on == [threading.current_thread().name]
    assert ar.task_runner("web").task_state().state == "running"
    # The allocation's own thread waits on the task.
    wait_for(lambda: _equal(noting.waited_on[:1], [f"alloc-{alloc.id[:8]}"]))
    wait_for(lambda: _equal(ar.alloc_state().client_status, "running"))
    ar.update(_stopped(alloc))
    assert ar.wait(10)
    assert ar.alloc_state().client_status == "complete"


def test_a_launched_start_is_reported_once_it_is_made_not_step_by_step(make_runner):
    """The state passes are held while the launch makes the start: the first view sent
    upstream is the running allocation with all its start's events, where each step
    (received, task setup, started) used to wake a pass of its own."""
    seen: list[Any] = []
    alloc = new_allocation(mock_job(mock_task("web", config={"run_for": "30s"})), "web")
    ar = make_runner(alloc, state_updater=seen.append)
    ar.launch()
    wait_for(lambda: _equal(bool(seen), True))
    first = seen[0]
    assert first.client_status == "running"
    assert [e.type for e in first.task_states["web"].events] == [
        "Received",
        "Task Setup",
        EVENT_STARTED,
    ]
    ar.update(_stopped(alloc))
    assert ar.wait(10)


@pytest.mark.parametrize(
    "tasks",
    [
        pytest.param(
            [mock_task("web", config={"run_for": "30s"}), mock_task("side", config={})],
            id="two tasks",
        ),
        pytest.param(
            [mock_task("web", config={"run_for": "30s", "start_block_for": "1ms"})],
            id="a start that waits",
        ),
        pytest.param(
            [
                mock_task(
                    "web",
                    config={"run_for": "30s"},
                    templates=(Template(dest_path="local/x", embedded_tmpl="x"),),
                )
            ],
            id="a template",
        ),
    ],
)
def test_an_allocation_whose_start_may_wait_starts_on_its_own_thread(
    make_runner, noting, tasks
):
    alloc = new_allocation(mock_job(*tasks), "web")
    ar = make_runner(alloc, drivers={"mock_driver": noting})
    ar.launch()
    wait_for(lambda: _equal(ar.task_runner("web").task_state().state, "running"))
    # (a second task starts on a thread of its own, maybe before the first)
    assert f"alloc-{alloc.id[:8]}" in noting.started_on
    assert threading.current_thread().name not in noting.started_on


def test_a_launch_after_a_destroy_starts_nothing(make_runner, noting):
    alloc = new_allocation(mock_job(mock_task("web", config={"run_for": "30s"})), "web")
    ar = make_runner(alloc, drivers={"mock_driver": noting})
    ar.destroy()
    ar.launch()
    assert ar.wait(10)
    assert ar.wait_destroyed(10)
    assert noting.started_on == []


@pytest.mark.parametrize(
    "task_config",
    [
        pytest.param({"run_for": "1ms", "exit_code": 0}, id="exits"),
        pytest.param({"run_for": "1ms", "exit_code": 3}, id="fails"),
        pytest.param({"start_error": "no luck"}, id="cannot start"),
    ],
)
def test_a_launched_allocation_reports_what_a_started_one_does(make_runner, task_config):
    policy = RestartPolicy(attempts=1, interval=60.0, delay=0.0, mode="fail")
    job = mock_job(mock_task("web", config=task_config), job_type="batch", restart_policy=policy)
    seen = []
    for begin in ("start", "launch"):
        ar = make_runner(new_allocation(job, "web"))
        getattr(ar, begin)()
        assert ar.wait(10), f"{begin}: the run did not end"
        state = ar.alloc_state()
        seen.append((state.client_status, _events(ar), state.task_states["web"].failed))
    assert seen[0] == seen[1]


def test_a_task_restarted_after_a_launch_runs_its_hooks_on_its_own_thread(make_runner, noting):
    # The launching thread, not the one that built the runner, hands the run's confined
    # state over (check mode raises if it did not): the restart runs the prestart hooks
    # again, on the allocation's thread.
    alloc = new_allocation(mock_job(mock_task("web", config={"run_for": "30s"})), "web")
    ar = make_runner(alloc, drivers={"mock_driver": noting})
    launched, done = threading.Event(), threading.Event()

    def launch_and_stay():  # alive meanwhile: what a thread confined is its own till it ends
        ar.launch()
        launched.set()
        done.wait(10)

    launcher = threading.Thread(target=launch_and_stay, name="launcher")
    launcher.start()
    try:
        assert launched.wait(10)
        assert noting.started_on == ["launcher"]
        wait_for(lambda: _equal(ar.alloc_state().client_status, "running"))
        ar.restart_task("web", TaskEvent(EVENT_RESTART_SIGNAL, message="test"))
        wait_for(lambda: _equal(len(noting.started_on), 2))
        assert noting.started_on[1] == f"alloc-{alloc.id[:8]}"
        wait_for(lambda: _equal(ar.task_runner("web").task_state().state, "running"))
        assert ar.task_runner("web").task_state().restarts == 1
        assert not ar.task_runner("web").task_state().failed
    finally:
        done.set()
        launcher.join(10)


def _prestart_meets(monkeypatch, interrupt, token) -> None:
    """Every prestart phase first calls `interrupt()` and waits for `token` to be
    cancelled by it, then runs as usual (and finds itself cut short)."""
    real_prestart = TaskHookPhases.prestart

    def prestart_meeting_it(self):
        interrupt()
        wait_for(lambda: _equal(token.cancelled(), True))
        return real_prestart(self)

    monkeypatch.setattr(TaskHookPhases, "prestart", prestart_meeting_it)


@pytest.mark.parametrize(("what", "left"), [("kill", "dead"), ("shutdown", "pending")])
def test_a_stop_during_a_launched_start_is_taken_up_by_the_allocations_thread(
    make_runner, noting, monkeypatch, what, left
):
    # A kill, or the agent's shutdown, arrives while the launching thread runs the
    # prestart hooks: that start ends there, and the allocation's thread takes up what
    # it came to, as a run on one thread would: a killed task never starts and goes
    # dead (and the killer returns); on a shutdown the run returns at once and leaves
    # the task pending for a restore.
    alloc = new_allocation(mock_job(mock_task("web", config={"run_for": "30s"})), "web")
    ar = make_runner(alloc, drivers={"mock_driver": noting})
    tr = ar.task_runner("web")
    killer = threading.Thread(target=tr.kill, kwargs={"timeout": 10}, name="killer")
    if what == "kill":
        _prestart_meets(monkeypatch, killer.start, tr._kill_token)
    else:
        _prestart_meets(monkeypatch, ar.shutdown, tr._shutdown_token)
    ar.launch()
    assert ar.wait(10)
    if what == "kill":
        killer.join(10)
        assert not killer.is_alive()
    else:
        assert ar.wait_shutdown(10)
    assert noting.started_on == []
    assert tr.task_state().state == left
    assert EVENT_STARTED not in _events(ar)


def test_a_launch_whose_thread_cannot_start_kills_its_task_and_raises(
    make_runner, noting, monkeypatch
):
    alloc = new_allocation(mock_job(mock_task("web", config={"run_for": "30s"})), "web")
    ar = make_runner(alloc, drivers={"mock_driver": noting})

    real_spawn = ThreadGroup.spawn

    def no_alloc_thread(self, name, *args, **kwargs):
        if name == f"alloc-{alloc.id[:8]}":
            raise RuntimeError("can't start new thread")
        return real_spawn(self, name, *args, **kwargs)

    monkeypatch.setattr(ThreadGroup, "spawn", no_alloc_thread)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        ar.launch()
    monkeypatch.undo()
    # The task it had started was killed, and the run ended, before it raised.
    assert noting.started_on == [threading.current_thread().name]
    assert ar.wait(0)
    assert ar.task_runner("web").task_state().state == "dead"
    assert "Killed" in _events(ar)
    try:
        status = noting.inner.inspect(noting.task_ids[0]).state
    except DriverError:
        status = "forgotten"
    assert status != "running"


@pytest.fixture
def lingering_db(tmp_path, monkeypatch):
    """An SQLiteStateDB whose batches nobody waits on are never committed by their age
    (a window of an hour): what is on disk is what some wait had committed."""
    monkeypatch.setattr(sqlite_writer, "LINGER", 3600.0)
    db = SQLiteStateDB(tmp_path / "state.db")
    yield db
    db.close()


def test_begun_launches_are_reported_running_once_one_commit_holds_their_handles(
    lingering_db, make_runner
):
    """`begin_launch` makes the start and queues its driver handle without waiting;
    `finish_launch` reports it only once the handle is on disk, and the first finish's
    wait commits every launch begun before it in one transaction."""
    job = mock_job(mock_task("web", config={"run_for": "30s"}))
    allocs = [new_allocation(job, "web", index=i) for i in range(2)]
    runners = [make_runner(a, state_db=lingering_db) for a in allocs]
    pending = [ar.begin_launch() for ar in runners]
    for ar, alloc in zip(runners, allocs, strict=True):
        assert ar.task_runner("web").task_state().state == "running"  # started
        assert not handle_on_disk(lingering_db.path, alloc.id, "web")
    # Nothing reports the started tasks while their handles are not committed.
    assert_stays(
        lambda: _equal([ar.alloc_state().client_status for ar in runners], ["pending"] * 2),
        0.2,
    )
    before = lingering_db.stats().commits
    for ar, alloc, begun in zip(runners, allocs, pending, strict=True):
        assert begun is not None
        ar.finish_launch(begun)
        assert handle_on_disk(lingering_db.path, alloc.id, "web")
        assert ar.alloc_state().client_status == "running"
    assert lingering_db.stats().commits - before == 1
    for ar, alloc in zip(runners, allocs, strict=True):
        ar.update(_stopped(alloc))
        assert ar.wait(10)
