"""Immutable containers for the free-form parts of a job (driver config, env, meta)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(Mapping[K, V]):
    """Immutable. A hashable, read-only mapping; equal to any mapping with the same items."""

    __slots__ = ("_data", "_hash")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._data: dict[K, V] = dict(*args, **kwargs)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenDict):
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


def freeze(value: Any) -> Any:
    """Deep-freeze JSON-like data: mappings become FrozenDict, lists become tuples."""
    if isinstance(value, FrozenDict):
        return value
    if isinstance(value, Mapping):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Undo `freeze`: FrozenDict becomes dict, tuples become lists."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def frozen_map(value: Mapping[Any, Any] | None) -> FrozenDict[Any, Any]:
    """attrs converter: None or any mapping to a deep-frozen FrozenDict."""
    if value is None:
        return EMPTY
    return freeze(value)


def frozen_tuple(value: Any) -> tuple[Any, ...]:
    """attrs converter: None or any iterable to a tuple."""
    if value is None:
        return ()
    return tuple(value)
