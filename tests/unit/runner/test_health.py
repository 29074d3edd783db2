"""HealthHook: Nomad's health hook scenarios (any order of prerun / update / postrun,
concurrent updates, healthy, unhealthy, deadline, batch no-op, system watched) and the
task-state rules of the tracker, with a real AllocBroadcaster feeding client views and a
fake clock moved by hand."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

import attrs
import pytest

from allocrunner._locking import held_locks
from allocrunner.broadcaster import AllocBroadcaster, AllocListener
from allocrunner.errors import BroadcasterClosed
from allocrunner.runner.health import (
    MSG_EXITED,
    MSG_FAILED,
    MSG_NOT_COMPLETED,
    MSG_NOT_LONG_ENOUGH,
    MSG_NOT_RUNNING,
    HealthHook,
    HealthParams,
    health_params,
)
from allocrunner.runner.health_watches import THREAD_NAME as THREAD
from allocrunner.structs import (
    EVENT_ALLOC_UNHEALTHY,
    TASK_DEAD,
    TASK_PENDING,
    TASK_RUNNING,
    Allocation,
    Job,
    Lifecycle,
    MigrateStrategy,
    Task,
    TaskEvent,
    TaskState,
    UpdateStrategy,
    client_status_from_task_states,
    new_allocation,
    utcnow,
)
from allocrunner.testing import assert_stays, mock_job, mock_task, wait_for

UPDATE = UpdateStrategy(min_healthy_time=10.0, healthy_deadline=60.0)


class FakeClock:
    """Thread-safe. A monotonic clock moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self._mutex = threading.Lock()
        self._now = now

    def __call__(self) -> float:
        with self._mutex:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._mutex:
            self._now += seconds


class Health:
    """Thread-safe. Plays the alloc runner's side of the hook: records verdicts (and
    that they arrive with no lock held), answers has_health, counts clears and hands
    out listeners of a real broadcaster."""

    def __init__(self, broadcaster: AllocBroadcaster) -> None:
        self._mutex = threading.Lock()
        self._broadcaster = broadcaster
        self.verdicts: list[tuple[bool, dict[str, TaskEvent]]] = []
        self.clears = 0
        self.listeners: list[AllocListener] = []
        self.locks_at_set: list[list[str]] = []
        self.preset = False

    def listen(self) -> AllocListener:
        listener = self._broadcaster.listen()
        with self._mutex:
            self.listeners.append(listener)
        return listener

    def set_health(self, healthy: bool, events: Mapping[str, TaskEvent]) -> None:
        with self._mutex:
            self.locks_at_set.append(held_locks())
            self.verdicts.append((healthy, dict(events)))

    def has_health(self) -> bool:
        with self._mutex:
            return self.preset or bool(self.verdicts)

    def clear_health(self) -> None:
        with self._mutex:
            self.clears += 1
            self.preset = False
            self.verdicts = []

    def snapshot(self) -> list[tuple[bool, dict[str, TaskEvent]]]:
        with self._mutex:
            return list(self.verdicts)

    def listen_count(self) -> int:
        with self._mutex:
            return len(self.listeners)


@attrs.define
class Rig:
    """Not thread-safe; owned by one test. A hook wired to a broadcaster and a clock."""

    alloc: Allocation
    hook: HealthHook
    broadcaster: AllocBroadcaster
    health: Health
    clock: FakeClock

    def send(self, client_status: str | None = None, **states: TaskState) -> None:
        """Broadcast a client view of the alloc with these task states."""
        self.broadcaster.send(view(self.alloc, client_status, **states))

    def send_and_wait(self, client_status: str | None = None, **states: TaskState) -> None:
        """Broadcast a view and wait until the watch has taken it in."""
        seen = self.hook.views_seen()
        self.send(client_status, **states)
        wait_for(lambda: assert_seen(self.hook, seen + 1), 5)

    def verdict(self) -> tuple[bool, dict[str, TaskEvent]]:
        """Wait for the one verdict of the watch and the end of its thread."""
        wait_for(lambda: assert_verdicts(self.health, 1), 5)
        wait_for(lambda: assert_not_watching(self.hook), 5)
        return self.health.snapshot()[0]


def view(alloc: Allocation, client_status: str | None = None, **states: TaskState) -> Allocation:
    status = client_status or client_status_from_task_states(states)[0] or "pending"
    return attrs.evolve(alloc, client_status=status, task_states=states)


def assert_seen(hook: HealthHook, count: int) -> None:
    assert hook.views_seen() >= count, f"watch took in {hook.views_seen()} views, want {count}"


def assert_verdicts(health: Health, count: int) -> None:
    got = health.snapshot()
    assert len(got) == count, f"set_health called {len(got)} times, want {count}: {got}"


def assert_no_verdict(health: Health) -> None:
    assert_verdicts(health, 0)


def assert_watching(hook: HealthHook) -> None:
    assert hook.watching(), "no health watch is running"


def assert_not_watching(hook: HealthHook) -> None:
    assert not hook.watching(), "a health watch is still running"


def health_threads() -> list[threading.Thread]:
    """Threads named as a per-watch thread would be: the watches share one thread."""
    return [
        t for t in threading.enumerate() if t.name.startswith("health-") and t.name != THREAD
    ]


T0 = utcnow()


def running(started: Any = T0) -> TaskState:
    """Running since `started` (the same start time unless a test restarts the task)."""
    return TaskState(state=TASK_RUNNING, started_at=started)


PENDING = TaskState(state=TASK_PENDING)


def dead(failed: bool = False) -> TaskState:
    now = utcnow()
    return TaskState(state=TASK_DEAD, failed=failed, started_at=now, finished_at=now)


def deployed(job: Job) -> Allocation:
    return attrs.evolve(new_allocation(job, job.task_groups[0].name), deployment_id="d1")


def service_job(*tasks: Task, **group_fields: Any) -> Job:
    group_fields.setdefault("update", UPDATE)
    return mock_job(*(tasks or (mock_task("web"),)), **group_fields)


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.hook.postrun()
        rig.broadcaster.close()


@pytest.fixture
def make_rig(rigs: list[Rig]):
    def make(alloc: Allocation, **kwargs: Any) -> Rig:
        broadcaster = AllocBroadcaster()
        health = Health(broadcaster)
        clock = FakeClock()
        hook = HealthHook(
            alloc,
            listen=health.listen,
            health=health,
            clock=kwargs.pop("clock", clock),
            **kwargs,
        )
        rig = Rig(alloc, hook, broadcaster, health, clock)
        rigs.append(rig)
        return rig

    return make


# --- phase order (Nomad's PrerunPostrun / Postrun / PrerunUpdatePostrun / ...) ---------


def test_prerun_then_postrun(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    assert rig.hook.watching()
    assert rig.hook.live_watches() == 1
    assert health_threads() == [], "a watch costs no thread of its own"
    rig.hook.postrun()
    assert not rig.hook.watching()
    assert rig.hook.live_watches() == 0
    assert rig.health.snapshot() == []
    with pytest.raises(BroadcasterClosed):  # the watch closed its listener
        rig.health.listeners[0].get(timeout=0)


def test_only_postrun_then_a_late_prerun_is_a_noop(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.postrun()
    rig.hook.shutdown()
    rig.hook.prerun()
    assert rig.health.listen_count() == 0
    assert not rig.hook.watching()


def test_prerun_with_a_cancel_token_as_the_runner_calls_it(make_rig) -> None:
    from allocrunner._sync import CancelToken

    rig = make_rig(deployed(service_job()))
    rig.hook.prerun(CancelToken())
    assert rig.hook.watching()


def test_prerun_concurrent_updates_then_postrun(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    errors: list[BaseException] = []

    def updates() -> None:
        alloc = rig.alloc
        for _ in range(2):
            alloc = attrs.evolve(alloc, alloc_modify_index=alloc.alloc_modify_index + 1)
            try:
                rig.hook.update(alloc)
            except BaseException as err:
                errors.append(err)

    thread = threading.Thread(target=updates, name="health-test-updates")
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and errors == []
    assert rig.health.listen_count() == 3, "each watch listens anew"
    for listener in rig.health.listeners[:2]:
        with pytest.raises(BroadcasterClosed):
            listener.get(timeout=0)
    assert rig.hook.watching()
    rig.hook.postrun()
    assert rig.hook.live_watches() == 0
    assert rig.health.snapshot() == [] and rig.health.clears == 0


def test_update_before_prerun_starts_the_watch_and_prerun_is_then_a_noop(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.update(attrs.evolve(rig.alloc, alloc_modify_index=5))
    assert rig.hook.watching()
    rig.hook.prerun()
    assert rig.health.listen_count() == 1
    assert rig.hook.live_watches() == 1
    rig.hook.postrun()
    assert rig.hook.live_watches() == 0


def test_deployment_change_clears_health_and_watches_again(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    rig.send_and_wait(web=running())
    rig.clock.advance(10)
    assert rig.verdict()[0] is True
    rig.hook.update(attrs.evolve(rig.alloc, alloc_modify_index=2))
    assert rig.health.clears == 0
    assert not rig.hook.watching(), "health is set and the deployment is the same"
    rig.hook.update(attrs.evolve(rig.alloc, deployment_id="d2", alloc_modify_index=3))
    assert rig.health.clears == 1
    assert rig.hook.watching(), "a new deployment is watched again"


def test_update_to_a_stopped_alloc_ends_the_watch(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    rig.hook.update(attrs.evolve(rig.alloc, desired_status="stop", alloc_modify_index=2))
    assert not rig.hook.watching()
    # update() does not wait for the old watch: the service ends it on its own.
    wait_for(lambda: _assert_no_live_watches(rig.hook), 5)
    assert rig.health.snapshot() == []


def _assert_no_live_watches(hook: HealthHook) -> None:
    live = hook.live_watches()
    assert live == 0, f"{live} health watches still live"


def test_update_of_another_alloc_is_refused(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    other = new_allocation(rig.alloc.job, "web")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not"):
        rig.hook.update(other)


# --- verdicts --------------------------------------------------------------------------


def test_healthy_after_min_healthy_time(make_rig) -> None:
    rig = make_rig(deployed(service_job(mock_task("web"), mock_task("api"))))
    rig.hook.prerun()
    rig.send_and_wait(web=running(), api=PENDING)
    rig.clock.advance(20)
    rig.send_and_wait(web=running(), api=running())
    rig.clock.advance(9.5)
    assert_stays(lambda: assert_no_verdict(rig.health), 0.05)
    rig.clock.advance(0.5)
    healthy, events = rig.verdict()
    assert healthy is True and events == {}
    assert rig.health.locks_at_set == [[]], "set_health must be called with no lock held"
    rig.send(web=dead(failed=True), api=running())
    assert_stays(lambda: assert_verdicts(rig.health, 1), 0.05)


def test_restart_resets_the_healthy_timer(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    first = T0
    rig.send_and_wait(web=running(first))
    rig.clock.advance(8)
    rig.send_and_wait(web=PENDING)  # restarting
    rig.send_and_wait(web=running(first + timedelta(seconds=1)))
    rig.clock.advance(8)
    assert_stays(lambda: assert_no_verdict(rig.health), 0.05)
    # A restart seen only as a new start time (the pending state was coalesced away).
    rig.send_and_wait(web=running(first + timedelta(seconds=2)))
    rig.clock.advance(9)
    assert_stays(lambda: assert_no_verdict(rig.health), 0.05)
    rig.clock.advance(1)
    assert rig.verdict()[0] is True


def test_unhealthy_on_failed_task_with_events(make_rig) -> None:
    rig = make_rig(deployed(service_job(mock_task("web"), mock_task("api"))))
    rig.hook.prerun()
    rig.send_and_wait(web=running(), api=running())
    rig.send(web=dead(failed=True), api=running())
    healthy, events = rig.verdict()
    assert healthy is False
    assert set(events) == {"web"}
    assert events["web"].type == EVENT_ALLOC_UNHEALTHY
    assert events["web"].message == MSG_FAILED
    assert rig.health.locks_at_set == [[]]


def test_unhealthy_when_a_main_task_exits(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    rig.send(web=dead(failed=False))
    healthy, events = rig.verdict()
    assert healthy is False
    assert events["web"].message == MSG_EXITED


def test_unhealthy_when_the_alloc_failed_without_task_events(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    rig.send("failed", web=PENDING)
    assert rig.verdict() == (False, {})


def test_lifecycle_tasks_completed_prestart_and_pending_poststop_are_healthy(make_rig) -> None:
    tasks = (
        mock_task("init", lifecycle=Lifecycle("prestart")),
        mock_task("side", lifecycle=Lifecycle("prestart", sidecar=True)),
        mock_task("web"),
        mock_task("post", lifecycle=Lifecycle("poststart")),
        mock_task("stop", lifecycle=Lifecycle("poststop")),
    )
    rig = make_rig(deployed(service_job(*tasks)))
    rig.hook.prerun()
    rig.send_and_wait(init=running(), side=running(), web=PENDING, post=PENDING, stop=PENDING)
    rig.clock.advance(30)
    assert_stays(lambda: assert_no_verdict(rig.health), 0.05)
    rig.send_and_wait(init=dead(), side=running(), web=running(), post=running(), stop=PENDING)
    rig.clock.advance(5)
    rig.send_and_wait(init=dead(), side=running(), web=running(), post=dead(), stop=PENDING)
    rig.clock.advance(5)
    assert rig.verdict() == (True, {})


def test_a_sidecar_that_exits_is_unhealthy(make_rig) -> None:
    tasks = (mock_task("side", lifecycle=Lifecycle("prestart", sidecar=True)), mock_task("web"))
    rig = make_rig(deployed(service_job(*tasks)))
    rig.hook.prerun()
    rig.send(side=dead(), web=running())
    healthy, events = rig.verdict()
    assert healthy is False and events["side"].message == MSG_EXITED and "web" not in events


def test_deadline_gives_unhealthy_with_a_reason_per_task(make_rig) -> None:
    tasks = (
        mock_task("init", lifecycle=Lifecycle("prestart")),
        mock_task("long"),
        mock_task("late"),
        mock_task("never"),
    )
    rig = make_rig(
        deployed(
            service_job(*tasks, update=UpdateStrategy(min_healthy_time=10.0, healthy_deadline=30.0))
        )
    )
    rig.hook.prerun()
    rig.send_and_wait(init=dead(), long=running(), late=PENDING, never=PENDING)
    rig.clock.advance(25)
    rig.send_and_wait(init=dead(), long=running(), late=running(), never=PENDING)
    rig.clock.advance(4.5)
    assert_stays(lambda: assert_no_verdict(rig.health), 0.05)
    rig.clock.advance(0.5)
    healthy, events = rig.verdict()
    assert healthy is False
    assert {name: e.message for name, e in events.items()} == {
        "late": MSG_NOT_LONG_ENOUGH.format("10s"),
        "never": MSG_NOT_RUNNING,
    }
    assert all(e.type == EVENT_ALLOC_UNHEALTHY for e in events.values())


def test_deadline_names_a_prestart_task_that_never_completed(make_rig) -> None:
    tasks = (mock_task("init", lifecycle=Lifecycle("prestart")), mock_task("web"))
    rig = make_rig(
        deployed(
            service_job(*tasks, update=UpdateStrategy(min_healthy_time=1.0, healthy_deadline=5.0))
        )
    )
    rig.hook.prerun()
    rig.send_and_wait(init=running(), web=PENDING)
    rig.clock.advance(5)
    healthy, events = rig.verdict()
    assert healthy is False
    assert {n: e.message for n, e in events.items()} == {
        "init": MSG_NOT_COMPLETED,
        "web": MSG_NOT_RUNNING,
    }


def test_deadline_that_comes_before_the_healthy_time_wins(make_rig) -> None:
    """Both timers are due at one clock reading: the earlier one decides."""
    job = service_job(update=UpdateStrategy(min_healthy_time=10.0, healthy_deadline=15.0))
    rig = make_rig(deployed(job))
    rig.hook.prerun()
    rig.clock.advance(10)
    rig.send_and_wait(web=running())
    rig.clock.advance(20)
    healthy, events = rig.verdict()
    assert healthy is False
    assert events["web"].message == MSG_NOT_LONG_ENOUGH.format("10s")


def test_deadline_without_any_view(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    rig.clock.advance(60)
    assert rig.verdict() == (False, {})


def test_migration_uses_the_migrate_strategy_and_emits_no_events(make_rig) -> None:
    job = service_job(migrate=MigrateStrategy(min_healthy_time=2.0, healthy_deadline=4.0))
    alloc = new_allocation(job, "web")
    assert health_params(alloc) == HealthParams(False, 2.0, 4.0)
    rig = make_rig(alloc)
    rig.hook.prerun()
    rig.send_and_wait(web=running())
    rig.clock.advance(2)
    assert rig.verdict() == (True, {})

    rig2 = make_rig(alloc)
    rig2.hook.prerun()
    rig2.send(web=dead(failed=True))
    assert rig2.verdict() == (False, {})


def test_default_migrate_strategy_without_one() -> None:
    alloc = new_allocation(mock_job(), "web")
    assert health_params(alloc) == HealthParams(False, 10.0, 300.0)


def test_job_update_strategy_when_the_group_has_none() -> None:
    job = attrs.evolve(mock_job(), update=UpdateStrategy(min_healthy_time=3.0))
    assert health_params(deployed(job)) == HealthParams(True, 3.0, 300.0)


def test_desired_stop_ends_the_watch_without_a_verdict(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    rig.send_and_wait(web=running())
    rig.broadcaster.send(attrs.evolve(view(rig.alloc, web=running()), desired_status="stop"))
    wait_for(lambda: assert_not_watching(rig.hook), 5)
    rig.clock.advance(100)
    assert_stays(lambda: assert_no_verdict(rig.health), 0.05)


def test_closed_broadcaster_ends_the_watch_without_a_verdict(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.hook.prerun()
    rig.broadcaster.close()
    wait_for(lambda: assert_not_watching(rig.hook), 5)
    assert rig.health.snapshot() == []


def test_real_clock_waits_exactly_without_polling(make_rig) -> None:
    job = service_job(update=UpdateStrategy(min_healthy_time=0.1, healthy_deadline=30.0))
    rig = make_rig(deployed(job), clock=time.monotonic)
    rig.hook.prerun()
    started = time.monotonic()
    rig.send(web=running())
    assert rig.verdict()[0] is True
    assert time.monotonic() - started >= 0.1


def test_set_health_failure_is_logged_not_raised(make_rig, caplog) -> None:
    rig = make_rig(deployed(service_job()))

    class Broken:
        def set_health(self, healthy: bool, events: Mapping[str, TaskEvent]) -> None:
            raise RuntimeError("state db is gone")

        def has_health(self) -> bool:
            return False

        def clear_health(self) -> None:
            pass

    hook = HealthHook(rig.alloc, listen=rig.health.listen, health=Broken(), clock=rig.clock)
    try:
        with caplog.at_level(logging.ERROR, logger="allocrunner.runner.health"):
            hook.prerun()
            rig.send(web=dead(failed=True))
            wait_for(lambda: assert_not_watching(hook), 5)
        assert "setting health failed" in caplog.text
    finally:
        hook.postrun()


# --- when nothing is watched -----------------------------------------------------------


@pytest.mark.parametrize("job_type", ["batch", "sysbatch"])
def test_batch_jobs_are_not_watched(make_rig, job_type: str) -> None:
    rig = make_rig(deployed(service_job(job_type=job_type)))
    rig.hook.prerun()
    rig.hook.update(attrs.evolve(rig.alloc, deployment_id="d2", alloc_modify_index=2))
    assert rig.health.listen_count() == 0 and rig.health.clears == 0
    assert rig.hook.live_watches() == 0
    rig.hook.postrun()


def test_system_jobs_are_watched(make_rig) -> None:
    rig = make_rig(deployed(service_job(job_type="system")))
    rig.hook.prerun()
    assert rig.hook.watching()
    rig.send_and_wait(web=running())
    rig.clock.advance(10)
    assert rig.verdict() == (True, {})


def test_not_watched_when_health_is_already_set(make_rig) -> None:
    rig = make_rig(deployed(service_job()))
    rig.health.preset = True
    rig.hook.prerun()
    assert rig.health.listen_count() == 0 and not rig.hook.watching()


@pytest.mark.parametrize(
    "update",
    [
        pytest.param(UpdateStrategy(health_check="manual"), id="manual"),
        pytest.param(UpdateStrategy(max_parallel=0), id="empty"),
        pytest.param(None, id="none"),
    ],
)
def test_deployment_without_automatic_health_is_not_watched(make_rig, update: Any) -> None:
    rig = make_rig(deployed(mock_job(update=update)))
    rig.hook.prerun()
    assert rig.health.listen_count() == 0 and not rig.hook.watching()


def test_stopping_alloc_is_not_watched(make_rig) -> None:
    rig = make_rig(attrs.evolve(deployed(service_job()), desired_status="evict"))
    rig.hook.prerun()
    assert rig.health.listen_count() == 0


def test_bad_strategies_are_clear_errors() -> None:
    bad_time = deployed(service_job(update=UpdateStrategy(min_healthy_time=-1.0)))
    with pytest.raises(ValueError, match=r"Job\.TaskGroups\[web\]\.update\.min_healthy_time"):
        health_params(bad_time)
    bad_check = deployed(service_job(update=UpdateStrategy(health_check="sometimes")))
    with pytest.raises(ValueError, match=r"update\.health_check: 'sometimes'"):
        HealthHook(bad_check, listen=None, health=None)  # type: ignore[arg-type]
    bad_migrate = new_allocation(mock_job(migrate=MigrateStrategy(health_check="manual")), "web")
    with pytest.raises(ValueError, match=r"migrate\.health_check"):
        health_params(bad_migrate)
    with pytest.raises(ValueError, match="task_group 'nope'"):
        health_params(attrs.evolve(bad_time, task_group="nope"))


# --- a verdict being written (the state DB is slow) -------------------------------------


class GatedHealth(Health):
    """Thread-safe. A `Health` whose first `set_health` blocks until `gate` opens (a
    state DB queued on its lock), and which logs, in order, every listen, clear and
    verdict written."""

    def __init__(self, broadcaster: AllocBroadcaster) -> None:
        super().__init__(broadcaster)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.log: list[str] = []

    def _note(self, what: str) -> None:
        with self._mutex:
            self.log.append(what)

    def listen(self) -> AllocListener:
        self._note("listen")
        return super().listen()

    def set_health(self, healthy: bool, events: Mapping[str, TaskEvent]) -> None:
        first = not self.entered.is_set()
        self._note("verdict-writing")
        self.entered.set()
        if first:
            assert self.gate.wait(60), "the gate was never opened"
        super().set_health(healthy, events)
        self._note("verdict-written")

    def clear_health(self) -> None:
        super().clear_health()
        self._note("clear")

    def entries(self) -> list[str]:
        with self._mutex:
            return list(self.log)


@pytest.fixture
def gated(rigs: list[Rig]) -> Rig:
    """A rig whose first verdict blocks in `set_health` until its gate opens."""
    alloc = deployed(service_job())
    broadcaster = AllocBroadcaster()
    health = GatedHealth(broadcaster)
    clock = FakeClock()
    hook = HealthHook(
        alloc,
        listen=health.listen,
        health=health,
        clock=clock,
    )
    rig = Rig(alloc, hook, broadcaster, health, clock)
    rigs.append(rig)
    hook.prerun()
    rig.send_and_wait(web=running())
    rig.clock.advance(10)
    assert health.entered.wait(5), "the watch gave no verdict"
    return rig


def _update_from_another_thread(
    rig: Rig, alloc: Allocation
) -> tuple[threading.Thread, threading.Event]:
    returned = threading.Event()

    def update() -> None:
        rig.hook.update(alloc)
        returned.set()

    thread = threading.Thread(target=update, name="alloc-state-test")
    thread.start()
    return thread, returned


def test_an_update_does_not_wait_for_a_verdict_being_written(gated: Rig) -> None:
    """The alloc runner's state thread applies updates: it must not wait for a watch
    whose verdict is queued on the state DB."""
    health = gated.health
    assert isinstance(health, GatedHealth)
    new = attrs.evolve(gated.alloc, deployment_id="d2", alloc_modify_index=2)
    thread, returned = _update_from_another_thread(gated, new)
    try:
        assert returned.wait(5), "update() waited for the verdict being written"
    finally:
        health.gate.set()
        thread.join(60)
    wait_for(lambda: _assert_log_ends(health, ["verdict-written", "clear", "listen"]), 5)
    assert gated.hook.watching(), "the new deployment is watched"


def test_a_verdict_being_written_lands_before_the_next_watch_starts(
    gated: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However long the write takes, the newer watch (and the clear of the old health)
    comes after it, so a stale verdict never overwrites the newer deployment's health."""
    import allocrunner.runner.health as health_module

    monkeypatch.setattr(health_module, "JOIN_TIMEOUT", 0.05)  # no waiting is ever given up
    health = gated.health
    assert isinstance(health, GatedHealth)
    new = attrs.evolve(gated.alloc, deployment_id="d2", alloc_modify_index=2)
    thread, returned = _update_from_another_thread(gated, new)
    try:
        assert_stays(lambda: _assert_log_is(health, ["listen", "verdict-writing"]), 0.3)
    finally:
        health.gate.set()
        thread.join(60)
    assert returned.is_set()
    want = ["listen", "verdict-writing", "verdict-written", "clear", "listen"]
    wait_for(lambda: _assert_log_is(health, want), 5)
    assert health.snapshot() == [], "the old deployment's verdict was cleared"
    gated.send_and_wait(web=running())
    gated.clock.advance(10)
    wait_for(lambda: assert_verdicts(health, 1), 5)


def _assert_log_is(health: GatedHealth, want: list[str]) -> None:
    got = health.entries()
    assert got == want, f"got {got}, want {want}"


def _assert_log_ends(health: GatedHealth, tail: list[str]) -> None:
    got = health.entries()
    assert got[-len(tail) :] == tail, f"got {got}, want it to end with {tail}"


class _DeafListener:
    """Not thread-safe; owned by one watch. A listener that ignores `close` and hands
    out one view only once its gate opens, its `get` waiting for it whatever the
    timeout: a watch busy with a view when it is superseded."""

    def __init__(self, view: Allocation, gate: threading.Event) -> None:
        self._view = view
        self._gate = gate
        self._sent = False

    def get(self, timeout: float | None = None) -> Allocation:
        if self._sent or not self._gate.wait(10):
            raise TimeoutError("no view")
        self._sent = True
        return self._view

    def wake_on_new(self, waker: object) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_superseded_watch_never_writes_its_verdict(make_rig) -> None:
    """A watch that reaches its verdict after an update replaced it writes nothing:
    only the newest watch may set the health."""
    rig = make_rig(deployed(service_job()))
    gate = threading.Event()
    failed_view = view(rig.alloc, web=dead(failed=True))
    listeners = iter([_DeafListener(failed_view, gate)])

    def listen() -> Any:
        return next(listeners, None) or rig.health.listen()

    hook = HealthHook(
        rig.alloc,
        listen=listen,
        health=rig.health,
        clock=rig.clock,
    )
    try:
        hook.prerun()
        hook.update(attrs.evolve(rig.alloc, alloc_modify_index=2))
        gate.set()  # the old watch now sees a failed task: a verdict, but a stale one
        assert_stays(lambda: assert_no_verdict(rig.health), 0.2)
        assert hook.watching()
    finally:
        gate.set()
        hook.postrun()
    assert hook.live_watches() == 0


# --- stress ----------------------------------------------------------------------------


@pytest.mark.stress
def test_stress_phases_from_many_threads_never_leak_or_double_report(make_rig) -> None:
    """Updates, shutdowns and broadcasts race from several threads while the clock moves;
    in the end no watch is left and no watch reported twice."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for round_ in range(20):
            job = service_job(update=UpdateStrategy(min_healthy_time=1.0, healthy_deadline=3.0))
            rig = make_rig(deployed(job))
            errors: list[BaseException] = []
            barrier = threading.Barrier(4)

            def updater(
                rig: Rig = rig, errors: list[BaseException] = errors, barrier: Any = barrier
            ) -> None:
                barrier.wait(5)
                alloc = rig.alloc
                for i in range(5):
                    alloc = attrs.evolve(alloc, alloc_modify_index=i + 2, deployment_id=f"d{i % 2}")
                    try:
                        rig.hook.update(alloc)
                    except BaseException as err:
                        errors.append(err)

            def sender(rig: Rig = rig, barrier: Any = barrier) -> None:
                barrier.wait(5)
                for _ in range(20):
                    rig.send(web=running())
                    rig.clock.advance(0.5)

            def stopper(rig: Rig = rig, round_: int = round_, barrier: Any = barrier) -> None:
                barrier.wait(5)
                if round_ % 2:
                    rig.hook.prerun()
                rig.hook.shutdown()

            threads = [
                threading.Thread(target=updater, name="stress-health-update"),
                threading.Thread(target=sender, name="stress-health-send"),
                threading.Thread(target=stopper, name="stress-health-stop"),
            ]
            for t in threads:
                t.start()
            barrier.wait(5)
            for t in threads:
                t.join(10)
            assert not any(t.is_alive() for t in threads)
            assert errors == []
            rig.hook.postrun()
            assert not rig.hook.watching()
            assert rig.hook.live_watches() == 0
            assert health_threads() == []
            # One verdict at most per watch: every verdict was followed by a clear or
            # was the last one (has_health stops further watches).
            assert len(rig.health.snapshot()) <= 1
            assert all(locks == [] for locks in rig.health.locks_at_set)
    finally:
        sys.setswitchinterval(old)
