"""Go literal syntax: number constants and interpreted string/char literals.

`parse_number` follows Go's rules for template number constants (decimal, `0x`, `0o`,
`0b`, leading-zero octal, underscores, floats incl. hex floats) and reports both the
integer and the float reading when each is exact. `unquote_string`/`unquote_char`
decode Go escapes (`\\n`, `\\x41`, `\\101`, `\\u00e9`, `\\U0001F600`, ...).

Threads: none. Locks: none. Owner: used by `parser`.
"""

from __future__ import annotations

import re

_OCTAL_LEGACY = re.compile(r"[+-]?0[0-7_]+")
_DECIMAL_FLOAT = re.compile(r"[+-]?(\d[\d_]*)?(\.[\d_]*)?([eE][+-]?\d[\d_]*)?")
_HEX_FLOAT = re.compile(r"[+-]?0[xX][0-9a-fA-F_]*(\.[0-9a-fA-F_]*)?[pP][+-]?\d+")
_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def _parse_int(text: str) -> int | None:
    try:
        if _OCTAL_LEGACY.fullmatch(text):
            return int(text.replace("_", ""), 8)
        return int(text, 0)
    except ValueError:
        return None


def _parse_float(text: str) -> float | None:
    if _HEX_FLOAT.fullmatch(text):
        sign = -1.0 if text.startswith("-") else 1.0
        return sign * float.fromhex(text.lstrip("+-").replace("_", ""))
    if not _DECIMAL_FLOAT.fullmatch(text) or not any(c.isdigit() for c in text):
        return None
    try:
        return float(text.replace("_", ""))
    except ValueError:
        return None


def _looks_float(text: str) -> bool:
    body = text.lstrip("+-").lower()
    if body.startswith("0x"):
        return "p" in body
    return any(c in body for c in ".e")


def parse_number(text: str) -> tuple[int | None, float | None]:
    """Return (int value, float value) of a Go number constant; ValueError if neither."""
    int_value = _parse_int(text)
    if int_value is not None and not -(2**63) <= int_value < 2**64:
        int_value = None
    float_value = float(int_value) if int_value is not None else _parse_float(text)
    if int_value is None and float_value is not None and not _looks_float(text):
        raise ValueError(f'integer overflow: "{text}"')
    if int_value is None and float_value is None:
        raise ValueError(f'illegal number syntax: "{text}"')
    if (
        int_value is None
        and float_value is not None
        and float_value.is_integer()
        and abs(float_value) < 2**63
    ):
        int_value = int(float_value)
    return int_value, float_value


def _escape(body: str, i: int, quote: str) -> tuple[str, int]:
    """Decode the escape at body[i] == '\\'; return the text and the next index."""
    if i + 1 >= len(body):
        raise ValueError("invalid syntax")
    c = body[i + 1]
    if c in _SIMPLE:
        return _SIMPLE[c], i + 2
    if c == quote:
        return c, i + 2
    widths = {"x": 2, "u": 4, "U": 8}
    if c in widths:
        digits = body[i + 2 : i + 2 + widths[c]]
        if len(digits) != widths[c] or not all(d in "0123456789abcdefABCDEF" for d in digits):
            raise ValueError("invalid syntax")
        code = int(digits, 16)
        if code > 0x10FFFF or (0xD800 <= code < 0xE000 and c != "x"):
            raise ValueError("invalid syntax")
        return chr(code), i + 2 + widths[c]
    if c in "01234567":
        digits = body[i + 1 : i + 4]
        if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
            raise ValueError("invalid syntax")
        return chr(int(digits, 8)), i + 4
    raise ValueError("invalid syntax")


def _decode(body: str, quote: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            text, i = _escape(body, i, quote)
            out.append(text)
            continue
        if c == quote or c == "\n":
            raise ValueError("invalid syntax")
        out.append(c)
        i += 1
    return "".join(out)


def unquote_string(literal: str) -> str:
    """Decode a double-quoted Go string literal (quotes included)."""
    if len(literal) < 2 or literal[0] != '"' or literal[-1] != '"':
        raise ValueError("invalid syntax")
    return _decode(literal[1:-1], '"')


def unquote_char(literal: str) -> str:
    """Decode a single-quoted Go rune literal (quotes included) to one character."""
    if len(literal) < 3 or literal[0] != "'" or literal[-1] != "'":
        raise ValueError(f"malformed character constant: {literal}")
    decoded = _decode(literal[1:-1], "'")
    if len(decoded) != 1:
        raise ValueError(f"malformed character constant: {literal}")
    return decoded
