"""Planted lifecycle bugs: each test swaps in a realistic broken version of one piece of
the AllocRunner or the Client and asserts that the project's own race test fails on
it, every time. The race tests hold threads at named checkpoints, so none of this
depends on luck.

- a destroy whose check and set are two lock sections (a double destroy);
- a run() that returns before the state handler's last pass;
- a Client that forwards an update below one it already forwarded;
- a sibling rule or a kill that records its reason on a task already killed;
- a destroy that deletes the state while a write is still in flight;
- a kill after a shutdown that returns while another kill still stops the task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from allocrunner._checkpoints import checkpoint
from allocrunner._sync import CancelToken
from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.runner.persistence import AllocPersister
from allocrunner.runner.state_handler import StateHandler
from allocrunner.state import MemDB
from allocrunner.structs import Allocation, TaskEvent
from allocrunner.taskrunner import TaskRunner
from allocrunner.taskrunner.lifecycle import TaskControl
from tests.unit.client.test_update_order import UpdateSpy, views_in_any_order
from tests.unit.runner import test_interleavings as races


@pytest.fixture
def make_runner(tmp_path) -> Iterator[Callable[..., AllocRunner]]:
    config = ClientConfig.for_data_dir(tmp_path, max_kill_timeout=5.0, kill_retry_base=0.05)
    driver = MockDriver()
    made: list[AllocRunner] = []

    def factory(alloc: Allocation, **kwargs: Any) -> AllocRunner:
        kwargs.setdefault("state_db", MemDB())
        kwargs.setdefault("drivers", {"mock_driver": driver})
        ar = AllocRunner(alloc, config, **kwargs)
        made.append(ar)
        return ar

    yield factory
    for ar in made:
        ar.destroy()
    for ar in made:
        assert ar.wait_destroyed(30), f"{ar} was not destroyed in time"
        assert ar.close(30), f"{ar} left threads running"
    driver.close()


def _planted(target: object, name: str, replacement: object) -> pytest.MonkeyPatch:
    patch = pytest.MonkeyPatch()
    patch.setattr(target, name, replacement)
    return patch


def _fails(race: Callable[[], None], target: object, name: str, bug: object) -> None:
    """Run `race` with `target.name` replaced by `bug`: it must fail an assertion."""
    patch = _planted(target, name, bug)
    try:
        with pytest.raises(AssertionError):
            race()
    finally:
        patch.undo()


# --- survivor: destroy checks and sets its flag in two lock sections --------------------


def _split_destroy(self: AllocRunner) -> None:
    with self._destroyed_lock:
        if self._destroy_launched:
            return
    checkpoint("alloc.destroy.launch")  # between the check and the set
    with self._destroyed_lock:
        self._destroy_launched = True
        run_started = self._run_started
        shutdown_in_flight = self._shutdown_launched and not self._shutdown_event.is_set()
    self._prerun_cancel.cancel("allocation destroyed")
    self._threads.spawn(
        f"destroy-{self._id[:8]}", self._do_destroy, run_started, shutdown_in_flight
    )


def test_a_destroy_split_across_two_lock_sections_is_caught(make_runner):
    _fails(
        lambda: races.test_destroy_racing_destroy_launches_one_destroy(make_runner),
        AllocRunner,
        "destroy",
        _split_destroy,
    )


# --- caught only by luck before: run() returns before the last state pass --------------


def _no_wait(self: StateHandler, timeout: float | None = None) -> bool:
    return True


@pytest.mark.parametrize("shutdown_first", [False, True])
def test_run_returning_before_the_last_state_pass_is_caught(make_runner, shutdown_first):
    _fails(
        lambda: races.test_wait_returns_only_after_the_last_state_pass(make_runner, shutdown_first),
        StateHandler,
        "wait_finished",
        _no_wait,
    )


# --- survivor: the Client forwards an update below one it forwarded ---------------------


def _update_without_bookkeeping(self: Client, updates: list[Allocation]) -> None:
    """Forwards every update `_apply` picked, without recording the forwarded index, so
    `_apply` keeps comparing with the index the runner was created with."""
    with self._allocs_lock:
        targets = [(self._runners[a.id], a) for a in updates if a.id in self._runners]
    for ar, alloc in targets:
        ar.update(alloc)


def test_a_client_forwarding_a_lower_modify_index_is_caught(tmp_path, monkeypatch):
    config = ClientConfig.for_data_dir(tmp_path, gc_interval=3600.0)
    driver = MockDriver()
    client = Client(config, state_db=MemDB(), drivers={"mock_driver": driver})
    spy = UpdateSpy(monkeypatch)
    client.start()
    try:
        _fails(
            lambda: views_in_any_order(client, spy),
            Client,
            "_update",
            _update_without_bookkeeping,
        )
    finally:
        assert client.shutdown(30)
        driver.close()


# --- the kill order flake: reasons recorded on tasks already killed ----------------------


def _emit_unconditionally(self: TaskRunner, event: TaskEvent) -> bool:
    self.emit_event(event)
    return True


def _note_unconditionally(self: TaskControl, event: TaskEvent) -> bool:
    self._cell.publish(event=event)
    return True


def test_a_sibling_rule_recording_on_a_killed_task_is_caught(make_runner):
    _fails(
        lambda: races.test_a_sibling_rule_seen_in_a_stale_snapshot_records_nothing_on_killed_tasks(
            make_runner
        ),
        TaskRunner,
        "emit_kill_reason",
        _emit_unconditionally,
    )


def test_a_second_kill_recording_killing_after_killed_is_caught(make_runner):
    _fails(
        lambda: races.test_a_second_kill_of_a_task_being_killed_records_no_killing_after_killed(
            make_runner
        ),
        TaskControl,
        "note_kill_reason",
        _note_unconditionally,
    )


# --- destroy vs persist: the state deleted while a write is in flight --------------------


def _delete_without_draining(self: AllocPersister) -> None:
    with self._lock:
        self._destroyed = True
    self._state_db.delete_allocation(self._alloc_id)


def test_deleting_the_state_under_a_write_in_flight_is_caught(make_runner):
    _fails(
        lambda: races.test_destroy_waits_for_a_write_in_flight_before_deleting_the_state(
            make_runner
        ),
        AllocPersister,
        "delete",
        _delete_without_draining,
    )


# --- a later kill returns while the first one still stops the task left running --------


def _reap_without_waiting(self: TaskControl) -> None:
    handle = self._cell.handle()
    if handle is None or not self._reaped.set():
        return
    checkpoint("task.reap", self._name)
    self._kill_and_record(handle, CancelToken())
    self._go_dead()


def test_a_kill_returning_before_the_task_left_running_is_stopped_is_caught(make_runner):
    _fails(
        lambda: races.test_a_kill_after_shutdown_returns_only_once_the_task_left_running_is_stopped(
            make_runner
        ),
        TaskControl,
        "_stop_left_running",
        _reap_without_waiting,
    )
