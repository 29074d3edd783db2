"""The executor: walks parsed template trees against data and writes the output.

Follows Go's text/template evaluation rules: dot and `$`, variables scoped to the
enclosing control structure, field chains over maps (an absent key follows Go's
`missingkey` option: default, zero (Nomad's) or error), struct-like objects and their
methods, function calls with Go-style argument checking (piped value as last argument),
short-circuit `and`/`or`, `if`/`with`/`range` with `else`, `break`/`continue`, `template`
calls with a depth limit. Errors read `template: NAME:LINE:COL: executing "NAME" at <node>: msg`.

Threads: none; one `_Exec` serves one render call and is then dropped. Locks: none.
Owner: `execute` is called by the package API (`render`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from allocrunner._locking import confined
from allocrunner.template import nodes as nd
from allocrunner.template.context import RenderContext, Scratch
from allocrunner.template.errors import TemplateError
from allocrunner.template.parser import Tree
from allocrunner.template.registry import ArgError, FuncError, GoFunc, check_arg
from allocrunner.template.values import (
    LoopChannel,
    format_value,
    is_list,
    sorted_keys,
    truth,
    type_name,
)

MAX_TEMPLATE_DEPTH = 100
_NO_FINAL: Any = object()
_ABSENT: Any = object()  # Go's invalid reflect.Value: what an absent map key yields
_NILABLE = ("any", "[]string", "[]any", "map")
_VALUE_TYPES = (str, bytes, int, float, bool, list, tuple, dict, LoopChannel, type(None))
_LITERAL_KIND = {"bool": "bool", "string": "string", "int": "integer", "float64": "float"}


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Exec:
    """Not thread-safe; owned by the thread that renders. The state of one execution:
    output, variable stack, current tree and node."""

    out = confined("template render")
    vars = confined("template render")
    tree = confined("template render")
    node = confined("template render")
    depth = confined("template render")
    dot_is_interface = confined("template render")

    def __init__(
        self,
        trees: Mapping[str, Tree],
        funcs: Mapping[str, GoFunc],
        missing_key: str,
        env: Mapping[str, str],
        now: datetime,
    ) -> None:
        self.trees = trees
        self.funcs = funcs
        self.missing_key = missing_key
        self.out: list[str] = []
        self.vars: list[list[Any]] = []
        self.tree: Tree | None = None
        self.node: Any = None
        self.depth = 0
        self.dot_is_interface = False
        self.context = RenderContext(env, now, Scratch(), self.execute_named)

    # --- errors ---------------------------------------------------------------------

    def errorf(self, message: str) -> TemplateError:
        tree = self.tree
        assert tree is not None
        node = self.node
        if node is None:
            return TemplateError(f"template: {tree.name}: {message}")
        pos = getattr(node, "pos", 0)
        before = tree.source[:pos]
        line = before.count("\n") + 1
        newline = before.rfind("\n")
        col = pos if newline < 0 else pos - newline - 1
        return TemplateError(
            f'template: {tree.parse_name}:{line}:{col}: executing "{tree.name}" at '
            f"<{node}>: {message}"
        )

    # --- templates ------------------------------------------------------------------

    def run(self, name: str, data: Any) -> str:
        tree = self.trees.get(name)
        if tree is None:
            raise TemplateError(f'template: no template "{name}" associated with template')
        self._walk_tree(tree, data)
        return "".join(self.out)

    def _walk_tree(self, tree: Tree, dot: Any) -> None:
        if self.depth >= MAX_TEMPLATE_DEPTH:
            raise self.errorf(f"exceeded maximum template depth ({MAX_TEMPLATE_DEPTH})")
        saved = (self.vars, self.tree, self.node, self.dot_is_interface)
        self.vars, self.tree, self.node = [["$", dot]], tree, None
        self.dot_is_interface = False
        self.depth += 1
        try:
            self.walk(dot, tree.root)
        finally:
            self.depth -= 1
            self.vars, self.tree, self.node, self.dot_is_interface = saved

    def execute_named(self, name: str, data: Any) -> str:
        tree = self.trees.get(name)
        if tree is None:
            raise FuncError(f'template "{name}" not defined')
        saved_out, self.out = self.out, []
        try:
            self._walk_tree(tree, data)
            return "".join(self.out)
        finally:
            self.out = saved_out

    # --- statements -----------------------------------------------------------------

    def walk(self, dot: Any, node: nd.Node) -> None:
        self.node = node
        if isinstance(node, nd.Text):
            self.out.append(node.text)
        elif isinstance(node, nd.ListNode):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, nd.Action):
            value = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.print_value(node, value)
        elif isinstance(node, nd.Branch):
            self.walk_branch(dot, node)
        elif isinstance(node, nd.TemplateCall):
            self.walk_template(dot, node)
        elif isinstance(node, nd.Break):
            raise _Break()
        elif isinstance(node, nd.Continue):
            raise _Continue()

    def print_value(self, node: nd.Action, value: Any) -> None:
        self.node = node
        if value is None:
            self.out.append("<no value>")
        elif isinstance(value, LoopChannel) or callable(value):
            raise self.errorf(f"can't print {node.pipe} of type {type_name(value)}")
        else:
            self.out.append(format_value(value))

    def walk_branch(self, dot: Any, node: nd.Branch) -> None:
        mark = len(self.vars)
        try:
            if node.kind == "range":
                self.walk_range(dot, node)
                return
            value = self.eval_pipeline(dot, node.pipe)
            if truth(value) and node.kind == "with":
                self.walk_with_dot(value, node.body, from_interface=False)
            elif truth(value):
                self.walk(dot, node.body)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            del self.vars[mark:]

    def walk_with_dot(self, dot: Any, body: nd.ListNode, from_interface: bool) -> None:
        """Walk a body whose dot is a new value (`with`, or one `range` element)."""
        saved, self.dot_is_interface = self.dot_is_interface, from_interface
        try:
            self.walk(dot, body)
        finally:
            self.dot_is_interface = saved

    def walk_range(self, dot: Any, node: nd.Branch) -> None:
        pipe = node.pipe
        self.node = node
        value = self.eval_commands(dot, pipe)
        if not pipe.is_assign:
            for name in pipe.decl:
                self.vars.append([name, value])
        items = self.range_items(node, value)
        if not items:
            if node.else_list is not None:
                self.walk(dot, node.else_list)
            return
        for key, elem in items:
            self.set_range_vars(pipe, key, elem)
            mark = len(self.vars)
            try:
                self.walk_with_dot(elem, node.body, not isinstance(value, LoopChannel))
            except _Continue:
                pass
            except _Break:
                break
            finally:
                del self.vars[mark:]

    def range_items(self, node: nd.Branch, value: Any) -> list[tuple[Any, Any]]:
        if value is None:
            return []
        if is_list(value):
            return list(enumerate(value))
        if isinstance(value, Mapping):
            return [(k, value[k]) for k in sorted_keys(value)]
        if isinstance(value, LoopChannel):
            if len(node.pipe.decl) > 1:
                raise self.errorf(
                    f"can't use {format_value(value)} to iterate over more than one variable"
                )
            return [(v, v) for v in value.values]
        raise self.errorf(f"range can't iterate over {format_value(value)}")

    def set_range_vars(self, pipe: nd.Pipeline, key: Any, elem: Any) -> None:
        if not pipe.decl:
            return
        values = [elem] if len(pipe.decl) == 1 else [key, elem]
        if pipe.is_assign:
            for name, value in zip(pipe.decl, values, strict=True):
                self.set_var(name, value)
            return
        top = len(self.vars)
        for offset, value in enumerate(reversed(values), start=1):
            self.vars[top - offset][1] = value

    def walk_template(self, dot: Any, node: nd.TemplateCall) -> None:
        self.node = node
        tree = self.trees.get(node.name)
        if tree is None:
            raise self.errorf(f'template "{node.name}" not defined')
        new_dot = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else None
        self.node = node
        self._walk_tree(tree, new_dot)

    # --- variables ------------------------------------------------------------------

    def set_var(self, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise self.errorf(f"undefined variable: {name}")

    def var_value(self, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise self.errorf(f"undefined variable: {name}")

    # --- pipelines ------------------------------------------------------------------

    def eval_commands(self, dot: Any, pipe: nd.Pipeline) -> Any:
        value: Any = _NO_FINAL
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        return value

    def eval_pipeline(self, dot: Any, pipe: nd.Pipeline) -> Any:
        self.node = pipe
        value = self.eval_commands(dot, pipe)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(name, value)
            else:
                self.vars.append([name, value])
        return value

    def eval_command(self, dot: Any, cmd: nd.Command, final: Any) -> Any:
        first = cmd.args[0]
        args = cmd.args[1:]
        self.node = cmd
        if isinstance(first, nd.Field):
            return self.eval_field_chain(
                dot, dot, first, first.names, args, final, self.dot_is_interface
            )
        if isinstance(first, nd.Chain):
            return self.eval_chain(dot, first, args, final)
        if isinstance(first, nd.Identifier):
            return self.eval_function(dot, first, cmd, args, final)
        if isinstance(first, nd.Variable):
            return self.eval_variable(dot, first, args, final)
        if isinstance(first, nd.Pipeline):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        self.node = first
        self.not_a_function(cmd.args, final)
        if isinstance(first, nd.Nil):
            raise self.errorf("nil is not a command")
        return self.literal_value(dot, first)

    def literal_value(self, dot: Any, node: nd.Operand) -> Any:
        if isinstance(node, nd.Bool):
            return node.value
        if isinstance(node, nd.Dot):
            return dot
        if isinstance(node, nd.Number):
            return node.ideal()
        if isinstance(node, nd.String):
            return node.value
        raise self.errorf(f"can't evaluate command {node}")

    def not_a_function(self, args: tuple[nd.Operand, ...], final: Any) -> None:
        if len(args) > 1 or final is not _NO_FINAL:
            head = str(args[0]) if args else ""
            raise self.errorf(f"can't give argument to non-function {head}")

    def eval_variable(
        self, dot: Any, node: nd.Variable, args: tuple[nd.Operand, ...], final: Any
    ) -> Any:
        self.node = node
        value = self.var_value(node.names[0])
        if len(node.names) == 1:
            self.not_a_function((node, *args), final)
            return value
        return self.eval_field_chain(dot, value, node, node.names[1:], args, final)

    def eval_chain(self, dot: Any, node: nd.Chain, args: tuple[nd.Operand, ...], final: Any) -> Any:
        receiver = self.eval_arg(dot, "any", node.node)
        return self.eval_field_chain(dot, receiver, node, node.names, args, final)

    def eval_field_chain(
        self,
        dot: Any,
        receiver: Any,
        node: Any,
        names: tuple[str, ...],
        args: tuple[nd.Operand, ...],
        final: Any,
        from_interface: bool = False,
    ) -> Any:
        """Follow `.a.b.c` from receiver. A value read out of a map has Go's static type
        `interface {}` (it shapes error messages, and a nil one is a nil pointer); a key
        that is absent yields the invalid value, which prints as `<no value>`."""
        for name in names[:-1]:
            receiver, from_interface = (
                self.eval_field(dot, name, node, (), _NO_FINAL, receiver, from_interface),
                isinstance(receiver, Mapping),
            )
        value = self.eval_field(dot, names[-1], node, args, final, receiver, from_interface)
        return None if value is _ABSENT else value

    def eval_field(
        self,
        dot: Any,
        name: str,
        node: Any,
        args: tuple[nd.Operand, ...],
        final: Any,
        receiver: Any,
        from_interface: bool,
    ) -> Any:
        self.node = node
        has_args = bool(args) or final is not _NO_FINAL
        if receiver is None and from_interface:
            raise self.errorf(f"nil pointer evaluating interface {{}}.{name}")
        if receiver is None or receiver is _ABSENT:
            if self.missing_key == "error":
                raise self.errorf(f'nil data; no entry for key "{name}"')
            return _ABSENT
        type_text = "interface {}" if from_interface else type_name(receiver)
        if isinstance(receiver, Mapping):
            if has_args:
                raise self.errorf(f"{name} is not a method but has arguments")
            if name in receiver:
                return receiver[name]
            if self.missing_key == "error":
                raise self.errorf(f'map has no entry for key "{name}"')
            # "zero": the map's zero value, a nil interface{}; "default": no value at all
            return None if self.missing_key == "zero" else _ABSENT
        if isinstance(receiver, _VALUE_TYPES) or name.startswith("_"):
            raise self.errorf(f"can't evaluate field {name} in type {type_text}")
        member = getattr(receiver, name, _ABSENT)
        if member is _ABSENT:
            raise self.errorf(f"can't evaluate field {name} in type {type_text}")
        if callable(member) and not isinstance(member, type):
            return self.eval_call(dot, method_signature(name, member), node, node, args, final)
        if has_args:
            raise self.errorf(f"{name} has arguments but cannot be invoked as function")
        return member

    # --- calls ----------------------------------------------------------------------

    def eval_function(
        self, dot: Any, node: nd.Identifier, cmd: Any, args: tuple[nd.Operand, ...], final: Any
    ) -> Any:
        self.node = node
        fn = self.funcs.get(node.name)
        if fn is None:
            raise self.errorf(f'"{node.name}" is not a defined function')
        return self.eval_call(dot, fn, node, cmd, args, final)

    def eval_call(
        self, dot: Any, fn: GoFunc, node: Any, cmd: Any, args: tuple[nd.Operand, ...], final: Any
    ) -> Any:
        """Call fn; argument-count errors point at the name, call errors at the command."""
        try:
            fn.check_count(len(args), final is not _NO_FINAL)
        except ArgError as err:
            self.node = node
            raise self.errorf(str(err)) from None
        argv = self.call_args(dot, fn, args, final)
        try:
            if fn.contextual:
                return fn.impl(self.context, *argv)
            return fn.impl(*argv)
        except (TemplateError, _Break, _Continue):
            raise
        except RecursionError:
            raise
        except Exception as err:  # a function's failure becomes the template's error
            self.node = cmd
            raise self.errorf(f"error calling {fn.name}: {_message(err)}") from None

    def call_args(
        self, dot: Any, fn: GoFunc, args: tuple[nd.Operand, ...], final: Any
    ) -> list[Any]:
        argv: list[Any] = []
        for i, arg in enumerate(args):
            typ = fn.param_type(i)
            if fn.lazy:
                argv.append(self._thunk(dot, arg))
            else:
                argv.append(self.eval_arg(dot, typ, arg))
        if final is not _NO_FINAL:
            typ = fn.param_type(len(args))
            value = self.checked(final, typ)
            argv.append((lambda: value) if fn.lazy else value)
        return argv

    def _thunk(self, dot: Any, arg: nd.Operand) -> Any:
        return lambda: self.eval_arg(dot, "any", arg)

    def checked(self, value: Any, typ: str) -> Any:
        try:
            return check_arg(value, typ)
        except ArgError as err:
            raise self.errorf(str(err)) from None

    def eval_arg(self, dot: Any, typ: str, node: nd.Operand) -> Any:
        self.node = node
        if isinstance(node, nd.Dot):
            return self.checked(dot, typ)
        if isinstance(node, nd.Nil):
            if typ in _NILABLE:
                return None
            raise self.errorf(f"cannot assign nil to {typ}")
        if isinstance(node, nd.Field):
            return self.checked(
                self.eval_field_chain(
                    dot, dot, node, node.names, (), _NO_FINAL, self.dot_is_interface
                ),
                typ,
            )
        if isinstance(node, nd.Variable):
            return self.checked(self.eval_variable(dot, node, (), _NO_FINAL), typ)
        if isinstance(node, nd.Pipeline):
            return self.checked(self.eval_pipeline(dot, node), typ)
        if isinstance(node, nd.Identifier):
            return self.checked(self.eval_function(dot, node, node, (), _NO_FINAL), typ)
        if isinstance(node, nd.Chain):
            return self.checked(self.eval_chain(dot, node, (), _NO_FINAL), typ)
        return self.literal_arg(typ, node)

    def literal_arg(self, typ: str, node: nd.Operand) -> Any:
        if typ == "any":
            return self.literal_value(None, node)
        if isinstance(node, nd.Bool) and typ == "bool":
            return node.value
        if isinstance(node, nd.String) and typ == "string":
            return node.value
        if isinstance(node, nd.Number) and typ == "int" and node.int_value is not None:
            return node.int_value
        if isinstance(node, nd.Number) and typ == "float64" and node.float_value is not None:
            return node.float_value
        if typ in _LITERAL_KIND:
            raise self.errorf(f"expected {_LITERAL_KIND[typ]}; found {node}")
        raise self.errorf(f"can't handle {node} for arg of type {typ}")


def method_signature(name: str, method: Callable[..., Any]) -> GoFunc:
    """A bound method as a template function: its positional parameters take any value."""
    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return GoFunc(name, method, (), "any")
    fixed = sum(
        1
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    )
    optional = any(p.kind == p.VAR_POSITIONAL or p.default is not p.empty for p in params)
    return GoFunc(name, method, ("any",) * fixed, "any" if optional else None)


def _message(err: Exception) -> str:
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err) or type(err).__name__


def execute(
    trees: Mapping[str, Tree],
    name: str,
    data: Any,
    *,
    funcs: Mapping[str, GoFunc],
    env: Mapping[str, str],
    now: datetime,
    missing_key: str = "default",
) -> str:
    """Execute the template `name` from `trees` with `data` as dot; return the output.
    `missing_key` is Go's missingkey option: "default", "zero" or "error"."""
    runner = _Exec(trees, funcs, missing_key, env, now)
    try:
        return runner.run(name, data)
    except RecursionError:
        raise TemplateError(
            f"template: {name}: exceeded maximum template depth (nesting too deep)"
        ) from None
