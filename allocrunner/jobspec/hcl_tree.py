"""HCL2 file structure from python-hcl2's parse tree: bodies, attributes and blocks.

`parse_file(text)` parses with `hcl2.parses_to_tree` (a syntax error is a JobSpecError
with line and column); `body_items(body, text)` lists a body's attributes (name and
unevaluated `Expr`) and blocks (type, static labels, body) in file order;
`references(expr, root)` lists the attribute names an expression reads from `root`
(`var.x`, `local.y`), for dependency ordering and validation checks.

No threads, no locks; pure functions. Called by hcl_vars and hcl_body.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import hcl2
from lark import Token, Tree

from allocrunner.errors import JobSpecError
from allocrunner.jobspec.hcl_template import Expr, shield_escapes, unescape

__all__ = ["Attribute", "Block", "body_items", "parse_file", "references"]


@attrs.frozen
class Attribute:
    """Immutable. `name = expr` in a body."""

    name: str
    expr: Expr
    line: int


@attrs.frozen
class Block:
    """Immutable. `type "label" ... { body }` in a body."""

    type: str
    labels: tuple[str, ...]
    body: Tree
    text: str
    line: int


def parse_file(text: str) -> Tree:
    """The parse tree of one HCL file; JobSpecError("", ...) for a syntax error."""
    if not hasattr(hcl2, "parses_to_tree"):
        raise JobSpecError("", "HCL2 job files need python-hcl2 8 or later")
    try:
        return hcl2.parses_to_tree(shield_escapes(text))
    except RecursionError:
        raise JobSpecError("", "HCL nested too deeply") from None
    except Exception as err:  # python-hcl2 raises lark's errors and others
        raise JobSpecError("", syntax_error(err)) from None


def syntax_error(err: Exception) -> str:
    """A parser exception as `HCL syntax error at line L, column C: ...`."""
    line = getattr(err, "line", None)
    column = getattr(err, "column", None)
    where = f" at line {line}, column {column}" if isinstance(line, int) and line > 0 else ""
    token = getattr(err, "token", None)
    char = getattr(err, "char", None)
    if token is not None and getattr(token, "type", "") == "$END":
        detail = "unexpected end of file"
    elif token is not None:
        detail = f"unexpected {str(token)!r}"
    elif char is not None:
        detail = f"unexpected character {char!r}"
    else:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"HCL syntax error{where}: {detail}"


def file_body(tree: Tree) -> Tree:
    """The top-level body of a parsed file."""
    return next(c for c in tree.children if isinstance(c, Tree) and c.data == "body")


def _name(node: Any) -> str:
    return str(node.children[0])


def _line(node: Tree) -> int:
    return int(getattr(node.meta, "line", 0) or 0)


def body_items(body: Tree, text: str) -> list[Attribute | Block]:
    """The attributes and blocks of a body, in file order."""
    items: list[Attribute | Block] = []
    for node in body.children:
        if not isinstance(node, Tree):
            continue
        if node.data == "attribute":
            items.append(
                Attribute(_name(node.children[0]), Expr(node.children[-1], text), _line(node))
            )
        elif node.data == "block":
            items.append(_block(node, text))
    return items


def _block(node: Tree, text: str) -> Block:
    kids = [c for c in node.children if isinstance(c, Tree) and c.data != "new_line_or_comment"]
    block_type = _name(kids[0])
    labels: list[str] = []
    for label in kids[1:-1]:
        if label.data == "string":
            labels.append(_static_string(label, block_type))
        else:
            labels.append(_name(label))
    return Block(block_type, tuple(labels), kids[-1], text, _line(node))


def _static_string(node: Tree, block_type: str) -> str:
    out: list[str] = []
    for part in node.children:
        if not isinstance(part, Tree):
            continue
        (inner,) = part.children
        if not isinstance(inner, Token):
            raise JobSpecError(block_type, f"{block_type} block labels must be plain strings")
        out.append(unescape(str(inner)) if inner.type == "STRING_CHARS" else str(inner)[1:])
    return "".join(out)


def _walk(node: Any) -> Iterator[Tree]:
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, Tree):
            yield cur
            stack.extend(cur.children)


def references(expr: Expr, root: str) -> list[str]:
    """The names read as `root.<name>` (or `root["name"]`) anywhere in `expr`."""
    names: list[str] = []
    for node in _walk(expr.node):
        if node.data not in ("get_attr_expr_term", "index_expr_term"):
            continue
        base, step = [c for c in node.children if isinstance(c, Tree)][:2]
        inner = base.children[0] if base.data == "expr_term" and len(base.children) == 1 else base
        if not (isinstance(inner, Tree) and inner.data == "identifier" and _name(inner) == root):
            continue
        if step.data == "get_attr":
            attr = next(c for c in step.children if isinstance(c, Tree))
            names.append(_name(attr))
        else:
            names.append(expr.text[step.meta.start_pos : step.meta.end_pos].strip('[]" '))
    return names
