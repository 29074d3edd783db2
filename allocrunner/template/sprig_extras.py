"""The rest of the sprig library as Nomad 1.6 exposes it (`sprig.TxtFuncMap`, prefixed
`sprig_`): paths, case conversions, abbreviations, float math, sequences, `must*`
variants that fail instead of returning a zero value, dates on the render's clock,
`env`/`expandenv` over the task environment (never the agent's), random values, and
the names this client refuses (certificates, encryption, DNS, semver, ...).

Threads: none. Locks: none. Owner: `EXTRA_FUNCS` and `UNSUPPORTED_SPRIG` are read by
`sprig` when it builds the `sprig_` table.
"""

from __future__ import annotations

import math
import posixpath
import re
import secrets
import string
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from allocrunner.template import gojson, goregex
from allocrunner.template.context import RenderContext
from allocrunner.template.gocast import to_float, to_int
from allocrunner.template.gofmt import sprint
from allocrunner.template.gotime import format_time
from allocrunner.template.registry import FuncError, GoFunc
from allocrunner.template.values import is_list, truth, type_name

UNSUPPORTED_SPRIG = frozenset(
    {
        "wrap",
        "wrapWith",
        "shuffle",
        "semver",
        "semverCompare",
        "bcrypt",
        "htpasswd",
        "genPrivateKey",
        "derivePassword",
        "buildCustomCert",
        "genCA",
        "genCAWithKey",
        "genSelfSignedCert",
        "genSelfSignedCertWithKey",
        "genSignedCert",
        "genSignedCertWithKey",
        "encryptAES",
        "decryptAES",
        "getHostByName",
        "urlParse",
        "urlJoin",
        "duration",
        "durationRound",
        "ago",
        "toDate",
        "mustToDate",
        "dateModify",
        "date_modify",
        "mustDateModify",
        "must_date_modify",
        "deepCopy",
        "mustDeepCopy",
        "randBytes",
    }
)


def deep_equal(a: Any, b: Any) -> bool:
    """reflect.DeepEqual over the Go value model: kinds must match (1 is not 1.0)."""
    if is_list(a) and is_list(b):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def contains_deep(items: Any, needle: Any) -> bool:
    return any(deep_equal(item, needle) for item in items)


def go_path_base(path: str) -> str:
    if path == "":
        return "."
    path = path.rstrip("/")
    return "/" if path == "" else path.rsplit("/", 1)[-1]


def go_path_dir(path: str) -> str:
    head = path[: path.rfind("/") + 1]
    return go_path_clean(head)


def go_path_clean(path: str) -> str:
    if path == "":
        return "."
    cleaned = posixpath.normpath(path)
    return (
        "/" if cleaned.startswith("//") and cleaned.strip("/") == "" else cleaned.replace("//", "/")
    )


def go_path_ext(path: str) -> str:
    base = path[path.rfind("/") + 1 :]
    dot = base.rfind(".")
    return "" if dot < 0 else base[dot:]


def abbreviate(text: str, offset: int, width: int) -> str:
    """commons-lang AbbreviateFull, as sprig's abbrev/abbrevboth use it."""
    if len(text) <= width:
        return text
    offset = min(offset, len(text))
    if len(text) - offset < width - 3:
        offset = len(text) - (width - 3)
    if offset <= 4:
        return text[: width - 3] + "..."
    if offset + width - 3 < len(text):
        return "..." + abbreviate(text[offset:], 0, width - 3)
    return "..." + text[len(text) - (width - 3) :]


def _abbrevboth(left: int, right: int, text: str) -> str:
    if right < 4 or (left > 0 and right < 7):
        return text
    return abbreviate(text, left, right)


def _words_map(text: str, change: Any) -> str:
    return re.sub(r"(^|(?<=\s))(\S)", lambda m: m.group(1) + change(m.group(2)), text)


def snake_case(text: str, sep: str = "_") -> str:
    text = re.sub(r"[\s\-_]+", " ", text.strip())
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", text)
    text = re.sub(r"([A-Za-z])([0-9])", r"\1 \2", text)
    return sep.join(text.lower().split())


def camel_case(text: str) -> str:
    """xstrings.ToCamelCase: `some_words` -> `SomeWords`; outer underscores stay and a
    doubled inner one leaves one."""
    core = text.strip("_")
    lead = text[: len(text) - len(text.lstrip("_"))]
    trail = text[len(text.rstrip("_")) :] if core else ""
    words = re.split(r"[_ ]", core)
    return lead + "".join(w[:1].upper() + w[1:] if w else "_" for w in words) + trail


def _seq(*params: int) -> str:
    """sprig's seq: like the shell's, 1 to N, start to end, or start, step, end."""
    values = list(params)
    if not values or len(values) > 3:
        return ""
    if len(values) == 1:
        values.insert(0, 1)
    if len(values) == 2:
        start, end = values
        step = 1 if end >= start else -1
    else:
        start, step, end = values
        if (end > start and step <= 0) or (end < start and step >= 0) or step == 0:
            return str(start) if end == start else ""
    stop = end + (1 if step > 0 else -1)
    return " ".join(str(i) for i in range(start, stop, step))


def _chunk(size: int, items: Any) -> list[list[Any]]:
    seq = _must_list("chunk", items)
    if size <= 0:
        raise FuncError("runtime error: integer divide by zero")
    return [list(seq[i : i + size]) for i in range(0, len(seq), size)]


def _must_list(label: str, value: Any) -> list[Any]:
    if is_list(value):
        return list(value)
    raise FuncError(f"Cannot find {label} on type {type_name(value)}")


def _slice(items: Any, *indexes: Any) -> list[Any]:
    seq = _must_list("slice", items)
    start = int(indexes[0]) if indexes else 0
    stop = int(indexes[1]) if len(indexes) > 1 else len(seq)
    return seq[start:stop]


def _dig(*args: Any) -> Any:
    if len(args) < 3:
        raise FuncError("dig needs at least three arguments")
    current: Any = args[-1]
    for key in args[:-2]:
        if not isinstance(current, Mapping) or key not in current:
            return args[-2]
        current = current[key]
    return current


def _merge(override: bool) -> Any:
    def merge(dst: dict[str, Any], *sources: Mapping[str, Any]) -> dict[str, Any]:
        for src in sources:
            _merge_into(dst, src, override)
        return dst

    return merge


def _merge_into(dst: dict[str, Any], src: Mapping[str, Any], override: bool) -> None:
    for key, value in src.items():
        current = dst.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            _merge_into(current, value, override)
        elif (
            key not in dst
            or (override and value not in (None, "", 0, False))
            or current in (None, "", 0, False)
        ):
            dst[key] = value


def _to_decimal(value: Any) -> int:
    try:
        return int(sprint(value), 8)
    except ValueError:
        return 0


def _moment(ctx: RenderContext, value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, ctx.now.tzinfo or UTC)
    return ctx.now


def _date_in_zone(ctx: RenderContext, layout: str, value: Any, zone: str) -> str:
    try:
        tz = UTC if zone in ("", "UTC") else ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = UTC
    return format_time(_moment(ctx, value).astimezone(tz), layout)


def _expandenv(ctx: RenderContext, text: str) -> str:
    pattern = re.compile(r"\$(\{([^}]*)\}|([A-Za-z0-9_]+))")
    return pattern.sub(lambda m: ctx.env.get(m.group(2) or m.group(3) or "", ""), text)


def _rand(alphabet: str) -> Any:
    return lambda count: "".join(secrets.choice(alphabet) for _ in range(max(count, 0)))


def _must_json(value: Any, indent: str = "", escape_html: bool = True) -> str:
    try:
        return gojson.encode(value, indent=indent, escape_html=escape_html)
    except gojson.JSONError as err:
        raise FuncError(str(err)) from None


def _must_from_json(text: str) -> Any:
    try:
        return gojson.decode(text)
    except ValueError as err:
        raise FuncError(str(err)) from None


def _regex_find_all(pattern: str, text: str, limit: int) -> list[str]:
    found = [m.group(0) for m in goregex.compile_go(pattern).finditer(text)]
    return found if limit < 0 else found[:limit]


EXTRA_FUNCS: tuple[GoFunc, ...] = (
    GoFunc("hello", lambda: "Hello!"),
    GoFunc("trimall", lambda c, s: s.strip(c) if c else s, ("string", "string")),
    GoFunc("untitle", lambda s: _words_map(s, str.lower), ("string",)),
    GoFunc("initials", lambda s: "".join(w[0] for w in s.split()), ("string",)),
    GoFunc("swapcase", str.swapcase, ("string",)),
    GoFunc("snakecase", snake_case, ("string",)),
    GoFunc("kebabcase", lambda s: snake_case(s, "-"), ("string",)),
    GoFunc("camelcase", camel_case, ("string",)),
    GoFunc("abbrev", lambda w, s: s if w < 4 else abbreviate(s, 0, w), ("int", "string")),
    GoFunc("abbrevboth", _abbrevboth, ("int", "int", "string")),
    GoFunc(
        "splitn",
        lambda sep, n, s: {f"_{i}": p for i, p in enumerate(s.split(sep, n - 1) if n > 0 else [])},
        ("string", "int", "string"),
    ),
    GoFunc("seq", _seq, (), "int"),
    GoFunc("toDecimal", _to_decimal, ("any",)),
    GoFunc("tuple", lambda *v: list(v), (), "any"),
    GoFunc("all", lambda *v: all(truth(x) for x in v), (), "any"),
    GoFunc("any", lambda *v: any(truth(x) for x in v), (), "any"),
    GoFunc("deepEqual", deep_equal, ("any", "any")),
    GoFunc("pluck", lambda k, *ds: [d[k] for d in ds if k in d], ("string",), "map"),
    GoFunc("dig", _dig, (), "any"),
    GoFunc("chunk", _chunk, ("int", "any")),
    GoFunc("mustChunk", _chunk, ("int", "any")),
    GoFunc("slice", _slice, ("any",), "any"),
    GoFunc("mustSlice", _slice, ("any",), "any"),
    GoFunc("merge", _merge(False), ("map",), "map"),
    GoFunc("mustMerge", _merge(False), ("map",), "map"),
    GoFunc("mergeOverwrite", _merge(True), ("map",), "map"),
    GoFunc("mustMergeOverwrite", _merge(True), ("map",), "map"),
    GoFunc("typeIs", lambda t, v: t == type_name(v), ("string", "any")),
    GoFunc("typeIsLike", lambda t, v: type_name(v) in (t, "*" + t), ("string", "any")),
    GoFunc("base", go_path_base, ("string",)),
    GoFunc("dir", go_path_dir, ("string",)),
    GoFunc("clean", go_path_clean, ("string",)),
    GoFunc("ext", go_path_ext, ("string",)),
    GoFunc("isAbs", lambda p: p.startswith("/"), ("string",)),
    GoFunc("osBase", go_path_base, ("string",)),
    GoFunc("osDir", go_path_dir, ("string",)),
    GoFunc("osClean", go_path_clean, ("string",)),
    GoFunc("osExt", go_path_ext, ("string",)),
    GoFunc("osIsAbs", lambda p: p.startswith("/"), ("string",)),
    GoFunc("add1f", lambda v: to_float(v) + 1.0, ("any",)),
    GoFunc("addf", lambda *v: math.fsum(to_float(x) for x in v), (), "any"),
    GoFunc("subf", lambda a, *v: to_float(a) - math.fsum(to_float(x) for x in v), ("any",), "any"),
    GoFunc(
        "mulf", lambda a, *v: math.prod([to_float(a), *(to_float(x) for x in v)]), ("any",), "any"
    ),
    GoFunc("divf", lambda a, *v: _divf(to_float(a), [to_float(x) for x in v]), ("any",), "any"),
    GoFunc("maxf", lambda a, *v: max([to_float(a), *(to_float(x) for x in v)]), ("any",), "any"),
    GoFunc("minf", lambda a, *v: min([to_float(a), *(to_float(x) for x in v)]), ("any",), "any"),
    GoFunc("biggest", lambda a, *v: max([to_int(a), *(to_int(x) for x in v)]), ("any",), "any"),
    GoFunc("mustToJson", _must_json, ("any",)),
    GoFunc("mustToPrettyJson", lambda v: _must_json(v, "  "), ("any",)),
    GoFunc("mustToRawJson", lambda v: _must_json(v, "", False), ("any",)),
    GoFunc("mustFromJson", _must_from_json, ("string",)),
    GoFunc(
        "mustRegexMatch",
        lambda r, s: goregex.compile_go(r).search(s) is not None,
        ("string", "string"),
    ),
    GoFunc(
        "mustRegexFind",
        lambda r, s: (lambda m: m.group(0) if m else "")(goregex.compile_go(r).search(s)),
        ("string", "string"),
    ),
    GoFunc("mustRegexFindAll", _regex_find_all, ("string", "string", "int")),
    GoFunc(
        "mustRegexReplaceAll",
        lambda r, s, t: goregex.replace_all(r, t, s),
        ("string", "string", "string"),
    ),
    GoFunc(
        "mustRegexReplaceAllLiteral",
        lambda r, s, t: goregex.compile_go(r).sub(lambda _m: t, s),
        ("string", "string", "string"),
    ),
    GoFunc(
        "mustRegexSplit",
        lambda r, s, n: [] if n == 0 else goregex.compile_go(r).split(s, maxsplit=max(n - 1, 0)),
        ("string", "string", "int"),
    ),
    GoFunc("env", lambda ctx, name: ctx.env.get(name, ""), ("string",), contextual=True),
    GoFunc("expandenv", _expandenv, ("string",), contextual=True),
    GoFunc("now", lambda ctx: ctx.now, (), contextual=True),
    GoFunc(
        "date",
        lambda ctx, f, v: format_time(_moment(ctx, v), f),
        ("string", "any"),
        contextual=True,
    ),
    GoFunc("dateInZone", _date_in_zone, ("string", "any", "string"), contextual=True),
    GoFunc("date_in_zone", _date_in_zone, ("string", "any", "string"), contextual=True),
    GoFunc(
        "htmlDate",
        lambda ctx, v: format_time(_moment(ctx, v), "2006-01-02"),
        ("any",),
        contextual=True,
    ),
    GoFunc(
        "htmlDateInZone",
        lambda ctx, v, z: _date_in_zone(ctx, "2006-01-02", v, z),
        ("any", "string"),
        contextual=True,
    ),
    GoFunc(
        "unixEpoch", lambda ctx, v: str(int(_moment(ctx, v).timestamp())), ("any",), contextual=True
    ),
    GoFunc("uuidv4", lambda: str(uuid.uuid4())),
    GoFunc("randAlphaNum", _rand(string.ascii_letters + string.digits), ("int",)),
    GoFunc("randAlpha", _rand(string.ascii_letters), ("int",)),
    GoFunc("randNumeric", _rand(string.digits), ("int",)),
    GoFunc("randAscii", _rand("".join(chr(c) for c in range(32, 127))), ("int",)),
    GoFunc(
        "randInt",
        lambda lo, hi: lo + secrets.randbelow(hi - lo) if hi > lo else _bad_rand(),
        ("int", "int"),
    ),
)


def _divf(first: float, rest: list[float]) -> float:
    for value in rest:
        if value == 0:
            raise FuncError("division by zero")
        first /= value
    return first


def _bad_rand() -> int:
    raise FuncError("invalid argument to Intn")
