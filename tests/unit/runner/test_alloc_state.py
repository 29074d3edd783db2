"""alloc_state() takes only read locks, has no side effects and returns a value
nobody can change; alloc() returns the server's allocation untouched."""

from __future__ import annotations

import threading

import attrs
import pytest

from allocrunner import _locking
from allocrunner.structs import TaskState
from allocrunner.testing import mock_alloc, mock_task, wait_for


@pytest.fixture
def lock_log(monkeypatch):
    """Record every declared lock the calling thread takes, with its mode."""
    taken: list[tuple[str, str]] = []
    real_push = _locking._push
    me = threading.get_ident()

    def recording_push(lock, mode):
        if threading.get_ident() == me:
            taken.append((lock.name, mode))
        real_push(lock, mode)

    monkeypatch.setattr(_locking, "_push", recording_push)
    return taken


@pytest.mark.requires_lockcheck
def test_alloc_state_takes_only_read_locks(make_runner, lock_log):
    ar = make_runner(mock_alloc(mock_task("web"), mock_task("db")))
    ar.start()
    wait_for(lambda: _running(ar, "web"))
    lock_log.clear()
    ar.alloc_state()
    assert lock_log, "alloc_state took no lock at all"
    assert all(mode == "read" for _, mode in lock_log), lock_log
    lock_log.clear()
    ar.alloc()
    assert all(mode == "read" for _, mode in lock_log), lock_log


def test_alloc_state_works_while_another_reader_holds_the_lock(make_runner):
    ar = make_runner(mock_alloc(mock_task("web")))
    holding = threading.Event()
    release = threading.Event()

    def reader():
        # Holding the read side across a wait is the point of this test.
        with ar._state_lock.read(), _locking.waits_allowed_here():
            holding.set()
            release.wait(10)

    t = threading.Thread(target=reader, name="test-reader")
    t.start()
    try:
        assert holding.wait(5)
        result: list[object] = []
        caller = threading.Thread(
            target=lambda: result.append(ar.alloc_state()), name="test-caller"
        )
        caller.start()
        caller.join(5)
        assert result, "alloc_state blocked behind a reader: it must not take the write side"
    finally:
        release.set()
        t.join(5)


def test_alloc_state_has_no_side_effects(make_runner):
    ar = make_runner(mock_alloc(mock_task("web")))
    ar.start()
    wait_for(lambda: _running(ar, "web"))
    first = ar.alloc_state()
    second = ar.alloc_state()
    assert first == second
    assert first is second, "with no change the same snapshot is returned"


def test_alloc_state_cannot_be_changed_by_the_caller(make_runner):
    ar = make_runner(mock_alloc(mock_task("web")))
    state = ar.alloc_state()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        state.client_status = "failed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        state.task_states["web"] = TaskState(state="dead")  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        state.task_states["web"].state = "dead"  # type: ignore[misc]
    assert ar.alloc_state().task_states["web"].state == "pending"


def test_alloc_is_the_server_view(make_runner):
    alloc = mock_alloc(mock_task("web"))
    ar = make_runner(alloc)
    ar.start()
    wait_for(lambda: _running(ar, "web"))
    assert ar.alloc() is alloc
    assert ar.alloc().client_status == "pending"
    assert dict(ar.alloc().task_states) == {}
    client = ar.client_alloc()
    assert client.client_status == "running"
    assert client.task_states["web"].state == "running"


def _running(ar, task):
    got = ar.alloc_state().task_states[task].state
    assert got == "running", f"{task} is {got}"
