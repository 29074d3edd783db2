"""What a guarded or immutable field may hold: the check-mode rule behind copy-on-write.

An `immutable()` field is read with no lock and a `guarded(...)` field under either
side of its lock, so the value it holds must never change in place: a writer replaces
it (copy-on-write), and a reader keeps a snapshot nobody can alter. In check mode
`allocrunner._locking` asks `why_mutable(value)` at every binding of a tagged field and
raises when it names a reason. The rule, decided once per class and cached:

- Immutable leaves: None, bool, numbers, str, bytes, ranges, enum members, dates and
  times, paths, UUIDs; instances of frozen attrs classes and frozen dataclasses (the
  value objects of `structs`, whose converters freeze their own fields); functions,
  methods and other callables of foreign classes.
- Immutable containers, whose items are checked in turn: tuples (named tuples
  included), frozensets and `FrozenDict`.
- Refused: dict, list, set, bytearray, deque, array and every other mutable mapping,
  sequence or set, and instances of mutable attrs classes and dataclasses.
- Objects of the package's own classes are allowed when the class declares how it is
  protected: it tags its fields (`guarded` / `immutable` / `confined`), or is marked
  `_locking.thread_safe` (the `_sync` primitives, whose slots cannot carry tags, and the
  checked containers of `_guarded`, whose every access checks its lock). Any other
  package class is refused.
- Objects of foreign classes (threads, files, sockets, database connections, and what
  callers hand in: a StateDB, a driver, a callback's owner) are allowed: each has its
  own contract, which the caller vouches for when handing it over.

Threads: any; pure functions. Locks: none; the per-class cache is a dict whose entries
are written once with the same value by whichever thread classifies a class first.
Owner: `allocrunner._locking`, which imports it in check mode only.
"""

from __future__ import annotations

import array
import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import pathlib
import uuid
from collections.abc import MutableMapping, MutableSequence, MutableSet
from typing import Any

import attrs

from allocrunner._locking import THREAD_SAFE
from allocrunner.structs.frozen import FrozenDict

__all__ = ["why_mutable"]

_PACKAGE = "allocrunner"

_LEAF_TYPES: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    range,
    enum.Enum,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    datetime.tzinfo,
    decimal.Decimal,
    fractions.Fraction,
    pathlib.PurePath,
    uuid.UUID,
)
_MUTABLE_TYPES: tuple[type, ...] = (
    dict,
    list,
    set,
    bytearray,
    collections.deque,
    array.array,
    MutableMapping,
    MutableSequence,
    MutableSet,
)

# How a class's instances are checked: _LEAF (fine as they are), _ITEMS (fine if every
# item is), or the reason they are refused.
_LEAF = ""
_ITEMS = "items"
_kinds: dict[type, str] = {}


def why_mutable(value: object) -> str | None:
    """None if `value` may be held by a tagged field; else why not (naming the part)."""
    kind = _kinds.get(type(value))
    if kind is None:
        kind = _kinds.setdefault(type(value), _classify(type(value)))
    if kind == _LEAF:
        return None
    if kind != _ITEMS:
        return kind
    for item in _items(value):
        reason = why_mutable(item)
        if reason is not None:
            return f"{reason} (inside a {type(value).__name__})"
    return None


def _items(value: Any) -> list[object]:
    if isinstance(value, FrozenDict):
        return [*value.keys(), *value.values()]
    return list(value)


def _classify(cls: type) -> str:
    if issubclass(cls, _LEAF_TYPES) or getattr(cls, THREAD_SAFE, False):
        return _LEAF
    if issubclass(cls, tuple | frozenset | FrozenDict):
        return _ITEMS
    name = cls.__qualname__
    if issubclass(cls, _MUTABLE_TYPES):
        return f"a {name} is a mutable container: hold a tuple, frozenset or FrozenDict"
    if attrs.has(cls):
        frozen = getattr(cls.__setattr__, "__name__", "") == "_frozen_setattrs"
        return _LEAF if frozen else f"a {name} is a mutable attrs instance"
    if dataclasses.is_dataclass(cls):
        params: Any = getattr(cls, "__dataclass_params__", None)
        frozen = bool(getattr(params, "frozen", False))
        return _LEAF if frozen else f"a {name} is a mutable dataclass instance"
    if cls.__module__ == _PACKAGE or cls.__module__.startswith(_PACKAGE + "."):
        return (
            f"a {cls.__module__}.{name} neither is immutable nor declares how it is "
            "protected (tag its fields, or mark it thread_safe)"
        )
    return _LEAF
