"""AllocRunner scenarios that need persistence or hooks: restore after an agent
restart, prerun failures, postrun errors, no resurrection after destroy, health."""

from __future__ import annotations

import shutil
import threading

import attrs
import pytest

from allocrunner.errors import AllocRunnerError, DriverError, HookErrors
from allocrunner.runner.hooks import AllocHooks
from allocrunner.state import MemDB
from allocrunner.state.marks import destroy_interrupted, mark_destroying
from allocrunner.structs import (
    EVENT_KILLED,
    EVENT_RECEIVED,
    EVENT_RESTART_SIGNAL,
    EVENT_SETUP_FAILURE,
    EVENT_STARTED,
    EVENT_TERMINATED,
    AllocDeploymentStatus,
    TaskEvent,
    TaskState,
    UpdateStrategy,
    new_allocation,
)
from allocrunner.testing import lifecycle, mock_alloc, mock_job, mock_task, wait_for


def _state(ar, task, want):
    got = ar.alloc_state().task_states[task].state
    assert got == want, f"{task} is {got}, want {want}"


def test_restore_reattaches_a_running_task_without_starting_it_again(
    make_runner, state_db, drivers
):
    alloc = mock_alloc(mock_task("web", config={"run_for": "30s"}))
    first = make_runner(alloc)
    first.start()
    wait_for(lambda: _state(first, "web", "running"))
    started_before = first.alloc_state().task_states["web"].started_at
    first.shutdown()
    assert first.wait_shutdown(10)

    (stored,) = state_db.all_allocations()
    second = make_runner(stored)
    second.restore()
    second.start()
    wait_for(lambda: _state(second, "web", "running"))
    ts = second.alloc_state().task_states["web"]
    assert [e.type for e in ts.events].count(EVENT_STARTED) == 1, ts.events
    assert ts.started_at == started_before
    assert second.task_runner("web").is_running()


def test_restore_of_a_running_alloc_stopped_while_the_agent_was_down(make_runner, state_db):
    alloc = mock_alloc(mock_task("web", config={"run_for": "30s"}))
    first = make_runner(alloc)
    first.start()
    wait_for(lambda: _state(first, "web", "running"))
    first.shutdown()
    assert first.wait_shutdown(10)

    stopped = attrs.evolve(alloc, desired_status="stop", alloc_modify_index=2)
    second = make_runner(stopped)
    second.restore()
    second.start()
    assert second.wait(10)
    ts = second.alloc_state().task_states["web"]
    assert ts.state == "dead" and not ts.failed
    types = [e.type for e in ts.events]
    assert types[:3] == [EVENT_RECEIVED, "Task Setup", EVENT_STARTED], types
    assert EVENT_TERMINATED in types or EVENT_KILLED in types
    assert types.count(EVENT_STARTED) == 1
    assert second.alloc_state().client_status == "complete"


def test_restore_of_a_completed_batch_alloc_does_not_rerun_it(make_runner, state_db):
    job = mock_job(mock_task("job", config={"run_for": "10ms"}), job_type="batch")
    alloc = new_allocation(job, "web")
    first = make_runner(alloc)
    first.start()
    assert first.wait(10)
    events_before = first.alloc_state().task_states["job"].events
    first.shutdown()
    assert first.wait_shutdown(10)

    (stored,) = state_db.all_allocations()
    second = make_runner(stored)
    second.restore()
    assert second.alloc_state().client_status == "complete"
    second.start()
    assert second.wait(10)
    ts = second.alloc_state().task_states["job"]
    assert ts.events == events_before
    assert second.alloc_state().client_status == "complete"


def test_restore_builds_the_alloc_dir_again_when_no_task_had_started(make_runner, state_db):
    """The agent died before the alloc dir was built: nothing was lost, nothing fails."""
    alloc = mock_alloc(mock_task("web", config={"run_for": "30s"}))
    state_db.put_allocation(alloc)
    state_db.put_task_state(alloc.id, "web", TaskState())
    ar = make_runner(alloc)
    assert not ar.alloc_dir.path.exists()
    ar.restore()
    assert ar.alloc_dir.data_dir.is_dir()
    ar.start()
    wait_for(lambda: _state(ar, "web", "running"))
    assert ar.alloc_state().client_status == "running"


def test_restore_fails_when_the_alloc_dir_a_task_ran_in_is_gone(make_runner, state_db):
    """The files of a task that ran are lost with its alloc dir (ephemeral storage):
    that allocation cannot be restored (Nomad's rule)."""
    alloc = mock_alloc(mock_task("web", config={"run_for": "30s"}))
    first = make_runner(alloc)
    first.start()
    wait_for(lambda: _state(first, "web", "running"))
    first.shutdown()
    assert first.wait_shutdown(10)
    shutil.rmtree(first.alloc_dir.path)
    second = make_runner(alloc)
    with pytest.raises(FileNotFoundError, match=r"alloc dir .* task\(s\) web ran in it"):
        second.restore()


@pytest.mark.parametrize("dir_left", [True, False], ids=["dir-left", "dir-removed"])
def test_restore_finishes_a_destroy_the_agent_began(make_runner, state_db, drivers, dir_left):
    """The agent died during a destroy (the mark is saved): the next runner stops the
    task it re-attached to, removes the alloc dir and deletes the state, instead of
    running the allocation again or failing it."""
    alloc = mock_alloc(mock_task("web", config={"run_for": "30s"}))
    first = make_runner(alloc)
    first.start()
    wait_for(lambda: _state(first, "web", "running"))
    handle = first.task_runner("web").local_state().task_handle
    first.shutdown()
    assert first.wait_shutdown(10)
    mark_destroying(state_db, alloc.id)
    if not dir_left:
        shutil.rmtree(first.alloc_dir.path)

    second = make_runner(alloc)
    second.restore()
    second.start()
    assert second.wait(10)
    assert second.wait_destroyed(10)
    assert not second.alloc_dir.path.exists()
    assert state_db.all_allocations() == []
    assert not destroy_interrupted(state_db, alloc.id)
    _assert_task_gone(drivers, handle.task_id)
    ts = second.alloc_state().task_states["web"]
    assert ts.state == "dead" and not ts.failed
    assert [e.type for e in ts.events].count(EVENT_STARTED) == 1


def _assert_task_gone(drivers, task_id):
    try:
        status = drivers["mock_driver"].inspect(task_id)
    except DriverError:
        return  # stopped and destroyed
    assert status.state != "running", status


def test_destroy_marks_the_alloc_before_removing_anything(make_runner, state_db, monkeypatch):
    """The mark is saved before the alloc dir goes, and deleted with the state."""
    from allocrunner.allocdir import AllocDir

    alloc = mock_alloc(mock_task("web", config={"run_for": "30s"}))
    ar = make_runner(alloc)
    ar.start()
    wait_for(lambda: _state(ar, "web", "running"))
    marked_at_removal: list[bool] = []
    remove = AllocDir.destroy

    def destroy(self):
        marked_at_removal.append(destroy_interrupted(state_db, alloc.id))
        remove(self)

    monkeypatch.setattr(AllocDir, "destroy", destroy)
    ar.destroy()
    assert ar.wait_destroyed(10)
    assert marked_at_removal == [True]
    assert not destroy_interrupted(state_db, alloc.id)


def test_persist_after_destroy_does_not_resurrect(make_runner, state_db):
    alloc = mock_alloc(mock_task("web"))
    ar = make_runner(alloc)
    ar.start()
    wait_for(lambda: _state(ar, "web", "running"))
    ar.destroy()
    assert ar.wait_destroyed(10)
    ar.persist_state()
    assert state_db.all_allocations() == []


class FailingWatcher:
    """A previous-alloc watcher whose wait fails, so the alloc's prerun fails."""

    def wait(self, cancel):
        raise RuntimeError("previous allocation could not be watched")

    def is_waiting(self):
        return False


def test_prerun_failure_fails_every_task(make_runner):
    job = mock_job(mock_task("a"), mock_task("b"))
    ar = make_runner(new_allocation(job, "web"), prev_watcher=FailingWatcher())
    ar.start()
    assert ar.wait(10)
    state = ar.alloc_state()
    assert state.client_status == "failed"
    for name, ts in state.task_states.items():
        assert ts.state == "dead" and ts.failed, name
        assert EVENT_SETUP_FAILURE in [e.type for e in ts.events]
        assert EVENT_STARTED not in [e.type for e in ts.events]


class Hook:
    def __init__(self, name, fail=False):
        self.name = name
        self.fail = fail
        self.ran = False

    def postrun(self):
        self.ran = True
        if self.fail:
            raise ValueError("boom")


def test_postrun_runs_every_hook_and_reports_each_failure():
    hooks = [Hook("a"), Hook("x", fail=True), Hook("c"), Hook("y", fail=True)]
    with pytest.raises(HookErrors) as info:
        AllocHooks.of(hooks).postrun()
    assert all(h.ran for h in hooks)
    messages = [str(e) for e in info.value.exceptions]
    assert messages == ['post-run hook "x" failed: boom', 'post-run hook "y" failed: boom']
    assert isinstance(info.value.exceptions[0].__cause__, ValueError)


def test_deployment_health_is_reported_healthy(make_runner):
    strategy = UpdateStrategy(
        health_check="task_states", min_healthy_time=0.05, healthy_deadline=10
    )
    job = mock_job(mock_task("web", config={"run_for": "30s"}), update=strategy)
    alloc = attrs.evolve(new_allocation(job, "web"), deployment_id="deploy-1")
    ar = make_runner(alloc)
    ar.start()

    def healthy():
        status = ar.alloc_state().deployment_status
        assert status is not None and status.healthy is True, status

    wait_for(healthy)


class GatedDeploymentDB(MemDB):
    """Thread-safe. A MemDB whose first write of a deployment health blocks until
    `gate` opens (a state DB queued on its lock under load); it logs every deployment
    status written, in order."""

    def __init__(self) -> None:
        super().__init__()
        self._log_mutex = threading.Lock()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self._written: list[AllocDeploymentStatus | None] = []

    def put_deployment_status(self, alloc_id: str, status: AllocDeploymentStatus | None) -> None:
        if status is not None and not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(60), "the gate was never opened"
        super().put_deployment_status(alloc_id, status)
        with self._log_mutex:
            self._written.append(status)

    def written(self) -> list[AllocDeploymentStatus | None]:
        with self._log_mutex:
            return list(self._written)


def _sees_deployment(listener, deployment_id):
    def check():
        try:
            view = listener.get(timeout=0.05)
        except TimeoutError:
            raise AssertionError(f"no view of deployment {deployment_id} yet") from None
        assert view.deployment_id == deployment_id, view.deployment_id

    return check


def test_an_update_is_applied_while_a_health_verdict_waits_on_the_state_db(make_runner):
    """The health watch's verdict is stuck on the state DB: the state thread still
    applies an update at once, and the old deployment's verdict lands before the
    health is cleared for the new deployment and watched again."""
    db = GatedDeploymentDB()
    strategy = UpdateStrategy(
        health_check="task_states", min_healthy_time=0.05, healthy_deadline=10
    )
    job = mock_job(mock_task("web", config={"run_for": "30s"}), update=strategy)
    alloc = attrs.evolve(new_allocation(job, "web"), deployment_id="deploy-1")
    ar = make_runner(alloc, state_db=db)
    ar.start()
    try:
        assert db.entered.wait(10), "no health verdict was written"
        with ar.listen() as listener:
            moved = attrs.evolve(
                alloc, deployment_id="deploy-2", alloc_modify_index=alloc.alloc_modify_index + 1
            )
            ar.update(moved)
            wait_for(_sees_deployment(listener, "deploy-2"), 5)
    finally:
        db.gate.set()

    def healthy_again():
        written = db.written()
        assert [s is not None and s.healthy for s in written] == [True, False, True], written
        assert written[1] is None, "the clear comes between the two verdicts"
        status = ar.alloc_state().deployment_status
        assert status == written[2], status

    wait_for(healthy_again, 10)


def test_restart_all_reruns_dead_prestart_tasks(make_runner):
    job = mock_job(
        mock_task("init", config={"run_for": "10ms"}, lifecycle=lifecycle("prestart")),
        mock_task("main", config={"run_for": "30s"}),
    )
    ar = make_runner(new_allocation(job, "web"))
    ar.start()
    wait_for(lambda: _state(ar, "main", "running"))
    _state(ar, "init", "dead")
    ar.restart_running(TaskEvent(EVENT_RESTART_SIGNAL, message="running only"))
    wait_for(lambda: _restarts(ar, "main", 1))
    wait_for(lambda: _state(ar, "main", "running"))
    assert ar.alloc_state().task_states["init"].restarts == 0
    ar.restart_all(TaskEvent(EVENT_RESTART_SIGNAL, message="all"))
    wait_for(lambda: _restarts(ar, "init", 1))
    wait_for(lambda: _restarts(ar, "main", 2))
    wait_for(lambda: _state(ar, "main", "running"))
    st = ar.alloc_state().task_states
    assert st["init"].state == "dead" and not st["init"].failed


def test_restart_refused_once_the_alloc_is_terminal(make_runner):
    job = mock_job(mock_task("web", config={"run_for": "10ms"}), job_type="batch")
    ar = make_runner(new_allocation(job, "web"))
    ar.start()
    assert ar.wait(10)
    with pytest.raises(AllocRunnerError, match="terminal"):
        ar.restart_all(TaskEvent(EVENT_RESTART_SIGNAL, message="too late"))


def _restarts(ar, task, n):
    got = ar.alloc_state().task_states[task].restarts
    assert got == n, f"{task} restarts {got}, want {n}"


def test_destroy_after_shutdown_kills_the_tasks_left_running(make_runner, drivers):
    alloc = mock_alloc(mock_task("web", config={"run_for": "30s"}))
    ar = make_runner(alloc)
    ar.start()
    wait_for(lambda: _state(ar, "web", "running"))
    handle = ar.task_runner("web").local_state().task_handle
    ar.shutdown()
    assert ar.wait_shutdown(10)
    assert drivers["mock_driver"].inspect(handle.task_id).state == "running"
    ar.destroy()
    assert ar.wait_destroyed(10)

    def gone():
        try:
            status = drivers["mock_driver"].inspect(handle.task_id)
        except Exception:
            return
        assert status.state != "running", status

    wait_for(gone)


def test_restored_group_whose_leader_died_while_down_stops_cleanly(make_runner, state_db, drivers):
    job = mock_job(
        mock_task("leader", config={"run_for": "30s"}, leader=True),
        mock_task("follower", config={"run_for": "30s"}, kill_timeout=0.05),
        job_type="batch",
    )
    alloc = new_allocation(job, "web")
    first = make_runner(alloc)
    first.start()
    wait_for(lambda: _state(first, "leader", "running"))
    wait_for(lambda: _state(first, "follower", "running"))
    leader_handle = first.task_runner("leader").local_state().task_handle
    first.shutdown()
    assert first.wait_shutdown(10)
    drivers["mock_driver"].stop(leader_handle.task_id, 0.05)  # it died while we were down

    second = make_runner(alloc)
    second.restore()
    second.start()
    assert second.wait(10)
    state = second.alloc_state()
    assert state.client_status == "complete"
    follower = [e.type for e in state.task_states["follower"].events]
    assert "Leader Task Dead" in follower and follower[-1] == EVENT_KILLED
    assert [e.type for e in state.task_states["leader"].events].count(EVENT_STARTED) == 1


def test_update_priority_against_the_acknowledged_state(make_runner):
    ar = make_runner(mock_alloc(mock_task("web")))
    client = ar.client_alloc()
    assert ar.update_priority(client) == "typical"
    assert ar.update_priority(attrs.evolve(client, client_status="failed")) == "urgent"
    ar.acknowledge_state(ar.alloc_state())
    assert ar.update_priority(client) == "none"
    assert ar.update_priority(attrs.evolve(client, client_status="running")) == "urgent"
    assert ar.update_priority(attrs.evolve(client, client_description="other")) == "typical"
    changed = attrs.evolve(
        client,
        task_states={"web": attrs.evolve(client.task_states["web"], restarts=1)},
    )
    assert ar.update_priority(changed) == "typical"


def test_restore_of_an_alloc_saved_without_any_task_state_runs_it_once(make_runner, state_db):
    """The agent died after the runner's first write, before any task state: nothing
    had started, so the restore builds the alloc dir and the tasks start once."""
    alloc = mock_alloc(mock_task("web", config={"run_for": "30s"}))
    state_db.put_allocation(alloc)
    ar = make_runner(alloc)
    ar.restore()
    ar.start()
    wait_for(lambda: _state(ar, "web", "running"))
    events = ar.alloc_state().task_states["web"].events
    assert [e.type for e in events].count(EVENT_STARTED) == 1, events
    assert ar.alloc_dir.data_dir.is_dir()
