"""The health watch service: every allocation's watch runs on one thread, which starts
with the first watch and ends with the last; views and timers wake the right watch; a
view is taken in by the thread that sent it, one step of a watch at a time, and
verdicts are written on the service thread."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Mapping

import attrs
import pytest

from allocrunner.broadcaster import AllocBroadcaster
from allocrunner.runner.health import HealthHook, HealthSink
from allocrunner.runner.health_watches import _PURGE_MIN, THREAD_NAME, HealthWatches, Watch
from allocrunner.structs import (
    TASK_DEAD,
    TASK_RUNNING,
    Allocation,
    TaskEvent,
    TaskState,
    UpdateStrategy,
    new_allocation,
    utcnow,
)
from allocrunner.testing import mock_job, mock_task, wait_for


class Verdicts:
    """Thread-safe. The verdicts written, per allocation, and the threads that wrote them."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._given: dict[str, list[bool]] = {}
        self.writers: set[str] = set()

    def sink(self, alloc_id: str) -> HealthSink:
        """Where the hook of `alloc_id` writes its verdicts."""
        verdicts = self

        class Sink:
            def set_health(self, healthy: bool, events: Mapping[str, TaskEvent]) -> None:
                with verdicts._mutex:
                    verdicts._given.setdefault(alloc_id, []).append(healthy)
                    verdicts.writers.add(threading.current_thread().name)

            def has_health(self) -> bool:
                return verdicts.has(alloc_id)

            def clear_health(self) -> None:
                pass

        return Sink()

    def of(self, alloc_id: str) -> list[bool]:
        with self._mutex:
            return list(self._given.get(alloc_id, []))

    def has(self, alloc_id: str) -> bool:
        return bool(self.of(alloc_id))


def service_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


def deployed(min_healthy: float, deadline: float = 30.0) -> Allocation:
    job = mock_job(
        mock_task("web"),
        update=UpdateStrategy(min_healthy_time=min_healthy, healthy_deadline=deadline),
    )
    return attrs.evolve(new_allocation(job, "web"), deployment_id="d1")


def running_view(alloc: Allocation) -> Allocation:
    state = TaskState(state=TASK_RUNNING, started_at=utcnow())
    return attrs.evolve(alloc, client_status="running", task_states={"web": state})


def failed_view(alloc: Allocation) -> Allocation:
    now = utcnow()
    state = TaskState(state=TASK_DEAD, failed=True, started_at=now, finished_at=now)
    return attrs.evolve(alloc, client_status="failed", task_states={"web": state})


class Rig:
    """Not thread-safe; owned by one test. Hooks watched by one private service."""

    def __init__(self) -> None:
        self.service = HealthWatches()
        self.verdicts = Verdicts()
        self.hooks: list[tuple[Allocation, HealthHook, AllocBroadcaster]] = []

    def watch(self, alloc: Allocation) -> tuple[HealthHook, AllocBroadcaster]:
        broadcaster = AllocBroadcaster()
        hook = HealthHook(
            alloc,
            listen=broadcaster.listen,
            health=self.verdicts.sink(alloc.id),
            watches=self.service,
        )
        self.hooks.append((alloc, hook, broadcaster))
        hook.prerun()
        return hook, broadcaster

    def close(self) -> None:
        for _, hook, broadcaster in self.hooks:
            hook.postrun()
            broadcaster.close()


@pytest.fixture
def rig():
    made = Rig()
    yield made
    made.close()
    wait_for(lambda: _assert_no_service_thread(), 5)


def _assert_no_service_thread() -> None:
    assert service_threads() == [], "the watch thread outlived its last watch"


def test_many_watches_share_one_thread_and_each_gets_its_own_verdict(rig: Rig) -> None:
    allocs = [deployed(0.05 + 0.01 * (i % 5)) for i in range(40)]
    hooks = [rig.watch(alloc) for alloc in allocs]
    assert len(service_threads()) == 1
    assert rig.service.count() == 40
    for alloc, (_, broadcaster) in zip(allocs, hooks, strict=True):
        if allocs.index(alloc) % 4 == 0:
            broadcaster.send(failed_view(alloc))
        else:
            broadcaster.send(running_view(alloc))

    def all_decided() -> None:
        for i, alloc in enumerate(allocs):
            assert rig.verdicts.of(alloc.id) == [i % 4 != 0], (i, rig.verdicts.of(alloc.id))

    wait_for(all_decided, 10)
    wait_for(lambda: _assert_count(rig.service, 0), 5)
    wait_for(lambda: _assert_no_service_thread(), 5)


def _assert_views_seen(hook: HealthHook, want: int) -> None:
    assert hook.views_seen() >= want, f"the watch took in {hook.views_seen()} views"


def _assert_count(service: HealthWatches, want: int) -> None:
    assert service.count() == want, f"{service.count()} watches live, want {want}"


def test_the_deadline_timer_gives_unhealthy_with_no_view_at_all(rig: Rig) -> None:
    alloc = deployed(10.0, deadline=0.1)
    rig.watch(alloc)
    wait_for(lambda: _assert_verdicts(rig.verdicts, alloc.id, [False]), 5)


def _assert_verdicts(verdicts: Verdicts, alloc_id: str, want: list[bool]) -> None:
    assert verdicts.of(alloc_id) == want


def test_a_later_timer_does_not_hide_an_earlier_one(rig: Rig) -> None:
    """Watches armed in the order late, early: the early one is decided first."""
    late = deployed(5.0)
    early = deployed(0.05)
    for alloc in (late, early):
        _, broadcaster = rig.watch(alloc)
        broadcaster.send(running_view(alloc))
    wait_for(lambda: _assert_verdicts(rig.verdicts, early.id, [True]), 5)
    assert rig.verdicts.of(late.id) == []


def test_a_new_watch_is_armed_not_stepped_until_its_first_view(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a watch arms its listener and deadline; it is first stepped when a view
    comes. The service steps watches in the order they became ready, so once a later
    watch has taken in its view, an earlier one stepped on being added would have been
    stepped already."""
    stepped: list[str] = []
    step = Watch.step

    def counted(watch: Watch):
        stepped.append(watch.alloc.id)  # type: ignore[attr-defined]
        return step(watch)

    monkeypatch.setattr(Watch, "step", counted)
    quiet, busy = deployed(600.0, deadline=600.0), deployed(600.0, deadline=600.0)
    quiet_hook, quiet_broadcaster = rig.watch(quiet)
    busy_hook, busy_broadcaster = rig.watch(busy)
    busy_broadcaster.send(running_view(busy))
    wait_for(lambda: _assert_views_seen(busy_hook, 1), 5)
    assert stepped == [busy.id]
    quiet_broadcaster.send(running_view(quiet))
    wait_for(lambda: _assert_views_seen(quiet_hook, 1), 5)
    assert stepped == [busy.id, quiet.id]


def test_a_new_watch_with_the_earliest_deadline_wakes_the_waiting_thread(rig: Rig) -> None:
    """The thread waits for a deadline ten minutes away; a watch added then with a
    deadline a tenth of a second away, and no view, still gets its verdict on time."""
    rig.watch(deployed(600.0, deadline=600.0))
    early = deployed(600.0, deadline=0.1)
    rig.watch(early)
    wait_for(lambda: _assert_verdicts(rig.verdicts, early.id, [False]), 5)


class Steps:
    """Thread-safe. Wraps `Watch.step` for one test: records which thread stepped which
    allocation's watch, counts steps of one watch that overlapped, and can hold the
    first step made off the service thread until told to go on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold_first_off_thread: bool = False):
        self._mutex = threading.Lock()
        self.made: list[tuple[str, str]] = []  # (alloc id, thread name)
        self.overlaps = 0
        self._inside: set[int] = set()
        self._hold = hold_first_off_thread
        self.held = threading.Event()
        self.go_on = threading.Event()
        step = Watch.step

        def counted(watch: Watch):
            me = threading.current_thread().name
            with self._mutex:
                self.made.append((watch.alloc.id, me))  # type: ignore[attr-defined]
                if id(watch) in self._inside:
                    self.overlaps += 1
                self._inside.add(id(watch))
                hold = self._hold and me != THREAD_NAME
                if hold:
                    self._hold = False
            try:
                if hold:
                    self.held.set()
                    assert self.go_on.wait(10)
                return step(watch)
            finally:
                with self._mutex:
                    self._inside.discard(id(watch))

        monkeypatch.setattr(Watch, "step", counted)

    def of(self, alloc_id: str) -> list[str]:
        with self._mutex:
            return [thread for made_for, thread in self.made if made_for == alloc_id]


def test_a_view_is_taken_in_by_the_thread_that_sent_it(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No wake-up of the service thread for a view: the sender steps the watch."""
    steps = Steps(monkeypatch)
    alloc = deployed(600.0)
    hook, broadcaster = rig.watch(alloc)
    broadcaster.send(running_view(alloc))
    assert hook.views_seen() == 1  # taken in before send returned
    assert steps.of(alloc.id) == [threading.current_thread().name]


def test_a_verdict_a_sender_finds_is_written_on_the_service_thread(rig: Rig) -> None:
    """A step never blocks, so the verdict it finds (whose write may wait on the state
    DB) is left to the service thread."""
    alloc = deployed(600.0)
    _, broadcaster = rig.watch(alloc)
    broadcaster.send(failed_view(alloc))
    wait_for(lambda: _assert_verdicts(rig.verdicts, alloc.id, [False]), 5)
    assert rig.verdicts.writers == {THREAD_NAME}


def test_a_timer_due_while_a_sender_steps_the_watch_waits_for_that_step(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch's deadline falls due while another thread's step of it is held: the
    service thread does not step it meanwhile, and steps it once that step is over,
    so the deadline still gives its verdict."""
    steps = Steps(monkeypatch, hold_first_off_thread=True)
    alloc = deployed(600.0, deadline=0.3)
    _, broadcaster = rig.watch(alloc)
    sender = threading.Thread(target=broadcaster.send, args=(running_view(alloc),))
    sender.start()
    try:
        assert steps.held.wait(10)
        due = time.monotonic() + 0.4
        wait_for(lambda: _assert_past(due), 5)
        assert rig.verdicts.of(alloc.id) == []
        assert steps.of(alloc.id) == [sender.name]
    finally:
        steps.go_on.set()
        sender.join(10)
    wait_for(lambda: _assert_verdicts(rig.verdicts, alloc.id, [False]), 5)
    assert steps.overlaps == 0


def _assert_past(when: float) -> None:
    assert time.monotonic() >= when, "not yet"


def test_views_sent_from_many_threads_never_step_one_watch_twice_at_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = Steps(monkeypatch)
    allocs = [deployed(0.05 + 0.01 * (i % 3)) for i in range(12)]
    casts = [rig.watch(alloc)[1] for alloc in allocs]

    def send_all() -> None:
        for _ in range(30):
            for alloc, broadcaster in zip(allocs, casts, strict=True):
                broadcaster.send(running_view(alloc))

    senders = [threading.Thread(target=send_all) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)

    def all_healthy() -> None:
        for alloc in allocs:
            assert rig.verdicts.of(alloc.id) == [True], alloc.id

    wait_for(all_healthy, 10)
    assert steps.overlaps == 0


def test_the_thread_restarts_for_a_watch_added_as_it_ends(rig: Rig) -> None:
    """Watches come and go one at a time, so the thread keeps ending: every watch is
    still stepped to its verdict."""
    for _ in range(30):
        alloc = deployed(0.0)
        _, broadcaster = rig.watch(alloc)
        broadcaster.send(running_view(alloc))
        wait_for(lambda alloc=alloc: _assert_verdicts(rig.verdicts, alloc.id, [True]), 5)
    assert len(service_threads()) <= 1


def test_stopping_a_hook_ends_its_watch_on_the_service_thread(rig: Rig) -> None:
    alloc = deployed(10.0)
    hook, _ = rig.watch(alloc)
    assert hook.live_watches() == 1
    hook.postrun()  # waits for the service to end the watch
    assert hook.live_watches() == 0
    assert rig.verdicts.of(alloc.id) == []


def test_an_ended_watch_is_not_kept_alive_by_its_timer(rig: Rig) -> None:
    """A watch's timer entry (its deadline, minutes away) must not keep the watch, its
    hook and so its allocation's runner alive once the watch has ended: while others
    are watched only a bounded number of such entries remain, none once all ended."""
    keeper = deployed(600.0, deadline=600.0)
    rig.watch(keeper)  # keeps the service thread alive
    hooks = []
    for _ in range(300):
        alloc = deployed(300.0, deadline=600.0)
        hook, broadcaster = rig.watch(alloc)
        broadcaster.send(running_view(alloc))
        # Stepped with the view: its timer is armed for min_healthy_time, 300 s away.
        wait_for(lambda hook=hook: _assert_views_seen(hook, 1), 5)
        hook.postrun()  # ends the watch long before its timer
        hooks.append(weakref.ref(hook))
        del hook, broadcaster
    assert rig.service.count() == 1
    rig.hooks[1:] = []
    gc.collect()
    alive = [ref for ref in hooks if ref() is not None]
    assert len(alive) <= _PURGE_MIN, f"{len(alive)} hooks of ended watches still referenced"
    rig.close()
    rig.hooks.clear()
    wait_for(lambda: _assert_no_service_thread(), 5)
    gc.collect()
    alive = [ref for ref in hooks if ref() is not None]
    assert alive == [], f"{len(alive)} hooks of ended watches still referenced"


def test_join_if_idle_waits_for_the_thread_only_when_no_watch_is_live(rig: Rig) -> None:
    alloc = deployed(600.0)
    hook, _ = rig.watch(alloc)
    assert rig.service.join_if_idle(0.01) is False  # a watch is live: not ours to wait
    hook.postrun()
    assert rig.service.join_if_idle(5.0) is True
    assert service_threads() == []
