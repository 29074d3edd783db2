"""A client killed at any step of building or destroying an allocation: the next client
on the same data dir and state DB restores it without failing it, reports the right
final status upstream, and neither loses nor duplicates a task.

The crash is simulated in-process: the first client's state DB is a `FreezableDB`, and
a monkeypatched step freezes it (every later write is dropped, as if the process had
died) and holds the thread that reached it until the test is over. The second client
then starts on what the first one had saved (the state DB and the data dir). The same
crashes with a real ``kill -9`` are in `test_crash_kill9.py`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from allocrunner.allocdir import alloc_dir as alloc_dir_module
from allocrunner.allocdir import fs_dirs
from allocrunner.allocdir.alloc_dir import AllocDir
from allocrunner.client import Client
from allocrunner.runner.task_set import TaskSet
from allocrunner.state import LocalState, MemDB
from allocrunner.structs import (
    EVENT_RECEIVED,
    EVENT_STARTED,
    Allocation,
    AllocDeploymentStatus,
    TaskEvent,
    TaskState,
    new_allocation,
)
from allocrunner.taskrunner.runner import MSG_RECEIVED, TaskRunner
from allocrunner.testing import mock_job, mock_task, wait_for

from .conftest import Upstream


class FreezableDB:
    """Thread-safe. A StateDB over `inner` that a crash freezes: from `freeze()` on,
    every write is dropped, so `inner` keeps what a process killed at that moment had
    saved. Reads go to `inner`; closing leaves it open for the next client."""

    def __init__(self, inner: MemDB) -> None:
        self.inner = inner
        self._mutex = threading.Lock()
        self._frozen = False

    def freeze(self) -> None:
        with self._mutex:
            self._frozen = True

    def _write(self, write: Callable[..., None], *args: Any) -> None:
        with self._mutex:  # a write is either in before the crash or dropped
            if not self._frozen:
                write(*args)

    def put_allocation(self, alloc: Allocation) -> None:
        self._write(self.inner.put_allocation, alloc)

    def delete_allocation(self, alloc_id: str) -> None:
        self._write(self.inner.delete_allocation, alloc_id)

    def put_task_state(self, alloc_id: str, task: str, state: TaskState) -> None:
        self._write(self.inner.put_task_state, alloc_id, task, state)

    def put_task_local_state(self, alloc_id: str, task: str, local: LocalState) -> None:
        self._write(self.inner.put_task_local_state, alloc_id, task, local)

    def put_deployment_status(self, alloc_id: str, status: AllocDeploymentStatus | None) -> None:
        self._write(self.inner.put_deployment_status, alloc_id, status)

    def all_allocations(self) -> list[Allocation]:
        return self.inner.all_allocations()

    def task_runner_state(
        self, alloc_id: str, task: str
    ) -> tuple[LocalState | None, TaskState | None]:
        return self.inner.task_runner_state(alloc_id, task)

    def deployment_status(self, alloc_id: str) -> AllocDeploymentStatus | None:
        return self.inner.deployment_status(alloc_id)

    def close(self) -> None:
        pass


class Crash:
    """Thread-safe. The death of the first client at one named step: the first thread
    to reach it freezes the state DB, silences the client's reports upstream, and
    stays there until `release()`."""

    def __init__(self, db: FreezableDB, upstream: Upstream) -> None:
        self._db = db
        self._upstream = upstream
        self._mutex = threading.Lock()
        self._taken = False
        self.reached = threading.Event()
        self._released = threading.Event()

    def report(self, views: list[Allocation]) -> None:
        """The first client's state updater: a dead client reports nothing."""
        with self._mutex:  # a report is either out before the crash or never
            if not self._taken:
                self._upstream(views)

    def point(self) -> None:
        with self._mutex:
            first, self._taken = not self._taken, True
        if not first:
            return
        self._db.freeze()
        self.reached.set()
        assert self._released.wait(60), "the crashed client was never released"

    def release(self) -> None:
        self._released.set()


def _service() -> Allocation:
    return new_allocation(mock_job(mock_task("web", config={"run_for": "60s"})), "web")


def _stop(alloc: Allocation) -> Allocation:
    return attrs.evolve(
        alloc, desired_status="stop", alloc_modify_index=alloc.alloc_modify_index + 1
    )


# --- the steps (each patches one place where the first client dies) ---------------------


def _at_build_enter(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    build = AllocDir.build

    def crashing(self: AllocDir) -> None:
        crash.point()
        build(self)

    monkeypatch.setattr(AllocDir, "build", crashing)


def _at_build_dir_made(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    """The alloc dir exists (still private), its shared dirs do not."""
    fill = fs_dirs.fill_private_dir

    def crashing(*args: Any) -> None:
        crash.point()
        fill(*args)

    monkeypatch.setattr(fs_dirs, "fill_private_dir", crashing)


def _at_build_done(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    build = AllocDir.build

    def crashing(self: AllocDir) -> None:
        build(self)
        crash.point()

    monkeypatch.setattr(AllocDir, "build", crashing)


def _at_task_running(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    """The task runs: the handle to re-attach to it is saved, then its running state.
    (A crash between those two writes is `test_crash_kill9`'s "task-running" step.)"""
    put = FreezableDB.put_task_state

    def crashing(self: FreezableDB, alloc_id: str, task: str, state: TaskState) -> None:
        put(self, alloc_id, task, state)
        if state.state == "running":
            crash.point()

    monkeypatch.setattr(FreezableDB, "put_task_state", crashing)


def _at_destroy_enter(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    """The tasks are stopped; the alloc dir is about to be removed."""
    destroy = AllocDir.destroy

    def crashing(self: AllocDir) -> None:
        crash.point()
        destroy(self)

    monkeypatch.setattr(AllocDir, "destroy", crashing)


def _at_destroy_half_done(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    """Part of the alloc dir is removed."""
    remove_tree = alloc_dir_module.fs.remove_tree

    def crashing(path: str) -> list[OSError]:
        remove_tree(f"{path}/{alloc_dir_module.SHARED_DIR}")
        crash.point()
        return remove_tree(path)

    monkeypatch.setattr(alloc_dir_module.fs, "remove_tree", crashing)


def _at_destroy_dir_gone(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    """The alloc dir is removed; the state is not deleted yet."""
    destroy = AllocDir.destroy

    def crashing(self: AllocDir) -> None:
        destroy(self)
        crash.point()

    monkeypatch.setattr(AllocDir, "destroy", crashing)


def _at_state_delete(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    """Everything is gone but the state, which is being deleted."""
    delete = FreezableDB.delete_allocation

    def crashing(self: FreezableDB, alloc_id: str) -> None:
        crash.point()
        delete(self, alloc_id)

    monkeypatch.setattr(FreezableDB, "delete_allocation", crashing)


def _at_kill_all(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    """The destroy began: the tasks are about to be stopped."""
    kill_waves = TaskSet.kill_waves  # where every kill of the tasks begins

    def crashing(self: TaskSet) -> list[tuple[str, tuple[TaskRunner, ...]]]:
        crash.point()
        return kill_waves(self)

    monkeypatch.setattr(TaskSet, "kill_waves", crashing)


Step = Callable[[pytest.MonkeyPatch, Crash], None]


def _at_first_write(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    """`run_allocs` returned; the runner is about to write its allocation (nothing of
    it is in the state DB: the server sends it again)."""
    put = FreezableDB.put_allocation

    def crashing(self: FreezableDB, alloc: Allocation) -> None:
        crash.point()
        put(self, alloc)

    monkeypatch.setattr(FreezableDB, "put_allocation", crashing)


def _at_alloc_saved(monkeypatch: pytest.MonkeyPatch, crash: Crash) -> None:
    """The allocation is saved, with no task state yet (the restore drops it until the
    server sends it again)."""
    put = FreezableDB.put_allocation

    def crashing(self: FreezableDB, alloc: Allocation) -> None:
        put(self, alloc)
        crash.point()

    monkeypatch.setattr(FreezableDB, "put_allocation", crashing)


BUILD_STEPS: dict[str, Step] = {
    "first-write": _at_first_write,
    "alloc-saved": _at_alloc_saved,
    "build-enter": _at_build_enter,
    "build-dir-made": _at_build_dir_made,
    "build-done": _at_build_done,
    "task-running": _at_task_running,
}

DESTROY_STEPS: dict[str, Step] = {
    "destroy-enter": _at_destroy_enter,
    "destroy-half-done": _at_destroy_half_done,
    "destroy-dir-gone": _at_destroy_dir_gone,
    "state-delete": _at_state_delete,
}

# A running allocation removed by the server is also killed by the destroy.
REMOVE_STEPS: dict[str, Step] = {"kill-enter": _at_kill_all, **DESTROY_STEPS}


# --- the two lives --------------------------------------------------------------------


@attrs.define
class Crashed:
    """Not thread-safe; owned by one test. What the first client left behind."""

    db: MemDB
    alloc: Allocation
    alloc_dir: AllocDir


class Lives:
    """Not thread-safe; owned by one test. A first client that dies at a step, and the
    clients that start after it on what it left; at the end the later clients are shut
    down before the dead one is let go (and shut down)."""

    def __init__(self, make_client: Callable[..., Client], monkeypatch: pytest.MonkeyPatch):
        self._make_client = make_client
        self._monkeypatch = monkeypatch
        self._ghosts: list[tuple[Crash, Client]] = []
        self._next: list[Client] = []

    def crash(
        self, step: Step, scenario: Callable[[Client], Allocation], upstream: Upstream
    ) -> Crashed:
        """Run `scenario` on a first client (reporting to `upstream`) until it dies at
        `step`."""
        db = FreezableDB(MemDB())
        crash = Crash(db, upstream)
        first = self._make_client(state_db=db, state_updater=crash.report)
        self._ghosts.append((crash, first))
        first.start()
        step(self._monkeypatch, crash)
        alloc = scenario(first)
        assert crash.reached.wait(10), "the first client never reached the step"
        self._monkeypatch.undo()
        return Crashed(db.inner, alloc, AllocDir(first.config.alloc_dir, alloc.id))

    def next(self, db: MemDB, upstream: Upstream) -> Client:
        """A client that starts on `db` (and the same data dir)."""
        client = self._make_client(state_db=db, state_updater=upstream)
        self._next.append(client)
        client.start()
        return client

    def end(self) -> None:
        for client in self._next:
            assert client.shutdown(30)
        for crash, first in self._ghosts:
            crash.release()
            first.shutdown()


@pytest.fixture
def lives(make_client, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lives]:
    made = Lives(make_client, monkeypatch)
    yield made
    made.end()


def _run_until_crash(client: Client) -> Allocation:
    alloc = _service()
    client.run_allocs([alloc])
    return alloc


def _stop_and_collect_until_crash(client: Client) -> Allocation:
    """A stopped allocation, garbage collected by the client (the server still lists it)."""
    return _collect(client, stop=True)


def _remove_until_crash(client: Client) -> Allocation:
    """A running allocation the server removes from the node."""
    return _collect(client, stop=False)


def _collect(client: Client, *, stop: bool) -> Allocation:
    alloc = _service()
    client.run_allocs([alloc])
    wait_for(lambda: _assert_status(client, alloc.id, "running"))
    if not stop:
        client.run_allocs([])
        return alloc
    client.run_allocs([_stop(alloc)])
    wait_for(lambda: _assert_status(client, alloc.id, "complete"))
    wait_for(lambda: _assert_collecting(client, alloc.id))
    return alloc


def _assert_collecting(client: Client, alloc_id: str) -> None:
    assert client.gc.collect_async(alloc_id), f"{alloc_id} is not marked for collection yet"


def _assert_status(client: Client, alloc_id: str, want: str) -> None:
    runner = client.runner(alloc_id)
    assert runner is not None, f"{alloc_id} is not tracked"
    got = runner.alloc_state().client_status
    assert got == want, f"{alloc_id} is {got}, want {want}"


def _assert_reported(upstream: Upstream, alloc_id: str, want: str) -> None:
    """What the server was told of `alloc_id`, by both lives, ends with `want`, and
    never said failed."""
    statuses = [v.client_status for v in upstream.views_of(alloc_id)]
    assert "failed" not in statuses, f"reported failed: {statuses}"
    assert statuses and statuses[-1] == want, f"reported {statuses}, want it to end with {want}"


def _running_tasks(client: Client, alloc_id: str) -> int:
    runner = client.runner(alloc_id)
    assert runner is not None
    return sum(1 for name in runner.task_names() if runner.task_runner(name).is_running())


def _started(client: Client, alloc_id: str) -> int:
    runner = client.runner(alloc_id)
    assert runner is not None
    events = runner.alloc_state().task_states["web"].events
    return [e.type for e in events].count(EVENT_STARTED)


# --- crashes while building -----------------------------------------------------------


@pytest.mark.parametrize("step", BUILD_STEPS.values(), ids=BUILD_STEPS.keys())
def test_a_crash_while_building_never_fails_the_allocation(
    step: Step, lives: Lives, upstream: Upstream
) -> None:
    dead = lives.crash(step, _run_until_crash, upstream)
    second = lives.next(dead.db, upstream)
    second.run_allocs([dead.alloc])  # the server's view has not changed
    wait_for(lambda: _assert_status(second, dead.alloc.id, "running"))
    wait_for(lambda: _assert_reported(upstream, dead.alloc.id, "running"))
    assert _running_tasks(second, dead.alloc.id) == 1
    assert _started(second, dead.alloc.id) == 1, "the task was started twice, or never"
    assert dead.alloc_dir.data_dir.is_dir()


def test_a_task_state_saved_before_the_alloc_dir_is_built_is_restored(
    lives: Lives, upstream: Upstream
) -> None:
    """Killed after the first task state was saved, before the alloc dir was built: the
    allocation is rebuilt and run, not failed and forgotten."""
    db = MemDB()
    alloc = _service()
    db.put_allocation(alloc)
    received = TaskEvent(EVENT_RECEIVED, message=MSG_RECEIVED, display_message=MSG_RECEIVED)
    db.put_task_state(alloc.id, "web", TaskState().with_event(received))
    client = lives.next(db, upstream)
    client.run_allocs([alloc])
    wait_for(lambda: _assert_status(client, alloc.id, "running"))
    wait_for(lambda: _assert_reported(upstream, alloc.id, "running"))
    runner = client.runner(alloc.id)
    assert runner is not None and runner.alloc_dir.data_dir.is_dir()
    assert _started(client, alloc.id) == 1


# --- crashes while destroying ---------------------------------------------------------


@pytest.mark.parametrize("step", DESTROY_STEPS.values(), ids=DESTROY_STEPS.keys())
def test_a_crash_while_collecting_a_stopped_alloc_finishes_the_destroy(
    step: Step, lives: Lives, upstream: Upstream
) -> None:
    dead = lives.crash(step, _stop_and_collect_until_crash, upstream)
    second = lives.next(dead.db, upstream)
    second.run_allocs([_stop(dead.alloc)])  # the server still lists the stopped alloc
    wait_for(lambda: _assert_destroyed(second, dead))
    assert second.shutdown(30)
    for _ in range(2):  # and it stays gone over the restarts that follow
        again = lives.next(dead.db, upstream)
        assert again.runner(dead.alloc.id) is None
        assert again.shutdown(30)
    _assert_reported(upstream, dead.alloc.id, "complete")


@pytest.mark.parametrize("step", REMOVE_STEPS.values(), ids=REMOVE_STEPS.keys())
def test_a_crash_while_removing_a_running_alloc_finishes_the_destroy(
    step: Step, lives: Lives, upstream: Upstream
) -> None:
    dead = lives.crash(step, _remove_until_crash, upstream)
    second = lives.next(dead.db, upstream)
    second.run_allocs([])  # the server no longer lists it
    wait_for(lambda: _assert_gone(second, dead))
    wait_for(lambda: _assert_reported(upstream, dead.alloc.id, "complete"))


def _assert_destroyed(client: Client, dead: Crashed) -> None:
    runner = client.runner(dead.alloc.id)
    assert runner is None or runner.is_destroyed(), "not destroyed"
    _assert_gone(client, dead)


def _assert_gone(client: Client, dead: Crashed) -> None:
    assert not dead.alloc_dir.path.exists(), f"{dead.alloc_dir.path} is still there"
    assert dead.db.all_allocations() == [], "its state is still saved"
    runner = client.runner(dead.alloc.id)
    assert runner is None or _running_tasks(client, dead.alloc.id) == 0
