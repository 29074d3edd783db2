"""Lifecycle races pinned with the checkpoint harness: each test holds one thread at a
named point while another runs, so the interleaving that once failed (or could) is
played every time, in the same order."""

from __future__ import annotations

import threading

import attrs
import pytest

from allocrunner._checkpoints import Hold, armed, mark
from allocrunner.errors import TaskNotRunningError
from allocrunner.state import MemDB
from allocrunner.structs import (
    EVENT_KILLED,
    EVENT_KILLING,
    EVENT_LEADER_DEAD,
    EVENT_RESTART_SIGNAL,
    Allocation,
    TaskEvent,
    TaskState,
    new_allocation,
)
from allocrunner.testing import lifecycle, mock_job, mock_task, wait_for

BOUND = 10.0


def stopped(alloc: Allocation) -> Allocation:
    return attrs.evolve(
        alloc, desired_status="stop", alloc_modify_index=alloc.alloc_modify_index + 1
    )


def leader_group() -> Allocation:
    job = mock_job(
        mock_task("leader", leader=True, kill_timeout=0.05),
        mock_task("main1", kill_timeout=0.05),
        mock_task("main2", kill_timeout=0.05),
        mock_task("sidecar", kill_timeout=0.05, lifecycle=lifecycle("prestart", True)),
    )
    return new_allocation(job, "web")


def start_all(make_runner, alloc: Allocation, **kwargs):
    ar = make_runner(alloc, **kwargs)
    ar.start()

    def all_running() -> None:
        states = ar.alloc_state().task_states
        for name, ts in states.items():
            assert ts.state == "running", f"{name} is {ts.state}"

    wait_for(all_running, BOUND)
    return ar


def task_is(ar, name: str, want: str) -> None:
    got = ar.task_runner(name).task_state().state
    assert got == want, f"{name} is {got}, want {want}"


def killed_for_good(ar, *names: str) -> None:
    for name in names:
        ts = ar.task_runner(name).task_state()
        types = [e.type for e in ts.events]
        assert ts.state == "dead" and types[-1] == EVENT_KILLED, (name, types)


def test_a_sibling_rule_seen_in_a_stale_snapshot_records_nothing_on_killed_tasks(make_runner):
    """A stop kills the leader; the state handler's next pass sees it dead, asks the
    main tasks to die (the next wave) and, in the same snapshot, sees the main tasks
    live and the leader dead: a sibling rule. Before it records "Leader Task Dead" on
    them, their run threads kill them. The event must not land after their Killed."""
    alloc = leader_group()
    ar = start_all(make_runner, alloc)
    mains_wave = mark("tasks.kill_wave", "mains")
    sibling = Hold("state.sibling_kill")
    with armed(mains_wave, sibling):
        ar.update(stopped(alloc))
        assert sibling.wait_arrived(BOUND), "the dead leader fired no sibling rule"
        assert mains_wave.wait_arrived(0), "the main tasks were not asked to die first"
        wait_for(lambda: killed_for_good(ar, "main1", "main2"), BOUND)
        sibling.release()
        assert ar.wait(BOUND)
    killed_for_good(ar, "leader", "main1", "main2", "sidecar")
    for name, ts in ar.alloc_state().task_states.items():
        assert ts.events[-1].type == EVENT_KILLED, (name, [e.type for e in ts.events])
    for name in ("main1", "main2"):
        types = [e.type for e in ar.alloc_state().task_states[name].events]
        assert EVENT_LEADER_DEAD not in types, (name, types)


def test_a_second_kill_of_a_task_being_killed_records_no_killing_after_killed(make_runner):
    """The stop's wave of main tasks looked at main1 while it ran (so it means to record
    Killing); before it asks, a direct kill of main1 kills it. The stop's Killing event
    must not land after that kill's Killed."""
    alloc = leader_group()
    ar = start_all(make_runner, alloc)
    stop_kill = Hold("tasks.kill_one", "main1")
    with armed(stop_kill):
        ar.update(stopped(alloc))
        assert stop_kill.wait_arrived(BOUND), "the stop did not come to main1"
        assert ar.task_runner("main1").kill(timeout=BOUND)
        killed_for_good(ar, "main1")
        stop_kill.release()
        assert ar.wait(BOUND)
    killed_for_good(ar, "leader", "main1", "main2", "sidecar")
    types = [e.type for e in ar.alloc_state().task_states["main1"].events]
    assert EVENT_KILLING not in types, types
    assert types[-1] == EVENT_KILLED, types


def test_a_restart_that_loses_the_race_with_a_stop_says_so_and_records_nothing(make_runner):
    job = mock_job(mock_task("web", kill_timeout=0.05))
    alloc = new_allocation(job, "web")
    ar = start_all(make_runner, alloc)
    posting = Hold("task.restart.post", "web")
    outcome: list[BaseException | None] = []

    def restart() -> None:
        try:
            ar.restart_task("web", TaskEvent(EVENT_RESTART_SIGNAL, message="race"))
        except BaseException as err:  # reported below
            outcome.append(err)
        else:
            outcome.append(None)

    with armed(posting):
        thread = threading.Thread(target=restart, name="race-restart")
        thread.start()
        assert posting.wait_arrived(BOUND)
        ar.update(stopped(alloc))
        wait_for(lambda: killed_for_good(ar, "web"), BOUND)
        posting.release()
        thread.join(BOUND)
        assert not thread.is_alive(), "the restart never returned"
    assert len(outcome) == 1 and isinstance(outcome[0], TaskNotRunningError), outcome
    assert ar.wait(BOUND)
    killed_for_good(ar, "web")


class _HeldWrites(MemDB):
    """A MemDB whose next put_allocation blocks until released, recording the order of
    the writes and deletes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[str] = []

    def put_task_state(self, alloc_id: str, task: str, state: TaskState) -> None:
        self.calls.append("put_task_state")
        super().put_task_state(alloc_id, task, state)

    def put_allocation(self, alloc: Allocation) -> None:
        if self.hold.is_set() and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(BOUND), "the held write was never released"
        self.calls.append("put")
        super().put_allocation(alloc)

    def delete_allocation(self, alloc_id: str) -> None:
        self.calls.append("delete")
        super().delete_allocation(alloc_id)


def test_destroy_waits_for_a_write_in_flight_before_deleting_the_state(make_runner):
    """A persist is inside the state DB when destroy gets to deleting the state: the
    delete waits for it, so it cannot bring the allocation back afterwards."""
    db = _HeldWrites()
    job = mock_job(mock_task("web", config={"run_for": "10ms"}), job_type="batch")
    alloc = new_allocation(job, "web")
    ar = make_runner(alloc, state_db=db)
    ar.start()
    assert ar.wait(BOUND)
    db.hold.set()
    writer = threading.Thread(target=ar.persist_state, name="race-persist")
    writer.start()
    assert db.entered.wait(BOUND)
    deleting = mark("alloc.destroy.delete")
    with armed(deleting):
        ar.destroy()
        assert deleting.wait_passed(BOUND), "destroy never got to deleting the state"
        db.release.set()
        writer.join(BOUND)
        assert ar.wait_destroyed(BOUND), "destroy did not finish once the write drained"
    assert db.calls[-2:] == ["put", "delete"], db.calls
    assert db.all_allocations() == []


def test_destroy_racing_destroy_launches_one_destroy(make_runner):
    """Two destroys at once: the second arrives while the first has decided to launch
    and not yet started its thread. Exactly one destroy runs."""
    db = _HeldWrites()
    alloc = new_allocation(mock_job(mock_task("web")), "web")
    ar = make_runner(alloc, state_db=db)
    ar.start()
    launch = Hold("alloc.destroy.launch")
    with armed(launch):
        first = threading.Thread(target=ar.destroy, name="race-destroy-1")
        first.start()
        assert launch.wait_arrived(BOUND)
        second = threading.Thread(target=ar.destroy, name="race-destroy-2")
        second.start()
        second.join(BOUND)
        launch.release()
        first.join(BOUND)
        assert ar.wait_destroyed(BOUND)
        assert ar.close(BOUND)
    assert db.calls.count("delete") == 1, db.calls


@pytest.mark.parametrize("shutdown_first", [False, True])
def test_wait_returns_only_after_the_last_state_pass(make_runner, shutdown_first):
    """The state handler's last pass is held until run() waits for it: wait() must not
    return before that pass is over, whichever way run() ends."""
    run_for = "30s" if shutdown_first else "20ms"
    job = mock_job(mock_task("web", config={"run_for": run_for}), job_type="batch")
    alloc = new_allocation(job, "web")
    waiting = mark("state.await_final")
    last_pass = Hold("state.final_pass", after=waiting)
    with armed(waiting, last_pass):
        if shutdown_first:
            ar = start_all(make_runner, alloc)
            ar.shutdown()
        else:
            ar = make_runner(alloc)
            ar.start()
        assert ar.wait(BOUND)
        assert last_pass.passed(), "wait() returned before the last state pass began"
        assert not last_pass.timed_out()
    state = ar.alloc_state()
    tasks = {name: ar.task_runner(name).task_state() for name in ar.task_names()}
    assert dict(state.task_states) == tasks


def test_a_kill_after_shutdown_returns_only_once_the_task_left_running_is_stopped(
    make_runner,
):
    """After a shutdown left the task running, a stop's kill is stopping it when the
    destroy's kill comes: the destroy must wait for that stop to end before it deletes
    the state, or the stop's last writes land after the delete."""
    db = _HeldWrites()
    alloc = new_allocation(mock_job(mock_task("web", kill_timeout=0.05)), "web")
    ar = start_all(make_runner, alloc, state_db=db)
    ar.shutdown()
    assert ar.wait_shutdown(BOUND)
    waiting = mark("task.reap.wait", "web")
    reaping = Hold("task.reap", "web", after=waiting)
    with armed(waiting, reaping):
        stop = threading.Thread(target=ar.task_runner("web").kill, name="race-stop-kill")
        stop.start()
        assert reaping.wait_arrived(BOUND), "the first kill did not stop the task"
        ar.destroy()
        assert ar.wait_destroyed(BOUND), "destroy did not finish"
        assert reaping.passed(), "destroy finished while the task was still being stopped"
        stop.join(BOUND)
    late = db.calls[db.calls.index("delete") + 1 :]
    assert not late, f"written after destroy: {late}"
    killed_for_good(ar, "web")


def test_a_destroy_after_shutdown_leaves_no_task_pending(make_runner):
    """A shutdown came while the main task still waited for its prestart task: the
    destroy that follows kills both, and the one that never started goes dead too."""
    job = mock_job(
        mock_task("init", config={"run_for": "30s"}, lifecycle=lifecycle("prestart")),
        mock_task("web"),
    )
    ar = make_runner(new_allocation(job, "web"))
    ar.start()
    wait_for(lambda: task_is(ar, "init", "running"), BOUND)
    ar.shutdown()
    assert ar.wait_shutdown(BOUND)
    ar.destroy()
    assert ar.wait_destroyed(BOUND)
    for name in ("init", "web"):
        ts = ar.task_runner(name).task_state()
        assert ts.state == "dead", (name, ts.state, [e.type for e in ts.events])
