"""The `format` verbs of HCL2 (cty's stdlib `format`, modelled on Go's fmt).

`format_value(spec, args)` supports `%%`, `%v`, `%#v` (JSON), `%t`, `%s`, `%q`, `%d`,
`%b`, `%o`, `%x`, `%X`, `%e`, `%E`, `%f`, `%g`, `%G`, flags `+ - # 0` and space, width
and precision (digits or `*`), and `%[n]` argument indexes. Widths are capped so a job
file cannot ask for gigabytes. A bad verb or argument raises ValueError.

No threads, no locks; a pure function. Called by `format` / `formatlist`
(hcl_functions).
"""

from __future__ import annotations

import json
import re
from typing import Any

from allocrunner._locking import confined
from allocrunner.jobspec.hcl_access import num
from allocrunner.jobspec.hcl_types import to_string

__all__ = ["format_value"]

MAX_WIDTH = 10_000
_VERB = re.compile(r"%([-+# 0]*)(?:\[(\d+)\])?(\d+|\*)?(?:\.(\d+|\*)?)?(?:\[(\d+)\])?([a-zA-Z%])")


class _Args:
    """Not thread-safe; owned by one format call. The arguments and the next one."""

    args = confined("format call")
    next = confined("format call")

    def __init__(self, args: list[Any]) -> None:
        self.args = args
        self.next = 0

    def take(self, explicit: str | None) -> Any:
        if explicit is not None:
            self.next = int(explicit) - 1
        if not 0 <= self.next < len(self.args):
            raise ValueError(f"not enough arguments for the format string (need #{self.next + 1})")
        value = self.args[self.next]
        self.next += 1
        return value


def format_value(spec: str, args: list[Any]) -> str:
    """`spec` with each verb replaced by its formatted argument."""
    state = _Args(args)
    out: list[str] = []
    pos = 0
    for match in _VERB.finditer(spec):
        out.append(spec[pos : match.start()])
        pos = match.end()
        flags, index1, width, precision, index2, verb = match.groups()
        if verb == "%":
            out.append("%")
            continue
        w = _star(width, state)
        p = _star(precision, state) if precision is not None else None
        if p is None and "." in match.group(0):
            p = 0
        value = state.take(index2 or index1)
        out.append(_pad(_one(verb, flags, p, value), flags, w))
    if "%" in spec[pos:]:
        raise ValueError(f"unrecognized format verb in {spec[pos:]!r}")
    out.append(spec[pos:])
    if state.next < len(args) and not any(m.group(2) or m.group(5) for m in _VERB.finditer(spec)):
        raise ValueError(f"too many arguments: {len(args) - state.next} not used")
    return "".join(out)


def _star(field: str | None, state: _Args) -> int | None:
    if field is None:
        return None
    value = int(num(state.take(None))) if field == "*" else int(field)
    if value > MAX_WIDTH:
        raise ValueError(f"width or precision {value} is too large")
    return value


def _pad(text: str, flags: str, width: int | None) -> str:
    if width is None or len(text) >= width:
        return text
    if "-" in flags:
        return text.ljust(width)
    if "0" in flags and text[:1] in "+- " and text[1:].replace(".", "").isalnum():
        return text[0] + text[1:].rjust(width - 1, "0")
    if "0" in flags:
        return text.rjust(width, "0")
    return text.rjust(width)


def _sign(flags: str, negative: bool) -> str:
    if negative:
        return "-"
    if "+" in flags:
        return "+"
    return " " if " " in flags else ""


def _one(verb: str, flags: str, precision: int | None, value: Any) -> str:
    if verb == "v":
        if "#" in flags:
            return json.dumps(value, separators=(",", ":"), sort_keys=True)
        if value is None:
            return "null"
        if isinstance(value, (list, dict)):
            return json.dumps(value, separators=(",", ":"), sort_keys=True)
        return to_string(value)
    if verb == "s":
        text = to_string(value)
        return text[:precision] if precision is not None else text
    if verb == "q":
        return json.dumps(to_string(value), ensure_ascii=False)
    if verb == "t":
        if not isinstance(value, bool):
            raise ValueError(f"%t needs a bool, got {value!r}")
        return "true" if value else "false"
    number = num(value)
    if verb in "dboxX":
        if number != int(number):
            raise ValueError(f"%{verb} needs a whole number, got {number}")
        n = int(number)
        body = {"d": "d", "b": "b", "o": "o", "x": "x", "X": "X"}[verb]
        digits = format(abs(n), body)
        if "#" in flags and verb in "oxX":
            digits = {"o": "0", "x": "0x", "X": "0X"}[verb] + digits
        return _sign(flags, n < 0) + digits
    if verb in "eEfFgG":
        p = 6 if precision is None and verb not in "gG" else precision
        spec = f".{p}{verb}" if p is not None else verb.lower() if verb in "gG" else verb
        digits = format(abs(float(number)), spec)
        if verb in "gG" and precision is None:
            digits = repr(abs(float(number))) if number != int(number) else str(abs(int(number)))
        return _sign(flags, number < 0) + digits
    raise ValueError(f"unsupported format verb %{verb}")
