"""AllocRunner scenarios ported from Nomad's alloc_runner_test.go (mock_driver)."""

from __future__ import annotations

import attrs
import pytest

from allocrunner.errors import AllocRunnerError, TaskNotRunningError, UnknownTaskError
from allocrunner.structs import (
    EVENT_KILLED,
    EVENT_KILLING,
    EVENT_LEADER_DEAD,
    EVENT_MAIN_DEAD,
    EVENT_RECEIVED,
    EVENT_RESTART_SIGNAL,
    EVENT_SIBLING_FAILED,
    EVENT_TERMINATED,
    Job,
    RestartPolicy,
    TaskEvent,
    TaskGroup,
    new_allocation,
)
from allocrunner.testing import assert_stays, lifecycle, mock_alloc, mock_job, mock_task, wait_for

from .conftest import Updates


def stopped(alloc, index_bump: int = 1):
    return attrs.evolve(
        alloc,
        desired_status="stop",
        alloc_modify_index=alloc.alloc_modify_index + index_bump,
    )


def event_types(state, task):
    return [e.type for e in state.task_states[task].events]


def wait_client_status(ar, status, timeout=10.0):
    def check():
        got = ar.alloc_state().client_status
        assert got == status, f"client status {got!r}, want {status!r}"

    wait_for(check, timeout)


def test_alloc_state_has_task_states_before_run(make_runner):
    alloc = mock_alloc(mock_task("web"), mock_task("side"))
    ar = make_runner(alloc)
    state = ar.alloc_state()
    assert set(state.task_states) == {"web", "side"}
    for ts in state.task_states.values():
        assert ts.state == "pending"
        assert [e.type for e in ts.events] == [EVENT_RECEIVED]
    assert state.client_status == "pending"


def test_unknown_task_group_is_a_clear_error(config, drivers):
    from allocrunner.runner.alloc_runner import AllocRunner

    alloc = attrs.evolve(mock_alloc(), task_group="nope")
    with pytest.raises(AllocRunnerError, match="nope"):
        AllocRunner(alloc, config, drivers=drivers)


def test_simple_batch_run_completes_with_finished_at(make_runner):
    job = mock_job(
        mock_task("a", config={"run_for": "10ms"}),
        mock_task("b", config={"run_for": "20ms"}),
        job_type="batch",
    )
    updates = Updates()
    ar = make_runner(new_allocation(job, "web"), state_updater=updates)
    ar.start()
    assert ar.wait(10)
    wait_client_status(ar, "complete")
    state = ar.alloc_state()
    for ts in state.task_states.values():
        assert ts.state == "dead" and not ts.failed
        assert ts.started_at is not None and ts.finished_at is not None
    assert updates.last().client_status == "complete"
    assert ar.alloc_dir.path.is_dir()


def test_leader_exit_kills_the_group(make_runner):
    job = mock_job(
        mock_task("leader", config={"run_for": "50ms"}, leader=True),
        mock_task("follower", config={"run_for": "10s"}, kill_timeout=0.01),
        job_type="batch",
    )
    ar = make_runner(new_allocation(job, "web"))
    ar.start()
    assert ar.wait(10)
    wait_client_status(ar, "complete")
    state = ar.alloc_state()
    follower = event_types(state, "follower")
    assert EVENT_LEADER_DEAD in follower
    assert EVENT_KILLING in follower
    assert follower.index(EVENT_LEADER_DEAD) < follower.index(EVENT_KILLING)
    killing = next(e for e in state.task_states["follower"].events if e.type == EVENT_KILLING)
    assert killing.display_message == "Sent interrupt. Waiting 10ms before force killing"
    for ts in state.task_states.values():
        assert ts.state == "dead" and not ts.failed
        assert ts.started_at is not None and ts.finished_at is not None


def test_main_tasks_dead_kills_sidecars(make_runner):
    job = mock_job(
        mock_task("main", config={"run_for": "50ms"}),
        mock_task("sidecar", config={"run_for": "10s"}, lifecycle=lifecycle("prestart", True)),
        job_type="batch",
    )
    ar = make_runner(new_allocation(job, "web"))
    ar.start()
    assert ar.wait(10)
    wait_client_status(ar, "complete")
    state = ar.alloc_state()
    assert EVENT_MAIN_DEAD in event_types(state, "sidecar")
    assert state.task_states["sidecar"].state == "dead"


def test_task_failure_kills_siblings_and_marks_deployment_unhealthy(make_runner):
    job = mock_job(
        mock_task("good", config={"run_for": "10s"}),
        mock_task("bad", config={"start_error": "broken on purpose"}),
    )
    alloc = attrs.evolve(new_allocation(job, "web"), deployment_id="d1")
    ar = make_runner(alloc)
    ar.start()
    assert ar.wait(10)
    wait_client_status(ar, "failed")
    state = ar.alloc_state()
    assert state.task_states["bad"].failed
    assert EVENT_SIBLING_FAILED in event_types(state, "good")
    assert state.task_states["good"].state == "dead"
    assert state.deployment_status is not None and state.deployment_status.healthy is False


def test_stop_update_kills_leader_first_then_mains_then_sidecars(make_runner):
    job = mock_job(
        mock_task("leader", leader=True),
        mock_task("main1"),
        mock_task("main2"),
        mock_task("sidecar", lifecycle=lifecycle("prestart", True)),
        mock_task("cleanup", config={"run_for": "10ms"}, lifecycle=lifecycle("poststop")),
    )
    alloc = new_allocation(job, "web")
    ar = make_runner(alloc)
    ar.start()

    def all_running():
        st = ar.alloc_state()
        for name in ("leader", "main1", "main2", "sidecar"):
            assert st.task_states[name].state == "running", f"{name} not running"

    wait_for(all_running)
    assert ar.alloc_state().task_states["cleanup"].state == "pending"
    ar.update(stopped(alloc))
    assert ar.wait(10)
    wait_client_status(ar, "complete")
    st = ar.alloc_state().task_states
    leader_done = st["leader"].finished_at
    assert leader_done <= st["main1"].finished_at and leader_done <= st["main2"].finished_at
    assert max(st["main1"].finished_at, st["main2"].finished_at) <= st["sidecar"].finished_at
    assert st["cleanup"].started_at is not None
    assert st["cleanup"].started_at >= st["sidecar"].finished_at
    assert st["cleanup"].state == "dead" and not st["cleanup"].failed
    for name in ("leader", "main1", "main2", "sidecar"):
        types = [e.type for e in st[name].events]
        assert EVENT_KILLING in types and types[-1] == EVENT_KILLED, (name, types)


def test_poststart_runs_after_main(make_runner):
    job = mock_job(
        mock_task("main"),
        mock_task("post-side", lifecycle=lifecycle("poststart", True)),
        mock_task("post-once", config={"run_for": "10ms"}, lifecycle=lifecycle("poststart")),
    )
    alloc = new_allocation(job, "web")
    ar = make_runner(alloc)
    ar.start()

    def post_ran():
        st = ar.alloc_state().task_states
        assert st["post-side"].state == "running"
        assert st["post-once"].state == "dead" and not st["post-once"].failed
        assert st["main"].state == "running"
        assert st["post-side"].started_at >= st["main"].started_at

    wait_for(post_ran)
    ar.update(stopped(alloc))
    assert ar.wait(10)
    st = ar.alloc_state().task_states
    assert all(ts.state == "dead" for ts in st.values())


def test_poststop_waits_for_main_then_runs(make_runner):
    job = mock_job(
        mock_task("main", config={"run_for": "100ms"}),
        mock_task("post", config={"run_for": "10ms"}, lifecycle=lifecycle("poststop")),
        job_type="batch",
    )
    ar = make_runner(new_allocation(job, "web"))
    ar.start()

    def main_running():
        st = ar.alloc_state().task_states
        assert st["main"].state == "running"
        assert st["post"].state == "pending"

    wait_for(main_running)
    assert ar.wait(10)
    st = ar.alloc_state().task_states
    assert st["post"].state == "dead" and not st["post"].failed
    assert st["post"].started_at >= st["main"].finished_at
    wait_client_status(ar, "complete")


def test_kill_of_dead_tasks_keeps_their_last_event(make_runner):
    job = mock_job(
        mock_task("quick", config={"run_for": "10ms"}),
        mock_task("slow"),
        job_type="batch",
    )
    alloc = new_allocation(job, "web")
    ar = make_runner(alloc)
    ar.start()
    wait_for(lambda: _assert_state(ar, "quick", "dead"))
    wait_for(lambda: _assert_state(ar, "slow", "running"))
    ar.update(
        attrs.evolve(
            stopped(alloc), desired_transition=attrs.evolve(alloc.desired_transition, migrate=True)
        )
    )
    assert ar.wait(10)
    wait_client_status(ar, "complete")
    st = ar.alloc_state().task_states
    assert st["slow"].events[-1].type == EVENT_KILLED
    assert st["quick"].events[-1].type == EVENT_TERMINATED
    assert EVENT_KILLING not in [e.type for e in st["quick"].events]


def _assert_state(ar, task, state):
    got = ar.alloc_state().task_states[task].state
    assert got == state, f"{task} is {got}, want {state}"


def test_terminal_update_keeps_alloc_dir_until_destroy(make_runner):
    alloc = mock_alloc(mock_task("web"))
    ar = make_runner(alloc)
    ar.start()
    wait_for(lambda: _assert_state(ar, "web", "running"))
    ar.update(stopped(alloc))
    assert ar.wait(10)
    wait_client_status(ar, "complete")
    assert ar.alloc_dir.path.is_dir()
    ar.destroy()
    assert ar.wait_destroyed(10)
    assert not ar.alloc_dir.path.exists()
    assert ar.is_destroyed()


def test_destroy_running_alloc(make_runner, state_db):
    alloc = mock_alloc(mock_task("web"))
    updates = Updates()
    ar = make_runner(alloc, state_updater=updates)
    ar.start()
    wait_for(lambda: _assert_state(ar, "web", "running"))
    assert state_db.all_allocations(), "alloc was not persisted"
    ar.destroy()
    ar.destroy()
    assert ar.wait_destroyed(10)
    assert ar.is_destroyed()
    assert ar.wait(0)
    assert ar.wait_shutdown(0)
    state = ar.alloc_state()
    assert state.client_status == "complete"
    assert updates.last().client_status == "complete"
    assert not ar.alloc_dir.path.exists()
    assert state_db.all_allocations() == []
    assert state_db.task_runner_state(alloc.id, "web") == (None, None)


def test_on_destroyed_calls_back_once_destroy_has_finished(make_runner):
    ar = make_runner(mock_alloc(mock_task("web")))
    seen: list[bool] = []
    ar.on_destroyed(lambda: seen.append(ar.is_destroyed()))
    withdrawn: list[int] = []
    ar.on_destroyed(lambda: withdrawn.append(1))()  # withdrawn at once: never called
    ar.start()
    wait_for(lambda: _assert_state(ar, "web", "running"))
    assert seen == []
    ar.destroy()
    assert ar.wait_destroyed(10)
    assert seen == [True] and withdrawn == []
    late: list[int] = []
    ar.on_destroyed(lambda: late.append(1))
    assert late == [1], "a callback added after the destroy runs at once"


def test_destroy_before_run_returns_without_hanging(make_runner):
    ar = make_runner(mock_alloc(mock_task("web")))
    ar.destroy()
    assert ar.wait_destroyed(10)
    assert ar.wait(0)
    ar.run()  # a run after destroy returns at once
    assert ar.alloc_state().task_states["web"].state != "running"


def test_shutdown_before_run_and_twice(make_runner):
    ar = make_runner(mock_alloc(mock_task("web")))
    ar.shutdown()
    ar.shutdown()
    assert ar.wait_shutdown(10)
    assert not ar.is_destroyed()


def test_update_semantics_replace_stale_and_after_exit(make_runner):
    job = mock_job(mock_task("web", config={"run_for": "10s"}))
    alloc = attrs.evolve(new_allocation(job, "web"), alloc_modify_index=10)
    ar = make_runner(alloc)
    # Before run: the mailbox keeps one update; an older one is dropped; equal replaces.
    newer = attrs.evolve(alloc, alloc_modify_index=12, desired_description="twelve")
    ar.update(newer)
    ar.update(attrs.evolve(alloc, alloc_modify_index=11, desired_description="eleven"))
    ar.update(attrs.evolve(alloc, alloc_modify_index=5, desired_description="five"))
    ar.start()
    wait_for(lambda: _assert_desc(ar, "twelve"))
    # Lower than the applied one: dropped.
    ar.update(attrs.evolve(alloc, alloc_modify_index=11, desired_description="stale"))
    assert_stays(lambda: _assert_desc(ar, "twelve"), 0.2)
    ar.update(attrs.evolve(newer, alloc_modify_index=13, desired_status="stop"))
    assert ar.wait(10)
    # After run returned: dropped.
    ar.update(attrs.evolve(newer, alloc_modify_index=20, desired_description="late"))
    assert ar.alloc().alloc_modify_index == 13


def _assert_desc(ar, desc):
    got = ar.alloc().desired_description
    assert got == desc, f"alloc description {got!r}, want {desc!r}"


def test_update_of_another_alloc_is_refused(make_runner):
    ar = make_runner(mock_alloc())
    with pytest.raises(AllocRunnerError):
        ar.update(mock_alloc())


def test_recoverable_start_failure_does_not_block_sibling(make_runner):
    policy = RestartPolicy(attempts=2, interval=600.0, delay=0.02, mode="fail")
    job = mock_job(
        mock_task(
            "flaky",
            config={"start_error": "download failed", "start_error_recoverable": True},
        ),
        mock_task("fine", config={"run_for": "10ms"}),
        job_type="batch",
        restart_policy=policy,
    )
    ar = make_runner(new_allocation(job, "web"))
    ar.start()

    def fine_done():
        st = ar.alloc_state().task_states
        assert st["fine"].successful(), "sibling did not complete"

    wait_for(fine_done)
    assert ar.wait(10)
    st = ar.alloc_state().task_states
    assert st["flaky"].failed and st["flaky"].restarts == 2
    wait_client_status(ar, "failed")


def test_restart_task_and_errors(make_runner):
    job = mock_job(
        mock_task("web"), mock_task("once", config={"run_for": "10ms"}), job_type="batch"
    )
    ar = make_runner(new_allocation(job, "web"))
    ar.start()
    wait_for(lambda: _assert_state(ar, "web", "running"))
    wait_for(lambda: _assert_state(ar, "once", "dead"))
    ar.restart_task("web", TaskEvent(EVENT_RESTART_SIGNAL, message="user"))

    def restarted():
        ts = ar.alloc_state().task_states["web"]
        assert ts.restarts == 1 and ts.state == "running", ts

    wait_for(restarted)
    with pytest.raises(TaskNotRunningError):
        ar.restart_task("once", TaskEvent(EVENT_RESTART_SIGNAL, message="user"))
    with pytest.raises(UnknownTaskError):
        ar.restart_task("missing", TaskEvent(EVENT_RESTART_SIGNAL, message="user"))
    with pytest.raises(TaskNotRunningError):
        ar.signal_task("once", "SIGHUP")
    ar.signal_task("web", "SIGHUP")


def test_listener_sees_terminal_state(make_runner):
    job = mock_job(mock_task("web", config={"run_for": "20ms"}), job_type="batch")
    ar = make_runner(new_allocation(job, "web"))
    with ar.listen() as listener:
        ar.start()
        last = None
        while last is None or last.client_status not in ("complete", "failed"):
            last = listener.get(timeout=10)
        assert last.client_status == "complete"
        assert last.task_states["web"].state == "dead"


def test_group_without_tasks_is_refused(config, drivers):
    from allocrunner.runner.alloc_runner import AllocRunner

    job = Job(id="empty", task_groups=(TaskGroup(name="g"),))
    with pytest.raises(AllocRunnerError, match="no tasks"):
        AllocRunner(new_allocation(job, "g"), config, drivers=drivers)
