"""Go's reference-time layouts (`2006-01-02T15:04:05Z07:00`) applied to Python datetimes.

`format_time(moment, layout)` renders a datetime with a Go layout string: years `2006`
`06`, months `01` `1` `Jan` `January`, days `02` `2` `_2` `002`, weekdays `Mon`
`Monday`, hours `15` `03` `3`, minutes `04` `4`, seconds `05` `5`, `PM` `pm`,
fractions `.000` `.999` (also with `,`), zones `MST` `Z07:00` `-07:00` `-0700` `Z0700`
`-07` `Z07` `-07:00:00` `Z07:00:00`.

Threads: none. Locks: none. Owner: used by `functions.timestamp`.
"""

from __future__ import annotations

import re
from datetime import datetime

RFC3339 = "2006-01-02T15:04:05Z07:00"

_TOKENS = re.compile(
    r"January|Jan|Monday|Mon|MST|2006|__2|002|_2|01|02|03|04|05|06|15|"
    r"Z07:00:00|-07:00:00|Z07:00|-07:00|Z0700|-0700|Z07|-07|"
    r"PM|pm|[.,](?:0+|9+)(?![0-9])|1|2|3|4|5"
)


def _zone(moment: datetime, token: str) -> str:
    offset = moment.utcoffset()
    seconds = int(offset.total_seconds()) if offset is not None else 0
    if token.startswith("Z") and seconds == 0:
        return "Z"
    sign = "-" if seconds < 0 else "+"
    seconds = abs(seconds)
    hh, mm, ss = seconds // 3600, seconds // 60 % 60, seconds % 60
    body = token.lstrip("Z-")
    if body == "07":
        return f"{sign}{hh:02d}"
    if body == "0700":
        return f"{sign}{hh:02d}{mm:02d}"
    if body == "07:00":
        return f"{sign}{hh:02d}:{mm:02d}"
    return f"{sign}{hh:02d}:{mm:02d}:{ss:02d}"


def _fraction(moment: datetime, token: str) -> str:
    digits = f"{moment.microsecond:06d}000"[: len(token) - 1]
    if token[1] == "9":
        digits = digits.rstrip("0")
        return token[0] + digits if digits else ""
    return token[0] + digits


def _token(moment: datetime, token: str) -> str:
    hour12 = moment.hour % 12 or 12
    simple = {
        "January": moment.strftime("%B"),
        "Jan": moment.strftime("%b"),
        "Monday": moment.strftime("%A"),
        "Mon": moment.strftime("%a"),
        "2006": f"{moment.year:04d}",
        "06": f"{moment.year % 100:02d}",
        "01": f"{moment.month:02d}",
        "1": str(moment.month),
        "02": f"{moment.day:02d}",
        "2": str(moment.day),
        "_2": f"{moment.day:2d}",
        "002": f"{moment.timetuple().tm_yday:03d}",
        "__2": f"{moment.timetuple().tm_yday:3d}",
        "15": f"{moment.hour:02d}",
        "03": f"{hour12:02d}",
        "3": str(hour12),
        "04": f"{moment.minute:02d}",
        "4": str(moment.minute),
        "05": f"{moment.second:02d}",
        "5": str(moment.second),
        "PM": "PM" if moment.hour >= 12 else "AM",
        "pm": "pm" if moment.hour >= 12 else "am",
    }
    if token in simple:
        return simple[token]
    if token == "MST":
        name = moment.tzname()
        return name if name else _zone(moment, "-0700")
    if token[0] in ".,":
        return _fraction(moment, token)
    return _zone(moment, token)


def format_time(moment: datetime, layout: str) -> str:
    """Format a datetime with a Go time layout."""
    return _TOKENS.sub(lambda m: _token(moment, m.group(0)), layout)
