"""TaskRunner.restore: re-attach to a running task, never re-run a finished one, park a
dead one that may still be force-restarted, recover from a lost task, hook state."""

from __future__ import annotations

import threading

import attrs
import pytest

from allocrunner.drivers.mock import MockDriver
from allocrunner.errors import TaskNotRunningError
from allocrunner.state import MemDB
from allocrunner.structs import TaskEvent
from allocrunner.structs.task_state import (
    EVENT_KILLED,
    EVENT_RESTART_SIGNAL,
    EVENT_RESTORE_FAILED,
    EVENT_SETUP,
    EVENT_STARTED,
    EVENT_TERMINATED,
)
from allocrunner.taskrunner import PrestartResult, TaskHook
from allocrunner.testing import mock_task
from tests.unit.taskrunner.conftest import alloc_of, event_types, wait_event, wait_state


def restart_event() -> TaskEvent:
    return TaskEvent(EVENT_RESTART_SIGNAL, message="User requested restart")


def test_restore_running_task_reattaches_without_a_second_start(harness, mock_driver) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "30s"}))
    first = harness.runner(alloc)
    wait_state(first, "running")
    task_id = first.local_state().task_handle.task_id
    assert first.shutdown(timeout=5)

    second = harness.runner(alloc, start=False)
    second.restore()
    assert second.is_running()
    assert second.task_state() == first.task_state()
    harness.start(second)
    wait_state(second, "running")
    assert event_types(second.task_state()).count(EVENT_STARTED) == 1
    assert second.local_state().task_handle.task_id == task_id
    assert second.kill(timeout=5)
    st = second.task_state()
    assert event_types(st)[-2:] == [EVENT_TERMINATED, EVENT_KILLED]
    assert event_types(st).count(EVENT_STARTED) == 1


def test_restore_of_a_completed_task_does_not_rerun_it(harness, db) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "1ms"}))
    first = harness.runner(alloc)
    wait_state(first, "dead")
    assert first.kill(timeout=5)
    final = first.task_state()
    assert first.local_state().run_complete

    hook = StopRecorder()
    second = harness.runner(alloc, start=False, extra_hooks=[hook])
    second.restore()
    harness.start(second)
    assert second.wait(5)  # run complete: returns at once, no parking
    assert second.task_state() == final
    assert hook.stops == 1
    with pytest.raises(TaskNotRunningError):
        second.force_restart(restart_event())


class StopRecorder(TaskHook):
    name = "stop_recorder"

    def __init__(self) -> None:
        self.stops = 0

    def stop(self, req) -> None:
        self.stops += 1


def test_restore_of_a_dead_task_parks_and_can_be_force_restarted(harness) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "1ms"}))
    first = harness.runner(alloc)
    wait_state(first, "dead")
    assert first.shutdown(timeout=5)  # run not complete: the task may be re-run
    assert not first.local_state().run_complete

    second = harness.runner(alloc, start=False)
    second.restore()
    harness.start(second)
    assert not second.wait(0.05)
    second.force_restart(restart_event())
    st = wait_event(second, EVENT_STARTED, 2)
    assert st.restarts == 1
    wait_state(second, "dead")
    assert second.kill(timeout=5)
    with pytest.raises(TaskNotRunningError):
        second.force_restart(restart_event())


def test_failed_reattach_restarts_the_task(harness, tmp_path) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "30s"}))
    first = harness.runner(alloc)
    wait_state(first, "running")
    old = first.local_state().task_handle
    assert first.shutdown(timeout=5)

    fresh = MockDriver()  # knows nothing of the old task: recovery fails
    try:
        second = harness.runner(alloc, start=False, drivers={"mock_driver": fresh})
        second.restore()
        st = second.task_state()
        assert st.state == "pending"
        assert st.events[-1].type == EVENT_RESTORE_FAILED
        assert not second.is_running()
        harness.start(second)
        st = wait_event(second, EVENT_STARTED, 2)
        assert second.local_state().task_handle.task_id != old.task_id
        assert second.kill(timeout=5)
    finally:
        fresh.close()
        harness.drivers["mock_driver"].destroy(old.task_id, force=True)


def test_restored_task_of_a_stopped_alloc_is_killed(harness) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "30s"}))
    first = harness.runner(alloc)
    wait_state(first, "running")
    assert first.shutdown(timeout=5)

    stopped = attrs.evolve(alloc, desired_status="stop", alloc_modify_index=2)
    second = harness.runner(stopped, start=False)
    second.restore()
    harness.start(second)
    st = wait_state(second, "dead")
    assert event_types(st)[-1] == EVENT_TERMINATED
    assert event_types(st).count(EVENT_STARTED) == 1
    assert not st.failed
    assert not second.is_running()


class DoneEnvHook(TaskHook):
    """A prestart hook that is done after its first run and contributes env."""

    name = "done_env"

    def __init__(self) -> None:
        self.calls = 0

    def prestart(self, req) -> PrestartResult:
        self.calls += 1
        return PrestartResult(env={"FROM_HOOK": "yes"}, data={"token": "t1"}, done=True)


class EnvRecorder(TaskHook):
    name = "env_recorder"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.envs: list[dict[str, str]] = []

    def poststart(self, req) -> None:
        with self.lock:
            self.envs.append(dict(req.env))


def test_done_prestart_hook_is_skipped_but_its_env_restored(harness) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "30s"}))
    done, recorder = DoneEnvHook(), EnvRecorder()
    first = harness.runner(alloc, extra_hooks=[done, recorder])
    wait_state(first, "running")
    assert done.calls == 1
    hook_state = first.local_state().hook("done_env")
    assert hook_state is not None and hook_state.prestart_done
    assert dict(hook_state.data) == {"token": "t1"}
    old = first.local_state().task_handle
    assert first.shutdown(timeout=5)
    harness.drivers["mock_driver"].destroy(old.task_id, force=True)

    done2, recorder2 = DoneEnvHook(), EnvRecorder()
    second = harness.runner(alloc, start=False, extra_hooks=[done2, recorder2])
    second.restore()  # the task is gone: it will be started again
    harness.start(second)
    wait_event(second, EVENT_STARTED, 2)
    assert done2.calls == 0
    with recorder2.lock:
        assert recorder2.envs and recorder2.envs[-1]["FROM_HOOK"] == "yes"
        assert recorder2.envs[-1]["NOMAD_TASK_NAME"] == "web"


class Gate(TaskHook):
    """A prestart hook after the built-in ones that blocks until the task is killed: the
    moment an agent dies in, after the hooks whose records wait for the start's write."""

    name = "gate"

    def __init__(self) -> None:
        self.reached = threading.Event()

    def prestart(self, req) -> None:
        self.reached.set()
        req.cancel.wait(20)


def test_an_agent_dying_before_the_starts_write_runs_the_redoable_hooks_again(
    harness, mock_driver, db
) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "30s"}))
    gate = Gate()
    first = harness.runner(alloc, extra_hooks=[gate])
    assert gate.reached.wait(10)
    assert EVENT_SETUP in event_types(first.task_state())  # seen at once
    # What the state DB holds now is what a restore after a kill -9 here finds.
    local, state = db.task_runner_state(alloc.id, first.name)
    assert local is None or local.hook("task_dir") is None
    assert state is None or EVENT_SETUP not in event_types(state)
    crashed = MemDB()
    if local is not None:
        crashed.put_task_local_state(alloc.id, first.name, local)
    if state is not None:
        crashed.put_task_state(alloc.id, first.name, state)
    assert first.kill(timeout=5)
    assert EVENT_STARTED not in event_types(first.task_state())  # it never started

    second = harness.runner(alloc, start=False, state_db=crashed)
    second.restore()
    harness.start(second)
    wait_state(second, "running")
    st = second.task_state()
    assert event_types(st).count(EVENT_SETUP) == 1  # the task dir hook ran again
    assert event_types(st).count(EVENT_STARTED) == 1
    stored, _state = crashed.task_runner_state(alloc.id, second.name)
    assert stored is not None and stored.task_handle == second.local_state().task_handle
    assert stored.hook("task_dir") is not None and stored.hook("task_dir").prestart_done


def test_kill_of_a_restored_task_before_run_stops_it(harness, mock_driver) -> None:
    """An allocation destroyed right after restore: the recovered task is killed even
    though run() never started (and run() then returns at once)."""
    alloc = alloc_of(mock_task(config={"run_for": "30s"}))
    first = harness.runner(alloc)
    wait_state(first, "running")
    task_id = first.local_state().task_handle.task_id
    assert first.shutdown(timeout=5)

    second = harness.runner(alloc, start=False)
    second.restore()
    assert second.kill(timeout=5)
    st = second.task_state()
    assert st.state == "dead" and not st.failed
    assert event_types(st)[-2:] == [EVENT_TERMINATED, EVENT_KILLED]
    assert not second.is_running()
    with pytest.raises(Exception, match="unknown task"):
        mock_driver.inspect(task_id)
    second.run()
    assert event_types(second.task_state()).count(EVENT_STARTED) == 1
