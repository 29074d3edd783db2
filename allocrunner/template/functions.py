"""consul-template's helper functions, as a Nomad client offers them without Consul,
Vault or the Nomad API; and the names of the functions it refuses.

Argument order follows consul-template so that piping works (`{{ .x | subtract 2 }}` is
`x - 2`; the piped value is the last argument). `env` reads only the task environment
handed to `render` (never the agent's own). `plugin` and `writeToFile` fail with
"function is disabled" (Nomad's default denylist); functions that need the file
system, YAML/TOML or Consul data shapes fail with "not supported".

Threads: none. Locks: none. Owner: `HELPERS`, `CONSUL_VAULT_FUNCTIONS` and
`UNSUPPORTED_FUNCTIONS` are read by the package API and `execute`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from allocrunner.template import gojson, goregex, strconv
from allocrunner.template.context import RenderContext, Scratch
from allocrunner.template.gofmt import go_quote
from allocrunner.template.gotime import RFC3339, format_time
from allocrunner.template.registry import FuncError, GoFunc, table
from allocrunner.template.values import LoopChannel, format_value, is_int, is_list, type_name

CONSUL_VAULT_FUNCTIONS = frozenset(
    {
        "caLeaf",
        "caRoots",
        "connect",
        "datacenters",
        "exportedServices",
        "importedServices",
        "key",
        "keyExists",
        "keyOrDefault",
        "ls",
        "node",
        "nodes",
        "partitions",
        "peerings",
        "pkiCert",
        "safeLs",
        "safeTree",
        "secret",
        "secrets",
        "service",
        "services",
        "tree",
        "nomadService",
        "nomadServices",
        "nomadVar",
        "nomadVarExists",
        "nomadVarList",
        "nomadVarListSafe",
    }
)
DISABLED_FUNCTIONS = frozenset({"plugin", "writeToFile"})
UNSUPPORTED_FUNCTIONS = frozenset(
    {
        "file",
        "sockaddr",
        "parseYAML",
        "toYAML",
        "toTOML",
        "explode",
        "explodeMap",
        "byKey",
        "byTag",
        "byPort",
        "byMeta",
        "spew_dump",
        "spew_printf",
        "spew_sdump",
        "spew_sprintf",
    }
)


# --- environment and time --------------------------------------------------------------


def _env(ctx: RenderContext, name: str) -> str:
    return ctx.env.get(name, "")


def _must_env(ctx: RenderContext, name: str) -> str:
    value = ctx.env.get(name, "")
    if not value:
        raise FuncError(f"required environment variable {name} is empty")
    return value


def _env_or_default(ctx: RenderContext, name: str, default: str) -> str:
    return ctx.env.get(name, default)


def _timestamp(ctx: RenderContext, *layout: str) -> str:
    if len(layout) > 1:
        raise FuncError(
            f"timestamp: wrong number of arguments, expected 0 or 1, but got {len(layout)}"
        )
    return timestamp(ctx.now, layout[0] if layout else None)


def timestamp(now: datetime, layout: str | None) -> str:
    if layout == "unix":
        return str(int(now.timestamp()))
    return format_time(now, RFC3339 if layout is None else layout)


def _execute_template(ctx: RenderContext, name: str, *data: Any) -> str:
    if len(data) > 1:
        raise FuncError(
            f"executeTemplate: wrong number of arguments, expected 1 or 2, but got {len(data) + 1}"
        )
    return ctx.execute_template(name, data[0] if data else None)


def _scratch(ctx: RenderContext) -> Scratch:
    return ctx.scratch


# --- JSON and parsing ------------------------------------------------------------------


def _json_call(label: str, value: Any, indent: str = "", escape_html: bool = True) -> str:
    try:
        return gojson.encode(value, indent=indent, escape_html=escape_html)
    except gojson.JSONError as err:
        raise FuncError(f"{label}: {err}") from None


def _parse_json(text: str) -> Any:
    if text == "":
        return {}
    try:
        return gojson.decode(text)
    except ValueError as err:
        raise FuncError(str(err)) from None


def _wrap_parse(label: str, parse: Any, empty: Any) -> Any:
    def parse_value(text: str) -> Any:
        if text == "":
            return empty
        try:
            return parse(text)
        except ValueError as err:
            raise FuncError(f"{label}: {err}") from None

    return parse_value


# --- strings ---------------------------------------------------------------------------

_WORD_JOINERS = frozenset("'\u2019._:")


def to_title(text: str) -> str:
    """Upper-case the first letter of each word, leaving the other letters alone."""
    out: list[str] = []
    prev = " "
    for c in text:
        starts_word = not (prev.isalnum() or prev in _WORD_JOINERS)
        out.append(c.upper() if starts_word and c.isalpha() else c)
        prev = c
    return "".join(out)


def go_upper(text: str) -> str:
    """strings.ToUpper: rune by rune, so a letter without a one-rune upper case stays."""
    return "".join(upper if len(upper := c.upper()) == 1 else c for c in text)


def go_lower(text: str) -> str:
    """strings.ToLower: rune by rune, as go_upper."""
    return "".join(lower if len(lower := c.lower()) == 1 else c for c in text)


def go_split(sep: str, text: str) -> list[str]:
    """strings.Split: an empty separator splits after each character."""
    return list(text) if sep == "" else text.split(sep)


def _split(sep: str, text: str) -> list[str]:
    text = text.strip()
    return [] if text == "" else go_split(sep, text)


def _split_to_map(sep1: str, sep2: str, text: str) -> dict[str, str]:
    text = text.strip()
    result: dict[str, str] = {}
    if text == "":
        return result
    for part in go_split(sep1, text):
        if sep2 in part:
            key, value = part.split(sep2, 1)
            result[key] = value
    return result


def go_trim(text: str, cutset: str) -> str:
    return text.strip(cutset) if cutset else text


def _indent(spaces: int, text: str) -> str:
    if spaces < 0:
        raise FuncError("indent value must be a positive integer")
    prefix = " " * spaces
    return "\n".join(prefix + line if line else line for line in text.split("\n"))


def _regex_match(pattern: str, text: str) -> bool:
    return goregex.compile_go(pattern).search(text) is not None


# --- containment -----------------------------------------------------------------------


def contains_value(haystack: Any, needle: Any) -> bool:
    """consul-template's `in`: element match by kind for lists, substring for strings."""
    if is_list(haystack):
        return any(_same_kind_equal(item, needle) for item in haystack)
    if isinstance(haystack, str):
        return isinstance(needle, str) and needle in haystack
    return False


def _same_kind_equal(item: Any, needle: Any) -> bool:
    if isinstance(item, bool) or isinstance(needle, bool):
        return False
    if is_int(item) and is_int(needle):
        return bool(item == needle)
    if isinstance(item, float) and isinstance(needle, float):
        return item == needle
    return isinstance(item, str) and isinstance(needle, str) and item == needle


def _contains_some(ret_true: bool, invert: bool) -> Any:
    def check(values: list[Any], haystack: Any) -> bool:
        for value in values:
            if contains_value(haystack, value) != invert:
                return not ret_true
        return ret_true

    return check


# --- encodings -------------------------------------------------------------------------


def _b64decode(label: str, text: str, urlsafe: bool) -> str:
    try:
        if urlsafe:
            data = base64.urlsafe_b64decode(text.encode())
        else:
            data = base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise FuncError(f"{label}: illegal base64 data at input byte {_bad_b64(text)}") from None
    return data.decode(errors="replace")


def _bad_b64(text: str) -> int:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_"
    for i, c in enumerate(text):
        if c not in alphabet and c != "=":
            return i
    return len(text) - len(text) % 4 if len(text) % 4 else len(text)


def _hmac_sha256_hex(message: str, key: str) -> str:
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


# --- arithmetic ------------------------------------------------------------------------


def _number(label: str, value: Any, allow_float: bool = True) -> int | float:
    if is_int(value) or (allow_float and isinstance(value, float)):
        return value
    raise FuncError(
        f"{label}: unknown type for {go_quote(format_value(value))} ({type_name(value)})"
    )


def go_div(a: int, b: int) -> int:
    """Go's integer division: truncates toward zero."""
    if b == 0:
        raise FuncError("runtime error: integer divide by zero")
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


def go_mod(a: int, b: int) -> int:
    """Go's remainder: takes the sign of the dividend."""
    return a - b * go_div(a, b)


def _add(b: Any, a: Any) -> Any:
    return _number("add", a) + _number("add", b)


def _subtract(b: Any, a: Any) -> Any:
    return _number("subtract", a) - _number("subtract", b)


def _multiply(b: Any, a: Any) -> Any:
    return _number("multiply", a) * _number("multiply", b)


def _divide(b: Any, a: Any) -> Any:
    x, y = _number("divide", a), _number("divide", b)
    if is_int(x) and is_int(y):
        return go_div(int(x), int(y))
    if y == 0:
        return float("nan") if x == 0 else float("inf") if x > 0 else float("-inf")
    return x / y


def _modulo(b: Any, a: Any) -> Any:
    x, y = _number("modulo", a, allow_float=False), _number("modulo", b, allow_float=False)
    return go_mod(int(x), int(y))


def _minimum(b: Any, a: Any) -> Any:
    x, y = _number("minimum", a), _number("minimum", b)
    return x if x < y else y


def _maximum(b: Any, a: Any) -> Any:
    x, y = _number("maximum", a), _number("maximum", b)
    return x if x > y else y


def _loop(*bounds: Any) -> LoopChannel:
    if len(bounds) not in (1, 2):
        raise FuncError(f"loop: wrong number of arguments, expected 1 or 2, but got {len(bounds)}")
    ints = [_loop_int(b) for b in bounds]
    start, stop = (0, ints[0]) if len(ints) == 1 else (ints[0], ints[1])
    return LoopChannel(start, stop)


def _loop_int(value: Any) -> int:
    if is_int(value):
        return int(value)
    if isinstance(value, str):
        return 0 if value == "" else strconv.parse_int(value)
    raise FuncError(f"loop: bad argument type: {type_name(value)}")


# --- maps ------------------------------------------------------------------------------


def merge_maps(dst: Mapping[str, Any], src: Mapping[str, Any], override: bool) -> dict[str, Any]:
    """mergo.Merge on maps: fill (or, with override, replace) dst's entries from src."""
    merged = dict(dst)
    for key, value in src.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_maps(current, value, override)
        elif key not in merged or override or current in (None, "", 0, False):
            merged[key] = value
    return merged


def _refuse(message: str) -> Any:
    def refused(*_args: Any) -> Any:
        raise FuncError(message)

    return refused


HELPERS: dict[str, GoFunc] = table(
    GoFunc("env", _env, ("string",), contextual=True),
    GoFunc("mustEnv", _must_env, ("string",), contextual=True),
    GoFunc("envOrDefault", _env_or_default, ("string", "string"), contextual=True),
    GoFunc("timestamp", _timestamp, (), "string", contextual=True),
    GoFunc("executeTemplate", _execute_template, ("string",), "any", contextual=True),
    GoFunc("scratch", _scratch, (), contextual=True),
    GoFunc("toJSON", lambda v: _json_call("toJSON", v), ("any",)),
    GoFunc("toJSONPretty", lambda v: _json_call("toJSONPretty", v, "  "), ("any",)),
    GoFunc("toUnescapedJSON", lambda v: _json_call("toUnescapedJSON", v, "", False), ("any",)),
    GoFunc(
        "toUnescapedJSONPretty",
        lambda v: _json_call("toUnescapedJSONPretty", v, "  ", False),
        ("any",),
    ),
    GoFunc("parseJSON", _parse_json, ("string",)),
    GoFunc("parseBool", _wrap_parse("parseBool", strconv.parse_bool, False), ("string",)),
    GoFunc("parseInt", _wrap_parse("parseInt", strconv.parse_int, 0), ("string",)),
    GoFunc("parseUint", _wrap_parse("parseUint", strconv.parse_uint, 0), ("string",)),
    GoFunc("parseFloat", _wrap_parse("parseFloat", strconv.parse_float, 0.0), ("string",)),
    GoFunc("toLower", go_lower, ("string",)),
    GoFunc("toUpper", go_upper, ("string",)),
    GoFunc("toTitle", to_title, ("string",)),
    GoFunc("trimSpace", str.strip, ("string",)),
    GoFunc("trim", lambda cutset, s: go_trim(s, cutset), ("string", "string")),
    GoFunc("trimPrefix", lambda p, s: s.removeprefix(p), ("string", "string")),
    GoFunc("trimSuffix", lambda p, s: s.removesuffix(p), ("string", "string")),
    GoFunc("split", _split, ("string", "string")),
    GoFunc("splitToMap", _split_to_map, ("string", "string", "string")),
    GoFunc("join", lambda sep, items: sep.join(items), ("string", "[]string")),
    GoFunc("replaceAll", lambda f, t, s: s.replace(f, t), ("string", "string", "string")),
    GoFunc(
        "regexReplaceAll",
        lambda r, t, s: goregex.replace_all(r, t, s),
        ("string", "string", "string"),
    ),
    GoFunc("regexMatch", _regex_match, ("string", "string")),
    GoFunc("contains", lambda v, haystack: contains_value(haystack, v), ("any", "any")),
    GoFunc("in", contains_value, ("any", "any")),
    GoFunc("containsAll", _contains_some(True, True), ("[]any", "any")),
    GoFunc("containsAny", _contains_some(False, False), ("[]any", "any")),
    GoFunc("containsNone", _contains_some(True, False), ("[]any", "any")),
    GoFunc("containsNotAll", _contains_some(False, True), ("[]any", "any")),
    GoFunc("base64Encode", lambda s: base64.b64encode(s.encode()).decode(), ("string",)),
    GoFunc("base64Decode", lambda s: _b64decode("base64Decode", s, False), ("string",)),
    GoFunc("base64URLEncode", lambda s: base64.urlsafe_b64encode(s.encode()).decode(), ("string",)),
    GoFunc("base64URLDecode", lambda s: _b64decode("base64URLDecode", s, True), ("string",)),
    GoFunc("sha256Hex", lambda s: hashlib.sha256(s.encode()).hexdigest(), ("string",)),
    GoFunc("md5sum", lambda s: hashlib.md5(s.encode()).hexdigest(), ("string",)),
    GoFunc("hmacSHA256Hex", _hmac_sha256_hex, ("string", "string")),
    GoFunc("add", _add, ("any", "any")),
    GoFunc("subtract", _subtract, ("any", "any")),
    GoFunc("multiply", _multiply, ("any", "any")),
    GoFunc("divide", _divide, ("any", "any")),
    GoFunc("modulo", _modulo, ("any", "any")),
    GoFunc("minimum", _minimum, ("any", "any")),
    GoFunc("maximum", _maximum, ("any", "any")),
    GoFunc("loop", _loop, (), "any"),
    GoFunc("indent", _indent, ("int", "string")),
    GoFunc("mergeMap", lambda d, s: merge_maps(d, s, False), ("map", "map")),
    GoFunc("mergeMapWithOverride", lambda d, s: merge_maps(d, s, True), ("map", "map")),
    *(
        GoFunc(name, _refuse("function is disabled"), (), "any")
        for name in sorted(DISABLED_FUNCTIONS)
    ),
    *(
        GoFunc(name, _refuse("function is not supported by this client"), (), "any")
        for name in sorted(UNSUPPORTED_FUNCTIONS)
    ),
)
