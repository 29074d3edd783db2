"""Go's fmt printing functions over Python values: Sprint, Sprintln and Sprintf.

Sprintf supports the verbs v s d q f F e E g G x X o b c t U and `%%`, the flags
`+ - # 0 space`, width and precision (also `*`), and reports misuse in band the way
Go does: `%!d(string=x)`, `%!v(MISSING)`, `%!(EXTRA int=1)`, `%!(NOVERB)`.

Threads: none. Locks: none. Owner: used by `builtins` (print, printf, println) and
by template functions that format values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from allocrunner.template.values import (
    format_float_g,
    format_value,
    is_int,
    is_list,
    sorted_keys,
    special_float,
    type_name,
)

_SPEC = re.compile(r"%([-+# 0]*)(\*|\d+)?(?:\.(\*|\d*))?(?:\[(\d+)\])?(.?)", re.DOTALL)


def sprint(*args: Any) -> str:
    """fmt.Sprint: spaces between operands when neither side is a string."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if i > 0 and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out.append(" ")
        out.append(format_value(arg))
    return "".join(out)


def sprintln(*args: Any) -> str:
    """fmt.Sprintln: spaces between all operands and a trailing newline."""
    return " ".join(format_value(a) for a in args) + "\n"


def go_quote(text: str, ascii_only: bool = False) -> str:
    """strconv.Quote (QuoteToASCII when ascii_only): a double-quoted Go string literal."""
    return '"' + "".join(_quote_char(c, '"', ascii_only) for c in text) + '"'


def go_quote_rune(code: int) -> str:
    """strconv.QuoteRune: a single-quoted Go rune literal."""
    if code < 0 or code > 0x10FFFF or 0xD800 <= code < 0xE000:
        code = 0xFFFD
    return "'" + _quote_char(chr(code), "'") + "'"


_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
}


def _quote_char(c: str, quote: str, ascii_only: bool = False) -> str:
    if c == quote:
        return "\\" + c
    if c in _ESCAPES:
        return _ESCAPES[c]
    if (c.isprintable() or c == " ") and not (ascii_only and ord(c) >= 0x80):
        return c
    code = ord(c)
    if code < 0x80:
        return f"\\x{code:02x}"
    if code > 0xFFFF:
        return f"\\U{code:08x}"
    return f"\\u{code:04x}"


class _Spec:
    """One parsed conversion: flags, width, precision and verb."""

    def __init__(self, flags: str, width: int | None, prec: int | None, verb: str) -> None:
        self.minus = "-" in flags
        self.plus = "+" in flags
        self.sharp = "#" in flags
        self.zero = "0" in flags and not self.minus
        self.space = " " in flags
        self.width = width
        self.prec = prec
        self.verb = verb

    def pad(self, body: str, numeric: bool = False) -> str:
        if self.width is None or len(body) >= self.width:
            return body
        fill = self.width - len(body)
        if self.minus:
            return body + " " * fill
        if self.zero:
            sign = body[0] if numeric and body[:1] in ("-", "+", " ") else ""
            return sign + "0" * fill + body[len(sign) :]
        return " " * fill + body


def bad_verb(verb: str, value: Any) -> str:
    if value is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({type_name(value)}={format_value(value)})"


def _sign(spec: _Spec, negative: bool) -> str:
    if negative:
        return "-"
    return "+" if spec.plus else (" " if spec.space else "")


def _format_int(spec: _Spec, value: int) -> str:
    verb = spec.verb
    magnitude = abs(value)
    prefix = ""
    if verb == "d" or verb == "v":
        body = str(magnitude)
    elif verb in "xX":
        body = format(magnitude, verb)
        prefix = ("0" + verb) if spec.sharp else ""
    elif verb == "o":
        body = format(magnitude, "o")
        prefix = "0" if spec.sharp else ""
    elif verb == "b":
        body = format(magnitude, "b")
    elif verb == "c":
        return spec.pad(chr(value) if 0 <= value <= 0x10FFFF else "\ufffd")
    elif verb == "q":
        return spec.pad(go_quote_rune(value))
    elif verb == "U":
        shown = f" '{chr(value)}'" if spec.sharp and 0 <= value <= 0x10FFFF else ""
        return spec.pad(f"U+{value:04X}{shown}")
    else:
        return bad_verb(verb, value)
    if spec.prec is not None:
        body = body.rjust(spec.prec, "0") if spec.prec else ("" if value == 0 else body)
    return spec.pad(_sign(spec, value < 0) + prefix + body, numeric=spec.prec is None)


def _format_float(spec: _Spec, value: float) -> str:
    verb = spec.verb
    special = special_float(value)
    if special is not None:
        return spec.pad(special)
    negative = value < 0 or (value == 0 and str(value).startswith("-"))
    magnitude = abs(value)
    if verb == "v" and spec.prec is not None:
        body = _python_g(magnitude, spec.prec or 1, "g")
    elif verb in ("v", "g", "G") and spec.prec is None:
        body = format_float_g(magnitude, upper=verb == "G")
    elif verb in ("g", "G"):
        body = _python_g(magnitude, spec.prec or 1, verb)
    elif verb in ("e", "E", "f", "F"):
        prec = 6 if spec.prec is None else spec.prec
        body = format(magnitude, f".{prec}{verb.lower() if verb == 'F' else verb}")
    elif verb in ("x", "X") and spec.prec is None:
        body = _hex_float(magnitude, upper=verb == "X")
    else:
        return bad_verb(verb, value)
    return spec.pad(_sign(spec, negative) + body, numeric=True)


def _hex_float(value: float, upper: bool) -> str:
    """Go's %x of a float64: shortest hex mantissa, binary exponent of two digits."""
    mantissa, _, exponent = value.hex().partition("p")
    mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
    exp = int(exponent)
    text = f"{mantissa}p{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return text.upper().replace("0X", "0X") if upper else text


def _python_g(value: float, prec: int, verb: str) -> str:
    return format(value, f".{prec}{verb}")


def _format_string(spec: _Spec, value: str) -> str:
    verb = spec.verb
    if verb in ("s", "v"):
        body = value if spec.prec is None else value[: spec.prec]
        return spec.pad(body)
    if verb == "q":
        text = value if spec.prec is None else value[: spec.prec]
        if spec.sharp and "`" not in text and all(c.isprintable() or c == "\t" for c in text):
            return spec.pad("`" + text + "`")
        return spec.pad(go_quote(text, ascii_only=spec.plus))
    if verb in ("x", "X"):
        data = value.encode()
        sep = " " if spec.space else ""
        prefix = ("0" + verb) if spec.sharp else ""
        hexes = [prefix + format(b, "02" + ("x" if verb == "x" else "X")) for b in data]
        body = sep.join(hexes) if sep else (prefix + "".join(h[len(prefix) :] for h in hexes))
        return spec.pad(body)
    return bad_verb(verb, value)


def _format_container(spec: _Spec, value: Any) -> str:
    if spec.verb not in "vsdxXqfeEgGotb":
        return bad_verb(spec.verb, value)
    if isinstance(value, Mapping):
        parts = [f"{_element(spec, k)}:{_element(spec, value[k])}" for k in sorted_keys(value)]
        return "map[" + " ".join(parts) + "]"
    return "[" + " ".join(_element(spec, v) for v in value) + "]"


def _element(spec: _Spec, value: Any) -> str:
    """A value inside a slice or map: a nil element prints `<nil>` whatever the verb."""
    return "<nil>" if value is None else format_one(spec, value)


def format_one(spec: _Spec, value: Any) -> str:
    """Format one operand under one conversion."""
    verb = spec.verb
    if value is None:
        return spec.pad("<nil>") if verb == "v" else bad_verb(verb, value)
    if isinstance(value, bool):
        return spec.pad("true" if value else "false") if verb in "tv" else bad_verb(verb, value)
    if is_int(value):
        return _format_int(spec, value)
    if isinstance(value, float):
        return _format_float(spec, value)
    if isinstance(value, str):
        return _format_string(spec, value)
    if is_list(value) or isinstance(value, Mapping):
        return _format_container(spec, value)
    if verb in ("v", "s"):
        return spec.pad(format_value(value))
    return bad_verb(verb, value)


def sprintf(fmt: str, *args: Any) -> str:
    """fmt.Sprintf over Python values."""
    out: list[str] = []
    argi = 0
    pos = 0
    while True:
        pct = fmt.find("%", pos)
        if pct < 0:
            out.append(fmt[pos:])
            break
        out.append(fmt[pos:pct])
        match = _SPEC.match(fmt, pct)
        assert match is not None
        flags, width_text, prec_text, arg_index, verb = match.groups()
        pos = match.end()
        if arg_index is not None:
            argi = int(arg_index) - 1
        if verb == "%":
            out.append("%")
            continue
        if verb == "":
            out.append("%!(NOVERB)")
            break
        width, argi = _star(width_text, args, argi)
        prec, argi = _star(prec_text, args, argi)
        if argi >= len(args) or argi < 0:
            out.append(f"%!{verb}(MISSING)")
            continue
        if verb == "T":
            out.append(
                _Spec(flags, width, prec, verb).pad(
                    "<nil>" if args[argi] is None else type_name(args[argi])
                )
            )
            argi += 1
            continue
        out.append(format_one(_Spec(flags, width, prec, verb), args[argi]))
        argi += 1
    if argi < len(args):
        extra = ", ".join(
            "<nil>" if a is None else f"{type_name(a)}={format_value(a)}" for a in args[argi:]
        )
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _star(text: str | None, args: tuple[Any, ...], argi: int) -> tuple[int | None, int]:
    if text is None:
        return None, argi
    if text == "*":
        if argi < len(args) and is_int(args[argi]):
            return args[argi], argi + 1
        return None, argi + 1
    return (int(text) if text else 0), argi
