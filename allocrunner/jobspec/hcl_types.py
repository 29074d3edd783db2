"""HCL2 type constraints and value conversion, as cty (HCL's value system) does them.

Values are plain Python: `str`, `int`/`float` (numbers; integral results are `int`),
`bool`, `None` (null), `list` (HCL lists, tuples and sets) and `dict` (maps, objects).
A type constraint is a `HType`; `convert(value, t)` applies cty's conversion rules
("500" to 500 for a number, "true" to true for a bool, 1 to "1" for a string, element by
element for collections, extra object attributes dropped) or raises `ConversionError`.
`parse_type(tree)` reads a `type = ...` expression (`list(string)`, `object({a =
number})`, `optional(T)` inside objects) from python-hcl2's parse tree.

No threads, no locks; pure functions and immutable values. Called by the variable
resolver (hcl_vars), the type-conversion functions and the job-body evaluator.
"""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import Decimal
from typing import Any

import attrs
from lark import Token, Tree

__all__ = [
    "ANY",
    "BOOL",
    "NUMBER",
    "STRING",
    "ConversionError",
    "HType",
    "ListType",
    "MapType",
    "ObjectType",
    "Primitive",
    "SetType",
    "TupleType",
    "convert",
    "describe_value",
    "nfc",
    "normalize_number",
    "parse_number",
    "parse_type",
    "set_of",
    "to_string",
]


class ConversionError(ValueError):
    """A value does not fit a type constraint; the message says why (cty's wording)."""


class HType:
    """Immutable. Base of the type constraints."""

    def name(self) -> str:
        raise NotImplementedError


@attrs.frozen
class Primitive(HType):
    """Immutable. `string`, `number`, `bool` or `any`."""

    kind: str

    def name(self) -> str:
        return self.kind


@attrs.frozen
class ListType(HType):
    """Immutable. `list(T)`."""

    element: HType

    def name(self) -> str:
        return f"list({self.element.name()})"


@attrs.frozen
class SetType(HType):
    """Immutable. `set(T)`."""

    element: HType

    def name(self) -> str:
        return f"set({self.element.name()})"


@attrs.frozen
class MapType(HType):
    """Immutable. `map(T)`."""

    element: HType

    def name(self) -> str:
        return f"map({self.element.name()})"


@attrs.frozen
class ObjectType(HType):
    """Immutable. `object({name = T, ...})`; `optional` names may be absent (null)."""

    attributes: tuple[tuple[str, HType], ...]
    optional: frozenset[str] = frozenset()

    def name(self) -> str:
        inner = ", ".join(f"{k}={t.name()}" for k, t in self.attributes)
        return f"object({{{inner}}})"


@attrs.frozen
class TupleType(HType):
    """Immutable. `tuple([T1, T2, ...])`."""

    elements: tuple[HType, ...]

    def name(self) -> str:
        return f"tuple([{', '.join(t.name() for t in self.elements)}])"


STRING = Primitive("string")
NUMBER = Primitive("number")
BOOL = Primitive("bool")
ANY = Primitive("any")

_NUMBER_TEXT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
MAX_EXACT_INT = 2**53


def describe_value(value: Any) -> str:
    """The HCL type name of a value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "tuple"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def normalize_number(value: int | float) -> int | float:
    """An integral float as int (cty numbers have one kind); non-finite is an error."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConversionError("the result is not a finite number")
        if value.is_integer() and abs(value) < MAX_EXACT_INT:
            return int(value)
    return value


def parse_number(text: str) -> int | float:
    """A decimal number as cty parses one from a string; ConversionError otherwise."""
    stripped = text.strip() if text == text.strip() else None
    if stripped is None or not _NUMBER_TEXT.fullmatch(stripped):
        raise ConversionError(f"a number is required, got string {text!r}")
    if re.fullmatch(r"[+-]?\d+", stripped):
        return int(stripped)
    return normalize_number(float(stripped))


def to_string(value: Any) -> str:
    """A primitive value as a string, as cty converts one; ConversionError otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        value = normalize_number(value)
        if isinstance(value, int):
            return str(value)
        return format(Decimal(repr(value)), "f")  # cty writes no exponent: 1e-07 is 0.0000001
    raise ConversionError(f"string required, got {describe_value(value)}")


def nfc(value: Any) -> Any:
    """`value` as cty holds it: strings in Unicode NFC form, integral numbers as int."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, float):
        return normalize_number(value)
    if isinstance(value, (list, tuple)):
        return [nfc(v) for v in value]
    if isinstance(value, dict):
        return {to_string(nfc(k)): nfc(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int)):
        return value
    raise ConversionError(f"unsupported value of Python type {type(value).__name__}")


def set_of(items: list[Any]) -> list[Any]:
    """A cty set as a list: duplicates dropped; strings and numbers sorted as cty does."""
    unique: list[Any] = []
    for item in items:
        if not any(_same(item, seen) for seen in unique):
            unique.append(item)
    if unique and all(isinstance(v, str) for v in unique):
        return sorted(unique)
    if unique and all(_is_number(v) for v in unique):
        return sorted(unique)
    return unique


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    return (type(a) is type(b) and a == b) or (_is_number(a) and _is_number(b) and a == b)


def convert(value: Any, target: HType) -> Any:
    """`value` converted to `target` by cty's rules; ConversionError if it cannot be."""
    if value is None or target == ANY:
        return value
    if isinstance(target, Primitive):
        return _convert_primitive(value, target.kind)
    if isinstance(target, (ListType, SetType)):
        items = _as_sequence(value, target.name())
        element = target.element
        out = [_at(i, lambda v=v: convert(v, element)) for i, v in enumerate(items)]
        return set_of(out) if isinstance(target, SetType) else out
    if isinstance(target, MapType):
        if not isinstance(value, dict):
            raise ConversionError(f"{target.name()} required, got {describe_value(value)}")
        element = target.element
        return {k: _at(k, lambda v=v: convert(v, element)) for k, v in value.items()}
    if isinstance(target, ObjectType):
        return _convert_object(value, target)
    if isinstance(target, TupleType):
        items = _as_sequence(value, target.name())
        if len(items) != len(target.elements):
            raise ConversionError(f"tuple required with {len(target.elements)} elements")
        return [
            _at(i, lambda v=v, t=t: convert(v, t))
            for i, (v, t) in enumerate(zip(items, target.elements, strict=True))
        ]
    raise ConversionError(f"unknown type {target!r}")


def _at(key: object, fn: Any) -> Any:
    try:
        return fn()
    except ConversionError as err:
        msg = str(err)
        if msg.startswith("["):
            raise ConversionError(f"[{key!r}]{msg}") from None
        raise ConversionError(f"[{key!r}]: {msg}") from None


def _as_sequence(value: Any, wanted: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConversionError(f"{wanted} required, got {describe_value(value)}")
    return value


def _convert_primitive(value: Any, kind: str) -> Any:
    if kind == "string":
        return to_string(value)
    if kind == "number":
        if _is_number(value):
            return normalize_number(value)
        if isinstance(value, str):
            return parse_number(value)
        raise ConversionError(f"number required, got {describe_value(value)}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in ("true", "false", "1", "0"):
            return value in ("true", "1")
        raise ConversionError(f"bool required, got {describe_value(value)} {value!r}")
    raise ConversionError(f"unknown type {kind!r}")


def _convert_object(value: Any, target: ObjectType) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConversionError(f"object required, got {describe_value(value)}")
    out: dict[str, Any] = {}
    for name, attr_type in target.attributes:
        if name not in value:
            if name in target.optional:
                out[name] = None
                continue
            raise ConversionError(f'attribute "{name}" is required')
        out[name] = _at(name, lambda v=value[name], t=attr_type: convert(v, t))
    return out


# --- type expressions ---------------------------------------------------------------

_PRIMITIVES = {"string": STRING, "number": NUMBER, "bool": BOOL, "any": ANY}


def parse_type(tree: Tree | Token) -> HType:
    """The type constraint written as `tree` (an expression in python-hcl2's grammar)."""
    return _type_of(_strip(tree), in_object=False)[0]


def _strip(node: Any) -> Any:
    """The node under `expr_term` wrappers and parentheses."""
    while isinstance(node, Tree) and node.data == "expr_term":
        kids = [c for c in node.children if _significant(c)]
        if len(kids) != 1:
            break
        node = kids[0]
    return node


def _significant(node: Any) -> bool:
    if isinstance(node, Token):
        return node.type not in ("LPAR", "RPAR", "NL_OR_COMMENT")
    return not (isinstance(node, Tree) and node.data == "new_line_or_comment")


def _type_of(node: Any, *, in_object: bool) -> tuple[HType, bool]:
    """(type, optional) of one type expression node."""
    if isinstance(node, Tree) and node.data == "identifier":
        name = str(node.children[0])
        if name in _PRIMITIVES:
            return _PRIMITIVES[name], False
        raise ConversionError(f"unknown type keyword {name!r}")
    if isinstance(node, Tree) and node.data == "function_call":
        return _constructor(node, in_object=in_object)
    raise ConversionError("a type constraint is required (string, number, bool, list(...), ...)")


def _constructor(node: Tree, *, in_object: bool) -> tuple[HType, bool]:
    name = str(node.children[0].children[0])
    args = [
        _strip(c)
        for a in node.children
        if isinstance(a, Tree) and a.data == "arguments"
        for c in a.children
        if _significant(c) and not (isinstance(c, Token) and c.type in ("COMMA", "ELLIPSIS"))
    ]
    if len(args) != 1:
        raise ConversionError(f"{name}(...) takes exactly one argument")
    (arg,) = args
    if name in ("list", "set", "map"):
        element, _ = _type_of(arg, in_object=False)
        return {"list": ListType, "set": SetType, "map": MapType}[name](element), False
    if name == "optional":
        if not in_object:
            raise ConversionError("optional(...) is only allowed in object attribute types")
        return _type_of(arg, in_object=False)[0], True
    if name == "object":
        return _object_type(arg), False
    if name == "tuple":
        if not (isinstance(arg, Tree) and arg.data == "tuple"):
            raise ConversionError("tuple(...) takes a list of types: tuple([string, number])")
        kids = [_strip(c) for c in arg.children if isinstance(c, Tree) and _significant(c)]
        return TupleType(tuple(_type_of(k, in_object=False)[0] for k in kids)), False
    raise ConversionError(f"unknown type constructor {name!r}")


def _object_type(arg: Any) -> ObjectType:
    if not (isinstance(arg, Tree) and arg.data == "object"):
        raise ConversionError("object(...) takes an object of types: object({a = string})")
    attributes: list[tuple[str, HType]] = []
    optional: set[str] = set()
    for elem in arg.children:
        if not (isinstance(elem, Tree) and elem.data == "object_elem"):
            continue
        key = _strip(elem.children[0].children[0])
        if isinstance(key, Tree) and key.data in ("identifier", "keyword", "literal_value"):
            name = str(key.children[0])
        else:
            raise ConversionError("object type attribute names must be identifiers")
        attr_type, is_optional = _type_of(_strip(elem.children[2]), in_object=True)
        attributes.append((name, attr_type))
        if is_optional:
            optional.add(name)
    return ObjectType(tuple(attributes), frozenset(optional))
