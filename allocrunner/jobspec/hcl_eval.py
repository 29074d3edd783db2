"""The HCL2 expression evaluator, over python-hcl2's parse tree (`hcl2.parses_to_tree`).

`evaluate(expr, scope)` computes one expression: literals, `var.*` / `local.*` and
iterator names, templates with `${}` and `%{if}` / `%{for}`, heredocs, arithmetic,
comparison and logic, `a ? b : c`, `for` expressions (list and object forms, `if`
filters, `...` grouping), `[*]` / `.*` splats, indexing, attribute access and calls into
`scope.functions` (`try` and `can` are evaluated lazily here). With
`scope.keep_unknown` a reference whose root is not in scope (`attr.*`, `node.*`,
`meta.*`, `env["X"]`, `NOMAD_*`) evaluates to its own text wrapped in `${...}`, so the
client fills it at run time, as Nomad's jobspec2 does. Any problem raises `EvalError`;
the caller adds the field path.

No threads, no locks; pure functions over immutable scopes. Called by hcl_vars (variable
defaults, locals, validations, var files) and hcl_body (the job block).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from lark import Token, Tree

from allocrunner.errors import JobSpecError
from allocrunner.jobspec.hcl_access import (
    EvalError,
    FunctionError,
    bind,
    get_attr,
    index,
    iterate,
)
from allocrunner.jobspec.hcl_template import (
    Expr,
    ForPart,
    IfPart,
    Interp,
    Part,
    directive_from_tree,
    heredoc_parts,
    nest_parts,
    restore_escapes,
    unescape,
)
from allocrunner.jobspec.hcl_types import (
    ConversionError,
    convert,
    describe_value,
    nfc,
    normalize_number,
    parse_number,
    parse_type,
    to_string,
)

__all__ = ["EvalError", "Function", "Scope", "evaluate", "values_equal"]

Function = Callable[..., Any]


@attrs.frozen
class Scope:
    """Immutable. The names and functions an expression can see."""

    variables: Mapping[str, Any] = attrs.field(factory=dict)
    functions: Mapping[str, Function] = attrs.field(factory=dict)
    keep_unknown: bool = False

    def with_names(self, names: Mapping[str, Any]) -> Scope:
        return attrs.evolve(self, variables={**self.variables, **names})


def evaluate(expr: Expr, scope: Scope) -> Any:
    """The value of `expr` in `scope`; EvalError on any problem."""
    try:
        return _Evaluator(scope, expr.text).value(expr.node)
    except RecursionError:
        raise EvalError("expression nested too deeply") from None
    except ConversionError as err:
        raise EvalError(str(err)) from None
    except (OverflowError, ZeroDivisionError):
        raise EvalError("number out of range") from None


def values_equal(a: Any, b: Any) -> bool:
    """HCL `==`: same type and value, numbers compared numerically, deep for collections."""
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kids(node: Tree) -> list[Any]:
    """A node's children without newlines/comments."""
    return [
        c
        for c in node.children
        if not (isinstance(c, Tree) and c.data == "new_line_or_comment")
        and not (isinstance(c, Token) and c.type == "NL_OR_COMMENT")
    ]


def _trees(node: Tree) -> list[Tree]:
    return [c for c in _kids(node) if isinstance(c, Tree)]


class _Evaluator:
    """Not thread-safe; owned by one `evaluate` call."""

    def __init__(self, scope: Scope, text: str) -> None:
        self.scope = scope
        self.text = text

    def sub(self, expr: Expr, names: Mapping[str, Any] | None = None) -> Any:
        scope = self.scope.with_names(names) if names else self.scope
        return _Evaluator(scope, expr.text).value(expr.node)

    def value(self, node: Any) -> Any:
        if isinstance(node, Token):
            raise EvalError(f"unexpected {str(node)!r}")
        handler = _HANDLERS.get(node.data)
        if handler is None:
            raise EvalError(f"unsupported expression ({node.data})")
        return handler(self, node)

    # --- literals -------------------------------------------------------------------

    def expr_term(self, node: Tree) -> Any:
        kids = _kids(node)
        if isinstance(kids[0], Token) and kids[0].type == "LPAR":
            return self.value(kids[1])
        return self.value(kids[0])

    def int_lit(self, node: Tree) -> Any:
        return int(str(node.children[0]))

    def float_lit(self, node: Tree) -> Any:
        return normalize_number(float(str(node.children[0])))

    def literal_value(self, node: Tree) -> Any:
        return {"true": True, "false": False, "null": None}[str(node.children[0])]

    def tuple(self, node: Tree) -> Any:
        return [self.value(c) for c in _trees(node)]

    def object(self, node: Tree) -> Any:
        out: dict[str, Any] = {}
        for elem in _trees(node):
            key = self.object_key(elem.children[0])
            if key in out:
                raise EvalError(f"duplicate object attribute {key!r}")
            out[key] = self.value(elem.children[-1])
        return out

    def object_key(self, node: Tree) -> str:
        inner = _kids(node)[0]
        if isinstance(inner, Tree) and inner.data == "keyword":
            return str(inner.children[0])
        if isinstance(inner, Tree) and inner.data == "expr_term" and len(_kids(inner)) == 1:
            only = _kids(inner)[0]
            if isinstance(only, Tree) and only.data in ("identifier", "literal_value"):
                return str(only.children[0])
        key = self.value(inner)
        if key is None:
            raise EvalError("object key must not be null")
        return to_string(key)

    def identifier(self, node: Tree) -> Any:
        name = str(node.children[0])
        if name in self.scope.variables:
            return self.scope.variables[name]
        if self.scope.keep_unknown:
            return "${" + name + "}"
        raise EvalError(f"unknown variable {name!r}")

    # --- templates ------------------------------------------------------------------

    def string(self, node: Tree) -> Any:
        flat: list[Part] = []
        for part in _trees(node):
            (inner,) = part.children
            if isinstance(inner, Token):
                if inner.type in ("ESCAPED_INTERPOLATION", "ESCAPED_DIRECTIVE"):
                    flat.append(str(inner)[1:])
                else:
                    flat.append(restore_escapes(unescape(str(inner))))
            elif inner.data == "interpolation":
                flat.append(Interp(Expr(_trees(inner)[0], self.text)))
            else:
                flat.append(directive_from_tree(inner, self.text))
        return nfc(self.template(flat))

    def template_string(self, node: Tree) -> Any:
        raw = str(node.children[0])
        return restore_escapes(unescape(raw[2:-2]))

    def heredoc_template(self, node: Tree) -> Any:
        return nfc(self.template(heredoc_parts(str(node.children[0]), trim=False)))

    def heredoc_template_trim(self, node: Tree) -> Any:
        return nfc(self.template(heredoc_parts(str(node.children[0]), trim=True)))

    def template(self, flat: list[Part]) -> Any:
        parts = nest_parts(flat)
        if len(parts) == 1 and isinstance(parts[0], Interp):
            return self.sub(parts[0].expr)  # a lone interpolation keeps its type
        return "".join(self.render(parts))

    def render(self, parts: tuple[Part, ...], names: Mapping[str, Any] | None = None) -> list[str]:
        out: list[str] = []
        for part in parts:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, Interp):
                value = self.sub(part.expr, names)
                if value is None:
                    raise EvalError("cannot include a null value in a string template")
                out.append(_template_string(value))
            elif isinstance(part, IfPart):
                cond = _as_bool(self.sub(part.cond, names), "the %{if} condition")
                out.extend(self.render(part.then if cond else part.otherwise, names))
            elif isinstance(part, ForPart):
                collection = self.sub(part.collection, names)
                for key, item in iterate(collection):
                    bound = bind(part.names, key, item)
                    out.extend(self.render(part.body, {**(names or {}), **bound}))
        return out

    # --- operators ------------------------------------------------------------------

    def conditional(self, node: Tree) -> Any:
        cond, then, otherwise = _trees(node)
        chosen, other = then, otherwise
        if not _as_bool(self.value(cond), "the condition of ? :"):
            chosen, other = otherwise, then
        value = self.value(chosen)
        if value is None or isinstance(value, (list, dict)):
            return value
        return self.unify(value, other)

    def unify(self, value: Any, other_node: Any) -> Any:
        """A primitive result as a string when the other branch is another primitive
        type, as HCL unifies the two results' types (`true ? 1 : "x"` is "1")."""
        try:
            other = self.value(other_node)
        except (EvalError, ConversionError, JobSpecError):
            return value  # HCL reports only the chosen branch's errors
        if other is None or isinstance(other, (list, dict)):
            return value
        if _kind(value) != _kind(other):
            return to_string(value)
        return value

    def binary_op(self, node: Tree) -> Any:
        left_node, term = _trees(node)[:2]
        op_node, right_node = _trees(term)
        op = str(op_node.children[0])
        left = self.value(left_node)
        if op == "&&":
            return _as_bool(left, "operand of &&") and _as_bool(
                self.value(right_node), "operand of &&"
            )
        if op == "||":
            return _as_bool(left, "operand of ||") or _as_bool(
                self.value(right_node), "operand of ||"
            )
        return _binary(op, left, self.value(right_node))

    def unary_op(self, node: Tree) -> Any:
        op, operand = _kids(node)
        value = self.value(operand)
        if str(op) == "!":
            return not _as_bool(value, "operand of !")
        return normalize_number(-_as_number(value, "operand of -"))

    # --- calls ----------------------------------------------------------------------

    def function_call(self, node: Tree) -> Any:
        kids = _kids(node)
        names = [str(t.children[0]) for t in kids if isinstance(t, Tree) and t.data == "identifier"]
        name = "::".join(names)
        arg_nodes: list[Any] = []
        expand = False
        for kid in kids:
            if isinstance(kid, Tree) and kid.data == "arguments":
                arg_nodes = _trees(kid)
                expand = any(isinstance(c, Token) and c.type == "ELLIPSIS" for c in kid.children)
        if name in ("try", "can"):
            return self.try_or_can(name, arg_nodes)
        if name == "convert":
            return self.convert(arg_nodes)
        function = self.scope.functions.get(name)
        if function is None:
            raise EvalError(f"call to unknown function {name!r}")
        args = [self.value(a) for a in arg_nodes]
        if expand:
            if not args or not isinstance(args[-1], list):
                raise EvalError(f"{name}(): the argument before '...' must be a list")
            args = args[:-1] + list(args[-1])
        try:
            return function(*args)
        except (EvalError, ConversionError, FunctionError) as err:
            raise EvalError(f"{name}(): {err}") from None
        except RecursionError:
            raise EvalError(f"{name}(): value nested too deeply") from None
        except Exception as err:  # a function's bad-argument error, whatever its type
            raise EvalError(f"{name}(): invalid arguments: {err}") from None

    def convert(self, arg_nodes: list[Any]) -> Any:
        """`convert(value, type)`: the second argument is a type, not a value."""
        if len(arg_nodes) != 2:
            raise EvalError("convert() takes a value and a type")
        try:
            target = parse_type(arg_nodes[1])
            return convert(self.value(arg_nodes[0]), target)
        except ConversionError as err:
            raise EvalError(f"convert(): {err}") from None

    def try_or_can(self, name: str, arg_nodes: list[Any]) -> Any:
        if name == "can":
            if len(arg_nodes) != 1:
                raise EvalError("can() takes exactly one argument")
            try:
                self.value(arg_nodes[0])
            except (EvalError, ConversionError):
                return False
            return True
        if not arg_nodes:
            raise EvalError("try() needs at least one argument")
        errors: list[str] = []
        for arg in arg_nodes:
            try:
                return self.value(arg)
            except (EvalError, ConversionError) as err:
                errors.append(str(err))
        raise EvalError(f"try(): no argument could be evaluated: {'; '.join(errors)}")

    # --- traversals -----------------------------------------------------------------

    def traversal(self, node: Tree) -> Any:
        root, steps = _flatten(node)
        if isinstance(root, Tree) and root.data == "identifier":
            name = str(root.children[0])
            if name not in self.scope.variables and self.scope.keep_unknown:
                return self.unknown_reference(root, steps)
        value = self.value(root)
        return self.apply(value, steps)

    def unknown_reference(self, root: Tree, steps: list[Tree]) -> Any:
        """`${root.a.b[0]}` as written, then any further steps applied to that string."""
        end = root.meta.end_pos
        used = 0
        for step in steps:
            if not _static_step(step):
                break
            end = step.meta.end_pos
            used += 1
        return self.apply(self.bracketed(root.meta.start_pos, end), steps[used:])

    def bracketed(self, start: int, end: int) -> str:
        """The reference's text in `${...}`: the enclosing interpolation's own text,
        spaces kept, when the reference starts it; otherwise wrapped in one."""
        text = self.text
        before = start
        while before > 0 and text[before - 1] == " ":
            before -= 1
        if not text.startswith("${", before - 2) or before < 2:
            return "${" + text[start:end] + "}"
        after = end
        while after < len(text) and text[after] == " ":
            after += 1
        tail = text[end:after] if after < len(text) and text[after] == "}" else ""
        return text[before - 2 : end] + tail + "}"

    def apply(self, value: Any, steps: list[Tree]) -> Any:
        for i, step in enumerate(steps):
            if step.data in ("attr_splat", "full_splat"):
                inner = _trees(step)
                rest = steps[i + 1 :]
                if step.data == "attr_splat":  # `.*` takes attribute steps only
                    cut = next((j for j, t in enumerate(inner) if t.data != "get_attr"), len(inner))
                    inner, rest = inner[:cut], inner[cut:] + rest
                items = [] if value is None else value if isinstance(value, list) else [value]
                value = [self.apply(item, inner) for item in items]
                return self.apply(value, rest)
            value = self.step(value, step)
        return value

    def step(self, value: Any, step: Tree) -> Any:
        if step.data == "get_attr":
            name = str(_trees(step)[0].children[0])
            return get_attr(value, name)
        if step.data == "short_index":
            return index(value, int(str(_kids(step)[1])))
        return index(value, self.value(_trees(step)[0]))

    # --- for expressions ------------------------------------------------------------

    def for_tuple_expr(self, node: Tree) -> Any:
        names, collection, rest = self.for_parts(node)
        body = rest[0]
        cond = rest[1] if len(rest) > 1 else None
        out: list[Any] = []
        for key, item in iterate(collection):
            scope = self.scope.with_names(bind(names, key, item))
            inner = _Evaluator(scope, self.text)
            if cond is not None and not _as_bool(
                inner.value(_trees(cond)[0]), "the for expression's if"
            ):
                continue
            out.append(inner.value(body))
        return out

    def for_object_expr(self, node: Tree) -> Any:
        names, collection, rest = self.for_parts(node)
        key_node, value_node = rest[0], rest[1]
        cond = rest[2] if len(rest) > 2 else None
        grouping = any(isinstance(c, Token) and c.type == "ELLIPSIS" for c in node.children)
        out: dict[str, Any] = {}
        for key, item in iterate(collection):
            inner = _Evaluator(self.scope.with_names(bind(names, key, item)), self.text)
            if cond is not None and not _as_bool(
                inner.value(_trees(cond)[0]), "the for expression's if"
            ):
                continue
            out_key = inner.value(key_node)
            if out_key is None:
                raise EvalError("for expression produced a null key")
            out_key = to_string(out_key)
            out_value = inner.value(value_node)
            if grouping:
                out.setdefault(out_key, []).append(out_value)
            elif out_key in out:
                raise EvalError(f"for expression produced duplicate key {out_key!r}; use '...'")
            else:
                out[out_key] = out_value
        return out

    def for_parts(self, node: Tree) -> tuple[tuple[str, ...], Any, list[Tree]]:
        trees = _trees(node)
        intro = trees[0]
        kids = _kids(intro)
        in_at = next(i for i, k in enumerate(kids) if isinstance(k, Token) and k.type == "IN")
        names = tuple(
            str(k.children[0])
            for k in kids[:in_at]
            if isinstance(k, Tree) and k.data == "identifier"
        )
        coll_node = next(k for k in kids[in_at + 1 :] if isinstance(k, Tree))
        return names, self.value(coll_node), trees[1:]


_HANDLERS: dict[str, Callable[[_Evaluator, Tree], Any]] = {
    "expr_term": _Evaluator.expr_term,
    "int_lit": _Evaluator.int_lit,
    "float_lit": _Evaluator.float_lit,
    "literal_value": _Evaluator.literal_value,
    "tuple": _Evaluator.tuple,
    "object": _Evaluator.object,
    "identifier": _Evaluator.identifier,
    "string": _Evaluator.string,
    "template_string": _Evaluator.template_string,
    "heredoc_template": _Evaluator.heredoc_template,
    "heredoc_template_trim": _Evaluator.heredoc_template_trim,
    "conditional": _Evaluator.conditional,
    "binary_op": _Evaluator.binary_op,
    "unary_op": _Evaluator.unary_op,
    "function_call": _Evaluator.function_call,
    "index_expr_term": _Evaluator.traversal,
    "get_attr_expr_term": _Evaluator.traversal,
    "attr_splat_expr_term": _Evaluator.traversal,
    "full_splat_expr_term": _Evaluator.traversal,
    "for_tuple_expr": _Evaluator.for_tuple_expr,
    "for_object_expr": _Evaluator.for_object_expr,
}

_TRAVERSALS = (
    "index_expr_term",
    "get_attr_expr_term",
    "attr_splat_expr_term",
    "full_splat_expr_term",
)


def _flatten(node: Tree) -> tuple[Any, list[Tree]]:
    """(root expression, steps) of a chain of index / attribute / splat terms."""
    steps: list[Tree] = []
    cur: Any = node
    while isinstance(cur, Tree) and cur.data in _TRAVERSALS:
        base, step = _trees(cur)
        steps.append(step)
        cur = base
        while isinstance(cur, Tree) and cur.data == "expr_term" and len(_kids(cur)) == 1:
            cur = _kids(cur)[0]
    steps.reverse()
    return cur, steps


def _static_step(step: Tree) -> bool:
    """Whether a step belongs to an HCL traversal (attribute, or literal index)."""
    if step.data in ("get_attr", "short_index"):
        return True
    if step.data != "braces_index":
        return False
    key: Any = _trees(step)[0]
    while isinstance(key, Tree) and key.data == "expr_term" and len(_kids(key)) == 1:
        key = _kids(key)[0]
    if not isinstance(key, Tree):
        return False
    if key.data in ("int_lit", "float_lit"):
        return True
    return key.data == "string" and all(
        isinstance(p.children[0], Token) and p.children[0].type == "STRING_CHARS"
        for p in _trees(key)
    )


def _kind(value: Any) -> str:
    """The type name of a primitive value: string, number or bool."""
    if isinstance(value, bool):
        return "bool"
    return "string" if isinstance(value, str) else "number"


def _as_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    raise EvalError(f"{what}: a bool is required, got {describe_value(value)}")


def _as_number(value: Any, what: str) -> int | float:
    if _is_number(value):
        return value
    if isinstance(value, str):
        try:
            return parse_number(value)
        except ConversionError:
            pass
    raise EvalError(f"{what}: a number is required, got {describe_value(value)}")


def _template_string(value: Any) -> str:
    try:
        return to_string(value)
    except ConversionError:
        raise EvalError(
            f"cannot include a {describe_value(value)} value in a string template"
        ) from None


def _binary(op: str, left: Any, right: Any) -> Any:
    if op == "==":
        return values_equal(left, right)
    if op == "!=":
        return not values_equal(left, right)
    a, b = _as_number(left, f"operand of {op}"), _as_number(right, f"operand of {op}")
    if op == "<":
        return a < b
    if op == ">":
        return a > b
    if op == "<=":
        return a <= b
    if op == ">=":
        return a >= b
    if op == "+":
        return normalize_number(a + b)
    if op == "-":
        return normalize_number(a - b)
    if op == "*":
        return normalize_number(a * b)
    if b == 0 and op in ("/", "%"):
        raise EvalError("attempt to divide by zero")
    if op == "/":
        return normalize_number(a / b)
    if op == "%":
        if isinstance(a, int) and isinstance(b, int):
            rem = abs(a) % abs(b)
            return -rem if a < 0 else rem
        return normalize_number(math.fmod(a, b))
    raise EvalError(f"unsupported operator {op!r}")
