"""HCL2 template text: string escapes, heredoc bodies, and templates as parts.

A template (a quoted string or a heredoc) becomes a list of parts: literal text,
`Interp` (a `${...}` expression) and the `%{if}` / `%{else}` / `%{endif}` / `%{for}` /
`%{endfor}` directive markers; `nest_parts` turns the flat list into `IfPart`/`ForPart`
trees for the evaluator. Quoted strings arrive already split by python-hcl2's grammar;
heredoc bodies are one token, so `heredoc_parts` splits them here and parses each
embedded expression with python-hcl2 (`Expr` keeps a node with the text its positions
refer to). `<<-` heredocs lose the common leading whitespace of their lines.

No threads, no locks; pure functions. Called by the evaluator (hcl_eval).
"""

from __future__ import annotations

import string
from typing import Any

import attrs
import hcl2
from lark import Token, Tree

from allocrunner.errors import JobSpecError

__all__ = [
    "Directive",
    "Expr",
    "ForPart",
    "IfPart",
    "Interp",
    "Part",
    "heredoc_parts",
    "nest_parts",
    "parse_expression",
    "restore_escapes",
    "shield_escapes",
    "unescape",
]

# python-hcl2's grammar takes ``$${`` and ``%%{`` (a literal ``${`` / ``%{``) only when
# a ``}`` closes them later in the string, where HCL takes them anywhere. Before parsing,
# each is replaced by three private-use characters (same length, so the positions in
# error messages stay right), and the template's literal text gets ``${`` / ``%{`` back.
_STANDINS = (("$${", "\ue000" * 3, "${"), ("%%{", "\ue001" * 3, "%{"))


def shield_escapes(text: str) -> str:
    """`text` with ``$${`` and ``%%{`` replaced by their stand-ins (unchanged if it
    holds a stand-in character already, which then cannot be told apart)."""
    if "\ue000" in text or "\ue001" in text:
        return text
    for escape, standin, _ in _STANDINS:
        text = text.replace(escape, standin)
    return text


def restore_escapes(text: str) -> str:
    """Literal template text with each stand-in back as the ``${`` / ``%{`` it means."""
    if "\ue000" not in text and "\ue001" not in text:
        return text
    for _, standin, literal in _STANDINS:
        text = text.replace(standin, literal)
    return text


_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


@attrs.frozen
class Expr:
    """Immutable. A parse-tree node with the source text its positions index into."""

    node: Any
    text: str


@attrs.frozen
class Interp:
    """Immutable. A `${expr}` in a template."""

    expr: Expr


@attrs.frozen
class Directive:
    """Immutable. One flat `%{...}` marker: if, else, endif, for, endfor."""

    kind: str
    expr: Expr | None = None
    names: tuple[str, ...] = ()
    strip_left: bool = False
    strip_right: bool = False


@attrs.frozen
class IfPart:
    """Immutable. `%{if cond}then%{else}otherwise%{endif}`."""

    cond: Expr
    then: tuple[Part, ...]
    otherwise: tuple[Part, ...]


@attrs.frozen
class ForPart:
    """Immutable. `%{for k, v in coll}body%{endfor}` (names: (v,) or (k, v))."""

    names: tuple[str, ...]
    collection: Expr
    body: tuple[Part, ...]


Part = str | Interp | Directive | IfPart | ForPart


def unescape(text: str) -> str:
    """A quoted string's characters with their escapes (\\n, \\", \\uXXXX) resolved."""
    if "\\" not in text:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if nxt in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nxt])
                i += 2
                continue
            if nxt in "uU":
                width = 4 if nxt == "u" else 8
                digits = text[i + 2 : i + 2 + width]
                if len(digits) == width and all(d in string.hexdigits for d in digits):
                    code = int(digits, 16)
                    if code <= 0x10FFFF and not 0xD800 <= code < 0xE000:
                        out.append(chr(code))
                        i += 2 + width
                        continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_expression(text: str) -> Expr:
    """One HCL expression parsed on its own (a heredoc's `${...}`, a `-var` value)."""
    source = f"x = {shield_escapes(text)}\n"
    try:
        tree = hcl2.parses_to_tree(source)
    except RecursionError:
        raise JobSpecError("", "expression nested too deeply") from None
    except Exception as err:  # python-hcl2 raises lark's errors
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise JobSpecError("", f"invalid expression {text!r}: {detail}") from None
    body = tree.children[0]
    attrs_ = [c for c in body.children if isinstance(c, Tree) and c.data == "attribute"]
    if len(attrs_) != 1:
        raise JobSpecError("", f"invalid expression {text!r}")
    return Expr(attrs_[0].children[-1], source)


def heredoc_body(token: str, *, trim: bool) -> str:
    """The text of a heredoc token (`<<EOT\\n...\\nEOT\\n`), indentation trimmed for `<<-`."""
    first_nl = token.index("\n")
    body = token[first_nl + 1 :]
    body = body.rstrip("\r\n")
    last_nl = body.rfind("\n")
    content = body[: last_nl + 1] if last_nl >= 0 else ""
    if not trim:
        return content
    lines = content.split("\n")
    indents = [len(ln) - len(ln.lstrip(" \t")) for ln in lines if ln.strip()]
    cut = min(indents, default=0)
    return "\n".join(ln[cut:] if ln.strip() else ln.lstrip(" \t") for ln in lines)


def heredoc_parts(token: str, *, trim: bool) -> list[Part]:
    """A heredoc as template parts."""
    return split_template(heredoc_body(token, trim=trim))


def split_template(text: str) -> list[Part]:
    """Template text (no quote escapes) as flat parts."""
    parts: list[Part] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith(("$${", "%%{"), i):
            literal.append(text[i + 1 : i + 3])
            i += 3
            continue
        if text.startswith(("${", "%{"), i):
            end = _closing_brace(text, i + 2)
            inner = text[i + 2 : end]
            if literal:
                parts.append("".join(literal))
                literal = []
            if text[i] == "$":
                parts.append(Interp(parse_expression(inner.strip().strip("~").strip())))
            else:
                parts.append(parse_directive(inner))
            i = end + 1
            continue
        literal.append(text[i])
        i += 1
    if literal:
        parts.append("".join(literal))
    return [restore_escapes(p) if isinstance(p, str) else p for p in parts]


def _closing_brace(text: str, start: int) -> int:
    depth = 0
    i, n = start, len(text)
    quote = False
    while i < n:
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == '"':
                quote = False
        elif c == '"':
            quote = True
        elif c == "{":
            depth += 1
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    raise JobSpecError("", "unterminated template sequence: missing '}'")


def parse_directive(inner: str) -> Directive:
    """A `%{...}` directive's text (without `%{` and `}`) as a flat marker."""
    strip_left = inner.startswith("~")
    strip_right = inner.endswith("~")
    body = inner[1 if strip_left else 0 : len(inner) - 1 if strip_right else len(inner)].strip()
    word, _, rest = body.partition(" ")
    if word in ("else", "endif", "endfor") and not rest.strip():
        return Directive(word, None, (), strip_left, strip_right)
    if word == "if":
        return Directive("if", parse_expression(rest), (), strip_left, strip_right)
    if word == "for":
        names_text, sep, coll = rest.partition(" in ")
        names = tuple(n.strip() for n in names_text.split(","))
        if not sep or not 1 <= len(names) <= 2 or not all(n.isidentifier() for n in names):
            raise JobSpecError("", f"invalid template for directive: %{{{inner}}}")
        return Directive("for", parse_expression(coll), names, strip_left, strip_right)
    raise JobSpecError("", f"invalid template directive: %{{{inner}}}")


def directive_from_tree(node: Tree, text: str) -> Directive:
    """A quoted string's directive node (`template_if_start`, ...) as a flat marker."""
    tokens = [c for c in node.children if isinstance(c, Token)]
    strips = [t for t in tokens if t.type == "STRIP_MARKER"]
    kind = {
        "template_if_start": "if",
        "template_else": "else",
        "template_endif": "endif",
        "template_for_start": "for",
        "template_endfor": "endfor",
    }[node.data]
    keyword = next(t for t in tokens if t.type in ("IF", "ELSE", "ENDIF", "FOR", "ENDFOR"))
    at = keyword.start_pos or 0
    strip_left = any((s.start_pos or 0) < at for s in strips)
    strip_right = any((s.start_pos or 0) > at for s in strips)
    trees = [c for c in node.children if isinstance(c, Tree)]
    if kind == "if":
        return Directive("if", Expr(trees[0], text), (), strip_left, strip_right)
    if kind == "for":
        names = tuple(str(t.children[0]) for t in trees if t.data == "identifier")
        return Directive("for", Expr(trees[-1], text), names, strip_left, strip_right)
    return Directive(kind, None, (), strip_left, strip_right)


def nest_parts(flat: list[Part]) -> tuple[Part, ...]:
    """Flat parts with directive markers as nested `IfPart` / `ForPart` (strips applied)."""
    stripped = _apply_strips(flat)
    nested, pos, closer = _nest(stripped, 0)
    if closer is not None:
        raise JobSpecError("", f"unexpected %{{{closer.kind}}} in template")
    del pos
    return nested


def _apply_strips(flat: list[Part]) -> list[Part]:
    out = list(flat)
    for i, part in enumerate(out):
        if not isinstance(part, Directive):
            continue
        if part.strip_left and i > 0 and isinstance(out[i - 1], str):
            out[i - 1] = str(out[i - 1]).rstrip()
        if part.strip_right and i + 1 < len(out) and isinstance(out[i + 1], str):
            out[i + 1] = str(out[i + 1]).lstrip()
    return out


def _nest(flat: list[Part], pos: int) -> tuple[tuple[Part, ...], int, Directive | None]:
    """Parts from `pos` up to an unmatched else/endif/endfor (returned as the closer)."""
    out: list[Part] = []
    while pos < len(flat):
        part = flat[pos]
        pos += 1
        if not isinstance(part, Directive):
            out.append(part)
            continue
        if part.kind in ("else", "endif", "endfor"):
            return tuple(out), pos, part
        assert part.expr is not None
        body, pos, closer = _nest(flat, pos)
        if part.kind == "for":
            if closer is None or closer.kind != "endfor":
                raise JobSpecError("", "%{for} without a matching %{endfor}")
            out.append(ForPart(part.names, part.expr, body))
            continue
        otherwise: tuple[Part, ...] = ()
        if closer is not None and closer.kind == "else":
            otherwise, pos, closer = _nest(flat, pos)
        if closer is None or closer.kind != "endif":
            raise JobSpecError("", "%{if} without a matching %{endif}")
        out.append(IfPart(part.expr, body, otherwise))
    return tuple(out), pos, None
