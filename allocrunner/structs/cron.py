"""Nomad's cron expressions and their next match in a time zone, DST included.

Nomad parses periodic specs with hashicorp/cronexpr, whose field layout differs from
classic cron: five fields are `minute hour day-of-month month day-of-week`; a sixth
field is a *year* (1970-2099); with seven fields the first is *seconds* and the last
the year. `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly` and the like are
accepted too. The day fields follow croniter (which does the matching): names, `L`,
`W` and `#` as it supports them; the year field is matched here because croniter's
own year handling is not reliable.

Matching is on wall-clock time in the config's zone, each wall-clock time at most
once: a time that does not exist (the hour skipped when clocks spring forward) is
moved forward by the gap, as Go's `time.Date` does, and a time that occurs twice (the
hour repeated when clocks fall back) fires at its first occurrence only.

No threads, no locks; pure functions (`parse_cron` keeps a functools LRU cache,
which is safe from any thread), called by the codec (to check a periodic block) and by
the agent's periodic launcher.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import croniter
from croniter.croniter import CroniterError

__all__ = ["CronSpec", "load_zone", "next_cron_time", "parse_cron"]

YEAR_MIN = 1970
YEAR_MAX = 2099

# How many matching wall-clock times may be passed over (they fell in a repeated hour
# and were taken already) before giving up: an hour of a per-second spec fits.
_MAX_SKIPPED = 8000


@attrs.frozen
class CronSpec:
    """Immutable. A parsed cron spec: croniter's expression (with seconds) and the
    years it may match."""

    text: str
    expression: str
    years: tuple[int, ...]


def _parse_year_item(item: str) -> range:
    base, _, step_text = item.partition("/")
    step = 1
    if step_text:
        if not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f"invalid year step {step_text!r}")
        step = int(step_text)
    if base == "*":
        lo, hi = YEAR_MIN, YEAR_MAX
    elif "-" in base:
        lo_text, _, hi_text = base.partition("-")
        if not (lo_text.isdigit() and hi_text.isdigit()):
            raise ValueError(f"invalid year range {base!r}")
        lo, hi = int(lo_text), int(hi_text)
    elif base.isdigit():
        lo = int(base)
        hi = YEAR_MAX if step_text else lo
    else:
        raise ValueError(f"invalid year {base!r}")
    if not YEAR_MIN <= lo <= hi <= YEAR_MAX:
        raise ValueError(f"year {base!r} out of range {YEAR_MIN}-{YEAR_MAX}")
    return range(lo, hi + 1, step)


def _parse_years(field: str) -> tuple[int, ...]:
    years: set[int] = set()
    for item in field.split(","):
        years.update(_parse_year_item(item))
    return tuple(sorted(years))


@functools.lru_cache(maxsize=256)
def parse_cron(text: str) -> CronSpec:
    """Parse a Nomad cron spec; ValueError says what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty cron spec")
    fields = text.split()
    years: tuple[int, ...] = tuple(range(YEAR_MIN, YEAR_MAX + 1))
    if len(fields) == 1 and fields[0].startswith("@"):
        expression = fields[0].lower()
    elif len(fields) < 5:
        raise ValueError(f"cron spec {text!r} has {len(fields)} fields, needs 5 to 7")
    else:
        fields = fields[:7]  # cronexpr ignores fields beyond the seventh
        seconds = "0"
        if len(fields) == 7:
            seconds, fields = fields[0], fields[1:]
        if len(fields) == 6:
            years = _parse_years(fields[5])
            fields = fields[:5]
        expression = " ".join([*fields, seconds])
    if not croniter.is_valid(expression):
        raise ValueError(f"invalid cron spec {text!r}")
    return CronSpec(text=text, expression=expression, years=years)


def load_zone(name: str) -> tzinfo:
    """The IANA time zone `name` ("" is UTC); ValueError for an unknown zone."""
    if name in ("", "UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {name!r}") from err


def _wall_times(spec: CronSpec, start: datetime) -> Iterator[datetime]:
    """Matching naive wall-clock times strictly after naive `start`, in order."""
    cursor = start
    while True:
        try:
            it = croniter(spec.expression, cursor)
            while True:
                candidate: datetime = it.get_next(datetime)
                if candidate.year in spec.years:
                    yield candidate
                    continue
                later = [y for y in spec.years if y > candidate.year]
                if not later:
                    return
                cursor = datetime(later[0], 1, 1) - timedelta(seconds=1)
                break
        except (CroniterError, OverflowError, ValueError):
            return  # no matching date at all (`0 0 30 2 *`) or past datetime's range


def next_cron_time(spec: CronSpec, after: datetime, zone: tzinfo) -> datetime | None:
    """The first instant after aware `after` whose wall-clock time in `zone` matches
    `spec`, as an aware UTC datetime; None when there is none."""
    if after.tzinfo is None:
        raise ValueError("after must be a timezone-aware datetime")
    after_utc = after.astimezone(UTC)
    wall = after_utc.astimezone(zone).replace(tzinfo=None, microsecond=0)
    for skipped, candidate in enumerate(_wall_times(spec, wall)):
        # fold=0: a repeated time means its first occurrence, a skipped one is moved
        # forward by the gap.
        instant = candidate.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if instant > after_utc:
            return instant
        if skipped >= _MAX_SKIPPED:
            return None
    return None
