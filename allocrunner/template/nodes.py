"""Parse-tree nodes of a Go text/template.

Every node is an immutable dataclass carrying `pos`, the character offset of its
source in the template text (used for Go's `NAME:LINE:COL` error locations), and
renders back to template source with `str()` (used in `executing ... at <node>`).

Threads: none. Locks: none (nodes are frozen). Owner: built by `parser`, walked by
`execute`, read by `consul_or_vault_functions`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Text:
    pos: int
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Dot:
    pos: int

    def __str__(self) -> str:
        return "."


@dataclass(frozen=True, slots=True)
class Nil:
    pos: int

    def __str__(self) -> str:
        return "nil"


@dataclass(frozen=True, slots=True)
class Bool:
    pos: int
    value: bool

    def __str__(self) -> str:
        return "true" if self.value else "false"


@dataclass(frozen=True, slots=True)
class String:
    pos: int
    quoted: str
    value: str

    def __str__(self) -> str:
        return self.quoted


@dataclass(frozen=True, slots=True)
class Number:
    """A numeric constant; `int_value`/`float_value` are None when not representable."""

    pos: int
    text: str
    int_value: int | None
    float_value: float | None
    is_char: bool = False

    def __str__(self) -> str:
        return self.text

    def ideal(self) -> int | float:
        """The value of an untyped constant: int unless written with a fraction/exponent."""
        if self.is_char and self.int_value is not None:
            return self.int_value
        looks_float = any(c in self.text for c in ".eEpP") and not self.text.lower().startswith(
            ("0x", "-0x", "+0x")
        )
        if self.int_value is not None and not looks_float:
            return self.int_value
        if self.float_value is not None:
            return self.float_value
        return self.int_value if self.int_value is not None else 0


@dataclass(frozen=True, slots=True)
class Identifier:
    pos: int
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Variable:
    """`$x.a.b`: `names[0]` is the variable, the rest a field chain."""

    pos: int
    names: tuple[str, ...]

    def __str__(self) -> str:
        return ".".join(self.names)


@dataclass(frozen=True, slots=True)
class Field:
    """`.a.b`: a field chain on dot."""

    pos: int
    names: tuple[str, ...]

    def __str__(self) -> str:
        return "".join("." + n for n in self.names)


@dataclass(frozen=True, slots=True)
class Chain:
    """`(pipeline).a.b` or `func.a`: a field chain on another operand."""

    pos: int
    node: Operand
    names: tuple[str, ...]

    def __str__(self) -> str:
        inner = f"({self.node})" if isinstance(self.node, Pipeline) else str(self.node)
        return inner + "".join("." + n for n in self.names)


@dataclass(frozen=True, slots=True)
class Command:
    pos: int
    args: tuple[Operand, ...]

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, Pipeline) else str(a) for a in self.args)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """`$x := a | b`: declared (or assigned) variables and the commands."""

    pos: int
    line: int
    decl: tuple[str, ...]
    is_assign: bool
    cmds: tuple[Command, ...]

    def __str__(self) -> str:
        head = ""
        if self.decl:
            head = ", ".join(self.decl) + (" = " if self.is_assign else " := ")
        return head + " | ".join(str(c) for c in self.cmds)


@dataclass(frozen=True, slots=True)
class Action:
    pos: int
    line: int
    pipe: Pipeline

    def __str__(self) -> str:
        return "{{" + str(self.pipe) + "}}"


@dataclass(frozen=True, slots=True)
class ListNode:
    pos: int
    nodes: tuple[Node, ...]

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


@dataclass(frozen=True, slots=True)
class Branch:
    """`if`, `with` or `range`: `kind` says which; `else_list` may be None."""

    pos: int
    line: int
    kind: str
    pipe: Pipeline
    body: ListNode
    else_list: ListNode | None

    def __str__(self) -> str:
        tail = f"{{{{else}}}}{self.else_list}" if self.else_list is not None else ""
        return f"{{{{{self.kind} {self.pipe}}}}}{self.body}{tail}{{{{end}}}}"


@dataclass(frozen=True, slots=True)
class Break:
    pos: int
    line: int

    def __str__(self) -> str:
        return "{{break}}"


@dataclass(frozen=True, slots=True)
class Continue:
    pos: int
    line: int

    def __str__(self) -> str:
        return "{{continue}}"


@dataclass(frozen=True, slots=True)
class TemplateCall:
    pos: int
    line: int
    name: str
    pipe: Pipeline | None

    def __str__(self) -> str:
        arg = f" {self.pipe}" if self.pipe is not None else ""
        return f'{{{{template "{self.name}"{arg}}}}}'


Operand = Dot | Nil | Bool | String | Number | Identifier | Variable | Field | Chain | Pipeline
Node = Text | Action | Branch | Break | Continue | TemplateCall | ListNode


def is_empty_tree(node: ListNode) -> bool:
    """Go's IsEmptyTree: only white-space text (no actions) counts as empty."""
    return all(isinstance(n, Text) and not n.text.strip() for n in node.nodes)
