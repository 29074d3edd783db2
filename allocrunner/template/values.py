"""Go's value model over Python values, for printing, truth and comparison.

Mapping: None = nil, bool = bool, int = int, float = float64, str = string,
list/tuple = slice, dict = map (printed and ranged in sorted key order), any other
object = a struct whose exported fields are its public attributes.

`format_value` is fmt's `%v` (`[a b]`, `map[k:v]`, `<nil>`, floats as `%g` with the
shortest digits: `1e+06`, `0.1`, `3`); `truth` is text/template's truth rule;
`type_name` gives the Go type name used in error messages.

datetimes print as Go's Time.String does.

Threads: none. Locks: none. Owner: used by `gofmt`, `execute`, `builtins`, `functions`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from allocrunner.template.gotime import format_time


class LoopChannel:
    """What consul-template's `loop` returns: a receive-only channel of int64 values."""

    def __init__(self, start: int, stop: int) -> None:
        self.values = range(start, stop)

    def __repr__(self) -> str:
        return f"LoopChannel({self.values.start}, {self.values.stop})"


def is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def type_name(value: Any) -> str:
    """The Go type name of a value, as Go's error messages print it."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if is_list(value):
        return "[]interface {}"
    if isinstance(value, Mapping):
        return "map[string]interface {}"
    if isinstance(value, LoopChannel):
        return "<-chan int64"
    return type(value).__name__


def truth(value: Any) -> bool:
    """text/template's truth: false, 0, nil and empty strings/slices/maps are false."""
    if value is None:
        return False
    if isinstance(value, bool | int | float):
        return value != 0
    if isinstance(value, str | list | tuple | Mapping):
        return len(value) > 0
    return True


def sorted_keys(mapping: Mapping[Any, Any]) -> list[Any]:
    """Map keys in Go's fmt/range order: numbers numerically, strings bytewise."""

    def key(k: Any) -> tuple[int, Any]:
        if isinstance(k, bool):
            return (0, int(k))
        if isinstance(k, int | float):
            return (1, k)
        if isinstance(k, str):
            return (2, k.encode())
        return (3, str(k))

    return sorted(mapping.keys(), key=key)


def shortest_digits(value: float) -> tuple[str, int]:
    """The shortest round-tripping decimal digits of |value| (no trailing zeros) and the
    position of the decimal point relative to them (value = 0.DIGITS x 10**dp)."""
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    assert isinstance(exponent, int)
    all_digits = "".join(str(d) for d in digit_tuple)
    digits = all_digits.lstrip("0")
    if not digits:
        return "0", 1
    dp = len(digits) + exponent
    return digits.rstrip("0"), dp


def exp_suffix(exp: int, upper: bool = False) -> str:
    sign = "-" if exp < 0 else "+"
    return ("E" if upper else "e") + sign + f"{abs(exp):02d}"


def special_float(value: float) -> str | None:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return None


def format_float_g(value: float, upper: bool = False) -> str:
    """fmt's `%v`/`%g` of a float64 with the shortest precision."""
    special = special_float(value)
    if special is not None:
        return special
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    digits, dp = shortest_digits(value)
    exp = dp - 1
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return sign + mantissa + exp_suffix(exp, upper)
    if dp <= 0:
        return sign + "0." + "0" * (-dp) + digits
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return sign + digits[:dp] + "." + digits[dp:]


def struct_fields(value: Any) -> list[tuple[str, Any]] | None:
    """The exported fields of a struct-like object, or None when it is not one."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    attrs_fields = getattr(type(value), "__attrs_attrs__", None)
    if attrs_fields is not None:
        return [(a.name, getattr(value, a.name)) for a in attrs_fields]
    return None


def format_value(value: Any) -> str:
    """fmt's `%v` of a value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float_g(value)
    if isinstance(value, str):
        return value
    if is_list(value):
        return "[" + " ".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{format_value(k)}:{format_value(value[k])}" for k in sorted_keys(value))
        return "map[" + " ".join(items) + "]"
    if isinstance(value, bytes):
        return "[" + " ".join(str(b) for b in value) + "]"
    if isinstance(value, datetime):
        return format_time(value, "2006-01-02 15:04:05.999999999 -0700 MST")
    fields = struct_fields(value)
    if fields is not None:
        return "{" + " ".join(format_value(v) for _, v in fields) + "}"
    return str(value)
