"""Nomad's cron layout and the next launch time: fields, years, time zones, DST edges."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocrunner.structs.cron import YEAR_MAX, YEAR_MIN, load_zone, next_cron_time, parse_cron

NEW_YORK = ZoneInfo("America/New_York")
MINUTE = timedelta(minutes=1)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def launches(spec: str, after: datetime, zone: ZoneInfo, count: int) -> list[datetime]:
    """The next `count` launch times, each found from the one before."""
    parsed, found = parse_cron(spec), []
    for _ in range(count):
        nxt = next_cron_time(parsed, after, zone)
        assert nxt is not None
        found.append(nxt)
        after = nxt
    return found


# --- the layout ------------------------------------------------------------------------


def test_five_fields_are_minute_hour_day_month_weekday_at_second_zero() -> None:
    spec = parse_cron("5 4 * * *")
    assert spec.expression == "5 4 * * * 0"
    assert spec.years == tuple(range(YEAR_MIN, YEAR_MAX + 1))
    assert next_cron_time(spec, utc(2024, 5, 1), UTC) == utc(2024, 5, 1, 4, 5)


def test_a_sixth_field_is_the_year_not_seconds() -> None:
    spec = parse_cron("0 0 1 1 * 2030")
    assert spec.years == (2030,)
    assert next_cron_time(spec, utc(2024, 5, 1), UTC) == utc(2030, 1, 1)


def test_with_seven_fields_the_first_is_seconds_and_the_last_the_year() -> None:
    spec = parse_cron("30 0 0 1 1 * 2030-2032")
    assert spec.expression == "0 0 1 1 * 30" and spec.years == (2030, 2031, 2032)
    assert next_cron_time(spec, utc(2031, 6, 1), UTC) == utc(2032, 1, 1, 0, 0, 30)
    every_ten = parse_cron("*/10 * * * * * *")
    assert next_cron_time(every_ten, utc(2024, 5, 1, 12, 0, 1), UTC) == utc(2024, 5, 1, 12, 0, 10)


def test_fields_beyond_the_seventh_are_ignored() -> None:
    assert parse_cron("0 0 0 1 1 * 2030 whatever").years == (2030,)


@pytest.mark.parametrize(
    ("years", "expected"),
    [
        ("2030", (2030,)),
        ("2030,2028", (2028, 2030)),
        ("2030-2033", (2030, 2031, 2032, 2033)),
        ("2090/4", (2090, 2094, 2098)),
        ("2030-2040/5", (2030, 2035, 2040)),
        ("*/50", (1970, 2020, 2070)),
    ],
)
def test_year_lists_ranges_and_steps(years: str, expected: tuple[int, ...]) -> None:
    assert parse_cron(f"0 0 1 1 * {years}").years == expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("@yearly", utc(2025, 1, 1)),
        ("@monthly", utc(2024, 6, 1)),
        ("@weekly", utc(2024, 5, 5)),  # Sunday
        ("@daily", utc(2024, 5, 2)),
        ("@hourly", utc(2024, 5, 1, 13)),
        ("@DAILY", utc(2024, 5, 2)),
    ],
)
def test_macros(spec: str, expected: datetime) -> None:
    assert next_cron_time(parse_cron(spec), utc(2024, 5, 1, 12, 30), UTC) == expected


def test_day_names_and_last_day_of_month() -> None:
    monday_noon = parse_cron("0 12 * * MON")
    assert next_cron_time(monday_noon, utc(2024, 5, 1), UTC) == utc(2024, 5, 6, 12)
    last_day = parse_cron("0 0 L * *")
    assert next_cron_time(last_day, utc(2024, 2, 1), UTC) == utc(2024, 2, 29)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "4 fields"),
        ("61 * * * *", "invalid cron spec"),
        ("* * * * * 1969", "out of range"),
        ("* * * * * 2100", "out of range"),
        ("* * * * * 2031-2030", "out of range"),
        ("* * * * * 2030/0", "year step"),
        ("* * * * * 2030/x", "year step"),
        ("* * * * * soon", "invalid year"),
        ("* * * * * 2030-", "invalid year range"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_cron(spec)


def test_parsed_specs_are_cached() -> None:
    assert parse_cron("*/7 * * * *") is parse_cron("*/7 * * * *")


# --- next launch ------------------------------------------------------------------------


def test_the_next_launch_is_strictly_after() -> None:
    every_minute = parse_cron("* * * * *")
    assert next_cron_time(every_minute, utc(2024, 5, 1, 12), UTC) == utc(2024, 5, 1, 12, 1)
    half_past = utc(2024, 5, 1, 12, 0, 0) + timedelta(microseconds=500_000)
    assert next_cron_time(every_minute, half_past, UTC) == utc(2024, 5, 1, 12, 1)


def test_after_may_be_in_any_zone_and_the_answer_is_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    nxt = next_cron_time(parse_cron("0 * * * *"), datetime(2024, 5, 1, 21, 30, tzinfo=tokyo), UTC)
    assert nxt == utc(2024, 5, 1, 13) and nxt is not None and nxt.tzinfo is UTC


def test_after_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_cron_time(parse_cron("@daily"), datetime(2024, 1, 1), UTC)


@pytest.mark.parametrize(
    ("spec", "after"),
    [
        ("0 0 30 2 *", utc(2024, 1, 1)),  # February 30th never comes
        ("0 0 29 2 * 2025-2027", utc(2024, 3, 1)),  # no leap day in those years
        ("0 0 1 1 * 2030", utc(2030, 1, 1)),  # the only launch is not after itself
        ("* * * * *", utc(YEAR_MAX, 12, 31, 23, 59)),  # cronexpr's years end in 2099
    ],
)
def test_no_launch_at_all_is_none(spec: str, after: datetime) -> None:
    assert next_cron_time(parse_cron(spec), after, UTC) is None


def test_years_are_skipped_to_the_next_allowed_one() -> None:
    leap_day = parse_cron("0 0 29 2 *")
    assert next_cron_time(leap_day, utc(2024, 3, 1), UTC) == utc(2028, 2, 29)
    every_tenth_year = parse_cron("0 0 1 1 * 2030/10")
    assert next_cron_time(every_tenth_year, utc(2030, 6, 1), UTC) == utc(2040, 1, 1)


# --- time zones and daylight saving ---------------------------------------------------


def test_wall_clock_time_in_the_zone() -> None:
    nine = parse_cron("0 9 * * *")
    assert next_cron_time(nine, utc(2024, 7, 1), NEW_YORK) == utc(2024, 7, 1, 13)  # EDT
    assert next_cron_time(nine, utc(2024, 1, 1), NEW_YORK) == utc(2024, 1, 1, 14)  # EST


def test_a_skipped_time_moves_forward_by_the_gap() -> None:
    # 2024-03-10 02:30 does not exist in New York: it is 03:30 EDT, as Go's time.Date has it.
    half_past_two = parse_cron("30 2 * * *")
    assert next_cron_time(half_past_two, utc(2024, 3, 9, 12), NEW_YORK) == utc(2024, 3, 10, 7, 30)
    assert next_cron_time(half_past_two, utc(2024, 3, 10, 12), NEW_YORK) == utc(2024, 3, 11, 6, 30)


def test_a_repeated_time_fires_at_its_first_occurrence_only() -> None:
    # 2024-11-03 01:30 happens twice in New York: 05:30 UTC (EDT), then 06:30 UTC (EST).
    half_past_one = parse_cron("30 1 * * *")
    assert next_cron_time(half_past_one, utc(2024, 11, 3), NEW_YORK) == utc(2024, 11, 3, 5, 30)
    assert next_cron_time(half_past_one, utc(2024, 11, 3, 5, 30), NEW_YORK) == utc(
        2024, 11, 4, 6, 30
    )


def test_spring_forward_never_launches_twice_at_one_instant() -> None:
    # 02:00-02:45 move onto 03:00-03:45 EDT; the real 03:00-03:45 are then not after.
    found = launches("*/15 * * * *", utc(2024, 3, 10, 6, 30), NEW_YORK, 8)
    assert found == [utc(2024, 3, 10, 6, 45) + i * 15 * MINUTE for i in range(8)]


def test_fall_back_skips_the_repeated_hour() -> None:
    found = launches("*/15 * * * *", utc(2024, 11, 3, 5, 15), NEW_YORK, 4)
    edt = [utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 5, 45)]  # 01:30, 01:45 EDT
    est = [utc(2024, 11, 3, 7, 0), utc(2024, 11, 3, 7, 15)]  # 02:00, 02:15 EST
    assert found == [*edt, *est]


def test_a_per_second_spec_gets_through_a_whole_repeated_hour() -> None:
    every_second = parse_cron("* * * * * * *")
    last_edt_second = utc(2024, 11, 3, 5, 59, 59)
    assert next_cron_time(every_second, last_edt_second, NEW_YORK) == utc(2024, 11, 3, 7)


def test_zones() -> None:
    assert load_zone("") is UTC and load_zone("UTC") is UTC
    assert load_zone("Europe/Berlin") == ZoneInfo("Europe/Berlin")
    for bad in ("Mars/Olympus", "../etc/passwd", "/etc/localtime", "not a zone"):
        with pytest.raises(ValueError, match="unknown time zone"):
            load_zone(bad)


# --- properties -----------------------------------------------------------------------

afters = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@given(st.integers(0, 59), st.none() | st.integers(0, 23), afters)
def test_in_utc_the_first_matching_minute_after(
    minute: int, hour: int | None, after: datetime
) -> None:
    spec = parse_cron(f"{minute} {'*' if hour is None else hour} * * *")
    expected = after.replace(second=0, microsecond=0) + MINUTE
    while not (expected.minute == minute and hour in (None, expected.hour)):
        expected += MINUTE
    assert next_cron_time(spec, after, UTC) == expected


DST_ZONES = (
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # a 30-minute change
    "America/Santiago",
    "Asia/Kolkata",  # none at all
)
dst_afters = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


def first_daily_launch(hour: int, minute: int, after: datetime, zone: ZoneInfo) -> datetime:
    """The daily rule stated day by day: the wall time on each local date, read with
    fold=0 (first occurrence; a skipped time shifted by the gap), first one after."""
    day: date = after.astimezone(zone).date() - timedelta(days=1)
    while True:
        wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone, fold=0)
        instant = wall.astimezone(UTC)
        if instant > after:
            return instant
        day += timedelta(days=1)


@given(st.sampled_from(DST_ZONES), st.integers(0, 23), st.integers(0, 59), dst_afters)
def test_daily_specs_in_zones_with_daylight_saving(
    zone_name: str, hour: int, minute: int, after: datetime
) -> None:
    zone = ZoneInfo(zone_name)
    nxt = next_cron_time(parse_cron(f"{minute} {hour} * * *"), after, zone)
    assert nxt == first_daily_launch(hour, minute, after, zone)


@given(st.sampled_from(DST_ZONES), st.sampled_from(("*/20 * * * *", "0 */3 * * *")), dst_afters)
def test_launches_only_move_forward_and_each_wall_time_fires_once(
    zone_name: str, spec: str, after: datetime
) -> None:
    zone = ZoneInfo(zone_name)
    found = launches(spec, after, zone, 12)
    assert all(a < b for a, b in zip([after, *found], found, strict=False))
    walls = [t.astimezone(zone).replace(tzinfo=None) for t in found]
    assert len(set(walls)) == len(walls)
