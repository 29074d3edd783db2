"""Checked containers: a dict or list that changes in place under a declared lock.

A guarded field holds an immutable value, replaced copy-on-write (DESIGN.md §4 rule 3).
Where a structure is truly mutable — large, and changed one entry at a time — it lives
in a container from here instead, bound once to an `immutable()` field:

    self._lock = make_rwlock("StateDB._lock")
    self._rows: dict[str, Row] = guarded_dict(self._lock)

With check mode off `guarded_dict` / `guarded_list` return a plain dict / list, so
production pays nothing. In check mode they return a `GuardedDict` / `GuardedList`
whose every read asserts that the calling thread holds the lock (either side) and
whose every change asserts the write side; a tagged field accepts them (they are
marked thread_safe), a plain dict or list it refuses.

Threads: any; the checks run in the calling thread. Locks: none of their own; each
container is guarded by the declared lock it is given. Owner: the class that binds
one to its field, and only under that lock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from allocrunner._locking import CHECK, Mutex, RWLock, _violation, held_mode, thread_safe
from allocrunner.errors import LockNotHeldError

__all__ = ["GuardedDict", "GuardedList", "guarded_dict", "guarded_list"]

K = TypeVar("K")
V = TypeVar("V")
F = TypeVar("F", bound=Callable[..., Any])

Lock = Mutex | RWLock


def _lock_name(lock: Lock) -> str:
    return str(getattr(lock, "name", lock))


def _checked(write: bool) -> Callable[[F], F]:
    """Wrap a container method so that it first asserts its lock (the write side if
    `write`)."""

    def decorate(method: F) -> F:
        def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
            mode = held_mode(self.lock)
            if mode is None or (write and mode != "write"):
                need = "the write side of " if write and mode == "read" else ""
                what = "changing" if write else "reading"
                raise _violation(
                    LockNotHeldError(
                        f"{what} a {type(self).__name__} ({method.__name__}) without "
                        f"holding {need}{_lock_name(self.lock)}"
                    )
                )
            return method(self, *args, **kwargs)

        checked.__name__ = method.__name__
        checked.__doc__ = method.__doc__
        return checked  # type: ignore[return-value]  # same signature, checked first

    return decorate


_DICT_READS = (
    *("__getitem__", "__contains__", "__iter__", "__len__", "__eq__", "__or__"),
    *("get", "keys", "values", "items", "copy"),
)
_DICT_WRITES = (
    *("__setitem__", "__delitem__", "__ior__"),
    *("pop", "popitem", "setdefault", "update", "clear"),
)
_LIST_READS = (
    *("__getitem__", "__contains__", "__iter__", "__len__", "__reversed__", "__eq__"),
    *("__add__", "__mul__", "index", "count", "copy"),
)
_LIST_WRITES = (
    *("__setitem__", "__delitem__", "__iadd__", "__imul__"),
    *("append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse"),
)


def _install(cls: type, base: type, reads: Iterable[str], writes: Iterable[str]) -> None:
    for name in reads:
        setattr(cls, name, _checked(False)(getattr(base, name)))
    for name in writes:
        setattr(cls, name, _checked(True)(getattr(base, name)))


@thread_safe
class GuardedDict(dict[K, V]):
    """Thread-safe under its lock: a dict whose every read needs `lock` held and whose
    every change needs its write side (check mode; see the module docstring)."""

    __slots__ = ("lock",)

    def __init__(self, lock: Lock, items: Iterable[tuple[K, V]] = ()) -> None:
        super().__init__(items)
        self.lock = lock

    def __repr__(self) -> str:
        return f"GuardedDict({_lock_name(self.lock)}, {dict.__len__(self)} items)"


@thread_safe
class GuardedList(list[V]):
    """Thread-safe under its lock: a list whose every read needs `lock` held and whose
    every change needs its write side (check mode; see the module docstring)."""

    __slots__ = ("lock",)

    def __init__(self, lock: Lock, items: Iterable[V] = ()) -> None:
        super().__init__(items)
        self.lock = lock

    def __repr__(self) -> str:
        return f"GuardedList({_lock_name(self.lock)}, {list.__len__(self)} items)"


_install(GuardedDict, dict, _DICT_READS, _DICT_WRITES)
_install(GuardedList, list, _LIST_READS, _LIST_WRITES)


def guarded_dict(lock: Lock) -> dict[Any, Any]:
    """An empty dict guarded by `lock`: a `GuardedDict` in check mode, else a plain dict."""
    return GuardedDict(lock) if CHECK else {}


def guarded_list(lock: Lock) -> list[Any]:
    """An empty list guarded by `lock`: a `GuardedList` in check mode, else a plain list."""
    return GuardedList(lock) if CHECK else []
