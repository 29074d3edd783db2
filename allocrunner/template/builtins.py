"""Go text/template's predefined functions.

and, or (short-circuit, return an operand), not, len, index, slice, print, printf,
println, eq (several operands), ne, lt, le, gt, ge (Go's basic-kind comparison
rules), html, js and urlquery (Go's escapers).

Threads: none. Locks: none. Owner: the table `BUILTINS` is read by `execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote_plus

from allocrunner.template.gofmt import sprint, sprintf, sprintln
from allocrunner.template.registry import FuncError, GoFunc, table
from allocrunner.template.values import (
    LoopChannel,
    format_value,
    is_int,
    is_list,
    truth,
    type_name,
)

Thunk = Callable[[], Any]


def _and(*thunks: Thunk) -> Any:
    value: Any = None
    for thunk in thunks:
        value = thunk()
        if not truth(value):
            return value
    return value


def _or(*thunks: Thunk) -> Any:
    value: Any = None
    for thunk in thunks:
        value = thunk()
        if truth(value):
            return value
    return value


def _len(item: Any) -> int:
    if item is None:
        raise FuncError("len of nil pointer")
    if isinstance(item, str):
        return len(item.encode())
    if is_list(item) or isinstance(item, Mapping):
        return len(item)
    if isinstance(item, LoopChannel):
        return 0
    raise FuncError(f"len of type {type_name(item)}")


def _index_one(item: Any, key: Any) -> Any:
    if isinstance(item, Mapping):
        if key is None:
            raise FuncError("value is nil; should be of type string")
        if not isinstance(key, str) and all(isinstance(k, str) for k in item):
            raise FuncError(f"value has type {type_name(key)}; should be string")
        return item.get(key)
    if is_list(item) or isinstance(item, str):
        if key is None:
            raise FuncError("cannot index slice/array with nil")
        if not is_int(key):
            raise FuncError(f"cannot index slice/array with type {type_name(key)}")
        seq: Any = item.encode() if isinstance(item, str) else item
        if key < 0 or key > len(seq):
            raise FuncError(f"index out of range: {key}")
        if key == len(seq):
            kind = "string" if isinstance(item, str) else "slice"
            raise FuncError(f"reflect: {kind} index out of range")
        return seq[key]
    raise FuncError(f"can't index item of type {type_name(item)}")


def _index(item: Any, *keys: Any) -> Any:
    if item is None:
        raise FuncError("index of untyped nil")
    for key in keys:
        if item is None:
            raise FuncError("index of nil pointer")
        item = _index_one(item, key)
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    if item is None:
        raise FuncError("slice of untyped nil")
    if len(indexes) > 3:
        raise FuncError(f"too many slice indexes: {len(indexes)}")
    if isinstance(item, str):
        if len(indexes) == 3:
            raise FuncError("cannot 3-index slice a string")
        data = item.encode()
        low, high = _slice_bounds(len(data), indexes)
        return data[low:high].decode(errors="replace")
    if not is_list(item):
        raise FuncError(f"can't slice item of type {type_name(item)}")
    low, high = _slice_bounds(len(item), indexes[:2])
    if len(indexes) == 3 and (
        not is_int(indexes[2]) or indexes[2] < high or indexes[2] > len(item)
    ):
        raise FuncError(f"invalid slice index: {indexes[2]}")
    return list(item[low:high])


def _slice_bounds(cap: int, indexes: tuple[Any, ...]) -> tuple[int, int]:
    bounds = [0, cap]
    for i, index in enumerate(indexes):
        if index is None:
            raise FuncError("cannot index slice/array with nil")
        if not is_int(index):
            raise FuncError(f"cannot index slice/array with type {type_name(index)}")
        if index < 0 or index > cap:
            raise FuncError(f"index out of range: {index}")
        bounds[i] = index
    if bounds[0] > bounds[1]:
        raise FuncError(f"invalid slice index: {bounds[0]} > {bounds[1]}")
    return bounds[0], bounds[1]


# --- comparison ------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "invalid"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def _eq(arg1: Any, *others: Any) -> bool:
    if not others:
        raise FuncError("missing argument for comparison")
    k1 = _kind(arg1)
    for arg in others:
        k2 = _kind(arg)
        if k1 != k2:
            if k1 != "invalid" and k2 != "invalid":
                raise FuncError("incompatible types for comparison")
            continue
        if k1 == "other":
            _check_comparable(arg1, arg)
        if arg1 == arg:
            return True
    return False


def _container_kind(value: Any) -> str:
    return "slice" if is_list(value) else "map" if isinstance(value, Mapping) else "struct"


def _check_comparable(arg1: Any, arg: Any) -> None:
    if _container_kind(arg1) != _container_kind(arg):
        raise FuncError(
            f"non-comparable types {sprintf('%s', arg1)}: {type_name(arg1)}, "
            f"{type_name(arg)}: {format_value(arg)}"
        )
    if is_list(arg) or isinstance(arg, Mapping):
        raise FuncError(f"non-comparable type {sprintf('%s', arg)}: {type_name(arg)}")


def _ne(arg1: Any, arg2: Any) -> bool:
    return not _eq(arg1, arg2)


def _lt(arg1: Any, arg2: Any) -> bool:
    k1, k2 = _kind(arg1), _kind(arg2)
    if k1 in ("invalid", "other") or k2 in ("invalid", "other"):
        raise FuncError("invalid type for comparison")
    if k1 != k2:
        raise FuncError("incompatible types for comparison")
    if k1 == "bool":
        raise FuncError("invalid type for comparison")
    return bool(arg1 < arg2)


def _le(arg1: Any, arg2: Any) -> bool:
    return _lt(arg1, arg2) or _eq(arg1, arg2)


def _gt(arg1: Any, arg2: Any) -> bool:
    return not _le(arg1, arg2)


def _ge(arg1: Any, arg2: Any) -> bool:
    return not _lt(arg1, arg2)


# --- escapers --------------------------------------------------------------------------


def _escape_input(args: tuple[Any, ...]) -> str:
    """Go's evalArgs: one string as is, else Sprint with nil printed as `<no value>`."""
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    return sprint(*("<no value>" if a is None else a for a in args))


_HTML = {'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\0": "\ufffd"}
_JS = {
    "\\": "\\\\",
    "'": "\\'",
    '"': '\\"',
    "<": "\\u003C",
    ">": "\\u003E",
    "&": "\\u0026",
    "=": "\\u003D",
}


def html_escape(text: str) -> str:
    return "".join(_HTML.get(c, c) for c in text)


def js_escape(text: str) -> str:
    out: list[str] = []
    for c in text:
        if c in _JS:
            out.append(_JS[c])
        elif ord(c) < 0x20:
            out.append(f"\\u00{ord(c):02X}")
        elif ord(c) >= 0x80 and not c.isprintable():
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return "".join(out)


def _html(*args: Any) -> str:
    return html_escape(_escape_input(args))


def _js(*args: Any) -> str:
    return js_escape(_escape_input(args))


def _urlquery(*args: Any) -> str:
    return quote_plus(_escape_input(args), safe="")


BUILTINS: dict[str, GoFunc] = table(
    GoFunc("and", _and, ("any",), "any", lazy=True),
    GoFunc("or", _or, ("any",), "any", lazy=True),
    GoFunc("not", lambda v: not truth(v), ("any",)),
    GoFunc("len", _len, ("any",)),
    GoFunc("index", _index, ("any",), "any"),
    GoFunc("slice", _slice, ("any",), "any"),
    GoFunc("print", sprint, (), "any"),
    GoFunc("printf", sprintf, ("string",), "any"),
    GoFunc("println", sprintln, (), "any"),
    GoFunc("eq", _eq, ("any",), "any"),
    GoFunc("ne", _ne, ("any", "any")),
    GoFunc("lt", _lt, ("any", "any")),
    GoFunc("le", _le, ("any", "any")),
    GoFunc("gt", _gt, ("any", "any")),
    GoFunc("ge", _ge, ("any", "any")),
    GoFunc("html", _html, (), "any"),
    GoFunc("js", _js, (), "any"),
    GoFunc("urlquery", _urlquery, (), "any"),
)
