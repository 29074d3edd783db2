"""Immutable containers for the free-form parts of a job (driver config, env, meta).

`FrozenDict` is the read-only, hashable mapping every value object uses for maps, and
the one guarded fields hold when a thread-safe class keeps a map copy-on-write;
`freeze`/`thaw` convert JSON-like data to and from deeply frozen form,
`frozen_map`/`frozen_tuple` are the attrs converters built on them, `plain_dict` and
`merge_into` copy a map's items at C speed (``dict(m)``, ``d.update(m)`` and ``{**m}``
call back into Python for every key of any mapping that is not a dict), and
`shallow_frozen` shares a map that is frozen already instead of copying it.

No threads, no locks; immutable values and pure functions, safe to share between
threads. Used by every value object here, by the codec, and by any class that
publishes a map under a lock.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from typing import Any, NoReturn, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")

# Binds a slot of a FrozenDict, whose own __setattr__ refuses.
_bind = object.__setattr__


class FrozenDict(Mapping[K, V]):
    """Immutable. A hashable, read-only mapping; equal to any mapping with the same items.

    Its attributes cannot be rebound either (AttributeError), so nothing reachable
    from it changes once it is built; the hash is computed on first use and cached.
    """

    __slots__ = ("_data", "_hash")

    _data: dict[K, V]
    _hash: int  # unset until the first hash() of this mapping

    @overload
    def __init__(self) -> None: ...
    @overload
    def __init__(self, items: Mapping[K, V], /) -> None: ...
    @overload
    def __init__(self, items: Iterable[tuple[K, V]], /) -> None: ...
    @overload
    def __init__(
        self: FrozenDict[str, Any],
        items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ...,
        /,
        **kwargs: Any,
    ) -> None: ...
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The same arguments as `dict(...)`."""
        _bind(self, "_data", dict(*args, **kwargs))

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"FrozenDict is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"FrozenDict is immutable: cannot delete {name!r}")

    def __reduce__(self) -> tuple[type[FrozenDict[K, V]], tuple[dict[K, V]]]:
        """Pickle and copy through the constructor, never by setting attributes."""
        return (type(self), (self._data,))

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # The Mapping mixins would go through __getitem__ item by item; the views and
    # lookups of the dict underneath are read-only and run at C speed.
    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: K, default: Any = None) -> Any:  # type: ignore[override]
        return self._data.get(key, default)

    def keys(self) -> KeysView[K]:
        return self._data.keys()

    def items(self) -> ItemsView[K, V]:
        return self._data.items()

    def values(self) -> ValuesView[V]:
        return self._data.values()

    def __hash__(self) -> int:
        try:
            return self._hash
        except AttributeError:
            # Racing threads compute the same value, so caching it needs no lock.
            value = hash(frozenset(self._data.items()))
            _bind(self, "_hash", value)
            return value

    def __eq__(self, other: object) -> bool:
        if type(other) is FrozenDict or isinstance(other, FrozenDict):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def set(self, key: K, value: V) -> FrozenDict[K, V]:
        """A copy with `key` bound to `value`."""
        data = dict(self._data)
        data[key] = value
        return FrozenDict(data)

    def thaw(self) -> dict[K, Any]:
        """A deep, mutable copy (dicts and lists) for JSON encoding or a driver."""
        return {k: thaw(v) for k, v in self._data.items()}


EMPTY: FrozenDict[Any, Any] = FrozenDict()


# Values that are immutable as they are: tested by exact type first, which is far
# cheaper than the ABC checks below (a task's env alone is a hundred strings).
_ATOMS = frozenset({str, int, float, bool, type(None), bytes})


def freeze(value: Any) -> Any:
    """Deep-freeze JSON-like data: mappings become FrozenDict, lists become tuples."""
    kind = type(value)
    if kind in _ATOMS or kind is FrozenDict:
        return value
    # A dict, a list or a tuple is told by its exact type before the ABC checks below,
    # which cost two calls into Python each (JSON data is made of these).
    if kind is dict or (not isinstance(value, FrozenDict) and isinstance(value, Mapping)):
        return FrozenDict({k: v if type(v) in _ATOMS else freeze(v) for k, v in value.items()})
    if kind is tuple or kind is list or isinstance(value, list | tuple):
        return tuple(v if type(v) in _ATOMS else freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Undo `freeze`: FrozenDict becomes dict, tuples become lists."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if kind is FrozenDict or kind is dict or isinstance(value, Mapping):
        return {k: v if type(v) in _ATOMS else thaw(v) for k, v in value.items()}
    if kind is tuple or kind is list or isinstance(value, tuple | list):
        return [v if type(v) in _ATOMS else thaw(v) for v in value]
    return value


def frozen_map(value: Mapping[Any, Any] | None) -> FrozenDict[Any, Any]:
    """attrs converter: None or any mapping to a deep-frozen FrozenDict. Every empty
    one is the shared `EMPTY` (value objects carry a dozen maps that are mostly empty).
    A FrozenDict is deep-frozen already and comes back as it is: value objects are
    rebuilt with `attrs.evolve`, which runs every converter again on maps already
    converted, dozens of them per task started."""
    if type(value) is FrozenDict:
        return value if value._data else EMPTY
    if not value:
        return EMPTY
    return freeze(value)


def shallow_frozen(value: Mapping[K, V]) -> FrozenDict[K, V]:
    """A FrozenDict of `value`'s items (shallow: the values are kept as they are);
    `value` itself when it is one already, so that components handed one shared map
    (a client's drivers, the node's variables) keep it instead of a copy each."""
    if type(value) is FrozenDict:
        return value
    return FrozenDict(value)


def plain_dict(value: Mapping[K, V]) -> dict[K, V]:
    """A new, mutable dict of `value`'s items (shallow), copied at C speed from a
    FrozenDict as from a dict."""
    if type(value) is FrozenDict:
        return dict(value._data)
    return dict(value)


def merge_into(target: dict[K, V], value: Mapping[K, V]) -> None:
    """``target.update(value)``, at C speed for a FrozenDict as for a dict."""
    target.update(value._data if type(value) is FrozenDict else value)


def frozen_tuple(value: Any) -> tuple[Any, ...]:
    """attrs converter: None or any iterable to a tuple."""
    if value is None:
        return ()
    return tuple(value)
