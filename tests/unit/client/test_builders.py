"""The Client's builders of queued runners: while more than one allocation waits, the
``client-starter`` has ``client-builder`` helpers take the next ones (at most
`BUILDERS` build at once), the helpers end once the queue is empty, and a replacement
queued behind its previous allocation is built only once that one's runner is."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from allocrunner import AllocRunner
from allocrunner._sync import CancelToken
from allocrunner.client import BUILDERS, LAUNCH_BATCH, Client
from allocrunner.state import SQLiteStateDB, sqlite_writer
from allocrunner.structs import Allocation, new_allocation
from allocrunner.taskrunner.lifecycle import TaskControl
from allocrunner.testing import mock_job, mock_task, wait_for

from ..statedb_file import handle_on_disk

pytestmark = pytest.mark.timeout(60)


class BuildSpy:
    """Thread-safe. Wraps `Client._build`: records which thread built which allocation
    and with which previous runner, and how many builds ran at once at most; a build
    may be held until the test releases it."""

    def __init__(
        self, build: Callable[[Client, Allocation, AllocRunner | None, list[Any]], None]
    ) -> None:
        self._build = build
        self._mutex = threading.Lock()
        self.builders: dict[str, str] = {}  # alloc id -> name of the thread that built it
        self.prev_of: dict[str, AllocRunner | None] = {}
        self.done: list[str] = []
        self._running = 0
        self.most_at_once = 0
        self.holds: dict[str, threading.Event] = {}

    def __call__(
        self, client: Client, alloc: Allocation, prev: AllocRunner | None, begun: list[Any]
    ) -> None:
        with self._mutex:
            self.builders[alloc.id] = threading.current_thread().name
            self.prev_of[alloc.id] = prev
            self._running += 1
            self.most_at_once = max(self.most_at_once, self._running)
            hold = self.holds.get(alloc.id)
        try:
            if hold is not None:
                assert hold.wait(10), f"build of {alloc.id} never released"
            self._build(client, alloc, prev, begun)
        finally:
            with self._mutex:
                self._running -= 1
                self.done.append(alloc.id)

    def built(self) -> list[str]:
        with self._mutex:
            return list(self.done)


@pytest.fixture
def spy(monkeypatch) -> BuildSpy:
    spy = BuildSpy(Client._build)

    def build(
        client: Client, alloc: Allocation, prev: AllocRunner | None, begun: list[Any]
    ) -> None:
        spy(client, alloc, prev, begun)

    monkeypatch.setattr(Client, "_build", build)
    return spy


def _service_allocs(n: int) -> list[Allocation]:
    job = mock_job(mock_task("web", config={"run_for": "30s"}))
    return [new_allocation(job, "web", index=i) for i in range(n)]


def _builder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "client-builder"]


def _all_running(client: Client, allocs: list[Allocation]) -> Callable[[], None]:
    def check() -> None:
        for alloc in allocs:
            runner = client.runner(alloc.id)
            assert runner is not None, f"{alloc.id}: no runner"
            state = runner.alloc_state()
            assert state.client_status == "running", f"{alloc.id}: {state.client_status}"

    return check


def test_a_long_queue_is_built_by_helpers_that_end_once_it_is_empty(make_client, spy):
    # The starter's own build (the first allocation) is held until another has been
    # built, which only a helper can do meanwhile.
    client = make_client()
    client.start()
    allocs = _service_allocs(40)
    release = threading.Event()
    spy.holds[allocs[0].id] = release
    client.run_allocs(allocs)
    wait_for(lambda: _assert_some(set(spy.built()) - {allocs[0].id}), timeout=10)
    release.set()
    wait_for(_all_running(client, allocs), timeout=30)
    # A build returns once its runner has begun its start: it may read running first.
    wait_for(lambda: _assert_built_once(spy, allocs), timeout=10)
    assert spy.builders[allocs[0].id] == "client-starter"
    assert set(spy.builders.values()) == {"client-starter", "client-builder"}
    assert 1 < spy.most_at_once <= BUILDERS
    wait_for(lambda: _assert_none(_builder_threads()), timeout=10)


def _assert_built_once(spy: BuildSpy, allocs: list[Allocation]) -> None:
    built = sorted(spy.built())
    assert built == sorted(a.id for a in allocs), f"built {len(built)} of {len(allocs)}"


def test_one_queued_allocation_needs_no_helper(make_client, spy):
    client = make_client()
    client.start()
    (alloc,) = _service_allocs(1)
    client.run_allocs([alloc])
    wait_for(_all_running(client, [alloc]), timeout=10)
    assert spy.builders == {alloc.id: "client-starter"}


def test_a_replacement_queued_behind_its_previous_allocation_is_built_after_it(make_client, spy):
    # The previous allocation's build is held until a helper has built a filler, so
    # helpers take allocations while it is being built: the replacement, queued right
    # behind it, must not be one of them, or it would be built without the previous
    # runner it waits for.
    client = make_client()
    client.start()
    prev, *fillers = _service_allocs(8)
    job = prev.job
    assert job is not None
    nxt = new_allocation(job, "web", index=99, previous=prev)
    release = threading.Event()
    spy.holds[prev.id] = release
    client.run_allocs([prev, nxt, *fillers])
    wait_for(lambda: _assert_some(set(spy.built()) & {f.id for f in fillers}), timeout=10)
    assert nxt.id not in spy.builders, "the replacement was taken before its previous"
    release.set()
    wait_for(_all_running(client, [prev, *fillers]), timeout=30)
    wait_for(lambda: _assert_some(nxt.id in spy.built()), timeout=10)
    assert spy.prev_of[nxt.id] is client.runner(prev.id)


def test_shutdown_joins_the_builders_mid_queue(make_client, spy):
    # The starter's build (the first allocation) and its helper's (the second, the next
    # one to take) are both held, so a helper is surely alive when the shutdown begins.
    client = make_client()
    client.start()
    first, second, *rest = _service_allocs(12)
    release = threading.Event()
    spy.holds[first.id] = release
    spy.holds[second.id] = release
    client.run_allocs([first, second, *rest])
    wait_for(lambda: _assert_some(second.id in spy.builders), timeout=10)
    assert spy.builders[second.id] == "client-builder"
    assert _builder_threads()
    stopper = threading.Thread(target=client.shutdown, args=(30,), name="test-shutdown")
    stopper.start()
    release.set()
    stopper.join(30)
    assert not stopper.is_alive()
    assert not _builder_threads()


def _assert_none(found: object) -> None:
    assert not found, found


def _assert_some(found: object) -> None:
    assert found, "nothing yet"


def test_a_builder_makes_the_start_of_a_fresh_allocation_it_built(make_client, monkeypatch):
    # Its task's driver start runs on the thread that built the runner; only the wait
    # on the task runs on the allocation's own thread (`AllocRunner.launch`).
    starts: dict[str, str] = {}
    real_start = TaskControl.start

    def noted_start(self, task, config):
        starts[threading.current_thread().name] = task.name
        return real_start(self, task, config)

    monkeypatch.setattr(TaskControl, "start", noted_start)
    client = make_client()
    client.start()
    allocs = _service_allocs(12)
    client.run_allocs(allocs)
    wait_for(_all_running(client, allocs), timeout=30)
    assert set(starts) <= {"client-starter", "client-builder"}, starts
    alloc_threads = {t.name for t in threading.enumerate() if t.name.startswith("alloc-")}
    assert {f"alloc-{a.id[:8]}" for a in allocs} <= alloc_threads


def test_a_builder_reports_its_starts_running_only_once_their_handles_are_committed(
    make_client, monkeypatch
):
    """Each builder begins up to `LAUNCH_BATCH` starts before it finishes them: their
    driver handles are queued without a wait each, and one commit holds them all. No
    allocation is reported running before its handle is in the state DB's file (a
    restore would start it a second time), which each view checks as it is
    published, with a group-commit window long enough that only a wait commits."""
    monkeypatch.setattr(sqlite_writer, "LINGER", 3600.0)
    unsafe: list[str] = []
    record = Client._record_update

    def checked(self, view):
        running = view.client_status == "running"
        if running and not handle_on_disk(self.state_db.path, view.id, "web"):
            unsafe.append(view.id)
        record(self, view)

    monkeypatch.setattr(Client, "_record_update", checked)
    client = make_client()
    client.start()
    db = client.state_db
    assert isinstance(db, SQLiteStateDB)
    allocs = _service_allocs(4 * LAUNCH_BATCH)
    before = db.stats().commits
    client.run_allocs(allocs)
    wait_for(_all_running(client, allocs), timeout=30)
    assert unsafe == []
    assert db.stats().commits - before < len(allocs) // 2, "a commit for each start"


def test_a_view_of_a_queued_allocation_is_woken_by_its_own_build_only(
    make_client, spy, monkeypatch
):
    """`Client.runner` of a queued allocation waits until its runner is built; the
    builds of the allocations queued before it do not wake it (a thousand queued woke a
    view of the last one a thousand times)."""
    waits: list[CancelToken] = []
    real_wait = CancelToken.wait

    def counted(self: CancelToken, timeout: float | None = None) -> bool:
        if threading.current_thread().name == "viewer":
            waits.append(self)
        return real_wait(self, timeout)

    monkeypatch.setattr(CancelToken, "wait", counted)
    client = make_client()
    client.start()
    allocs = _service_allocs(24)
    gate = threading.Event()
    for alloc in allocs:
        spy.holds[alloc.id] = gate  # nothing is built until the viewer waits
    client.run_allocs(allocs)
    found: list[AllocRunner | None] = []
    viewer = threading.Thread(
        target=lambda: found.append(client.runner(allocs[-1].id)), name="viewer"
    )
    viewer.start()
    wait_for(lambda: _equal(len(waits), 1), timeout=10)
    gate.set()
    viewer.join(30)
    assert not viewer.is_alive()
    assert found and found[0] is not None and found[0].id == allocs[-1].id
    assert len(waits) == 1, f"woken {len(waits) - 1} times before its own build"
    wait_for(_all_running(client, allocs), timeout=30)


def _equal(got: object, want: object) -> None:
    assert got == want, f"{got!r}, want {want!r}"
