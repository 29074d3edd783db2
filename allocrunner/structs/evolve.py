"""`evolve`: a copy of a frozen attrs value object with some fields changed, exactly as
`attrs.evolve` makes it, for the value objects rebuilt on every task start (a task's
state, its local state, the client's view of its allocation), and `init_args`, the
arguments it calls the class with. `attrs.evolve` looks the class's fields up and reads
each one with a getattr of its own on every call; this reads them all with one
`operator.attrgetter`, made once per class.

No threads, no locks: the per-class readers are kept in a dict written without a lock
(an item assignment is atomic, and two threads that race build equal readers). Cleared
when it grows past `_READERS_MAX` (classes made at run time, as some tests make them).
Used by the value objects' own ``with_*`` methods, the runner's client view, the
driver's `TaskConfig.to_json` and the codec's struct encoder (`attributes_reader`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, TypeVar

import attrs

__all__ = ["attributes_reader", "evolve", "init_args"]

T = TypeVar("T")

_Reader = tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]
_READERS: dict[type, _Reader] = {}
_READERS_MAX = 256


def evolve(inst: T, **changes: Any) -> T:
    """A copy of attrs instance `inst` with `changes` (keyed by init argument name, as
    `attrs.evolve` takes them): its class is called with every init argument, so
    converters and validators run as they do for `attrs.evolve`, and an unknown name
    raises TypeError."""
    kwargs = init_args(inst)
    kwargs.update(changes)
    return type(inst)(**kwargs)


def init_args(inst: Any) -> dict[str, Any]:
    """The init arguments (by name, as the class takes them) that rebuild attrs
    instance `inst`: for a class whose fields are all init arguments with public names,
    what ``attrs.asdict(inst, recurse=False)`` gives."""
    cls = type(inst)
    reader = _READERS.get(cls)
    if reader is None:
        reader = _reader(cls)
    aliases, read = reader
    return dict(zip(aliases, read(inst), strict=True))


def _reader(cls: type) -> _Reader:
    """The init argument names of attrs class `cls` and a function reading the values
    of their attributes from an instance, as a tuple."""
    fields = [field for field in attrs.fields(cls) if field.init]
    names = tuple(field.name for field in fields)
    aliases = tuple(field.alias for field in fields)
    read = attributes_reader(names)
    if len(_READERS) >= _READERS_MAX:
        _READERS.clear()
    reader = _READERS[cls] = (aliases, read)
    return reader


def attributes_reader(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function reading the attributes `names` of an object into a tuple, with one
    `operator.attrgetter` call when there are two or more."""
    if len(names) >= 2:
        return operator.attrgetter(*names)
    return _few_reader(names)


def _few_reader(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A reader of at most one attribute: `attrgetter` returns a lone value bare."""
    getters = tuple(operator.attrgetter(name) for name in names)

    def read(inst: Any) -> tuple[Any, ...]:
        return tuple(getter(inst) for getter in getters)

    return read
