"""One contract for every PrevAllocWatcher / PrevAllocMigrator implementation:
NoopPrevAlloc, LocalPrevAlloc, RemotePrevAlloc and (watcher only) GroupPrevAllocWatcher,
each on a real broadcaster or fetch function and real alloc dirs."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import attrs
import pytest

from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.allocwatcher import (
    GroupPrevAllocWatcher,
    LocalPrevAlloc,
    NoopPrevAlloc,
    PrevAllocMigrator,
    PrevAllocWaitCancelled,
    PrevAllocWatcher,
    RemotePrevAlloc,
)
from allocrunner.structs import CLIENT_COMPLETE
from allocrunner.testing import assert_stays, wait_for
from tests.unit.allocwatcher.helpers import (
    TASKS,
    PrevRunner,
    assert_has_no_prev_data,
    assert_has_prev_data,
    build_prev_dir,
    new_dest,
    prev_and_next,
    run_in_thread,
    snapshot_bytes,
)


class Scenario:
    """Not thread-safe; owned by one test. A previous allocation that is running until
    `finish()`, watched by the implementation under test."""

    blocks = True  # wait() blocks until finish()
    moves_data = False  # migrate() moves the previous alloc's data when carrying it

    def __init__(self, root: Path, carry: bool) -> None:
        self.root = root
        self.carry = carry
        self.prev, self.next = prev_and_next()
        self.watcher: PrevAllocWatcher
        self.migrator: PrevAllocMigrator | None = None

    def finish(self) -> None:
        raise NotImplementedError

    def dest(self):
        return new_dest(self.root / "here", self.next.id)


class NoopScenario(Scenario):
    blocks = False

    def __init__(self, root: Path, carry: bool) -> None:
        super().__init__(root, carry)
        self.watcher = self.migrator = NoopPrevAlloc()

    def finish(self) -> None:
        pass


class LocalScenario(Scenario):
    moves_data = True

    def __init__(self, root: Path, carry: bool) -> None:
        super().__init__(root, carry)
        self.runner = PrevRunner(self.prev, build_prev_dir(root / "here", self.prev.id))
        self.watcher = self.migrator = LocalPrevAlloc(
            self.prev, self.runner.alloc_dir, self.runner.listen, TASKS, sticky=carry
        )

    def finish(self) -> None:
        self.runner.finish()


class RemoteScenario(Scenario):
    moves_data = True

    def __init__(self, root: Path, carry: bool) -> None:
        super().__init__(root, carry)
        self.prev_dir = build_prev_dir(root / "other-node", self.prev.id)
        self.finished = threading.Event()
        self.watcher = self.migrator = RemotePrevAlloc(
            self.prev.id,
            self._fetch_alloc,
            self._fetch_snapshot,
            tasks=TASKS,
            migrate=carry,
            poll_interval=0.01,
        )

    def _fetch_alloc(self, alloc_id, cancel):
        assert alloc_id == self.prev.id
        if self.finished.is_set():
            return attrs.evolve(self.prev, client_status=CLIENT_COMPLETE)
        return self.prev

    def _fetch_snapshot(self, alloc_id, cancel):
        return io.BytesIO(snapshot_bytes(self.prev_dir))

    def finish(self) -> None:
        self.finished.set()


class GroupScenario(Scenario):
    def __init__(self, root: Path, carry: bool) -> None:
        super().__init__(root, carry)
        self.parts = [LocalScenario(root / "a", False), RemoteScenario(root / "b", False)]
        self.watcher = GroupPrevAllocWatcher([p.watcher for p in self.parts])

    def finish(self) -> None:
        for part in self.parts:
            part.finish()


WATCHERS = {
    "noop": NoopScenario,
    "local": LocalScenario,
    "remote": RemoteScenario,
    "group": GroupScenario,
}
MIGRATORS = {k: v for k, v in WATCHERS.items() if k != "group"}


@pytest.fixture
def threads():
    group = ThreadGroup("prev-watcher-contract")
    yield group
    assert group.join(timeout=10), "a watcher thread did not finish"


@pytest.fixture(params=sorted(WATCHERS))
def scenario(request, tmp_path) -> Scenario:
    return WATCHERS[request.param](tmp_path, carry=False)


@pytest.fixture(params=sorted(MIGRATORS))
def carrying(request, tmp_path) -> Scenario:
    return MIGRATORS[request.param](tmp_path, carry=True)


@pytest.fixture(params=sorted(MIGRATORS))
def not_carrying(request, tmp_path) -> Scenario:
    return MIGRATORS[request.param](tmp_path, carry=False)


def _check(cond: bool, message: str) -> None:
    assert cond, message


# --- watching ----------------------------------------------------------------------------


def test_implements_the_protocols(scenario):
    assert isinstance(scenario.watcher, PrevAllocWatcher)
    if scenario.migrator is not None:
        assert isinstance(scenario.migrator, PrevAllocMigrator)


def test_wait_returns_once_the_previous_alloc_is_terminal(scenario, threads):
    watcher = scenario.watcher
    assert not watcher.is_waiting()
    done = run_in_thread(threads, "waiter", watcher.wait, CancelToken())
    if scenario.blocks:
        wait_for(lambda: _check(watcher.is_waiting(), "not waiting"), timeout=5)
        assert_stays(lambda: _check(not done.done.is_set(), "returned early"), 0.15)
    scenario.finish()
    assert done.done.wait(5), "wait() did not return"
    assert done.error is None
    assert not watcher.is_waiting()


def test_wait_after_terminal_returns_promptly(scenario):
    scenario.finish()
    start = time.monotonic()
    scenario.watcher.wait(CancelToken())
    assert time.monotonic() - start < 1.0


def test_blocked_wait_is_cancelled_within_a_second(scenario, threads):
    if not scenario.blocks:
        scenario.watcher.wait(CancelToken())  # nothing to wait for: returns
        return
    watcher = scenario.watcher
    cancel = CancelToken()
    done = run_in_thread(threads, "waiter", watcher.wait, cancel)
    wait_for(lambda: _check(watcher.is_waiting(), "not waiting"), timeout=5)
    start = time.monotonic()
    cancel.cancel("shutting down")
    assert done.done.wait(1.0), "wait() ignored cancellation (Nomad #18129)"
    assert time.monotonic() - start < 1.0
    assert isinstance(done.error, PrevAllocWaitCancelled)
    assert not watcher.is_waiting()


def test_concurrent_waits_all_return(scenario, threads):
    watcher = scenario.watcher
    outcomes = [run_in_thread(threads, f"waiter-{i}", watcher.wait, CancelToken()) for i in (1, 2)]
    if scenario.blocks:
        wait_for(lambda: _check(watcher.is_waiting(), "not waiting"), timeout=5)
    scenario.finish()
    for outcome in outcomes:
        assert outcome.done.wait(5) and outcome.error is None
    assert not watcher.is_waiting()


# --- migrating ---------------------------------------------------------------------------


def test_migrate_moves_data_when_carrying(carrying):
    scenario = carrying
    scenario.finish()
    scenario.watcher.wait(CancelToken())
    dest = scenario.dest()
    scenario.migrator.migrate(CancelToken(), dest)
    if scenario.moves_data:
        assert_has_prev_data(dest)
    else:
        assert_has_no_prev_data(dest)
    assert not scenario.migrator.is_migrating()


def test_migrate_moves_nothing_when_not_carrying(not_carrying):
    scenario = not_carrying
    scenario.finish()
    scenario.watcher.wait(CancelToken())
    dest = scenario.dest()
    scenario.migrator.migrate(CancelToken(), dest)
    assert_has_no_prev_data(dest)
    assert not scenario.migrator.is_migrating()


def test_cancelled_migrate_leaves_destination_untouched(carrying):
    scenario = carrying
    scenario.finish()
    scenario.watcher.wait(CancelToken())
    dest = scenario.dest()
    cancel = CancelToken()
    cancel.cancel("destroyed")
    if scenario.moves_data:
        with pytest.raises(PrevAllocWaitCancelled):
            scenario.migrator.migrate(cancel, dest)
    else:
        scenario.migrator.migrate(cancel, dest)
    assert_has_no_prev_data(dest)
    assert not scenario.migrator.is_migrating()
