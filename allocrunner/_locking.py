"""Named, ranked locks and the run-time checker of the lock discipline (DESIGN.md §4).

Every lock in allocrunner is created with `make_lock(name)` or `make_rwlock(name)`
and `name` must appear in `LOCK_ORDER`, which runs from the outermost lock to the
innermost. A thread may only take a lock whose rank is strictly above every lock it
already holds, so a cycle (a deadlock) cannot be built.

Why each edge of the order exists:

- ``Agent._lock`` (the agent's lifecycle phase) and ``Cluster._lock`` (the agent's
  server-side state: jobs, desired allocations, indexes) come first: the agent calls
  into the Client only after releasing them, so no runner lock is ever held under them.
- ``Client._allocs_lock`` comes next: the registry lock is held only to read or
  replace the map of runners; nothing else is taken under it in practice, but a
  runner lock must never be held when the registry is taken.
- ``AllocRunner._destroyed_lock`` → ``AllocRunner._state_lock``: destroy and persist
  decide "destroyed?" and then read the runtime state (Nomad's PersistState order).
- ``AllocRunner._state_lock`` → ``AllocRunner._alloc_lock``: building the client view
  of the allocation reads the runtime state and then the server allocation.
- ``AllocRunner._alloc_lock`` → ``TaskRunner._alloc_lock`` → ``TaskStateCell._lock`` →
  ``TaskMailbox._lock``: an alloc update is pushed down to each task runner. A task
  runner's own locks (its allocation; its published state and the persistence of it;
  the requests left for its run thread) are never held together: their ranks only
  keep them below the alloc runner's.
- ``AllocGarbageCollector._lock`` sits between the registry and the runners: the
  collector may read a runner's flags (destroyed? terminal?) while holding its own
  index of runners, never the reverse.
- The remaining locks are leaves: each guards a small structure of its own and no
  other declared lock is taken under them: ``HealthHook._lock`` (health tracker
  state), ``TaskCoordinator._lock`` (lifecycle gates), ``PrevAllocWatcher._lock``
  (waiting/migrating flags), ``AllocDir._lock`` (built/destroyed flags and task dirs),
  ``AllocBroadcaster._lock`` (latest value and its version), ``Driver._lock`` (a
  driver's table of tasks), ``GCQueue._lock`` (the collector's queue),
  ``StatsSampler._lock`` (the previous CPU sample of each task, for percentages),
  ``HttpServer._lock`` (the agent's open connections),
  ``PeriodicLauncher._lock`` (the periodic jobs being scheduled) and
  ``LogPump._lock`` (the pipes and pidfds a driver's log pump watches).
  ``StateDB._lock`` is last: the state databases are the one documented "lock-held
  I/O" site (each SQLite call runs under it, marked ``# lock-held I/O``), and nobody
  calls a database with any other lock held. An AllocRunner marks itself destroyed,
  lets the DB writes in flight drain and only then deletes its state, so no write can
  resurrect a destroyed allocation.

Check mode (``ALLOCRUNNER_LOCKCHECK=1``, read once at import) replaces every lock
by a checked one and turns the field tags and decorators below into checks; each
violation raises at once in the offending thread and is also recorded, so that a
test notices a violation even when a background thread swallowed the exception.
With check mode off `make_lock` returns a bare `threading.Lock`, field tags are
inert class attributes and the decorators are the identity: production pays nothing.

The reader-writer lock itself lives in `allocrunner._rwlock` (re-exported here); this
module names, ranks and checks locks. `make_lock` returns a `Mutex`, `make_rwlock` an
`RWLock` whose `read()` / `write()` sides are `LockSide` context managers.

Threads: none of its own; the checks run in whichever thread takes a lock.
Locks: ``_violations_lock``, a raw leaf mutex private to this module, guards the record
of violations; the record of held locks is per thread (``_held``), so it needs none.
Owner: every thread-safe class of the package builds its locks here; the test harness
reads and clears the violations (`take_violations`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, cast

from allocrunner._rwlock import _GIL as _GIL
from allocrunner._rwlock import _YIELD_SLEEP as _YIELD_SLEEP
from allocrunner._rwlock import LockSide as LockSide
from allocrunner._rwlock import RWLock as RWLock
from allocrunner._rwlock import _ReadSide as _ReadSide
from allocrunner._rwlock import _take_contended as _take_contended
from allocrunner._rwlock import _WriteSide as _WriteSide
from allocrunner.errors import (
    CalloutUnderLockError,
    LockDisciplineError,
    LockNotHeldError,
    LockOrderError,
)

CHECK: bool = os.environ.get("ALLOCRUNNER_LOCKCHECK", "") not in ("", "0")

LOCK_ORDER: tuple[str, ...] = (
    "Agent._lock",
    "Cluster._lock",
    "Client._allocs_lock",
    "AllocGarbageCollector._lock",
    "AllocRunner._destroyed_lock",
    "AllocRunner._state_lock",
    "AllocRunner._alloc_lock",
    "TaskRunner._alloc_lock",
    "TaskStateCell._lock",
    "TaskMailbox._lock",
    "HealthHook._lock",
    "TaskCoordinator._lock",
    "PrevAllocWatcher._lock",
    "AllocDir._lock",
    "AllocBroadcaster._lock",
    "Driver._lock",
    "GCQueue._lock",
    "StatsSampler._lock",
    "HttpServer._lock",
    "PeriodicLauncher._lock",
    "LogPump._lock",  # leaf: the pipes and pidfds a driver's log pump watches
    "StateDB._lock",
)

_RANKS: dict[str, int] = {name: rank for rank, name in enumerate(LOCK_ORDER)}

F = TypeVar("F", bound=Callable[..., Any])
Mode = Literal["read", "write"]


class Mutex(Protocol):
    """What `make_lock` returns: a bare `threading.Lock`, or a `CheckedLock` in check
    mode. Use it as ``with lock:``; `acquire` / `release` / `locked` as on a Lock."""

    def acquire(self, blocking: bool = True, timeout: float = -1, /) -> bool: ...

    def release(self) -> None: ...

    def locked(self) -> bool: ...

    def __enter__(self) -> object: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...


def lock_rank(name: str) -> int:
    """The rank of a declared lock name; ValueError for a name not in LOCK_ORDER."""
    try:
        return _RANKS[name]
    except KeyError:
        raise ValueError(f"lock {name!r} is not declared in LOCK_ORDER") from None


# --- violation record ----------------------------------------------------------------

_violations_lock = threading.Lock()
_violations: list[LockDisciplineError] = []


def _violation(err: LockDisciplineError) -> LockDisciplineError:
    """Record a violation so tests see it even if the raising thread swallows it."""
    with _violations_lock:
        _violations.append(err)
    return err


def take_violations() -> list[LockDisciplineError]:
    """Return and forget every violation recorded so far (used by the test harness)."""
    with _violations_lock:
        taken = list(_violations)
        _violations.clear()
    return taken


# --- check mode: per-thread record of held locks ---------------------------------------


class _Held(threading.local):
    def __init__(self) -> None:
        self.stack: list[tuple[CheckedLock | CheckedRWLock, Mode]] = []
        self.peers: frozenset[int] = frozenset()


_held = _Held()


def held_locks() -> list[str]:
    """Names (with mode) of the declared locks the calling thread holds, outermost first."""
    return [f"{lock.name}({mode})" for lock, mode in _held.stack]


def _check_order(lock: CheckedLock | CheckedRWLock) -> None:
    stack = _held.stack
    peers = _held.peers
    for other, _mode in stack:
        if other is lock:
            raise _violation(
                LockOrderError(
                    f"re-entering non-reentrant lock {lock.name} (a self-deadlock); "
                    f"held: {', '.join(held_locks())}"
                )
            )
        if other.rank < lock.rank:
            continue
        if other.rank == lock.rank:
            if id(lock) in peers and id(other) in peers and id(other) < id(lock):
                continue
            raise _violation(
                LockOrderError(
                    f"taking {lock.name} while holding another {other.name}: two locks of "
                    f"one class are held together only through acquire_many()"
                )
            )
        raise _violation(
            LockOrderError(
                f"taking {lock.name} (rank {lock.rank}) while holding {other.name} "
                f"(rank {other.rank}) breaks LOCK_ORDER"
            )
        )


def _push(lock: CheckedLock | CheckedRWLock, mode: Mode) -> None:
    _held.stack.append((lock, mode))


def _pop(lock: CheckedLock | CheckedRWLock, mode: Mode) -> None:
    stack = _held.stack
    for i in range(len(stack) - 1, -1, -1):
        if stack[i][0] is lock and stack[i][1] == mode:
            del stack[i]
            return
    raise _violation(
        LockNotHeldError(f"releasing {lock.name} ({mode}) that this thread does not hold")
    )


def held_mode(lock: object) -> Mode | None:
    """How the calling thread holds `lock` ("write" for a plain lock), or None."""
    for other, mode in _held.stack:
        if other is lock:
            return mode
    return None


class CheckedLock:
    """Thread-safe. A named, ranked mutex that checks order and ownership (check mode only)."""

    __slots__ = ("_lock", "_owner", "name", "rank")

    def __init__(self, name: str) -> None:
        self.name = name
        self.rank = lock_rank(name)
        self._lock = threading.Lock()
        self._owner: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        _check_order(self)
        ok = self._lock.acquire(blocking, timeout)
        if ok:
            self._owner = threading.get_ident()
            _push(self, "write")
        return ok

    def release(self) -> None:
        if self._owner != threading.get_ident():
            raise _violation(
                LockNotHeldError(f"releasing {self.name} that this thread does not hold")
            )
        _pop(self, "write")
        self._owner = None
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> CheckedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # threading.Condition support (it uses these when present)
    def _is_owned(self) -> bool:
        return self._owner == threading.get_ident()

    def _release_save(self) -> None:
        self.release()

    def _acquire_restore(self, _state: object) -> None:
        self.acquire()

    def __repr__(self) -> str:
        return f"<CheckedLock {self.name} rank={self.rank}>"


class CheckedRWLock(RWLock):
    """Thread-safe. `RWLock` plus order and ownership checks per thread (check mode only)."""

    __slots__ = ("rank",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.rank = lock_rank(name)
        self._read_side = _CheckedSide(self, "read")
        self._write_side = _CheckedSide(self, "write")

    def acquire_read(self, timeout: float | None = None) -> bool:
        _check_order(self)
        ok = super().acquire_read(timeout)
        if ok:
            _push(self, "read")
        return ok

    def release_read(self) -> None:
        _pop(self, "read")
        super().release_read()

    def acquire_write(self, timeout: float | None = None) -> bool:
        _check_order(self)
        ok = super().acquire_write(timeout)
        if ok:
            _push(self, "write")
        return ok

    def release_write(self) -> None:
        _pop(self, "write")
        super().release_write()


class _CheckedSide:
    __slots__ = ("_mode", "_rw")

    def __init__(self, rw: CheckedRWLock, mode: Mode) -> None:
        self._rw = rw
        self._mode = mode

    def __enter__(self) -> RWLock:
        if self._mode == "read":
            self._rw.acquire_read()
        else:
            self._rw.acquire_write()
        return self._rw

    def __exit__(self, *exc: object) -> None:
        if self._mode == "read":
            self._rw.release_read()
        else:
            self._rw.release_write()


def make_lock(name: str) -> Mutex:
    """A mutex named `name` (declared in LOCK_ORDER): bare `threading.Lock` unless checking."""
    if CHECK:
        return CheckedLock(name)
    lock_rank(name)
    return threading.Lock()


def make_rwlock(name: str) -> RWLock:
    """A writer-preferring `RWLock` named `name` (declared in LOCK_ORDER)."""
    if CHECK:
        return CheckedRWLock(name)
    lock_rank(name)
    return RWLock(name)


def make_condition(lock: Mutex) -> threading.Condition:
    """A condition variable over `lock` (from `make_lock`): ``wait`` releases it, and in
    check mode the release and re-acquire are recorded like any other."""
    return threading.Condition(lock)  # type: ignore[arg-type]  # any acquire/release lock works


@contextlib.contextmanager
def acquire_many(*locks: Mutex) -> Iterator[None]:
    """Hold several locks of one class together, taken in a fixed (id) order.

    Two locks of the same rank may only be nested through this helper, which makes
    every thread take them in the same order.
    """
    ordered = sorted(locks, key=id)
    previous_peers = _held.peers
    _held.peers = frozenset(id(lock) for lock in ordered)
    taken: list[Mutex] = []
    try:
        for lock in ordered:
            lock.acquire()
            taken.append(lock)
        _held.peers = previous_peers
        yield
    finally:
        _held.peers = previous_peers
        for lock in reversed(taken):
            lock.release()


# --- field tags ------------------------------------------------------------------------


class FieldTag:
    """Declares how a mutable field of a thread-safe class is protected.

    In production it is an inert class attribute (instances shadow it). In check mode
    it is a data descriptor: a guarded field may be read only with its lock held (either
    side) and rebound only with the lock (or the write side of an RWLock) held; an
    immutable field may be bound once. The first binding (in ``__init__``) is free.
    """

    kind: str = "tag"

    def __init__(self, lock: str | None = None, thread: str | None = None) -> None:
        self.lock = lock
        self.thread = thread
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        detail = self.lock or self.thread or ""
        return f"{self.kind}({detail!r})" if detail else f"{self.kind}()"


class _CheckedFieldTag(FieldTag):
    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            value = obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        if self.kind == "guarded":
            lock = obj.__dict__.get(self.lock)
            if lock is not None and held_mode(lock) is None:
                raise _violation(
                    LockNotHeldError(
                        f"reading {type(obj).__name__}.{self.name} without holding {self.lock}"
                    )
                )
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        d = obj.__dict__
        if self.name not in d:
            d[self.name] = value
            return
        if self.kind == "immutable":
            raise _violation(
                LockNotHeldError(f"rebinding immutable field {type(obj).__name__}.{self.name}")
            )
        if self.kind == "guarded":
            lock = d.get(self.lock)
            mode = held_mode(lock) if lock is not None else None
            if mode != "write":
                side = "only the read side of" if mode == "read" else "without holding"
                raise _violation(
                    LockNotHeldError(f"writing {type(obj).__name__}.{self.name} {side} {self.lock}")
                )
        d[self.name] = value


def _tag(kind: str, lock: str | None = None, thread: str | None = None) -> FieldTag:
    tag = (_CheckedFieldTag if CHECK else FieldTag)(lock=lock, thread=thread)
    tag.kind = kind
    return tag


def guarded(lock: str) -> Any:
    """Tag a field guarded by the lock stored in attribute `lock` of the same object."""
    return _tag("guarded", lock=lock)


def immutable() -> Any:
    """Tag a field bound once (in ``__init__``) and never rebound."""
    return _tag("immutable")


def confined(thread: str) -> Any:
    """Tag a field touched only by one named thread (e.g. "task-run"), so needing no lock."""
    return _tag("confined", thread=thread)


def field_tags(cls: type) -> dict[str, FieldTag]:
    """Every tagged field of `cls` and its bases, by attribute name."""
    tags: dict[str, FieldTag] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, FieldTag):
                tags[name] = value
    return tags


# --- decorators ------------------------------------------------------------------------


def requires(lock: str, *, write: bool = False) -> Callable[[F], F]:
    """Mark a `_locked` helper that must be entered holding `self.<lock>` (its write side
    if `write`). Identity unless checking."""

    def decorate(fn: F) -> F:
        if not CHECK:
            return fn

        @functools.wraps(fn)
        def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
            mode = held_mode(getattr(self, lock))
            if mode is None or (write and mode != "write"):
                need = "the write side of " if write else ""
                raise _violation(
                    LockNotHeldError(f"{fn.__qualname__} requires {need}{lock} to be held")
                )
            return fn(self, *args, **kwargs)

        return cast(F, checked)

    return decorate


def calls_out(fn: F) -> F:
    """Mark a function that runs foreign or slow code (hooks, drivers, callbacks, I/O,
    waits): entering it with any declared lock held is an error. Identity unless checking."""
    if not CHECK:
        return fn

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if _held.stack:
            raise _violation(
                CalloutUnderLockError(
                    f"{fn.__qualname__} calls out while holding {', '.join(held_locks())}"
                )
            )
        return fn(*args, **kwargs)

    return cast(F, checked)


def assert_no_locks_held(what: str) -> None:
    """Raise CalloutUnderLockError in check mode if the calling thread holds a lock."""
    if CHECK and _held.stack:
        raise _violation(CalloutUnderLockError(f"{what} while holding {', '.join(held_locks())}"))
