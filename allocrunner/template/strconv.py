"""Go's strconv parsing rules for the `parseBool`, `parseInt`, `parseUint` and
`parseFloat` template functions, with Go's error wording.

Threads: none. Locks: none. Owner: used by `functions` and `sprig`.
"""

from __future__ import annotations

import re

_INT = re.compile(r"[+-]?[0-9]+")
_UINT = re.compile(r"[0-9]+")
_DIGITS = r"[0-9](?:_?[0-9])*"
_FLOAT = re.compile(rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?")
_SPECIAL = re.compile(r"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_HEX_FLOAT = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _syntax(func: str, text: str) -> ValueError:
    return ValueError(f'strconv.{func}: parsing "{text}": invalid syntax')


def parse_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise _syntax("ParseBool", text)


def parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise _syntax("ParseInt", text)
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f'strconv.ParseInt: parsing "{text}": value out of range')
    return value


def parse_uint(text: str) -> int:
    if not _UINT.fullmatch(text):
        raise _syntax("ParseUint", text)
    value = int(text)
    if value >= 2**64:
        raise ValueError(f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


def parse_float(text: str) -> float:
    if _FLOAT.fullmatch(text) or _SPECIAL.fullmatch(text):
        value = float(text.replace("_", ""))
    elif _HEX_FLOAT.fullmatch(text):
        sign = -1.0 if text.startswith("-") else 1.0
        value = sign * float.fromhex(text.lstrip("+-"))
    else:
        raise _syntax("ParseFloat", text)
    if value in (float("inf"), float("-inf")) and not _SPECIAL.fullmatch(text):
        raise ValueError(f'strconv.ParseFloat: parsing "{text}": value out of range')
    return value
