"""A group's max_run_duration: the allocation is stopped when it passes, ends complete
with Nomad's description, its poststop tasks never start, and the deadline survives
an agent restart (mock_driver and raw_exec)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import attrs
import pytest

from allocrunner.drivers._process import pid_alive
from allocrunner.runner.max_run_duration_hook import DESCRIPTION, STORE_NAME, may_have_deadline
from allocrunner.state import HookState, LocalState
from allocrunner.structs import (
    EVENT_KILLING,
    EVENT_WAITING_SHUTDOWN_DELAY,
    RestartPolicy,
    new_allocation,
)
from allocrunner.testing import assert_stays, lifecycle, mock_alloc, mock_job, mock_task, wait_for

from .test_group_shutdown_delay import KillingSeen

HOUR = 3600.0


def _killing(state, task):
    return [e for e in state.task_states[task].events if e.type == EVENT_KILLING]


def _assert_timed_out(ar) -> None:
    state = ar.alloc_state()
    assert state.client_status == "complete", state
    assert state.client_description == DESCRIPTION


def _running(ar, task="web"):
    got = ar.alloc_state().task_states[task].state
    assert got == "running", f"{task} is {got}"


def test_mock_group_is_stopped_complete_and_its_poststop_never_starts(make_runner):
    alloc = mock_alloc(
        mock_task("main", config={"run_for": "60s"}),
        mock_task("post", config={"run_for": "60s"}, lifecycle=lifecycle("poststop")),
        job_type="batch",
        max_run_duration=0.3,
    )
    ar = make_runner(alloc)
    ar.start()
    wait_for(lambda: _running(ar, "main"))
    threads = [t.name for t in threading.enumerate() if alloc.id[:8] in t.name]
    # The run thread and a run thread per task but the first: neither the state
    # handler (its passes run on the shared state-pass workers) nor the deadline has
    # a thread of its own.
    assert sorted(threads) == [f"alloc-{alloc.id[:8]}", f"task-{alloc.id[:8]}-post"], threads
    assert ar.wait(20)
    _assert_timed_out(ar)
    state = ar.alloc_state()
    main, post = state.task_states["main"], state.task_states["post"]
    assert main.state == "dead" and not main.failed
    assert [e.display_message for e in _killing(state, "main")] == [DESCRIPTION]
    assert post.state == "dead" and post.started_at is None, post
    assert [e.display_message for e in _killing(state, "post")] == [DESCRIPTION]


def test_a_group_that_finishes_first_keeps_its_own_description(make_runner):
    alloc = mock_alloc(
        mock_task("web", config={"run_for": "10ms"}), job_type="batch", max_run_duration=HOUR
    )
    ar = make_runner(alloc)
    ar.start()
    assert ar.wait(20)
    state = ar.alloc_state()
    assert state.client_status == "complete"
    assert state.client_description != DESCRIPTION
    assert not _killing(state, "web")


@pytest.mark.parametrize(
    ("kind", "keeps"), [("batch", True), ("sysbatch", True), ("service", False), ("system", False)]
)
def test_only_batch_and_sysbatch_allocations_may_have_a_deadline(kind, keeps):
    """A job's type never changes (Nomad's servers refuse to), so only the runner of a
    batch or sysbatch allocation builds the hook, even with no max_run_duration yet: an
    update may set one."""
    alloc = mock_alloc(mock_task("web"), job_type=kind)
    assert may_have_deadline(alloc) is keeps
    assert may_have_deadline(attrs.evolve(alloc, job=None)) is False


@pytest.mark.parametrize("kind", ["service", "system"])
def test_only_batch_and_sysbatch_jobs_have_a_deadline(make_runner, kind):
    """As Nomad's clients: the limit of another job type (which its servers refuse)
    stops nothing; the task here ends on its own, later than the limit."""
    task = mock_task("web", config={"run_for": "300ms"})
    ar = make_runner(mock_alloc(task, job_type=kind, max_run_duration=0.01))
    ar.start()
    assert ar.wait(20)
    state = ar.alloc_state()
    assert state.client_description != DESCRIPTION
    assert not _killing(state, "web")


def test_task_restarts_do_not_move_the_deadline(make_runner):
    """The deadline follows the allocation, not a task: a task that keeps failing and
    restarting is still stopped, and a killed task that exits non-zero does not make
    the allocation failed."""
    policy = RestartPolicy(attempts=1000, interval=HOUR, delay=0.02, mode="delay")
    task = mock_task("web", config={"run_for": "50ms", "exit_code": 3})
    alloc = mock_alloc(task, job_type="batch", restart_policy=policy, max_run_duration=0.5)
    ar = make_runner(alloc)
    ar.start()
    wait_for(lambda: _assert_restarted(ar))
    assert ar.wait(20)
    _assert_timed_out(ar)


def _assert_restarted(ar) -> None:
    assert ar.alloc_state().task_states["web"].restarts >= 1


def test_an_update_moves_the_deadline(make_runner):
    alloc = mock_alloc(
        mock_task("web", config={"run_for": "60s"}), job_type="batch", max_run_duration=HOUR
    )
    ar = make_runner(alloc)
    ar.start()
    wait_for(lambda: _running(ar))
    job = alloc.job
    assert job is not None
    group = attrs.evolve(job.task_groups[0], max_run_duration=0.1)
    shorter = attrs.evolve(
        alloc,
        job=attrs.evolve(job, task_groups=(group,)),
        alloc_modify_index=alloc.alloc_modify_index + 1,
    )
    ar.update(shorter)
    assert ar.wait(20)
    _assert_timed_out(ar)


def test_raw_exec_sleep_is_stopped_and_gone(make_runner):
    main = mock_task(
        "sleep",
        driver="raw_exec",
        config={
            "command": "/bin/sh",
            "args": ["-c", "echo $$ > ${NOMAD_TASK_DIR}/pid; exec sleep 3600"],
        },
        kill_timeout=2.0,
    )
    post = mock_task(
        "post",
        driver="raw_exec",
        config={"command": "/bin/sh", "args": ["-c", "touch ${NOMAD_ALLOC_DIR}/post-ran"]},
        lifecycle=lifecycle("poststop"),
    )
    ar = make_runner(mock_alloc(main, post, job_type="batch", max_run_duration=2.0))
    ar.start()
    pid_file = ar.alloc_dir.path / "sleep" / "local" / "pid"
    wait_for(lambda: _assert_has_text(pid_file))
    pid = int(pid_file.read_text())
    assert ar.wait(30)
    _assert_timed_out(ar)
    post_state = ar.alloc_state().task_states["post"]
    assert post_state.state == "dead" and post_state.started_at is None
    assert not (ar.alloc_dir.path / "alloc" / "post-ran").exists()
    assert not pid_alive(pid), f"/proc/{pid} still shows a live process"


def _assert_has_text(path: Path) -> None:
    assert path.is_file() and path.read_text().strip(), path


def _shift_stored_anchor(state_db, alloc_id: str, seconds: float) -> int:
    """Move the stored anchor `seconds` into the past (time passed while the agent was
    down); the new anchor."""
    local, _ = state_db.task_runner_state(alloc_id, STORE_NAME)
    assert local is not None, "the anchor was not persisted"
    hook = local.hook("max_run_duration")
    assert hook is not None
    anchor = int(hook.data["anchor_ns"]) - int(seconds * 1e9)
    data = dict(hook.data, anchor_ns=str(anchor))
    shifted = LocalState(hooks={"max_run_duration": HookState(prestart_done=True, data=data)})
    state_db.put_task_local_state(alloc_id, STORE_NAME, shifted)
    return anchor


def _stored_anchor(state_db, alloc_id: str) -> int:
    local, _ = state_db.task_runner_state(alloc_id, STORE_NAME)
    assert local is not None
    hook = local.hook("max_run_duration")
    assert hook is not None
    return int(hook.data["anchor_ns"])


def test_restored_runner_past_its_deadline_stops_at_once(make_runner, state_db):
    alloc = mock_alloc(
        mock_task("web", config={"run_for": "60s"}), job_type="batch", max_run_duration=HOUR
    )
    first = make_runner(alloc)
    first.start()
    wait_for(lambda: _running(first))
    first.shutdown()
    assert first.wait_shutdown(10)
    _shift_stored_anchor(state_db, alloc.id, 2 * HOUR)

    (stored,) = state_db.all_allocations()
    second = make_runner(stored)
    second.restore()
    second.start()
    assert second.wait(20)
    _assert_timed_out(second)
    assert [e.display_message for e in _killing(second.alloc_state(), "web")] == [DESCRIPTION]


def test_restored_runner_keeps_counting_from_the_original_start(make_runner, state_db):
    alloc = mock_alloc(
        mock_task("web", config={"run_for": "60s"}), job_type="batch", max_run_duration=HOUR
    )
    first = make_runner(alloc)
    first.start()
    wait_for(lambda: _running(first))
    anchor = _stored_anchor(state_db, alloc.id)
    first.shutdown()
    assert first.wait_shutdown(10)

    (stored,) = state_db.all_allocations()
    second = make_runner(stored)
    second.restore()
    second.start()
    wait_for(lambda: _running(second))
    assert _stored_anchor(state_db, alloc.id) == anchor
    assert_stays(lambda: _running(second), 0.1)


def test_create_time_is_the_anchor(make_runner, state_db):
    """Nomad counts from the allocation's CreateTime: one created two hours ago with a
    one-hour limit is stopped as soon as it runs."""
    job = mock_job(
        mock_task("web", config={"run_for": "60s"}), job_type="batch", max_run_duration=HOUR
    )
    created = time.time_ns() - int(2 * HOUR * 1e9)
    alloc = attrs.evolve(new_allocation(job, "web"), create_time=created)
    ar = make_runner(alloc)
    ar.start()
    assert ar.wait(20)
    _assert_timed_out(ar)
    local, _ = state_db.task_runner_state(alloc.id, STORE_NAME)
    assert local is not None
    hook = local.hook("max_run_duration")
    assert hook is not None and hook.data.get("exceeded") == "true"


def test_a_restored_timed_out_allocation_keeps_its_description(make_runner, state_db):
    alloc = mock_alloc(
        mock_task("web", config={"run_for": "60s"}), job_type="batch", max_run_duration=0.2
    )
    first = make_runner(alloc)
    first.start()
    assert first.wait(20)
    _assert_timed_out(first)
    first.shutdown()
    assert first.wait_shutdown(10)

    (stored,) = state_db.all_allocations()
    second = make_runner(stored)
    second.restore()
    _assert_timed_out(second)
    second.start()
    assert second.wait(20)
    _assert_timed_out(second)


def test_the_stop_honours_both_shutdown_delays(make_runner):
    """The deadline stops the tasks as a stop does: the group's shutdown_delay before
    the Killing events, then each task's own delay."""
    seen = KillingSeen()
    task = mock_task("web", config={"run_for": "60s"}, shutdown_delay=0.1)
    alloc = mock_alloc(task, job_type="batch", max_run_duration=0.2, shutdown_delay=0.3)
    ar = make_runner(alloc, state_updater=seen)
    started = time.monotonic()
    ar.start()
    assert ar.wait(20)
    _assert_timed_out(ar)
    assert seen.first() - started >= 0.2 + 0.3
    types = [e.type for e in ar.alloc_state().task_states["web"].events]
    assert types.index(EVENT_KILLING) < types.index(EVENT_WAITING_SHUTDOWN_DELAY), types
