"""Allocations encoded to API JSON once per version, not once per request.

Every change to a stored allocation gives it a new modify index (the cluster's
indexes only grow), so ``(id, modify_index)`` names one immutable version. A woken
batch of blocking queries over the same snapshot then encodes each allocation once,
and a list is the cached parts joined. `functools.lru_cache` bounds the memory and
is safe to call from every request thread.

Threads: any request thread. Locks: none declared; the cache's own internal lock is
held only inside `functools.lru_cache` and calls nothing out. Owner: the API handlers
that answer with allocations.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from typing import Any

from allocrunner.structs import Allocation

__all__ = ["json_list", "versioned"]

CACHE_SIZE = 8192


class _Version:
    """An allocation keyed by its id and modify index (equal keys: the same version)."""

    __slots__ = ("alloc", "key")

    def __init__(self, alloc: Allocation, flavour: str) -> None:
        self.alloc = alloc
        self.key = (alloc.id, alloc.modify_index, flavour)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Version) and self.key == other.key


def versioned(encode: Callable[[Allocation], Any], flavour: str) -> Callable[[Allocation], bytes]:
    """`encode` (an allocation to a JSON-able value) as cached JSON bytes."""

    @functools.lru_cache(maxsize=CACHE_SIZE)
    def cached(version: _Version) -> bytes:
        return json.dumps(encode(version.alloc)).encode()

    def encoded(alloc: Allocation) -> bytes:
        return cached(_Version(alloc, flavour))

    return encoded


def json_list(parts: Iterable[bytes]) -> bytes:
    """A JSON array of already encoded values."""
    return b"[" + b",".join(parts) + b"]"
