"""Lenient conversions that sprig applies to its arguments (spf13/cast semantics):
`strval` (fmt's %v, strings as is), `to_int` (numbers truncate, strings parse in Go's
base-0 syntax after dropping a `.0` tail, anything else 0) and `to_float`.

Threads: none. Locks: none. Owner: used by `sprig` and `sprig_extras`.
"""

from __future__ import annotations

import math
import re
from typing import Any

from allocrunner.template.literals import parse_number
from allocrunner.template.values import format_value

_ZERO_DECIMAL = re.compile(r"^([+-]?\d+)\.0+$")


def strval(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return format_value(value)


def to_int(value: Any) -> int:
    """cast.ToInt64: numbers truncate, strings parse (else 0), bools are 0/1, nil is 0."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return 0 if math.isnan(value) or math.isinf(value) else int(value)
    if isinstance(value, str):
        text = _ZERO_DECIMAL.sub(r"\1", value)
        try:
            int_value, _ = parse_number(text)
        except ValueError:
            return 0
        return int_value if int_value is not None and not any(c in text for c in ".eEpP") else 0
    return 0


def to_float(value: Any) -> float:
    """cast.ToFloat64: numbers convert, strings parse (else 0), bools are 0/1."""
    if isinstance(value, bool | int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0
