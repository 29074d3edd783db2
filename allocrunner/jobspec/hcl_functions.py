"""HCL2 functions over strings, numbers and collections, as cty's stdlib defines them.

`core_functions()` maps each name Nomad v1.6.0's jobspec2 registers (jobspec2/functions.go)
in these families to a Python callable taking evaluated values; `regex` and `regexall`
(cty stdlib, as Terraform has them) are added. Arguments are converted the way cty
converts them to a parameter's type (`upper(5)` is "5"); a wrong argument raises
`FunctionError` (hcl_access), which the evaluator reports with the function's name.
The encoding, filesystem, date, hash and type functions are in hcl_functions_ext.

No threads, no locks; pure functions. Called by the evaluator through the scope that
hcl_body builds.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from allocrunner.jobspec.hcl_access import FunctionError, num
from allocrunner.jobspec.hcl_eval import values_equal
from allocrunner.jobspec.hcl_format import format_value
from allocrunner.jobspec.hcl_types import (
    ConversionError,
    describe_value,
    normalize_number,
    set_of,
    to_string,
)

__all__ = ["MAX_ITEMS", "FunctionError", "core_functions", "num", "seq", "text"]

MAX_ITEMS = 100_000  # range() and setproduct() never build more elements than this
MAX_INDENT = 10_000  # indent() never pads a line with more spaces than this


def text(value: Any) -> str:
    """An argument as a string (numbers and bools convert)."""
    if value is None:
        raise FunctionError("argument must not be null")
    try:
        return to_string(value)
    except ConversionError as err:
        raise FunctionError(str(err)) from None


def whole(value: Any) -> int:
    n = num(value)
    if n != int(n):
        raise FunctionError(f"a whole number is required, got {n}")
    return int(n)


def seq(value: Any) -> list[Any]:
    """An argument as a list (tuple, list or set)."""
    if not isinstance(value, list):
        raise FunctionError(f"list required, got {describe_value(value)}")
    return value


def mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FunctionError(f"map or object required, got {describe_value(value)}")
    return value


# --- strings -------------------------------------------------------------------------


def _title(s: Any) -> str:
    out: list[str] = []
    prev_letter = False
    for ch in text(s):
        is_letter = ch.isalnum() or ch in "_'"
        out.append(ch.upper() if is_letter and not prev_letter else ch)
        prev_letter = is_letter
    return "".join(out)


def _chomp(s: Any) -> str:
    return re.sub(r"(?:\r\n|\r|\n)+\Z", "", text(s))


def _indent(spaces: Any, s: Any) -> str:
    count = whole(spaces)
    if not 0 <= count <= MAX_INDENT:
        raise FunctionError(f"spaces must be between 0 and {MAX_INDENT}")
    pad = " " * count
    return text(s).replace("\n", "\n" + pad)


def _substr(s: Any, offset: Any, length: Any) -> str:
    chars = text(s)
    start, count = whole(offset), whole(length)
    if start < 0:
        start = max(len(chars) + start, 0)
    if start > len(chars):
        raise FunctionError("offset is beyond the end of the string")
    end = len(chars) if count < 0 else min(start + count, len(chars))
    return chars[start:end]


def _split(sep: Any, s: Any) -> list[str]:
    separator = text(sep)
    if separator == "":
        return list(text(s))
    return text(s).split(separator)


def _join(sep: Any, *lists: Any) -> str:
    if not lists:
        raise FunctionError("at least one list is required")
    items: list[str] = []
    for lst in lists:
        for item in seq(lst):
            if item is None:
                raise FunctionError("cannot join a null element")
            items.append(text(item))
    return text(sep).join(items)


def _go_replacement(repl: str) -> str:
    """A Go regexp replacement (`$1`, `${name}`) in Python's syntax."""
    repl = repl.replace("\\", "\\\\")
    repl = re.sub(r"\$\{(\w+)\}", r"\\g<\1>", repl)
    return re.sub(r"\$(\w+)", r"\\g<\1>", repl).replace("$$", "$")


def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern.replace("(?P<", "(?P<"))
    except re.error as err:
        raise FunctionError(f"invalid regular expression {pattern!r}: {err}") from None


def _regex_replace(s: Any, pattern: Any, repl: Any) -> str:
    return _compile(text(pattern)).sub(_go_replacement(text(repl)), text(s))


def _replace(s: Any, old: Any, new: Any) -> str:
    needle = text(old)
    if len(needle) > 1 and needle.startswith("/") and needle.endswith("/"):
        return _regex_replace(s, needle[1:-1], new)
    return text(s).replace(needle, text(new))


def _match_value(match: re.Match[str]) -> Any:
    pattern = match.re
    if pattern.groupindex:
        return {name: match.group(name) for name in pattern.groupindex}
    if pattern.groups:
        return list(match.groups())
    return match.group(0)


def _regex(pattern: Any, s: Any) -> Any:
    match = _compile(text(pattern)).search(text(s))
    if match is None:
        raise FunctionError("pattern did not match any part of the given string")
    return _match_value(match)


def _regexall(pattern: Any, s: Any) -> list[Any]:
    return [_match_value(m) for m in _compile(text(pattern)).finditer(text(s))]


def _trim(s: Any, cutset: Any) -> str:
    return text(s).strip(text(cutset))


def _trimprefix(s: Any, prefix: Any) -> str:
    return text(s).removeprefix(text(prefix))


def _trimsuffix(s: Any, suffix: Any) -> str:
    return text(s).removesuffix(text(suffix))


def _strlen(s: Any) -> int:
    return sum(1 for ch in text(s) if not unicodedata.combining(ch))


def _format(fmt: Any, *args: Any) -> str:
    try:
        return format_value(text(fmt), list(args))
    except ValueError as err:
        raise FunctionError(str(err)) from None


def _formatlist(fmt: Any, *args: Any) -> list[str]:
    lengths = {len(a) for a in args if isinstance(a, list)}
    if len(lengths) > 1:
        raise FunctionError("all list arguments must have the same length")
    if not lengths:
        return [_format(fmt, *args)]
    (n,) = lengths
    return [_format(fmt, *[a[i] if isinstance(a, list) else a for a in args]) for i in range(n)]


# --- numbers -------------------------------------------------------------------------


def _max(*values: Any) -> Any:
    if not values:
        raise FunctionError("at least one number is required")
    return max(num(v) for v in values)


def _min(*values: Any) -> Any:
    if not values:
        raise FunctionError("at least one number is required")
    return min(num(v) for v in values)


def _pow(base: Any, exponent: Any) -> Any:
    try:
        return normalize_number(math.pow(num(base), num(exponent)))
    except (OverflowError, ValueError, ConversionError):
        raise FunctionError("result is not a finite number") from None


def _log(value: Any, base: Any) -> Any:
    try:
        return normalize_number(math.log(num(value), num(base)))
    except (ValueError, ZeroDivisionError, ConversionError):
        raise FunctionError("logarithm is not defined for these arguments") from None


def _signum(value: Any) -> int:
    n = num(value)
    return (n > 0) - (n < 0)


def _parseint(s: Any, base: Any) -> int:
    b = whole(base)
    if not 2 <= b <= 62:
        raise FunctionError("base must be a whole number between 2 and 62")
    digits = text(s)
    sign = -1 if digits.startswith("-") else 1
    body = digits[1:] if digits[:1] in "+-" and digits else digits
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if b <= 36:
        body = body.lower()
    value = 0
    if not body:
        raise FunctionError(f"cannot parse {digits!r} as a base {b} integer")
    for ch in body:
        d = alphabet.find(ch)
        if d < 0 or d >= b:
            raise FunctionError(f"cannot parse {digits!r} as a base {b} integer")
        value = value * b + d
    return sign * value


def _ceil(value: Any) -> int:
    try:
        return math.ceil(num(value))
    except (OverflowError, ValueError):
        raise FunctionError("not a finite number") from None


def _floor(value: Any) -> int:
    try:
        return math.floor(num(value))
    except (OverflowError, ValueError):
        raise FunctionError("not a finite number") from None


# --- collections ---------------------------------------------------------------------


def _length(value: Any) -> int:
    if isinstance(value, str):
        return _strlen(value)
    if isinstance(value, (list, dict)):
        return len(value)
    raise FunctionError(f"collection or string required, got {describe_value(value)}")


def _concat(*lists: Any) -> list[Any]:
    out: list[Any] = []
    for lst in lists:
        out.extend(seq(lst))
    return out


def _contains(lst: Any, value: Any) -> bool:
    return any(values_equal(item, value) for item in seq(lst))


def _distinct(lst: Any) -> list[Any]:
    out: list[Any] = []
    for item in seq(lst):
        if not any(values_equal(item, seen) for seen in out):
            out.append(item)
    return out


def _element(lst: Any, index: Any) -> Any:
    items = seq(lst)
    if not items:
        raise FunctionError("cannot use element function with an empty list")
    i = whole(index)
    if i < 0:
        raise FunctionError("cannot use element function with a negative index")
    return items[i % len(items)]


def _flatten(lst: Any) -> list[Any]:
    out: list[Any] = []
    for item in seq(lst):
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def _keys(value: Any) -> list[str]:
    return sorted(mapping(value))


def _values(value: Any) -> list[Any]:
    m = mapping(value)
    return [m[k] for k in sorted(m)]


def _lookup(m: Any, key: Any, *default: Any) -> Any:
    if len(default) > 1:
        raise FunctionError("lookup takes at most three arguments")
    name = text(key)
    values = mapping(m)
    if name in values:
        return values[name]
    if default:
        return default[0]
    raise FunctionError(f'the given key "{name}" does not exist in the map')


def _merge(*maps: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in maps:
        if m is not None:
            out.update(mapping(m))
    return out


def _range(*args: Any) -> list[Any]:
    if not 1 <= len(args) <= 3:
        raise FunctionError("range takes one to three arguments")
    nums = [num(a) for a in args]
    start, limit = (0, nums[0]) if len(nums) == 1 else (nums[0], nums[1])
    step = nums[2] if len(nums) == 3 else (1 if limit >= start else -1)
    if step == 0:
        raise FunctionError("step must not be zero")
    if (limit - start) / step > MAX_ITEMS:
        raise FunctionError(f"more than {MAX_ITEMS} elements")
    out: list[Any] = []
    value = start
    while (step > 0 and value < limit) or (step < 0 and value > limit):
        out.append(normalize_number(value))
        value = start + step * len(out)
    return out


def _reverse(value: Any) -> Any:
    if isinstance(value, str):
        return value[::-1]
    return list(reversed(seq(value)))


def _slice(lst: Any, start: Any, end: Any) -> list[Any]:
    items = seq(lst)
    a, b = whole(start), whole(end)
    if a < 0 or b > len(items) or a > b:
        raise FunctionError(f"invalid slice [{a}:{b}] of a list of {len(items)} elements")
    return items[a:b]


def _sort(lst: Any) -> list[str]:
    items = seq(lst)
    if any(item is None for item in items):
        raise FunctionError("cannot sort a list with null elements")
    return sorted(text(item) for item in items)


def _zipmap(keys: Any, values: Any) -> dict[str, Any]:
    ks, vs = seq(keys), seq(values)
    if len(ks) != len(vs):
        raise FunctionError("keys and values must have the same length")
    return {text(k): v for k, v in zip(ks, vs, strict=True)}


def _coalesce(*values: Any) -> Any:
    for value in values:
        if value is not None and value != "":
            return value
    raise FunctionError("no non-null, non-empty-string arguments")


def _coalescelist(*lists: Any) -> list[Any]:
    for lst in lists:
        if seq(lst):
            return lst
    raise FunctionError("no non-empty list arguments")


def _compact(lst: Any) -> list[str]:
    return [text(item) for item in seq(lst) if item is not None and item != ""]


def _index(lst: Any, value: Any) -> int:
    for i, item in enumerate(seq(lst)):
        if values_equal(item, value):
            return i
    raise FunctionError("item not found")


def _setunion(*sets: Any) -> list[Any]:
    return set_of([item for s in sets for item in seq(s)])


def _setintersection(first: Any, *rest: Any) -> list[Any]:
    out = set_of(seq(first))
    for other in rest:
        items = seq(other)
        out = [x for x in out if any(values_equal(x, y) for y in items)]
    return out


def _setproduct(*sets: Any) -> list[list[Any]]:
    if len(sets) < 2:
        raise FunctionError("at least two arguments are required")
    out: list[list[Any]] = [[]]
    for s in sets:
        out = [[*prefix, item] for prefix in out for item in seq(s)]
        if len(out) > MAX_ITEMS:
            raise FunctionError(f"more than {MAX_ITEMS} elements")
    return out


def _chunklist(lst: Any, size: Any) -> list[list[Any]]:
    items, n = seq(lst), whole(size)
    if n < 0:
        raise FunctionError("the size argument must be non-negative")
    if n == 0:
        return [items]
    return [items[i : i + n] for i in range(0, len(items), n)]


def core_functions() -> dict[str, Callable[..., Any]]:
    """The string, number and collection functions by name."""
    return {
        "upper": lambda s: text(s).upper(),
        "lower": lambda s: text(s).lower(),
        "title": _title,
        "chomp": _chomp,
        "indent": _indent,
        "strrev": lambda s: text(s)[::-1],
        "strlen": _strlen,
        "substr": _substr,
        "split": _split,
        "join": _join,
        "replace": _replace,
        "regex_replace": _regex_replace,
        "regex": _regex,
        "regexall": _regexall,
        "trim": _trim,
        "trimprefix": _trimprefix,
        "trimsuffix": _trimsuffix,
        "trimspace": lambda s: text(s).strip(),
        "format": _format,
        "formatlist": _formatlist,
        "abs": lambda v: abs(num(v)),
        "ceil": _ceil,
        "floor": _floor,
        "max": _max,
        "min": _min,
        "pow": _pow,
        "log": _log,
        "signum": _signum,
        "parseint": _parseint,
        "length": _length,
        "concat": _concat,
        "contains": _contains,
        "distinct": _distinct,
        "element": _element,
        "flatten": _flatten,
        "keys": _keys,
        "values": _values,
        "lookup": _lookup,
        "merge": _merge,
        "range": _range,
        "reverse": _reverse,
        "slice": _slice,
        "sort": _sort,
        "zipmap": _zipmap,
        "coalesce": _coalesce,
        "coalescelist": _coalescelist,
        "compact": _compact,
        "index": _index,
        "setunion": _setunion,
        "setintersection": _setintersection,
        "setproduct": _setproduct,
        "chunklist": _chunklist,
    }
