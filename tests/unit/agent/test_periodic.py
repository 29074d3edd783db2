"""Periodic jobs: next launch times (several specs, seconds and year fields, time zones
across DST changes, all at fixed instants), the child job a launch derives, and the
PeriodicLauncher thread launching every second for real."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import attrs
import pytest

from allocrunner.agent.periodic import PeriodicLauncher, next_launch, periodic_child
from allocrunner.structs import Job, ParameterizedJobConfig, PeriodicConfig
from allocrunner.testing import assert_stays, mock_job, wait_for

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
EVERY_SECOND = "* * * * * * *"  # seconds field first, year last (Nomad's 7-field form)


def cron(*specs: str, time_zone: str = "UTC", **fields: object) -> PeriodicConfig:
    return PeriodicConfig(specs=specs, time_zone=time_zone, **fields)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def periodic_job(job_id: str = "report", *specs: str, **fields: object) -> Job:
    return attrs.evolve(
        mock_job(job_id=job_id, job_type="batch"),
        periodic=cron(*(specs or (EVERY_SECOND,)), **fields),
    )


# --- next_launch ----------------------------------------------------------------------


def test_next_is_strictly_after_and_utc() -> None:
    at = utc(2024, 5, 1, 12, 0)
    nxt = next_launch(cron("*/15 * * * *"), at)
    assert nxt == utc(2024, 5, 1, 12, 15)
    assert nxt is not None and nxt.tzinfo is UTC


def test_earliest_of_several_specs() -> None:
    at = utc(2024, 5, 1, 12, 0)
    assert next_launch(cron("0 18 * * *", "30 13 * * *", "0 0 * * *"), at) == utc(
        2024, 5, 1, 13, 30
    )


def test_seven_fields_have_seconds_first_and_six_fields_a_year_last() -> None:
    at = utc(2024, 5, 1, 12, 0, 0)
    assert next_launch(cron("*/10 * * * * * *"), at) == utc(2024, 5, 1, 12, 0, 10)
    assert next_launch(cron("0 0 1 1 * 2030"), at) == utc(2030, 1, 1)
    assert next_launch(cron("0 0 1 1 * 2020-2023"), at) is None


def test_none_when_disabled_or_never_matching() -> None:
    at = utc(2024, 5, 1)
    assert next_launch(cron("@daily", enabled=False), at) is None
    assert next_launch(cron("0 0 30 2 *"), at) is None  # February 30th


def test_time_zone_is_honoured() -> None:
    at = utc(2024, 1, 15, 0, 0)
    # 09:00 in New York in winter is 14:00 UTC.
    assert next_launch(cron("0 9 * * *", time_zone="America/New_York"), at) == utc(
        2024, 1, 15, 14, 0
    )


def test_wall_clock_stays_put_across_spring_forward() -> None:
    config = cron("0 9 * * *", time_zone="America/New_York")
    before = next_launch(config, datetime(2024, 3, 9, 12, 0, tzinfo=NEW_YORK))
    after = next_launch(config, datetime(2024, 3, 10, 12, 0, tzinfo=NEW_YORK))
    assert before == utc(2024, 3, 10, 13, 0)  # 09:00 EDT, the morning after the change
    assert after == utc(2024, 3, 11, 13, 0)
    assert before is not None and before.astimezone(NEW_YORK).hour == 9


def test_skipped_time_runs_once_shifted_by_the_gap() -> None:
    config = cron("30 2 * * *", time_zone="America/New_York")
    first = next_launch(config, datetime(2024, 3, 10, 0, 0, tzinfo=NEW_YORK))
    # 02:30 does not exist on 2024-03-10: it runs at 03:30 EDT, as Go's time.Date puts it.
    assert first == utc(2024, 3, 10, 7, 30)
    assert first is not None
    assert next_launch(config, first) == utc(2024, 3, 11, 6, 30)


def test_repeated_time_runs_once_at_its_first_occurrence() -> None:
    config = cron("30 1 * * *", time_zone="America/New_York")
    first = next_launch(config, datetime(2024, 11, 3, 0, 0, tzinfo=NEW_YORK))
    assert first == utc(2024, 11, 3, 5, 30)  # 01:30 EDT, not 01:30 EST an hour later
    assert first is not None
    assert next_launch(config, first) == utc(2024, 11, 4, 6, 30)


def test_repeated_hour_is_not_run_twice_by_a_frequent_spec() -> None:
    config = cron("*/30 * * * *", time_zone="America/New_York")
    at = utc(2024, 11, 3, 4, 0)  # 00:00 EDT
    launches = []
    while at < utc(2024, 11, 3, 9, 0):
        nxt = next_launch(config, at)
        assert nxt is not None and nxt > at
        launches.append(nxt.astimezone(NEW_YORK).strftime("%H:%M"))
        at = nxt
    # Wall-clock times each once: the second 01:00 and 01:30 (EST) are not repeated.
    assert launches == ["00:30", "01:00", "01:30", "02:00", "02:30", "03:00", "03:30", "04:00"]


def test_per_second_spec_crosses_fall_back_without_stalling() -> None:
    config = cron("* * * * * * *", time_zone="America/New_York")
    in_repeat = datetime(2024, 11, 3, 1, 10, fold=1, tzinfo=NEW_YORK)  # 01:10 EST
    nxt = next_launch(config, in_repeat)
    # The EST pass of 01:xx has had its wall-clock times already: the next is 02:00 EST.
    assert nxt == utc(2024, 11, 3, 7, 0)


def test_southern_and_european_changes() -> None:
    config = cron("30 2 * * *", time_zone="Europe/Berlin")
    # Berlin springs forward at 02:00 on 2024-03-31: 02:30 becomes 03:30 CEST.
    assert next_launch(config, datetime(2024, 3, 31, 0, 0, tzinfo=BERLIN)) == utc(
        2024, 3, 31, 1, 30
    )
    lord_howe = cron("15 2 * * *", time_zone="Australia/Lord_Howe")  # a 30-minute change
    nxt = next_launch(
        lord_howe, datetime(2024, 10, 6, 0, 0, tzinfo=ZoneInfo("Australia/Lord_Howe"))
    )
    assert nxt is not None and nxt.astimezone(ZoneInfo("Australia/Lord_Howe")).hour == 2


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_launch(cron("@daily"), datetime(2024, 1, 1))


# --- periodic_child -------------------------------------------------------------------


def test_child_job() -> None:
    parent = attrs.evolve(periodic_job("nightly", "@daily"), meta={"team": "ops"})
    launch = utc(2024, 5, 1, 0, 0, 0)
    child = periodic_child(parent, launch)
    assert (
        child.id == f"nightly/periodic-{int(launch.timestamp())}" == "nightly/periodic-1714521600"
    )
    assert child.name == child.id
    assert child.parent_id == "nightly"
    assert child.periodic is None and not child.is_periodic_active()
    assert child.task_groups == parent.task_groups
    assert child.meta == parent.meta and child.type == parent.type


# --- PeriodicLauncher -----------------------------------------------------------------


class Recorder:
    """Thread-safe. Records launches; can be told to raise, or to report a child running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.launches: list[tuple[str, datetime]] = []
        self.running: set[str] = set()
        self.fail = False

    def launch(self, parent: Job, when: datetime) -> None:
        with self._lock:
            self.launches.append((parent.id, when))
            fail = self.fail
        if fail:
            raise RuntimeError("launch failed on purpose")

    def is_running(self, parent_id: str) -> bool:
        with self._lock:
            return parent_id in self.running

    def set_running(self, parent_id: str, running: bool) -> None:
        with self._lock:
            if running:
                self.running.add(parent_id)
            else:
                self.running.discard(parent_id)

    def of(self, job_id: str) -> list[datetime]:
        with self._lock:
            return [when for jid, when in self.launches if jid == job_id]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def launcher(recorder: Recorder):
    pl = PeriodicLauncher(recorder.launch, recorder.is_running)
    pl.start()
    try:
        yield pl
    finally:
        assert pl.stop(timeout=5)


def launched_at_least(recorder: Recorder, job_id: str, count: int):
    def check() -> list[datetime]:
        seen = recorder.of(job_id)
        assert len(seen) >= count, f"{job_id}: {len(seen)} launches, want {count}"
        return seen

    return check


def test_launches_every_second_at_whole_seconds(launcher, recorder) -> None:
    assert launcher.add(periodic_job("tick"))
    times = wait_for(launched_at_least(recorder, "tick", 2), timeout=5)
    assert all(t.microsecond == 0 and t.tzinfo is not None for t in times)
    assert times[1] - times[0] >= timedelta(seconds=1)
    assert len(set(times)) == len(times)
    nxt = launcher.next_launch_time("tick")
    assert nxt is not None and nxt > times[-1]


def test_removed_job_launches_no_more(launcher, recorder) -> None:
    launcher.add(periodic_job("tick"))
    wait_for(launched_at_least(recorder, "tick", 1), timeout=5)
    assert launcher.remove("tick")
    assert not launcher.remove("tick")
    count = len(recorder.of("tick"))
    assert_stays(lambda: _count_is(recorder, "tick", count), duration=1.3)
    assert launcher.tracked() == []


def _count_is(recorder: Recorder, job_id: str, count: int) -> None:
    assert len(recorder.of(job_id)) == count, f"{job_id} launched again"


def test_prohibit_overlap_skips_while_a_child_runs(launcher, recorder) -> None:
    recorder.set_running("exclusive", True)
    launcher.add(periodic_job("exclusive", prohibit_overlap=True))
    launcher.add(periodic_job("overlapping"))  # runs alongside; is_running is not asked
    recorder.set_running("overlapping", True)
    wait_for(launched_at_least(recorder, "overlapping", 2), timeout=5)
    assert recorder.of("exclusive") == []
    recorder.set_running("exclusive", False)
    wait_for(launched_at_least(recorder, "exclusive", 1), timeout=5)


def test_a_failing_launch_is_logged_and_the_thread_goes_on(launcher, recorder, caplog) -> None:
    recorder.fail = True
    launcher.add(periodic_job("flaky"))
    wait_for(launched_at_least(recorder, "flaky", 2), timeout=5)
    assert any("launch" in r.getMessage() and r.exc_info for r in caplog.records)


def test_inactive_jobs_are_not_tracked_and_an_update_untracks(launcher, recorder) -> None:
    plain = mock_job(job_id="plain", job_type="batch")
    disabled = periodic_job("off", enabled=False)
    template = attrs.evolve(periodic_job("tmpl"), parameterized=ParameterizedJobConfig())
    assert not launcher.add(plain)
    assert not launcher.add(disabled)
    assert not launcher.add(template)
    job = periodic_job("soon-stopped", "0 0 1 1 *")
    assert launcher.add(job)
    assert [j.id for j in launcher.tracked()] == ["soon-stopped"]
    assert not launcher.add(attrs.evolve(job, stop=True))
    assert launcher.tracked() == []


def test_update_replaces_the_schedule(launcher, recorder) -> None:
    job = periodic_job("yearly", "0 0 1 1 *")
    launcher.add(job)
    assert_stays(lambda: _count_is(recorder, "yearly", 0), duration=0.3)
    launcher.add(attrs.evolve(job, periodic=cron(EVERY_SECOND)))
    wait_for(launched_at_least(recorder, "yearly", 1), timeout=5)


def test_force_launch_runs_now_on_the_callers_thread(launcher, recorder) -> None:
    recorder.set_running("daily", True)
    launcher.add(periodic_job("daily", "0 0 * * *", prohibit_overlap=True))
    before = datetime.now(UTC)
    when = launcher.force_launch("daily")
    assert before <= when <= datetime.now(UTC)
    assert recorder.of("daily") == [when]  # overlap is not checked, as in Nomad
    with pytest.raises(KeyError):
        launcher.force_launch("unknown")


def test_callback_may_call_back_into_the_launcher(recorder) -> None:
    holder: list[PeriodicLauncher] = []

    def launch_once(parent: Job, when: datetime) -> None:
        recorder.launch(parent, when)
        holder[0].remove(parent.id)

    pl = PeriodicLauncher(launch_once, recorder.is_running)
    holder.append(pl)
    pl.start()
    try:
        pl.add(periodic_job("once"))
        wait_for(launched_at_least(recorder, "once", 1), timeout=5)
        assert_stays(lambda: _count_is(recorder, "once", 1), duration=1.2)
    finally:
        assert pl.stop(timeout=5)


def test_stop_is_prompt_idempotent_and_final(recorder) -> None:
    pl = PeriodicLauncher(recorder.launch, recorder.is_running)
    pl.add(periodic_job("far", "0 0 1 1 *"))
    pl.start()
    pl.start()
    assert pl.stop(timeout=2)
    assert pl.stop(timeout=2)
    pl.start()  # no thread after stop
    assert pl.stop(timeout=0)


def test_launch_times_follow_an_injected_clock(recorder) -> None:
    base = datetime(2024, 1, 1, tzinfo=UTC)
    pl = PeriodicLauncher(recorder.launch, recorder.is_running, clock=lambda: base)
    pl.add(periodic_job("clocked", "0 12 * * *"))
    assert pl.next_launch_time("clocked") == utc(2024, 1, 1, 12, 0)
    pl.start()
    try:
        # The clock says it is far before noon, so nothing fires.
        assert_stays(lambda: _count_is(recorder, "clocked", 0), duration=0.3)
    finally:
        assert pl.stop(timeout=5)
