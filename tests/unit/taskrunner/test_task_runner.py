"""TaskRunner with mock_driver: the run loop, restarts, kill, restart, signal, update,
events in Nomad's order, state snapshots and persistence."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import attrs
import pytest

from allocrunner._sync import ThreadGroup
from allocrunner.errors import DriverError, TaskNotRunningError
from allocrunner.runner.lifecycle import Gate
from allocrunner.state import LocalState
from allocrunner.structs import (
    DesiredTransition,
    Lifecycle,
    RestartPolicy,
    TaskEvent,
    TaskGroup,
)
from allocrunner.structs.task_state import (
    EVENT_DRIVER_FAILURE,
    EVENT_FAILED_VALIDATION,
    EVENT_KILLED,
    EVENT_KILLING,
    EVENT_NOT_RESTARTING,
    EVENT_RECEIVED,
    EVENT_RESTART_SIGNAL,
    EVENT_RESTARTING,
    EVENT_SETUP,
    EVENT_SETUP_FAILURE,
    EVENT_SIGNALING,
    EVENT_STARTED,
    EVENT_TERMINATED,
    MSG_BUILDING_TASK_DIR,
)
from allocrunner.taskrunner import TaskHook
from allocrunner.testing import assert_stays, mock_task, wait_for
from tests.unit.taskrunner.conftest import (
    RecordingDB,
    alloc_of,
    event_types,
    events_of,
    wait_event,
    wait_state,
)

FAST_RESTARTS = RestartPolicy(attempts=2, interval=600.0, delay=0.01, mode="fail")


def restart_event() -> TaskEvent:
    return TaskEvent(EVENT_RESTART_SIGNAL, message="User requested restart")


# --- exits ---------------------------------------------------------------------------


def test_exit_zero_batch_is_dead_and_successful(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "10ms"})))
    st = wait_state(tr, "dead")
    assert event_types(st) == [EVENT_RECEIVED, EVENT_SETUP, EVENT_STARTED, EVENT_TERMINATED]
    setup = st.events[1]
    assert setup.message == MSG_BUILDING_TASK_DIR
    assert st.events[-1].exit_code == 0
    assert not st.failed
    assert st.started_at is not None and st.finished_at is not None
    assert st.finished_at >= st.started_at
    # dead but parked until killed (Nomad's ALLOC_RESTART)
    wait_for(lambda: _assert_parked(tr))
    assert not tr.wait(0)
    assert tr.kill(timeout=5)
    assert not tr.is_parked()
    local = tr.local_state()
    assert local.run_complete
    assert local.task_handle is None


def _assert_parked(tr) -> None:
    assert tr.is_parked(), f"{tr} is not parked"


def test_exit_non_zero_is_not_restarted_and_fails(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "1ms", "exit_code": 3})))
    st = wait_state(tr, "dead")
    assert event_types(st) == [
        EVENT_RECEIVED,
        EVENT_SETUP,
        EVENT_STARTED,
        EVENT_TERMINATED,
        EVENT_NOT_RESTARTING,
    ]
    terminated = st.events[3]
    assert (terminated.exit_code, terminated.signal) == (3, 0)
    assert "Exit Code: 3" in terminated.display_message
    assert st.events[-1].message == "Policy allows no restarts"
    assert st.events[-1].fails_task
    assert st.failed


def test_exit_by_signal_is_recorded(harness) -> None:
    tr = harness.runner(
        alloc_of(mock_task(config={"run_for": "1ms", "exit_code": 137, "exit_signal": 9}))
    )
    st = wait_state(tr, "dead")
    (terminated,) = [e for e in st.events if e.type == EVENT_TERMINATED]
    assert (terminated.exit_code, terminated.signal) == (137, 9)
    assert "Signal: 9" in terminated.display_message
    assert st.failed


def test_service_exit_zero_is_restarted(harness) -> None:
    alloc = alloc_of(
        mock_task(config={"run_for": "1ms"}), job_type="service", restart_policy=FAST_RESTARTS
    )
    tr = harness.runner(alloc)
    st = wait_state(tr, "dead")
    assert st.restarts == 2
    assert st.failed
    assert events_of(tr, EVENT_NOT_RESTARTING)[0].message == (
        'Exceeded allowed attempts 2 in interval 10m0s and mode is "fail"'
    )


# --- start errors ----------------------------------------------------------------------


def test_unrecoverable_start_error_is_not_retried(harness) -> None:
    alloc = alloc_of(
        mock_task(config={"start_error": "no such thing"}), restart_policy=FAST_RESTARTS
    )
    tr = harness.runner(alloc)
    st = wait_state(tr, "dead")
    assert event_types(st) == [
        EVENT_RECEIVED,
        EVENT_SETUP,
        EVENT_DRIVER_FAILURE,
        EVENT_NOT_RESTARTING,
    ]
    assert "no such thing" in st.events[2].message
    assert st.events[-1].message == "Error was unrecoverable"
    assert st.failed and st.restarts == 0
    assert st.started_at is None


def test_recoverable_start_error_follows_the_policy(harness) -> None:
    alloc = alloc_of(
        mock_task(config={"start_error": "busy", "start_error_recoverable": True}),
        restart_policy=FAST_RESTARTS,
    )
    tr = harness.runner(alloc)
    st = wait_state(tr, "dead")
    assert event_types(st) == [
        EVENT_RECEIVED,
        EVENT_SETUP,
        EVENT_DRIVER_FAILURE,
        EVENT_RESTARTING,
        EVENT_DRIVER_FAILURE,
        EVENT_RESTARTING,
        EVENT_DRIVER_FAILURE,
        EVENT_NOT_RESTARTING,
    ]
    assert st.restarts == 2
    assert st.failed


# --- restarts and their delay ----------------------------------------------------------


def test_restarts_are_counted_and_delayed(harness) -> None:
    delay = 0.05
    policy = RestartPolicy(attempts=2, interval=600.0, delay=delay, mode="fail")
    tr = harness.runner(
        alloc_of(mock_task(config={"run_for": "1ms", "exit_code": 1}), restart_policy=policy)
    )
    st = wait_state(tr, "dead")
    events = st.events  # the newest 10: Received has dropped out of the ring
    assert event_types(st) == [
        EVENT_SETUP,
        EVENT_STARTED,
        EVENT_TERMINATED,
        EVENT_RESTARTING,
        EVENT_STARTED,
        EVENT_TERMINATED,
        EVENT_RESTARTING,
        EVENT_STARTED,
        EVENT_TERMINATED,
        EVENT_NOT_RESTARTING,
    ]
    assert st.restarts == 2
    assert st.last_restart == events[6].time
    for restarting, started in ((events[3], events[4]), (events[6], events[7])):
        waited = started.time - restarting.time
        assert waited >= timedelta(seconds=delay), f"restarted after {waited}"
        assert restarting.details["restart_reason"] == "Restart within policy"
        assert restarting.display_message.startswith("Task restarting in ")


def test_mode_delay_waits_out_the_interval(harness) -> None:
    interval = 0.3
    policy = RestartPolicy(attempts=1, interval=interval, delay=0.01, mode="delay")
    # The restart window opens when the runner's restart tracker is made (as Nomad's
    # does), which may be well before the first Started event on a loaded machine.
    before_tracker = datetime.now(UTC)
    tr = harness.runner(
        alloc_of(mock_task(config={"run_for": "1ms", "exit_code": 1}), restart_policy=policy)
    )
    st = wait_event(tr, EVENT_STARTED, 3)
    restarts = [e for e in st.events if e.type == EVENT_RESTARTING]
    assert restarts[0].details["restart_reason"] == "Restart within policy"
    assert restarts[1].details["restart_reason"] == "Exceeded allowed attempts, applying a delay"
    third_start = [e for e in st.events if e.type == EVENT_STARTED][2]
    # the delayed restart happened once the first window had ended
    assert third_start.time - before_tracker >= timedelta(seconds=interval)
    assert not st.failed
    assert tr.kill(timeout=5)
    assert not tr.task_state().failed


# --- kill ----------------------------------------------------------------------------


def killing() -> TaskEvent:
    return TaskEvent(EVENT_KILLING, message="Sent interrupt. Waiting 5s before force killing")


def test_kill_while_running(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s", "exit_code": 7})))
    wait_state(tr, "running")
    assert tr.is_running()
    assert tr.kill(killing(), timeout=5)
    st = tr.task_state()
    assert event_types(st)[-3:] == [EVENT_KILLING, EVENT_TERMINATED, EVENT_KILLED]
    assert st.events[-2].exit_code == 7  # the exit code is recorded even when killed
    assert st.events[-1].message == "Task successfully killed"
    assert st.state == "dead" and not st.failed
    assert not tr.is_running()
    assert tr.local_state().run_complete


def test_kill_while_restarting(harness) -> None:
    policy = RestartPolicy(attempts=3, interval=600.0, delay=30.0, mode="fail")
    tr = harness.runner(
        alloc_of(mock_task(config={"run_for": "1ms", "exit_code": 1}), restart_policy=policy)
    )
    wait_event(tr, EVENT_RESTARTING)
    assert tr.task_state().state == "pending"
    assert tr.kill(timeout=5)
    st = tr.task_state()
    assert st.state == "dead" and not st.failed
    assert event_types(st).count(EVENT_STARTED) == 1


def test_kill_before_start(harness) -> None:
    tr = harness.runner(alloc_of(mock_task()), start=False)
    assert tr.kill(killing(), timeout=0)
    assert tr.wait(0)
    st = tr.task_state()
    assert st.state == "dead" and not st.failed
    assert EVENT_STARTED not in event_types(st)
    tr.run()  # returns at once, starting nothing
    assert EVENT_STARTED not in event_types(tr.task_state())
    assert tr.local_state().run_complete


def test_kill_retries_a_failing_stop_with_backoff(harness, mock_driver, monkeypatch) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s"})))
    wait_state(tr, "running")
    calls: list[float] = []
    real_stop = mock_driver.stop

    def flaky_stop(task_id: str, timeout: float, signal: str = "") -> None:
        import time

        calls.append(time.monotonic())
        if len(calls) < 3:
            raise DriverError("stop failed for now")
        real_stop(task_id, timeout, signal)

    monkeypatch.setattr(mock_driver, "stop", flaky_stop)
    assert tr.kill(timeout=5)
    assert len(calls) == 3
    # backoff min(4^i * base, limit) with base 0.01: 0.01 then 0.04
    assert calls[1] - calls[0] >= 0.01
    assert calls[2] - calls[1] >= 0.04
    assert tr.task_state().events[-1].type == EVENT_KILLED


def test_kill_that_never_succeeds_is_reported(harness, mock_driver, monkeypatch) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s"})))
    wait_state(tr, "running")

    def broken_stop(task_id: str, timeout: float, signal: str = "") -> None:
        raise DriverError("cannot stop")

    monkeypatch.setattr(mock_driver, "stop", broken_stop)
    assert tr.kill(timeout=10)
    last = tr.task_state().events[-1]
    assert last.type == EVENT_KILLED
    assert last.details["kill_error"] == "cannot stop"
    assert tr.task_state().state == "dead"


def test_kill_timeout_is_capped_by_max_kill_timeout(harness) -> None:
    task = mock_task(config={"run_for": "30s", "kill_after": "20s"}, kill_timeout=20.0)
    tr = harness.runner(alloc_of(task), max_kill_timeout=0.05)
    wait_state(tr, "running")
    assert tr.kill(timeout=5)


def test_shutdown_delay_then_kill(harness) -> None:
    task = mock_task(config={"run_for": "30s"}, shutdown_delay=0.05)
    tr = harness.runner(alloc_of(task))
    wait_state(tr, "running")
    assert tr.kill(timeout=5)
    st = tr.task_state()
    waiting = next(e for e in st.events if e.type == "Waiting for shutdown delay")
    killed = st.events[-1]
    assert killed.type == EVENT_KILLED
    assert killed.time - waiting.time >= timedelta(seconds=0.05)


def test_shutdown_during_the_shutdown_delay_leaves_the_stop_to_the_kill(
    harness, mock_driver
) -> None:
    task = mock_task(config={"run_for": "30s"}, shutdown_delay=30.0)
    tr = harness.runner(alloc_of(task))
    wait_state(tr, "running")
    handle = tr.local_state().task_handle
    killed: list[bool] = []
    group = ThreadGroup("test-killer")
    group.spawn("test-killer", lambda: killed.append(tr.kill(killing(), timeout=10)))
    wait_event(tr, "Waiting for shutdown delay")
    assert tr.shutdown(timeout=5)  # the run thread returns at once, mid-delay
    assert group.join(10)
    assert killed == [True]  # the waiting kill then stops the task itself
    st = tr.task_state()
    assert st.state == "dead" and event_types(st)[-2:] == [EVENT_TERMINATED, EVENT_KILLED]
    with pytest.raises(DriverError, match="unknown task"):
        mock_driver.inspect(handle.task_id)  # stopped and destroyed


def test_shutdown_delay_skipped_on_request(harness) -> None:
    task = mock_task(config={"run_for": "30s"}, shutdown_delay=30.0)
    alloc = alloc_of(task)
    tr = harness.runner(alloc)
    wait_state(tr, "running")
    tr.update(attrs.evolve(alloc, desired_transition=DesiredTransition(no_shutdown_delay=True)))
    assert tr.kill(timeout=5)
    assert "Skipping shutdown delay" in event_types(tr.task_state())


# --- restart and signal ----------------------------------------------------------------


def test_user_restart_events_and_no_delay(harness) -> None:
    policy = RestartPolicy(attempts=1, interval=600.0, delay=30.0, mode="fail")
    tr = harness.runner(
        alloc_of(mock_task(config={"run_for": "30s"}), job_type="service", restart_policy=policy)
    )
    wait_state(tr, "running")
    tr.restart(restart_event())
    st = wait_event(tr, EVENT_STARTED, 2, timeout=5)
    assert event_types(st)[-4:] == [
        EVENT_RESTART_SIGNAL,
        EVENT_TERMINATED,
        EVENT_RESTARTING,
        EVENT_STARTED,
    ]
    assert st.restarts == 1
    assert st.state == "running"
    # a user restart is not counted: a second one still restarts at once
    tr.restart(restart_event())
    st = wait_event(tr, EVENT_STARTED, 3, timeout=5)
    assert st.restarts == 2 and not st.failed


def test_restart_for_a_failure_counts(harness) -> None:
    policy = RestartPolicy(attempts=1, interval=600.0, delay=0.01, mode="fail")
    tr = harness.runner(
        alloc_of(mock_task(config={"run_for": "30s"}), job_type="service", restart_policy=policy)
    )
    wait_state(tr, "running")
    tr.restart(restart_event(), failure=True)
    wait_event(tr, EVENT_STARTED, 2)
    wait_state(tr, "running")
    tr.restart(restart_event(), failure=True)
    st = wait_state(tr, "dead")
    assert st.failed
    assert st.events[-1].type == EVENT_NOT_RESTARTING


def test_restart_and_signal_of_a_task_not_running(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "1ms", "exit_code": 1})), start=False)
    with pytest.raises(TaskNotRunningError):
        tr.restart(restart_event())
    with pytest.raises(TaskNotRunningError):
        tr.signal(TaskEvent(EVENT_SIGNALING), "SIGHUP")
    with pytest.raises(TaskNotRunningError):
        tr.force_restart(restart_event())  # pending
    harness.start(tr)
    wait_state(tr, "dead")
    with pytest.raises(TaskNotRunningError):
        tr.restart(restart_event())
    with pytest.raises(TaskNotRunningError):
        tr.signal(TaskEvent(EVENT_SIGNALING), "SIGHUP")
    assert EVENT_RESTART_SIGNAL not in event_types(tr.task_state())
    assert tr.kill(timeout=5)
    with pytest.raises(TaskNotRunningError):
        tr.force_restart(restart_event())  # run complete


def test_force_restart_reruns_a_dead_parked_task(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "1ms"})))
    wait_state(tr, "dead")
    tr.force_restart(restart_event())
    st = wait_event(tr, EVENT_STARTED, 2)
    assert st.restarts == 1
    wait_state(tr, "dead")
    assert event_types(tr.task_state())[-2:] == [EVENT_STARTED, EVENT_TERMINATED]
    assert not tr.task_state().failed


def test_signal_running_task(harness, mock_driver) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s"})))
    wait_state(tr, "running")
    tr.signal(TaskEvent(EVENT_SIGNALING, message="Task being sent signal SIGHUP"), "SIGHUP")
    assert tr.task_state().events[-1].type == EVENT_SIGNALING
    with pytest.raises(DriverError, match="unknown signal"):
        tr.signal(TaskEvent(EVENT_SIGNALING), "SIGNOPE")


def test_signal_error_propagates(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s", "signal_error": "nope"})))
    wait_state(tr, "running")
    with pytest.raises(DriverError, match="nope"):
        tr.signal(TaskEvent(EVENT_SIGNALING), "SIGUSR1")
    # the runner is not wedged: a restart and a kill still work
    tr.restart(restart_event())
    wait_event(tr, EVENT_STARTED, 2)
    assert tr.kill(timeout=5)


# --- update -------------------------------------------------------------------------


class RecordingHook(TaskHook):
    """Not thread-safe; records the phases it saw (read by the test after waiting)."""

    name = "recorder"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, object]] = []

    def _record(self, phase: str, value: object) -> None:
        with self.lock:
            self.calls.append((phase, value))

    def phases(self) -> list[str]:
        with self.lock:
            return [phase for phase, _ in self.calls]

    def prestart(self, req) -> None:
        self._record("prestart", None)

    def poststart(self, req) -> None:
        self._record("poststart", req.handle.task_id if req.handle else None)

    def pre_kill(self, req) -> None:
        self._record("pre_kill", None)

    def exited(self, req) -> None:
        self._record("exited", req.result)

    def update(self, req) -> None:
        self._record("update", req.alloc.alloc_modify_index)

    def stop(self, req) -> None:
        self._record("stop", None)

    def shutdown(self, req) -> None:
        self._record("shutdown", None)


def test_update_runs_hooks_unless_terminal(harness) -> None:
    hook = RecordingHook()
    alloc = alloc_of(mock_task(config={"run_for": "30s"}))
    tr = harness.runner(alloc, extra_hooks=[hook])
    wait_state(tr, "running")
    newer = attrs.evolve(alloc, alloc_modify_index=5)
    tr.update(newer)
    wait_for(lambda: _assert_in(("update", 5), hook.calls))
    assert tr.alloc() is newer
    stopped = attrs.evolve(alloc, alloc_modify_index=6, desired_status="stop")
    tr.update(stopped)
    assert tr.alloc() is stopped
    assert_stays(lambda: _assert_not_in(("update", 6), hook.calls), 0.1)
    assert tr.kill(timeout=5)
    assert hook.phases() == ["prestart", "poststart", "update", "pre_kill", "exited", "stop"]


def _assert_in(item, items) -> None:
    assert item in items, f"{item} not in {items}"


def _assert_not_in(item, items) -> None:
    assert item not in items, f"{item} in {items}"


def test_update_with_the_task_missing_kills_it(harness) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "30s"}))
    tr = harness.runner(alloc)
    wait_state(tr, "running")
    job = alloc.job
    other = TaskGroup(name=alloc.task_group, tasks=(mock_task("other"),))
    tr.update(attrs.evolve(alloc, job=attrs.evolve(job, task_groups=(other,))))
    st = wait_state(tr, "dead")
    assert st.failed
    killed = [e for e in st.events if e.type == EVENT_KILLED]
    assert killed[0].details["kill_reason"] == "update missing task"
    assert tr.wait(5)


def _without_the_task(alloc):
    other = TaskGroup(name=alloc.task_group, tasks=(mock_task("other"),))
    return attrs.evolve(alloc, job=attrs.evolve(alloc.job, task_groups=(other,)))


@pytest.mark.parametrize("started", [True, False], ids=["running", "before-run"])
def test_update_never_blocks_even_for_a_missing_task(harness, started) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "30s"}))
    db = RecordingDB(alloc.id, "web")
    tr = harness.runner(alloc, state_db=db, start=started)
    if started:
        wait_state(tr, "running")
    db.gate.clear()  # from now on every write blocks: update() must not write
    tr.update(attrs.evolve(alloc, alloc_modify_index=5))
    tr.update(_without_the_task(alloc))
    killed = events_of(tr, EVENT_KILLED)
    assert killed and killed[0].details["kill_reason"] == "update missing task"
    assert tr.task_state().failed
    db.gate.set()
    if not started:
        assert not tr.wait(0)  # the run thread (or a kill) does the killing
        harness.start(tr)
    assert tr.wait(5)
    st = tr.task_state()
    assert st.state == "dead" and st.failed
    if not started:
        assert EVENT_STARTED not in event_types(st)  # killed before it ever started
    _, stored = db.stored()
    assert stored == st  # the event was written with the task's later changes


def test_server_terminal_alloc_is_not_started(harness) -> None:
    alloc = attrs.evolve(alloc_of(mock_task()), desired_status="stop")
    tr = harness.runner(alloc)
    st = wait_state(tr, "dead")
    assert EVENT_STARTED not in event_types(st)
    assert not st.failed


def test_poststop_task_runs_on_a_stopped_alloc_and_returns(harness) -> None:
    task = mock_task(config={"run_for": "1ms"}, lifecycle=Lifecycle(hook="poststop"))
    tr = harness.runner(attrs.evolve(alloc_of(task), desired_status="stop"))
    assert tr.wait(5)  # poststop runners do not park
    assert EVENT_STARTED in event_types(tr.task_state())
    assert tr.task_state().successful()


# --- bad input -------------------------------------------------------------------------


def test_unknown_driver(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(driver="docker"), job_type="service"))
    st = wait_state(tr, "dead")
    failure = next(e for e in st.events if e.type == EVENT_DRIVER_FAILURE)
    assert "'docker'" in failure.message and "not available" in failure.message
    assert "mock_driver" in failure.message
    assert st.events[-1].type == EVENT_NOT_RESTARTING
    assert st.failed


def test_bad_duration_fails_validation(harness) -> None:
    alloc = alloc_of(mock_task(config={"run_for": "10 parsecs"}), restart_policy=FAST_RESTARTS)
    tr = harness.runner(alloc)
    st = wait_state(tr, "dead")
    failure = next(e for e in st.events if e.type == EVENT_FAILED_VALIDATION)
    assert "run_for" in failure.message and "10 parsecs" in failure.message
    assert st.events[-1].type == EVENT_NOT_RESTARTING
    assert st.failed and st.restarts == 0


def test_unknown_config_key_fails_validation(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_forr": "1s"})))
    st = wait_state(tr, "dead")
    failure = next(e for e in st.events if e.type == EVENT_FAILED_VALIDATION)
    assert "run_forr" in failure.message
    assert st.failed


def test_bad_kill_signal_fails_validation(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(kill_signal="SIGWHAT")))
    st = wait_state(tr, "dead")
    failure = next(e for e in st.events if e.type == EVENT_FAILED_VALIDATION)
    assert "kill_signal" in failure.message and "SIGWHAT" in failure.message
    assert st.failed


def test_mark_failed_kill(harness) -> None:
    tr = harness.runner(alloc_of(mock_task()), start=False)
    tr.mark_failed_kill("prerun failed: boom")
    assert tr.wait(0)
    st = tr.task_state()
    assert st.state == "dead" and st.failed
    assert st.events[-1].type == EVENT_SETUP_FAILURE
    assert st.events[-1].display_message == "prerun failed: boom"
    tr.run()
    assert EVENT_STARTED not in event_types(tr.task_state())


# --- hooks ------------------------------------------------------------------------------


class FailingHook(TaskHook):
    name = "flaky"

    def __init__(self, recoverable: bool) -> None:
        self.recoverable = recoverable

    def prestart(self, req) -> None:
        err = DriverError("fetching artifacts failed", recoverable=self.recoverable)
        raise err


def test_prestart_hook_failure_uses_the_restart_policy(harness) -> None:
    alloc = alloc_of(mock_task(), restart_policy=FAST_RESTARTS)
    tr = harness.runner(alloc, extra_hooks=[FailingHook(recoverable=True)])
    st = wait_state(tr, "dead")
    failures = [e for e in st.events if e.type == "Task hook failed"]
    assert len(failures) == 3
    assert failures[0].message == "flaky: fetching artifacts failed"
    assert st.restarts == 2 and st.failed


def test_unrecoverable_prestart_hook_failure(harness) -> None:
    alloc = alloc_of(mock_task(), restart_policy=FAST_RESTARTS)
    tr = harness.runner(alloc, extra_hooks=[FailingHook(recoverable=False)])
    st = wait_state(tr, "dead")
    assert st.restarts == 0 and st.failed
    assert st.events[-1].message == "Error was unrecoverable"


class BlockingHook(TaskHook):
    """Blocks its prestart until cancelled (like a template waiting for data)."""

    name = "blocking"

    def __init__(self) -> None:
        self.entered = threading.Event()

    def prestart(self, req) -> None:
        self.entered.set()
        req.cancel.wait()
        raise RuntimeError("cancelled")


def test_kill_unblocks_a_blocked_prestart_hook(harness) -> None:
    hook = BlockingHook()
    tr = harness.runner(alloc_of(mock_task()), extra_hooks=[hook])
    assert hook.entered.wait(5)
    assert tr.kill(timeout=5)
    st = tr.task_state()
    assert st.state == "dead" and not st.failed
    assert EVENT_STARTED not in event_types(st)


def test_shutdown_unblocks_a_blocked_prestart_hook(harness) -> None:
    hook = BlockingHook()
    tr = harness.runner(alloc_of(mock_task()), extra_hooks=[hook])
    assert hook.entered.wait(5)
    assert tr.shutdown(timeout=5)
    assert tr.task_state().state == "pending"


# --- state snapshots and persistence ------------------------------------------------------


def test_task_state_is_an_immutable_snapshot_without_side_effects(harness, db) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s"})))
    wait_state(tr, "running")
    kicks = harness.kicks.count
    writes = db.task_runner_state(tr.alloc_id, tr.name)
    first = tr.task_state()
    for _ in range(100):
        assert tr.task_state() is first
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.state = "dead"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        first.events.append(TaskEvent("x"))  # type: ignore[attr-defined]
    assert harness.kicks.count == kicks
    assert db.task_runner_state(tr.alloc_id, tr.name) == writes
    tr.emit_event(TaskEvent("Driver", message="hello"))
    assert tr.task_state() is not first
    assert first.events[-1].type == EVENT_STARTED


def test_persisted_state_is_the_newest_after_concurrent_writers(harness, db) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s"})))
    wait_state(tr, "running")

    def writer(n: int) -> None:
        for i in range(50):
            tr.emit_event(TaskEvent("Driver", message=f"{n}-{i}"))

    threads = [threading.Thread(target=writer, args=(n,), name=f"writer-{n}") for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, stored = db.task_runner_state(tr.alloc_id, tr.name)
    assert stored == tr.task_state()
    assert tr.kill(timeout=5)
    local, stored = db.task_runner_state(tr.alloc_id, tr.name)
    assert stored == tr.task_state()
    assert local is not None and local.run_complete


def test_emit_and_append_notify_differently(harness) -> None:
    tr = harness.runner(alloc_of(mock_task()), start=False)
    before = harness.kicks.count
    tr.append_event(TaskEvent("Reconnected"))
    assert harness.kicks.count == before
    tr.emit_event(TaskEvent("Driver"))
    assert harness.kicks.count == before + 1
    tr.update_state("pending", TaskEvent("Driver"))
    assert harness.kicks.count == before + 2


def test_received_event_is_not_persisted_until_the_first_persist(harness, db) -> None:
    tr = harness.runner(alloc_of(mock_task()), start=False)
    assert db.task_runner_state(tr.alloc_id, tr.name) == (None, None)
    assert event_types(tr.task_state()) == [EVENT_RECEIVED]
    tr.append_event(TaskEvent("Driver"))
    _, stored = db.task_runner_state(tr.alloc_id, tr.name)
    assert event_types(stored) == [EVENT_RECEIVED, "Driver"]


def test_events_ring_keeps_the_newest_ten(harness) -> None:
    tr = harness.runner(alloc_of(mock_task()), start=False)
    for i in range(15):
        tr.append_event(TaskEvent("Driver", message=str(i)))
    st = tr.task_state()
    assert len(st.events) == 10
    assert [e.message for e in st.events] == [str(i) for i in range(5, 15)]


def test_lifecycle_predicates(harness) -> None:
    tasks = (
        mock_task("main", leader=True),
        mock_task("pre", lifecycle=Lifecycle(hook="prestart")),
        mock_task("side", lifecycle=Lifecycle(hook="prestart", sidecar=True)),
        mock_task("post", lifecycle=Lifecycle(hook="poststart")),
        mock_task("stop", lifecycle=Lifecycle(hook="poststop")),
    )
    alloc = alloc_of(*tasks)
    runners = {t.name: harness.runner(alloc, t.name, start=False) for t in tasks}
    assert runners["main"].is_leader() and runners["main"].is_main()
    assert runners["pre"].is_prestart() and not runners["pre"].is_sidecar()
    assert runners["side"].is_sidecar()
    assert runners["post"].is_poststart()
    assert runners["stop"].is_poststop() and not runners["stop"].is_main()


def test_shutdown_leaves_the_task_running(harness, mock_driver, db) -> None:
    hook = RecordingHook()
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s"})), extra_hooks=[hook])
    wait_state(tr, "running")
    handle = tr.local_state().task_handle
    assert handle is not None
    assert tr.shutdown(timeout=5)
    assert tr.task_state().state == "running"
    assert mock_driver.inspect(handle.task_id).state == "running"
    assert hook.phases()[-1] == "shutdown" and "stop" not in hook.phases()
    local, _ = db.task_runner_state(tr.alloc_id, tr.name)
    assert isinstance(local, LocalState) and local.task_handle == handle
    assert not local.run_complete
    mock_driver.destroy(handle.task_id, force=True)


def test_run_twice_is_refused(harness) -> None:
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s"})))
    wait_state(tr, "running")
    with pytest.raises(Exception, match="called twice"):
        tr.run()


# --- the start gate ---------------------------------------------------------------------


def test_start_waits_for_the_gate(harness) -> None:
    gate = Gate("main")
    tr = harness.runner(alloc_of(mock_task(config={"run_for": "30s"})), start_gate=gate)
    assert_stays(lambda: _assert_pending_unstarted(tr), 0.1)
    gate.open()
    wait_state(tr, "running")


def _assert_pending_unstarted(tr) -> None:
    st = tr.task_state()
    assert st.state == "pending", st.state
    assert EVENT_SETUP not in event_types(st), event_types(st)


def test_kill_while_waiting_at_the_gate(harness) -> None:
    tr = harness.runner(alloc_of(mock_task()), start_gate=Gate("main"))
    assert not tr.wait(0.05)
    assert tr.kill(killing(), timeout=5)
    st = tr.task_state()
    assert st.state == "dead" and not st.failed
    assert EVENT_STARTED not in event_types(st)


def test_shutdown_while_waiting_at_the_gate(harness) -> None:
    tr = harness.runner(alloc_of(mock_task()), start_gate=Gate("main"))
    assert not tr.wait(0.05)
    assert tr.shutdown(timeout=5)
    assert tr.task_state().state == "pending"


class SelfKillingHook(TaskHook):
    """Kills (or restarts) its own task from poststart, as a watchdog hook might."""

    name = "self_killer"

    def __init__(self, action: str) -> None:
        self.action = action
        self.runner = None
        self.returned: list[object] = []

    def poststart(self, req) -> None:
        if self.returned:
            return
        if self.action == "kill":
            self.returned.append(self.runner.kill(timeout=5))
        else:
            self.runner.restart(restart_event())
            self.returned.append("restart requested")


def test_a_hook_may_kill_its_own_task_without_deadlock(harness) -> None:
    hook = SelfKillingHook("kill")
    tr = harness.runner(
        alloc_of(mock_task(config={"run_for": "30s"})), start=False, extra_hooks=[hook]
    )
    hook.runner = tr
    harness.start(tr)
    assert tr.wait(5)
    assert hook.returned == [False]  # it could not wait for its own run loop
    st = tr.task_state()
    assert st.state == "dead" and st.events[-1].type == EVENT_KILLED


def test_a_hook_may_restart_its_own_task_without_deadlock(harness) -> None:
    hook = SelfKillingHook("restart")
    tr = harness.runner(
        alloc_of(mock_task(config={"run_for": "30s"}), job_type="service"),
        start=False,
        extra_hooks=[hook],
    )
    hook.runner = tr
    harness.start(tr)
    st = wait_event(tr, EVENT_STARTED, 2)
    assert st.restarts == 1
    assert hook.returned == ["restart requested"]
