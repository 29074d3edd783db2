"""How template functions are declared: Go-style signatures over Python callables.

A `GoFunc` names its parameter types (`string`, `int`, `float64`, `bool`, `any`,
`[]string`, `[]any`, `map`) so the executor can check arguments the way Go's
reflection does (`wrong number of args for f: want 1 got 2`, `wrong type for value;
expected string; got int`) and convert untyped literal constants to the parameter's
type. `lazy` functions (`and`, `or`) get zero-argument thunks; `contextual` ones get
the render context first.

Threads: none. Locks: none (GoFunc is frozen; tables are built once at import).
Owner: tables built by `builtins`, `functions` and `sprig`; read by `execute`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from allocrunner.template.values import is_int, is_list, type_name

GO_TYPE_NAMES = {
    "any": "interface {}",
    "string": "string",
    "int": "int",
    "float64": "float64",
    "bool": "bool",
    "[]string": "[]string",
    "[]any": "[]interface {}",
    "map": "map[string]interface {}",
}


class FuncError(Exception):
    """A template function failed; the executor reports `error calling NAME: message`."""


class ArgError(Exception):
    """An argument does not fit the function's signature (reported without `error calling`)."""


@dataclass(frozen=True, slots=True)
class GoFunc:
    """A template function: implementation plus Go-style parameter types."""

    name: str
    impl: Callable[..., Any]
    params: tuple[str, ...] = ()
    variadic: str | None = None
    lazy: bool = False
    contextual: bool = False

    def param_type(self, index: int) -> str:
        if index < len(self.params):
            return self.params[index]
        return self.variadic or "any"

    def check_count(self, explicit: int, piped: bool) -> None:
        """Go's count check: `explicit` written arguments plus the piped value, if any."""
        fixed = len(self.params)
        count = explicit + (1 if piped else 0)
        if self.variadic is None and count != fixed:
            raise ArgError(f"wrong number of args for {self.name}: want {fixed} got {count}")
        if self.variadic is not None and count < fixed:
            raise ArgError(
                f"wrong number of args for {self.name}: want at least {fixed} got {explicit}"
            )


def check_arg(value: Any, typ: str) -> Any:
    """Check (and where Go would, accept) a computed value for a parameter type."""
    if typ == "any" or _fits(value, typ):
        return value
    got = "<nil>" if value is None else type_name(value)
    if value is None:
        raise ArgError(f"invalid value; expected {GO_TYPE_NAMES[typ]}")
    raise ArgError(f"wrong type for value; expected {GO_TYPE_NAMES[typ]}; got {got}")


def _fits(value: Any, typ: str) -> bool:
    if typ == "string":
        return isinstance(value, str)
    if typ == "int":
        return is_int(value)
    if typ == "float64":
        return isinstance(value, float)
    if typ == "bool":
        return isinstance(value, bool)
    if typ == "[]string":
        return is_list(value) and all(isinstance(v, str) for v in value)
    if typ == "[]any":
        return is_list(value)
    if typ == "map":
        return isinstance(value, Mapping)
    return True


def table(*funcs: GoFunc) -> dict[str, GoFunc]:
    """A name -> function table."""
    return {f.name: f for f in funcs}
