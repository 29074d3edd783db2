"""HCL2 input variables and locals of a job file, resolved as Nomad's jobspec2 does.

`resolve_variables(items, sources)` reads the file's `variable "name" {...}` and
`variables {...}` blocks and gives each variable its value, lowest precedence first:
its `default`, the `NOMAD_VAR_<name>` environment variable, each var file in order
(HCL or JSON), then `-var` values (later wins). A value for a `string`, `number` or
untyped variable is taken literally; for other types it is parsed as an HCL expression.
Each value is converted to the declared type and checked by the variable's `validation`
blocks. An unset variable, an undeclared name in a var file or `-var`, a value of the
wrong type or a failed validation raises JobSpecError naming `variable[<name>]` and
where the value came from. `resolve_locals(items, scope)` evaluates `locals` blocks in
dependency order (a cycle is an error naming the locals).

No threads, no locks; pure functions except that var files are read (the caller,
`load_job`/`parse_job`, is never run under a lock). Called by hcl_body.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from allocrunner.errors import JobSpecError
from allocrunner.jobspec.hcl_eval import EvalError, Scope, evaluate
from allocrunner.jobspec.hcl_template import Expr, parse_expression
from allocrunner.jobspec.hcl_tree import (
    Attribute,
    Block,
    body_items,
    file_body,
    parse_file,
    references,
)
from allocrunner.jobspec.hcl_types import (
    NUMBER,
    STRING,
    ConversionError,
    HType,
    convert,
    nfc,
    parse_type,
)

__all__ = ["Declaration", "ValueSources", "resolve_locals", "resolve_variables"]

ENV_PREFIX = "NOMAD_VAR_"
_EMPTY = Scope()


@attrs.frozen
class ValueSources:
    """Immutable. Where variable values come from, besides defaults."""

    env: Mapping[str, str] = attrs.field(factory=dict)
    var_files: tuple[str, ...] = ()
    var_content: str = ""  # var-file text in hand (Nomad's API `Variables`), after the files
    cli: tuple[tuple[str, Any], ...] = ()


@attrs.frozen
class _Validation:
    """Immutable. One `validation { condition, error_message }` block."""

    condition: Expr
    message: str


@attrs.frozen
class Declaration:
    """Immutable. One declared input variable."""

    name: str
    type: HType | None
    default: tuple[Any, ...]  # () when there is no default, else (value,)
    description: str = ""
    validations: tuple[_Validation, ...] = ()


def cli_pairs(variables: Mapping[str, Any] | Iterable[str] | None) -> tuple[tuple[str, Any], ...]:
    """`-var` values as (name, value) pairs, from a mapping or `k=v` strings."""
    if variables is None:
        return ()
    if isinstance(variables, str):
        variables = [variables]
    if isinstance(variables, Mapping):
        return tuple((str(k), v) for k, v in variables.items())
    pairs: list[tuple[str, Any]] = []
    for item in variables:
        name, sep, value = str(item).partition("=")
        if not sep or not name:
            raise JobSpecError("-var", f"expected NAME=VALUE, got {item!r}")
        pairs.append((name, value))
    return tuple(pairs)


def _literal(expr: Expr, path: str, where: str) -> Any:
    try:
        return evaluate(expr, _EMPTY)
    except EvalError as err:
        raise JobSpecError(path, f"{err} ({where}; only literal values are allowed)") from None


def _static_text(attr: Attribute, path: str) -> str:
    value = _literal(attr.expr, path, "a constant string is required")
    if not isinstance(value, str):
        raise JobSpecError(path, "a string is required")
    return value


def _declare_block(block: Block) -> Declaration:
    if len(block.labels) != 1:
        raise JobSpecError("variable", 'variable block needs one name label: variable "<name>"')
    name = block.labels[0]
    path = f"variable[{name}]"
    if not name or not (name[0].isalpha() or name[0] == "_"):
        raise JobSpecError(path, "a variable name must start with a letter or underscore")
    var_type: HType | None = None
    default: tuple[Any, ...] = ()
    description = ""
    validations: list[_Validation] = []
    attrs_ = [i for i in body_items(block.body, block.text) if isinstance(i, Attribute)]
    for attr in attrs_:
        if attr.name == "type":
            try:
                var_type = parse_type(attr.expr.node)
            except ConversionError as err:
                raise JobSpecError(f"{path}.type", str(err)) from None
    for attr in attrs_:
        if attr.name == "default":
            value = _literal(attr.expr, f"{path}.default", "in a default")
            default = (_converted(value, var_type, f"{path}.default", "the default"),)
        elif attr.name == "description":
            description = _static_text(attr, f"{path}.description")
        elif attr.name not in ("type", "sensitive"):
            raise JobSpecError(f"{path}.{attr.name}", f"unsupported argument {attr.name!r}")
    for item in body_items(block.body, block.text):
        if isinstance(item, Block):
            if item.type != "validation":
                raise JobSpecError(f"{path}.{item.type}", f"unsupported block {item.type!r}")
            validations.append(_validation(name, item, f"{path}.validation"))
    return Declaration(name, var_type, default, description, tuple(validations))


def _validation(name: str, block: Block, path: str) -> _Validation:
    found = {a.name: a for a in body_items(block.body, block.text) if isinstance(a, Attribute)}
    for required in ("condition", "error_message"):
        if required not in found:
            raise JobSpecError(f"{path}.{required}", "missing required argument")
    condition = found["condition"].expr
    if name not in references(condition, "var"):
        raise JobSpecError(
            f"{path}.condition", f"the condition must refer to var.{name} to test its value"
        )
    others = sorted({n for n in references(condition, "var") if n != name})
    if others or references(condition, "local"):
        raise JobSpecError(
            f"{path}.condition", f"the condition may only refer to the variable itself, var.{name}"
        )
    message = _static_text(found["error_message"], f"{path}.error_message")
    if not _looks_like_sentence(message):
        raise JobSpecError(
            f"{path}.error_message",
            "must be a full sentence: start with an upper-case letter, end with '.', '?' or '!'",
        )
    return _Validation(condition, message)


def _looks_like_sentence(text: str) -> bool:
    if not text:
        return False
    first = text[0]
    if first.isalpha() and not first.isupper():
        return False
    return text[-1] in ".?!"


def _converted(value: Any, var_type: HType | None, path: str, where: str) -> Any:
    try:
        value = nfc(value)
        if var_type is None:
            return value
        return convert(value, var_type)
    except ConversionError as err:
        constraint = "any" if var_type is None else var_type.name()
        raise JobSpecError(
            path, f"{where} is not compatible with the type constraint {constraint}: {err}"
        ) from None


def declarations(items: Sequence[Attribute | Block]) -> dict[str, Declaration]:
    """Every variable the file declares, by name (a duplicate is an error)."""
    out: dict[str, Declaration] = {}
    for item in items:
        if not isinstance(item, Block):
            continue
        found: list[Declaration] = []
        if item.type == "variable":
            found.append(_declare_block(item))
        elif item.type == "variables":
            for attr in body_items(item.body, item.text):
                if isinstance(attr, Block):
                    raise JobSpecError(f"variables.{attr.type}", "only attributes are allowed here")
                value = _literal(attr.expr, f"variable[{attr.name}]", "in a default")
                found.append(Declaration(attr.name, None, (value,)))
        for decl in found:
            if decl.name in out:
                raise JobSpecError(f"variable[{decl.name}]", "duplicate variable declaration")
            out[decl.name] = decl
    return out


def _text_value(decl: Declaration, raw: str, path: str, where: str) -> Any:
    """A value given as text (env, -var): literal for string/number/untyped, else HCL."""
    if decl.type in (None, STRING, NUMBER):
        return raw
    try:
        expr = parse_expression(raw)
    except JobSpecError as err:
        raise JobSpecError(path, f"{err.message} ({where})") from None
    return _literal(expr, path, where)


def _var_file_values(path: str) -> list[tuple[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise JobSpecError(path, f"cannot read var file: {reason}") from None
    return _var_text_values(text, path)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _var_text_values(text: str, path: str) -> list[tuple[str, Any]]:
    """The assignments of var-file text (HCL, or JSON when it starts with `{`)."""
    if text.lstrip(" ").startswith("{"):
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as err:
            raise JobSpecError(path, f"invalid JSON var file: {err}") from None
        if not isinstance(data, dict):
            raise JobSpecError(path, "a JSON var file holds one object")
        return list(data.items())
    try:
        tree = parse_file(text)
    except JobSpecError as err:
        raise JobSpecError(path, f"{err.message} (in var file)") from None
    pairs: list[tuple[str, Any]] = []
    for item in body_items(file_body(tree), text):
        if isinstance(item, Block):
            raise JobSpecError(
                path,
                f"var files assign values (name = value); a {item.type!r} block is not allowed",
            )
        where = f"in var file {path}"
        pairs.append((item.name, _literal(item.expr, f"variable[{item.name}]", where)))
    return pairs


def resolve_variables(
    decls: Mapping[str, Declaration], sources: ValueSources, functions: Scope
) -> dict[str, Any]:
    """Each declared variable's value (see the module docstring)."""
    values: dict[str, tuple[Any, str]] = {
        name: (d.default[0], "the default") for name, d in decls.items() if d.default
    }
    for name, decl in decls.items():
        env_name = ENV_PREFIX + name
        if env_name in sources.env:
            where = f"from environment variable {env_name}"
            raw = _text_value(decl, sources.env[env_name], f"variable[{name}]", where)
            values[name] = (
                _converted(raw, decl.type, f"variable[{name}]", f"the value {where}"),
                where,
            )
    for var_file in sources.var_files:
        for name, raw in _var_file_values(var_file):
            where = f"from var file {var_file}"
            _set(values, decls, name, raw, where, text=False)
    if sources.var_content:
        for name, raw in _var_text_values(sources.var_content, "<variables>"):
            _set(values, decls, name, raw, "from the given variables", text=False)
    for name, raw in sources.cli:
        _set(values, decls, name, raw, "from -var", text=isinstance(raw, str))
    out: dict[str, Any] = {}
    for name, decl in decls.items():
        if name not in values:
            raise JobSpecError(
                f"variable[{name}]",
                f'Unset variable "{name}": a variable without a default must be given a value '
                f"(-var, a var file or {ENV_PREFIX}{name})",
            )
        value, where = values[name]
        _validate(decl, value, where, functions)
        out[name] = value
    return out


def _set(
    values: dict[str, tuple[Any, str]],
    decls: Mapping[str, Declaration],
    name: str,
    raw: Any,
    where: str,
    *,
    text: bool,
) -> None:
    path = f"variable[{name}]"
    decl = decls.get(name)
    if decl is None:
        raise JobSpecError(
            path,
            f'undefined variable "{name}" was given a value ({where}); declare it in the job file',
        )
    value = _text_value(decl, raw, path, where) if text else raw
    values[name] = (_converted(value, decl.type, path, f"the value {where}"), where)


def _validate(decl: Declaration, value: Any, where: str, functions: Scope) -> None:
    scope = Scope({"var": {decl.name: value}}, functions.functions)
    for rule in decl.validations:
        path = f"variable[{decl.name}].validation.condition"
        try:
            result = evaluate(rule.condition, scope)
        except EvalError as err:
            raise JobSpecError(path, str(err)) from None
        if not isinstance(result, bool):
            raise JobSpecError(path, "the condition must be true or false")
        if not result:
            raise JobSpecError(f"variable[{decl.name}]", f"invalid value {where}: {rule.message}")


def resolve_locals(items: Sequence[Attribute | Block], scope: Scope) -> dict[str, Any]:
    """Every local's value; `scope` holds `var` and the functions."""
    exprs: dict[str, Expr] = {}
    for item in items:
        if isinstance(item, Block) and item.type == "locals":
            for attr in body_items(item.body, item.text):
                if isinstance(attr, Block):
                    raise JobSpecError(
                        f"locals.{attr.type}", "only attributes are allowed in locals"
                    )
                if attr.name in exprs:
                    raise JobSpecError(f"locals.{attr.name}", "duplicate local value")
                exprs[attr.name] = attr.expr
    order = _dependency_order(exprs)
    values: dict[str, Any] = {}
    for name in order:
        local_scope = scope.with_names({"local": dict(values)})
        try:
            values[name] = evaluate(exprs[name], local_scope)
        except EvalError as err:
            raise JobSpecError(f"locals.{name}", str(err)) from None
    return values


def _dependency_order(exprs: Mapping[str, Expr]) -> list[str]:
    deps = {name: [d for d in references(e, "local") if d in exprs] for name, e in exprs.items()}
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            raise JobSpecError(
                f"locals.{name}", f"locals refer to each other in a cycle: {' -> '.join(cycle)}"
            )
        state[name] = 1
        for dep in deps[name]:
            visit(dep, [*trail, name])
        state[name] = 2
        order.append(name)

    for name in exprs:
        visit(name, [])
    return order


def env_from(environ: Mapping[str, str] | None) -> dict[str, str]:
    """The `NOMAD_VAR_*` entries of an environment (the process's when None)."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if k.startswith(ENV_PREFIX)}
