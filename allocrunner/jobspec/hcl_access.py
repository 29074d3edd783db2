"""Reading inside HCL2 values: attribute access, indexing and for-expression iteration.

`get_attr(value, name)` and `index(value, key)` follow HCL's rules (a list index may be
a numeric string; a map key converts to a string); `iterate(collection)` yields
(key, value) pairs the way `for` sees them (list index order, map keys sorted);
`bind(names, key, value)` makes the iterator names of one step. Errors are EvalError;
FunctionError is what a function raises for arguments it cannot take, and `num` reads
a function's numeric argument (the function library and `format` share it).

No threads, no locks; pure functions. Called by the evaluator (hcl_eval).
"""

from __future__ import annotations

from typing import Any

from allocrunner.jobspec.hcl_types import (
    ConversionError,
    describe_value,
    parse_number,
    to_string,
)

__all__ = ["EvalError", "FunctionError", "bind", "get_attr", "index", "iterate", "num"]


class EvalError(Exception):
    """An expression cannot be evaluated; the message says why."""


class FunctionError(ValueError):
    """A function was called with arguments it cannot take; the message says why."""


def num(value: Any) -> int | float:
    """An argument as a number (numeric strings convert)."""
    if isinstance(value, bool) or value is None:
        raise FunctionError(f"number required, got {describe_value(value)}")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return parse_number(value)
        except ConversionError as err:
            raise FunctionError(str(err)) from None
    raise FunctionError(f"number required, got {describe_value(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def get_attr(value: Any, name: str) -> Any:
    if isinstance(value, dict):
        if name not in value:
            raise EvalError(f'this object does not have an attribute named "{name}"')
        return value[name]
    if value is None:
        raise EvalError(f'cannot access attribute "{name}" of a null value')
    raise EvalError(f'cannot access attribute "{name}" of a {describe_value(value)} value')


def index(value: Any, key: Any) -> Any:
    if isinstance(value, list):
        if isinstance(key, str):
            key = parse_number(key)
        if not _is_number(key) or key != int(key):
            raise EvalError(f"list index must be a whole number, got {describe_value(key)}")
        if not 0 <= int(key) < len(value):
            raise EvalError(f"the given key does not identify an element in this collection: {key}")
        return value[int(key)]
    if isinstance(value, dict):
        if key is None or isinstance(key, (list, dict)):
            raise EvalError(f"map key must be a string, got {describe_value(key)}")
        name = to_string(key)
        if name not in value:
            raise EvalError(
                f'the given key does not identify an element in this collection: "{name}"'
            )
        return value[name]
    if value is None:
        raise EvalError("cannot index a null value")
    raise EvalError(f"cannot index a {describe_value(value)} value")


def iterate(collection: Any) -> list[tuple[Any, Any]]:
    if isinstance(collection, list):
        return list(enumerate(collection))
    if isinstance(collection, dict):
        return [(k, collection[k]) for k in sorted(collection)]
    raise EvalError(
        f"a for expression needs a list, set, map or object, got {describe_value(collection)}"
    )


def bind(names: tuple[str, ...], key: Any, item: Any) -> dict[str, Any]:
    if len(names) == 1:
        return {names[0]: item}
    return {names[0]: key, names[1]: item}
