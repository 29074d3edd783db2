"""JSON the way Go's encoding/json writes it, and decoding the way Go reads into
`interface{}`.

Encoding: map keys sorted, no spaces (or two-space indent for the pretty form), `<`,
`>`, `&`, U+2028 and U+2029 escaped unless HTML escaping is off, control characters as
`\\u00XX`, floats in Go's form (`1`, `1.5`, `1e+21`, `1e-7`), NaN/Inf refused. Decoding:
every number becomes a float64, as Go does for `interface{}` targets.

Threads: none. Locks: none. Owner: used by `functions` and `sprig`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from allocrunner.template.values import is_list, shortest_digits, struct_fields, type_name

_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_HTML = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


class JSONError(ValueError):
    """A value cannot be encoded as JSON."""


def encode_string(text: str, escape_html: bool = True) -> str:
    out = ['"']
    for c in text:
        if c in _SHORT:
            out.append(_SHORT[c])
        elif escape_html and c in _HTML:
            out.append(_HTML[c])
        elif ord(c) < 0x20 or c in "\u2028\u2029":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def encode_float(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        raise JSONError(f"json: unsupported value: {value!r}".replace("nan", "NaN"))
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    digits, dp = shortest_digits(magnitude)
    if magnitude < 1e-6 or magnitude >= 1e21:
        exp = dp - 1
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp)}"
    if dp <= 0:
        return sign + "0." + "0" * (-dp) + digits
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return sign + digits[:dp] + "." + digits[dp:]


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return str(key)
    raise JSONError(f"json: unsupported type: map[{type_name(key)}]interface {{}}")


def encode(value: Any, *, indent: str = "", escape_html: bool = True, level: int = 0) -> str:
    """Encode a value as Go's json.Marshal (or MarshalIndent when indent is given)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, str):
        return encode_string(value, escape_html)
    if isinstance(value, Mapping):
        pairs = sorted((_key(k), v) for k, v in value.items())
        items = [
            encode_string(k, escape_html)
            + (": " if indent else ":")
            + encode(v, indent=indent, escape_html=escape_html, level=level + 1)
            for k, v in pairs
        ]
        return _wrap("{", "}", items, indent, level)
    if is_list(value):
        items = [encode(v, indent=indent, escape_html=escape_html, level=level + 1) for v in value]
        return _wrap("[", "]", items, indent, level)
    fields = struct_fields(value)
    if fields is not None:
        return encode(dict(fields), indent=indent, escape_html=escape_html, level=level)
    raise JSONError(f"json: unsupported type: {type_name(value)}")


def _wrap(open_: str, close: str, items: list[str], indent: str, level: int) -> str:
    if not items:
        return open_ + close
    if not indent:
        return open_ + ",".join(items) + close
    inner = "\n" + indent * (level + 1)
    return open_ + inner + ("," + inner).join(items) + "\n" + indent * level + close


def decode(text: str) -> Any:
    """Decode JSON as Go does into interface{}: numbers become float64 (one out of range
    is an error), errors use encoding/json's wording."""
    try:
        return json.loads(
            text, parse_int=_go_number, parse_float=_go_number, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as err:
        if err.pos >= len(text.rstrip()):
            raise ValueError("unexpected end of JSON input") from None
        raise ValueError(f"invalid character {_quote_char(text[err.pos])} at offset "
                         f"{err.pos + 1} of JSON input") from None


def _go_number(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise JSONError(f"json: cannot unmarshal number {text} into Go value of type float64")
    return value


def _quote_char(c: str) -> str:
    return "'\\''" if c == "'" else f"'{c}'"


def _reject_constant(name: str) -> Any:
    raise JSONError(f"invalid character '{name[0]}' looking for beginning of value")
