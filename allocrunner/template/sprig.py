"""A hermetic subset of the sprig function library, exposed as `sprig_<name>` the way
consul-template exposes sprig to Nomad templates.

Covers strings (upper lower title trim trimAll trimPrefix trimSuffix repeat substr
nospace trunc contains hasPrefix hasSuffix quote squote cat indent nindent replace
plural), conversions (toString atoi int int64 float64 toStrings), defaults (default
empty coalesce ternary fail), lists (list first last rest initial append push prepend
concat reverse uniq without has compact sortAlpha join splitList split until
untilStep), dicts (dict get set unset hasKey keys values pick omit), math (add add1
sub mul div mod max min floor ceil round), encodings (b64enc b64dec b32enc b32dec
sha1sum sha256sum adler32sum toJson toPrettyJson toRawJson fromJson), regex
(regexMatch regexFind regexFindAll regexReplaceAll regexReplaceAllLiteral regexSplit
regexQuoteMeta) and reflection (kindOf kindIs typeOf); `sprig_extras` adds the rest.
Sprig's lenient conversions apply: a bad number becomes 0 and a bad base64 string
decodes to the error text.

Threads: none. Locks: none. Owner: `SPRIG` is read by the package API's function table.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from allocrunner.template import gojson, goregex
from allocrunner.template.functions import go_lower, go_upper
from allocrunner.template.gocast import strval, to_float, to_int
from allocrunner.template.gofmt import go_quote, sprintf
from allocrunner.template.registry import FuncError, GoFunc
from allocrunner.template.sprig_extras import EXTRA_FUNCS, UNSUPPORTED_SPRIG, contains_deep
from allocrunner.template.values import is_list, truth, type_name


def _list(value: Any) -> list[Any]:
    if is_list(value):
        return list(value)
    if value is None:
        return []
    raise FuncError(f"Cannot find first on type {type_name(value)}")


def empty(value: Any) -> bool:
    return not truth(value)


def _default(default: Any, *given: Any) -> Any:
    return default if not given or empty(given[0]) else given[0]


def _coalesce(*values: Any) -> Any:
    return next((v for v in values if not empty(v)), None)


def _substr(start: int, end: int, text: str) -> str:
    if start < 0:
        return text[:end]
    if end < 0 or end > len(text):
        return text[start:]
    return text[start:end]


def _trunc(count: int, text: str) -> str:
    if count >= 0 and len(text) > count:
        return text[:count]
    if count < 0 and len(text) + count > 0:
        return text[len(text) + count :]
    return text


def _indent(spaces: int, text: str) -> str:
    pad = " " * spaces
    return pad + text.replace("\n", "\n" + pad)


def _quote(*values: Any) -> str:
    return " ".join(go_quote(strval(v)) for v in values if v is not None)


def _squote(*values: Any) -> str:
    return " ".join(f"'{strval(v)}'" for v in values if v is not None)


def _cat(*values: Any) -> str:
    kept = [v for v in values if v is not None]
    return sprintf(" ".join(["%v"] * len(kept)), *kept)


def _title(text: str) -> str:
    return re.sub(r"(^|(?<=\s))(\w)", lambda m: m.group(1) + m.group(2).upper(), text)


def _dict(*pairs: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for i in range(0, len(pairs), 2):
        result[strval(pairs[i])] = pairs[i + 1] if i + 1 < len(pairs) else ""
    return result


def _set(mapping: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    mapping[key] = value
    return mapping


def _unset(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    mapping.pop(key, None)
    return mapping


def _keys(*maps: Mapping[str, Any]) -> list[str]:
    return sorted({k for m in maps for k in m})


def _uniq(items: Any) -> list[Any]:
    out: list[Any] = []
    for item in _list(items):
        if not contains_deep(out, item):
            out.append(item)
    return out


def _until_step(start: int, stop: int, step: int) -> list[int]:
    if step == 0 or (step > 0 and start >= stop) or (step < 0 and start <= stop):
        return []
    return list(range(start, stop, step))


def _split(sep: str, text: str) -> dict[str, str]:
    parts = list(text) if sep == "" else text.split(sep)
    return {f"_{i}": part for i, part in enumerate(parts)}


def _div(a: Any, b: Any) -> int:
    x, y = to_int(a), to_int(b)
    if y == 0:
        raise FuncError("runtime error: integer divide by zero")
    quotient = abs(x) // abs(y)
    return quotient if (x < 0) == (y < 0) else -quotient


def _mod(a: Any, b: Any) -> int:
    return to_int(a) - to_int(b) * _div(a, b)


def _round(value: Any, places: int, *half: Any) -> float:
    threshold = to_float(half[0]) if half else 0.5
    pow10 = 10 ** to_int(places)
    digit = pow10 * to_float(value)
    frac, _ = math.modf(digit)
    rounded = math.ceil(digit) if frac >= threshold else math.floor(digit)
    return rounded / pow10


def _b64dec(text: str) -> str:
    try:
        return base64.b64decode(text.encode(), validate=True).decode(errors="replace")
    except (binascii.Error, ValueError) as err:
        return str(err)


def _b32dec(text: str) -> str:
    try:
        return base64.b32decode(text.encode()).decode(errors="replace")
    except (binascii.Error, ValueError) as err:
        return str(err)


def _to_json(value: Any, indent: str = "", escape_html: bool = True) -> str:
    try:
        return gojson.encode(value, indent=indent, escape_html=escape_html)
    except gojson.JSONError:
        return ""


def _from_json(text: str) -> Any:
    try:
        return gojson.decode(text)
    except ValueError:
        return {}


def _regex_find_all(pattern: str, text: str, limit: int) -> list[str]:
    found = [m.group(0) for m in goregex.compile_go(pattern).finditer(text)]
    return found if limit < 0 else found[:limit]


def _regex_split(pattern: str, text: str, limit: int) -> list[str]:
    if limit == 0:
        return []
    return goregex.compile_go(pattern).split(text, maxsplit=max(limit - 1, 0))


def _regex_find(pattern: str, text: str) -> str:
    match = goregex.compile_go(pattern).search(text)
    return match.group(0) if match else ""


def kind_of(value: Any) -> str:
    if value is None:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, str):
        return "string"
    if is_list(value):
        return "slice"
    if isinstance(value, Mapping):
        return "map"
    return "struct"


def _fail(message: str) -> str:
    raise FuncError(message)


_FUNCS: tuple[GoFunc, ...] = (
    GoFunc("upper", lambda s: go_upper(strval(s)), ("any",)),
    GoFunc("lower", lambda s: go_lower(strval(s)), ("any",)),
    GoFunc("title", lambda s: _title(strval(s)), ("any",)),
    GoFunc("trim", lambda s: strval(s).strip(), ("any",)),
    GoFunc("trimAll", lambda c, s: strval(s).strip(c) if c else strval(s), ("string", "any")),
    GoFunc("trimPrefix", lambda p, s: strval(s).removeprefix(p), ("string", "any")),
    GoFunc("trimSuffix", lambda p, s: strval(s).removesuffix(p), ("string", "any")),
    GoFunc("repeat", lambda n, s: strval(s) * max(n, 0), ("int", "any")),
    GoFunc("substr", _substr, ("int", "int", "string")),
    GoFunc("nospace", lambda s: re.sub(r"\s+", "", strval(s)), ("any",)),
    GoFunc("trunc", _trunc, ("int", "string")),
    GoFunc("contains", lambda sub, s: sub in s, ("string", "string")),
    GoFunc("hasPrefix", lambda p, s: s.startswith(p), ("string", "string")),
    GoFunc("hasSuffix", lambda p, s: s.endswith(p), ("string", "string")),
    GoFunc("quote", _quote, (), "any"),
    GoFunc("squote", _squote, (), "any"),
    GoFunc("cat", _cat, (), "any"),
    GoFunc("indent", _indent, ("int", "string")),
    GoFunc("nindent", lambda n, s: "\n" + _indent(n, s), ("int", "string")),
    GoFunc("replace", lambda old, new, s: s.replace(old, new), ("string", "string", "string")),
    GoFunc("plural", lambda one, many, n: one if n == 1 else many, ("string", "string", "int")),
    GoFunc("toString", strval, ("any",)),
    GoFunc("atoi", lambda s: to_int(s) if re.fullmatch(r"[+-]?\d+", s) else 0, ("string",)),
    GoFunc("int", to_int, ("any",)),
    GoFunc("int64", to_int, ("any",)),
    GoFunc("float64", to_float, ("any",)),
    GoFunc("toStrings", lambda v: [strval(x) for x in _list(v)], ("any",)),
    GoFunc("default", _default, ("any",), "any"),
    GoFunc("empty", empty, ("any",)),
    GoFunc("coalesce", _coalesce, (), "any"),
    GoFunc("ternary", lambda t, f, c: t if c else f, ("any", "any", "bool")),
    GoFunc("fail", _fail, ("string",)),
    GoFunc("list", lambda *v: list(v), (), "any"),
    GoFunc("first", lambda v: (_list(v) or [None])[0], ("any",)),
    GoFunc("last", lambda v: (_list(v) or [None])[-1], ("any",)),
    GoFunc("rest", lambda v: _list(v)[1:], ("any",)),
    GoFunc("initial", lambda v: _list(v)[:-1], ("any",)),
    GoFunc("append", lambda v, x: [*_list(v), x], ("any", "any")),
    GoFunc("push", lambda v, x: [*_list(v), x], ("any", "any")),
    GoFunc("prepend", lambda v, x: [x, *_list(v)], ("any", "any")),
    GoFunc("concat", lambda *lists: [x for item in lists for x in _list(item)], (), "any"),
    GoFunc("reverse", lambda v: _list(v)[::-1], ("any",)),
    GoFunc("uniq", _uniq, ("any",)),
    GoFunc(
        "without",
        lambda v, *drop: [x for x in _list(v) if not contains_deep(drop, x)],
        ("any",),
        "any",
    ),
    GoFunc("has", lambda needle, v: contains_deep(_list(v), needle), ("any", "any")),
    GoFunc("compact", lambda v: [x for x in _list(v) if not empty(x)], ("any",)),
    GoFunc("sortAlpha", lambda v: sorted(strval(x) for x in _list(v)), ("any",)),
    GoFunc(
        "join",
        lambda sep, v: sep.join(strval(x) for x in _list(v) if x is not None),
        ("string", "any"),
    ),
    GoFunc(
        "splitList", lambda sep, s: list(s) if sep == "" else s.split(sep), ("string", "string")
    ),
    GoFunc("split", _split, ("string", "string")),
    GoFunc("until", lambda n: _until_step(0, n, 1 if n >= 0 else -1), ("int",)),
    GoFunc("untilStep", _until_step, ("int", "int", "int")),
    GoFunc("dict", _dict, (), "any"),
    GoFunc("get", lambda d, k: d.get(k, ""), ("map", "string")),
    GoFunc("set", _set, ("map", "string", "any")),
    GoFunc("unset", _unset, ("map", "string")),
    GoFunc("hasKey", lambda d, k: k in d, ("map", "string")),
    GoFunc("keys", _keys, ("map",), "map"),
    GoFunc("values", lambda d: list(d.values()), ("map",)),
    GoFunc("pick", lambda d, *ks: {k: d[k] for k in ks if k in d}, ("map",), "string"),
    GoFunc("omit", lambda d, *ks: {k: v for k, v in d.items() if k not in ks}, ("map",), "string"),
    GoFunc("add", lambda *v: sum(to_int(x) for x in v), (), "any"),
    GoFunc("add1", lambda v: to_int(v) + 1, ("any",)),
    GoFunc("sub", lambda a, b: to_int(a) - to_int(b), ("any", "any")),
    GoFunc("mul", lambda a, *v: math.prod([to_int(a), *(to_int(x) for x in v)]), ("any",), "any"),
    GoFunc("div", _div, ("any", "any")),
    GoFunc("mod", _mod, ("any", "any")),
    GoFunc("max", lambda a, *v: max([to_int(a), *(to_int(x) for x in v)]), ("any",), "any"),
    GoFunc("min", lambda a, *v: min([to_int(a), *(to_int(x) for x in v)]), ("any",), "any"),
    GoFunc("floor", lambda v: float(math.floor(to_float(v))), ("any",)),
    GoFunc("ceil", lambda v: float(math.ceil(to_float(v))), ("any",)),
    GoFunc("round", _round, ("any", "int"), "any"),
    GoFunc("b64enc", lambda s: base64.b64encode(s.encode()).decode(), ("string",)),
    GoFunc("b64dec", _b64dec, ("string",)),
    GoFunc("b32enc", lambda s: base64.b32encode(s.encode()).decode(), ("string",)),
    GoFunc("b32dec", _b32dec, ("string",)),
    GoFunc("sha1sum", lambda s: hashlib.sha1(s.encode()).hexdigest(), ("string",)),
    GoFunc("sha256sum", lambda s: hashlib.sha256(s.encode()).hexdigest(), ("string",)),
    GoFunc("adler32sum", lambda s: str(zlib.adler32(s.encode())), ("string",)),
    GoFunc("toJson", _to_json, ("any",)),
    GoFunc("toPrettyJson", lambda v: _to_json(v, "  "), ("any",)),
    GoFunc("toRawJson", lambda v: _to_json(v, "", False), ("any",)),
    GoFunc("fromJson", _from_json, ("string",)),
    GoFunc(
        "regexMatch", lambda r, s: goregex.compile_go(r).search(s) is not None, ("string", "string")
    ),
    GoFunc("regexFind", _regex_find, ("string", "string")),
    GoFunc("regexFindAll", _regex_find_all, ("string", "string", "int")),
    GoFunc(
        "regexReplaceAll",
        lambda r, s, t: goregex.replace_all(r, t, s),
        ("string", "string", "string"),
    ),
    GoFunc(
        "regexReplaceAllLiteral",
        lambda r, s, t: goregex.compile_go(r).sub(lambda _m: t, s),
        ("string", "string", "string"),
    ),
    GoFunc("regexSplit", _regex_split, ("string", "string", "int")),
    GoFunc("regexQuoteMeta", lambda s: re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", s), ("string",)),
    GoFunc("kindOf", kind_of, ("any",)),
    GoFunc("kindIs", lambda kind, v: kind_of(v) == kind, ("string", "any")),
    GoFunc("typeOf", type_name, ("any",)),
)

_MUST_ALIASES = (
    "first",
    "last",
    "rest",
    "initial",
    "append",
    "push",
    "prepend",
    "reverse",
    "uniq",
    "without",
    "has",
    "compact",
)


def _refused(*_args: Any) -> Any:
    raise FuncError("function is not supported by this client")


def _table() -> dict[str, GoFunc]:
    funcs = {f.name: f for f in (*_FUNCS, *EXTRA_FUNCS)}
    for name in _MUST_ALIASES:
        funcs["must" + name[0].upper() + name[1:]] = funcs[name]
    for name in UNSUPPORTED_SPRIG:
        funcs[name] = GoFunc(name, _refused, (), "any")
    return {"sprig_" + name: replace(f, name="sprig_" + name) for name, f in funcs.items()}


SPRIG: dict[str, GoFunc] = _table()
UNSUPPORTED_SPRIG_FUNCTIONS = frozenset("sprig_" + name for name in UNSUPPORTED_SPRIG)
