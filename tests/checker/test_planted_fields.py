"""Planted field bugs: each test swaps in a broken copy of one real method (or builds a
small class like a real one) and asserts that the lock checker catches the mistake at
once, in the thread that makes it.

- `Client._record_update` changing the shared pending map outside its lock (a lost
  update); the checker refuses the mutable map it would need;
- `AllocDir.new_task_dir` changing the task dirs under the read lock, in place or
  copy-on-write;
- `AllocPersister` decrementing its count of writes in flight without its lock;
- a task runner's restart tracker, confined to the run thread, touched by a caller;
- a helper that keeps a list in an `immutable()` field.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner import _locking
from allocrunner._locking import ConfinedFieldError, MutableFieldValueError, make_lock
from allocrunner.allocdir import AllocDir, TaskDir
from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver
from allocrunner.errors import LockDisciplineError, LockNotHeldError
from allocrunner.runner.persistence import AllocPersister
from allocrunner.state import MemDB
from allocrunner.structs import Allocation, RestartPolicy, TaskEvent
from allocrunner.taskrunner import TaskRunner
from allocrunner.testing import mock_alloc, mock_task, wait_for

pytestmark = pytest.mark.requires_lockcheck


def only_violation() -> BaseException:
    recorded = _locking.take_violations()
    assert len(recorded) == 1, recorded
    return recorded[0]


# --- 1. Client._record_update: the pending map changed outside its lock -------------------


def leaky_record_update(self: Client, view: Allocation) -> None:
    """The lost-update shape: the pending map changed after the lock is released, so
    two runners reporting at once can each drop the other's view."""
    pending = self._pending
    pending[view.id] = view  # the planted mistake: no lock held
    self._update_kick.kick()


def copying_record_update(self: Client, view: Allocation) -> None:
    """The same race through a private copy: a plain dict swapped in under the lock and
    filled after it (what a copy-on-write field must never hold)."""
    with self._allocs_lock:
        pending = dict(self._pending)
        self._pending = pending  # type: ignore[misc]  # the planted mistake
    pending[view.id] = view
    self._update_kick.kick()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    config = ClientConfig.for_data_dir(tmp_path)
    driver = MockDriver()
    made = Client(config, state_db=MemDB(), drivers={"mock_driver": driver})
    yield made
    driver.close()


def test_a_pending_map_changed_outside_the_lock_is_refused(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Client, "_record_update", leaky_record_update)
    with pytest.raises(LockNotHeldError, match=r"without holding Client\._allocs_lock"):
        client._record_update(mock_alloc())
    assert isinstance(only_violation(), LockNotHeldError)


def test_a_pending_map_swapped_for_a_plain_copy_is_refused(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Client, "_record_update", copying_record_update)
    with pytest.raises(LockDisciplineError, match=r"Client\._pending"):
        client._record_update(mock_alloc())
    assert isinstance(only_violation(), LockDisciplineError)


def test_the_real_record_update_keeps_every_view(client: Client) -> None:
    first, second = mock_alloc(), mock_alloc()
    client._record_update(first)
    client._record_update(second)
    with client._allocs_lock:
        assert set(client._pending) == {first.id, second.id}


# --- 2. AllocDir.new_task_dir: the task dirs changed under the read lock ------------------


def in_place_new_task_dir(self: AllocDir, name: str) -> TaskDir:
    """Registers the task dir in place, holding only the read side (the 2018 shape)."""
    with self._lock.read():
        task_dir = self._task_dirs.get(name)
        if task_dir is None:
            task_dir = TaskDir.for_alloc(self.path, self.shared_dir, self.logs_dir, name)
            self._task_dirs[name] = task_dir  # type: ignore[index]  # the planted mistake
    return task_dir


def mutable_task_dirs_init(self: AllocDir, root: str, alloc_id: str) -> None:
    """AllocDir as it was: its task dirs in a plain dict, which in-place code needs."""
    ORIGINAL_ALLOC_DIR_INIT(self, root, alloc_id)
    with self._lock.write():
        self._task_dirs = {}  # type: ignore[assignment]  # the planted mistake


ORIGINAL_ALLOC_DIR_INIT = AllocDir.__init__


def test_task_dirs_held_in_a_mutable_map_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AllocDir, "__init__", mutable_task_dirs_init)
    monkeypatch.setattr(AllocDir, "new_task_dir", in_place_new_task_dir)
    with pytest.raises(MutableFieldValueError, match=r"AllocDir\._task_dirs.*dict"):
        AllocDir(tmp_path, "a1")
    only_violation()


def copy_on_write_under_read_new_task_dir(self: AllocDir, name: str) -> TaskDir:
    """Copy-on-write, but under the read side: two registrations can lose one."""
    with self._lock.read():
        task_dir = self._task_dirs.get(name)
        if task_dir is None:
            task_dir = TaskDir.for_alloc(self.path, self.shared_dir, self.logs_dir, name)
            self._task_dirs = self._task_dirs.set(name, task_dir)
    return task_dir


def test_task_dirs_replaced_under_the_read_lock_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AllocDir, "new_task_dir", copy_on_write_under_read_new_task_dir)
    alloc_dir = AllocDir(tmp_path, "a1")
    with pytest.raises(LockNotHeldError, match=r"_task_dirs only the read side"):
        alloc_dir.new_task_dir("web")
    only_violation()


# --- 5. AllocPersister: the count of writes in flight changed without its lock ------------


def unlocked_end(self: AllocPersister) -> None:
    """The write is over: count it down, without the lock that guards the count."""
    self._in_flight -= 1
    if self._in_flight == 0:
        self._drained.set()


def test_writes_in_flight_counted_down_without_the_lock_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(AllocPersister, "_end", unlocked_end)
    persister = AllocPersister("a1", MemDB(), lock=make_lock("AllocRunner._destroyed_lock"))
    with pytest.raises(LockNotHeldError, match=r"AllocPersister\._in_flight without holding"):
        persister.put_allocation(mock_alloc())
    only_violation()


# --- confined: the run thread's restart tracker touched by a caller -----------------------


def restart_counting_here(self: TaskRunner, event: TaskEvent, failure: bool = False) -> None:
    """Marks the restart on the tracker from the caller's thread, then asks as usual: the
    tracker is the run thread's alone, which may be deciding at that very moment."""
    self._loop._tracker.set_restart_triggered(failure)
    self._control.restart(event, failure, force=False)


@pytest.fixture
def restarting_runner(tmp_path: Path) -> Iterator[TaskRunner]:
    """A runner whose task fails to start and waits out a long restart delay: its run
    thread has used the tracker and owns it."""
    driver = MockDriver()
    task = mock_task(config={"start_error": "no", "start_error_recoverable": True})
    policy = RestartPolicy(attempts=5, interval=600.0, delay=60.0, mode="fail")
    alloc = mock_alloc(task, restart_policy=policy)
    alloc_dir = AllocDir(tmp_path, alloc.id)
    alloc_dir.build()
    runner = TaskRunner(
        alloc,
        "web",
        alloc_dir=alloc_dir,
        drivers={"mock_driver": driver},
        state_db=MemDB(),
        on_state_change=lambda: None,
    )
    thread = threading.Thread(target=runner.run, name=f"task-{alloc.id[:8]}-web")
    thread.start()
    try:
        yield runner
    finally:
        runner.kill(timeout=20)
        thread.join(20)
        driver.close()


def test_a_confined_tracker_touched_by_a_caller_is_refused(
    restarting_runner: TaskRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    def restarting() -> None:
        events = [e.type for e in restarting_runner.task_state().events]
        assert "Restarting" in events, events

    wait_for(restarting)
    monkeypatch.setattr(TaskRunner, "restart", restart_counting_here)
    event = TaskEvent("Restart Signaled", message="planted")
    with pytest.raises(ConfinedFieldError, match=r"TaskRunLoop\._tracker.*task-run thread"):
        restarting_runner.restart(event)
    only_violation()


# --- immutable: a helper keeps a list where a tuple belongs -------------------------------


class Hooks:
    """Thread-safe. Its hooks are bound once, and read by every thread with no lock."""

    _hooks = _locking.immutable()

    def __init__(self, *hooks: str) -> None:
        self._hooks = list(hooks)  # the planted mistake: a list another thread could grow


def test_a_list_in_an_immutable_field_is_refused() -> None:
    with pytest.raises(MutableFieldValueError, match=r"Hooks\._hooks.*list"):
        Hooks("health", "logs")
    only_violation()
