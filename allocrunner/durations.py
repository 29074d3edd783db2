"""Go duration strings ("10ms", "1.5s", "1h30m") to seconds and back.

Threads and locks: none (pure functions). Owner: the job codec, the drivers' config
parsing and the CLI call it.
"""

from __future__ import annotations

import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str | int | float) -> float:
    """Seconds from a Go duration string such as ``"1m30s"``; numbers pass through as
    seconds. ValueError (naming the text) for anything else, including negatives."""
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"invalid duration {text!r}: negative")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}: expected a string like '10s'")
    s = text.strip()
    if s == "0":
        return 0.0
    pos = 0
    total = 0.0
    while pos < len(s):
        match = _PART.match(s, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}: expected e.g. '500ms', '1.5s', '2m'")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}: empty")
    return total


def format_duration(seconds: float) -> str:
    """A Go-style duration string for `seconds` (e.g. 90.0 → "1m30s", 0.01 → "10ms")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(ns / 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(ns / 1_000_000)}ms"
    hours, rem = divmod(ns, 3_600 * 10**9)
    minutes, rem = divmod(rem, 60 * 10**9)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{_trim(rem / 1e9)}s"


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"
