"""Named, ranked locks and the run-time checker of the lock discipline (DESIGN.md §4).

Every lock in allocrunner is created with `make_lock(name)` or `make_rwlock(name)`,
and `name` must appear in `LOCK_ORDER`, which ranks the locks from the outermost to
the innermost.

The rule the code keeps: declared locks are never nested, except along the edges
listed in `NESTED_LOCKS`, each from a lock to one ranked below it. One code path nests
today: ``Cluster._lock`` → ``AllocBroadcaster._lock`` (the cluster publishes a new
state while still holding the lock that made it, so listeners see states in index
order). Everywhere else a thread holds at most one declared lock at a time: it takes
what it needs, releases, and only then takes the next. In check mode every nesting is
recorded (`observed_nestings`) and an unlisted one raises `LockOrderError` at once;
the ranks order the listed edges, and two locks of one class are held together only
through `acquire_many`, which orders them. A test takes each listed edge, so the list
names no nesting the code does not do.

What each lock guards (every one of them is held for a few steps on immutable values;
no callout, I/O or wait runs under it, except the documented lock-held I/O of the
state databases):

- ``Agent._lock``: the agent's lifecycle phase.
- ``Cluster._lock``: the agent's server-side state (jobs, desired allocations,
  indexes); the state is published to the cluster's broadcaster under it.
- ``Client._allocs_lock``: the client's registry of runners, their indexes, the
  pending upstream updates and the `run_allocs` turn.
- ``AllocGarbageCollector._lock``: the collector's started flag and in-flight counts.
- ``AllocRunner._destroyed_lock``: whether run, destroy or shutdown were launched, and
  (lent to its persister) the destroyed flag and the count of writes in flight.
- ``AllocRunner._state_lock``: the runner's published client state (an RWLock).
- ``AllocRunner._alloc_lock``: the server's allocation as last applied (an RWLock).
- ``TaskRunner._alloc_lock``: a task runner's allocation and task definition.
- ``TaskStateCell._lock``: a task's published state and the persistence of it.
- ``TaskMailbox._lock``: the requests left for a task's run thread and its phase.
- ``HealthHook._lock``: the health hook's watch and its phase.
- ``HealthWatches._lock``: the health watch service's live watches, timers and ready set.
- ``StatePasses._lock``: the state-pass service's live handlers, queue, timers and workers.
- ``TaskCoordinator._lock``: the lifecycle gates of an allocation's tasks.
- ``PrevAllocWatcher._lock``: the waiting / migrating flags of a previous-alloc watch.
- ``AllocDir._lock``: an alloc dir's built flag and task dirs (an RWLock).
- ``AllocBroadcaster._lock``: a broadcaster's latest value, version and waiters.
- ``Driver._lock``: a driver's table of tasks.
- ``MockTask._lock``: one mock_driver task's state (its deadlines, exit and wake-up).
- ``GCQueue._lock``: the collector's queue of marked allocations.
- ``StatsSampler._lock``: the previous CPU sample of each task, for percentages.
- ``HttpServer._lock``: the agent's open connections.
- ``PeriodicLauncher._lock``: the periodic jobs being scheduled.
- ``LogPump._lock``: the pipes and pidfds a driver's log pump watches.
- ``PortAllocator._lock``: the node's table of reserved host ports (held, pending).
- ``StateDB._lock``: a state database's queue of writes, its de-duplication record and
  counters; held for bookkeeping only (the SQLite calls run on its writer thread and
  its readers with no lock held), taken with no other lock.

Check mode (``ALLOCRUNNER_LOCKCHECK=1``, read once at import) replaces every lock by a
checked one and turns the field tags and decorators below into checks:

- order and nesting (above), re-entry of a lock, release by a thread that does not
  hold it;
- `guarded(lock)`: read under either side of the lock, rebound under the write side;
  `immutable()`: bound once; both hold only values that cannot change in place
  (`allocrunner._shareable` states the rule; a structure changed in place lives in a
  checked container from `allocrunner._guarded`); `confined(thread)`: touched by its
  owning thread only;
- `@requires` and `@calls_out`, and every blocking wait of the standard library
  (`allocrunner._blocking`): waiting while holding a declared lock raises.

Each violation raises at once in the offending thread and is also recorded, so that a
test notices it even when a background thread swallowed the exception. With check
mode off `make_lock` returns a bare `threading.Lock`, the tags are inert class
attributes, the decorators are the identity and nothing is wrapped: production pays
nothing. The reader-writer lock itself lives in `allocrunner._rwlock` (re-exported).

The module is over the usual size because it is one concern: the per-thread record of
held locks, which the locks write and every check reads.

Threads: none of its own; the checks run in whichever thread takes a lock or touches
a field. Locks: ``_violations_lock``, a raw leaf mutex private to this module, guards
the record of violations and of observed nestings; the record of held locks is per
thread (``_held``), so it needs none. Owner: every thread-safe class of the package
builds its locks and tags here; the test harness reads and clears the violations
(`take_violations`).
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
from allocrunner.errors import (
    CalloutUnderLockError,
    LockDisciplineError,
    LockNotHeldError,
    LockOrderError,
)

CHECK: bool = os.environ.get("ALLOCRUNNER_LOCKCHECK", "") not in ("", "0")


class MutableFieldValueError(LockDisciplineError):
    """A guarded or immutable field was bound to a value that can change in place."""


class ConfinedFieldError(LockDisciplineError):
    """A confined field was touched by a thread other than the one that owns it."""


THREAD_SAFE = "__lockcheck_thread_safe__"
"""Class attribute (True) of a package class that declares how it is protected: set by
every field tag in its body, or by `thread_safe`. See `allocrunner._shareable`."""

C = TypeVar("C", bound=type)


def thread_safe(cls: C) -> C:
    """Mark a class whose instances may sit in a tagged field although it tags no field
    of its own (a `_sync` primitive: its slots cannot carry tags, and it guards them
    with a private leaf mutex). Sets one class attribute; no cost when running."""
    setattr(cls, THREAD_SAFE, True)
    return cls


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
    "HealthWatches._lock",  # leaf: the live health watches, their timers, the ready set
    "StatePasses._lock",  # leaf: the state handlers' passes, their timers, the workers
    "TaskCoordinator._lock",
    "PrevAllocWatcher._lock",
    "AllocDir._lock",
    "AllocBroadcaster._lock",
    "Driver._lock",
    "MockTask._lock",  # leaf but for the table's question (NESTED_LOCKS)
    "GCQueue._lock",
    "StatsSampler._lock",
    "HttpServer._lock",
    "PeriodicLauncher._lock",
    "LogPump._lock",  # leaf: the pipes and pidfds a driver's log pump watches
    "PortAllocator._lock",  # leaf: the node's reserved host ports
    "StateDB._lock",
)

# The rule the code keeps: declared locks are never nested, except along the edges
# listed here (outer, inner), and an outer lock ranks above its inner one in LOCK_ORDER.
# Only edges some code path takes are listed, and a test takes each of them
# (tests/checker/test_lock_order.py); check mode refuses any other nesting at once.
NESTED_LOCKS: frozenset[tuple[str, str]] = frozenset(
    {
        # Cluster publishes each new state to its broadcaster while still holding the
        # lock that made it, so listeners see the states in index order; `send` is O(1)
        # and wakes its listeners after releasing its own lock.
        ("Cluster._lock", "AllocBroadcaster._lock"),
        # A driver's task table asks whether a task under an id still runs (a start
        # reusing the id, a signal) while it holds the table; a mock task answers
        # under its own lock, committing a due exit first.
        ("Driver._lock", "MockTask._lock"),
    }
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
        self.waits_allowed = 0  # depth of waits_allowed_here() blocks
        self.acting_as: str | None = None  # the name set by acting_as(), if any


_held = _Held()


def held_locks() -> list[str]:
    """Names (with mode) of the declared locks the calling thread holds, outermost first."""
    return [f"{lock.name}({mode})" for lock, mode in _held.stack]


_nestings: set[tuple[str, str]] = set()  # guarded by _violations_lock


def observed_nestings() -> frozenset[tuple[str, str]]:
    """Every (outer, inner) pair of declared locks some thread has taken nested so far
    in check mode, allowed or not (the LOCK_ORDER tests read it)."""
    with _violations_lock:
        return frozenset(_nestings)


def _check_order(lock: CheckedLock | CheckedRWLock) -> None:
    stack = _held.stack
    if not stack:
        return
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
            _check_nesting(other.name, lock.name)
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


def _check_nesting(outer: str, inner: str) -> None:
    edge = (outer, inner)
    with _violations_lock:
        _nestings.add(edge)
    if edge not in NESTED_LOCKS:
        raise _violation(
            LockOrderError(
                f"taking {inner} while holding {outer}: declared locks are never nested, "
                f"and NESTED_LOCKS lists no edge {outer} -> {inner}"
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
    """Thread-safe. A named, ranked mutex that checks order and ownership (check mode only).

    `waits_checked`: a blocking wait while holding it raises (`make_lock` sets it; a
    lock built by hand, as the lock primitives' own tests do, is only order-checked)."""

    __slots__ = ("_lock", "_owner", "name", "rank", "waits_checked")

    def __init__(self, name: str, *, waits_checked: bool = False) -> None:
        self.name = name
        self.rank = lock_rank(name)
        self.waits_checked = waits_checked
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
    """Thread-safe. `RWLock` plus order and ownership checks per thread (check mode only);
    `waits_checked` as for `CheckedLock`."""

    __slots__ = ("_write_side", "rank", "waits_checked")

    def __init__(self, name: str, *, waits_checked: bool = False) -> None:
        super().__init__(name)
        self.rank = lock_rank(name)
        self.waits_checked = waits_checked
        self._read_side = _CheckedSide(self, "read")
        self._write_side = _CheckedSide(self, "write")

    def write(self) -> LockSide:
        return self._write_side

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


# The locks themselves may sit in tagged fields (a lock field is immutable()).
for _lock_class in (RWLock, CheckedLock):
    setattr(_lock_class, THREAD_SAFE, True)


def make_lock(name: str) -> Mutex:
    """A mutex named `name` (declared in LOCK_ORDER): bare `threading.Lock` unless checking."""
    if CHECK:
        return CheckedLock(name, waits_checked=True)
    lock_rank(name)
    return threading.Lock()


def make_rwlock(name: str) -> RWLock:
    """A writer-preferring `RWLock` named `name` (declared in LOCK_ORDER)."""
    if CHECK:
        return CheckedRWLock(name, waits_checked=True)
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


@contextlib.contextmanager
def waits_allowed_here() -> Iterator[None]:
    """For tests only: let the calling thread block while it holds declared locks, for a
    test that holds a lock on purpose to show that something else never queues behind
    it. The one escape from the blocking-wait check besides the primitives' own."""
    _held.waits_allowed += 1
    try:
        yield
    finally:
        _held.waits_allowed -= 1


# --- field tags ------------------------------------------------------------------------


class FieldTag:
    """Declares how a field of a class used by several threads is protected.

    In production it is an inert class attribute (instances shadow it). In check mode
    it is a data descriptor (see `guarded`, `immutable` and `confined` for what each
    checks). The first binding of a field (in ``__init__``) needs no lock.
    """

    kind: str = "tag"

    def __init__(self, lock: str | None = None, thread: str | None = None) -> None:
        self.lock = lock
        self.thread = thread
        self.prefix: str | None = None
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        setattr(owner, THREAD_SAFE, True)

    def __repr__(self) -> str:
        detail = self.lock or self.thread or ""
        return f"{self.kind}({detail!r})" if detail else f"{self.kind}()"


def _check_value(obj: object, name: str, value: object) -> None:
    reason = _why_mutable(value)
    if reason is not None:
        raise _violation(
            MutableFieldValueError(
                f"binding {type(obj).__name__}.{name} to a mutable value: {reason}; "
                "replace it copy-on-write, or use a checked container (allocrunner._guarded)"
            )
        )


class _CheckedImmutable(FieldTag):
    """Bound once, to a value that cannot change in place; read freely."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __set__(self, obj: Any, value: Any) -> None:
        d = obj.__dict__
        if self.name in d:
            raise _violation(
                LockNotHeldError(f"rebinding immutable field {type(obj).__name__}.{self.name}")
            )
        _check_value(obj, self.name, value)
        d[self.name] = value


class _CheckedGuarded(FieldTag):
    """Read under either side of its lock, rebound under the write side, and bound only
    to values that cannot change in place (so a read-side holder never writes)."""

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        try:
            value = d[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        lock = d.get(self.lock)
        if lock is not None and held_mode(lock) is None:
            raise _violation(
                LockNotHeldError(
                    f"reading {type(obj).__name__}.{self.name} without holding {self.lock}"
                )
            )
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        d = obj.__dict__
        if self.name in d:
            lock = d.get(self.lock)
            mode = held_mode(lock) if lock is not None else None
            if mode != "write":
                side = "only the read side of" if mode == "read" else "without holding"
                raise _violation(
                    LockNotHeldError(f"writing {type(obj).__name__}.{self.name} {side} {self.lock}")
                )
        _check_value(obj, self.name, value)
        d[self.name] = value


class _CheckedConfined(FieldTag):
    """Touched by one thread only: the thread that built the object may prepare it
    until another thread touches it; from then on that thread owns it (or, with
    `prefix`, every thread whose name starts with it does), until it ends or hands it
    over. Any other touch raises. May hold any value: nothing else ever sees it."""

    _owner_key = ""
    _builder_key = ""

    def __set_name__(self, owner: type, name: str) -> None:
        super().__set_name__(owner, name)
        # where an instance keeps the thread that owns the field, and the one that built it
        self._owner_key = f"{name} owner"
        self._builder_key = f"{name} builder"

    def _touch(self, obj: Any, d: dict[str, Any]) -> None:
        owner = d.get(self._owner_key)
        me = threading.current_thread()
        if owner is me:
            return
        if self.prefix is not None:
            if not me.name.startswith(self.prefix):
                acting = _held.acting_as
                if acting is None or not acting.startswith(self.prefix):
                    self._refuse(obj, me, f"named {self.prefix}...")
            return
        if owner is None:
            if d.get(self._builder_key) is me:
                return
            owner = d.setdefault(self._owner_key, me)
            if owner is me:
                return
        if not owner.is_alive():  # it has ended, so it can race nobody: take it over
            d[self._owner_key] = me
            return
        self._refuse(obj, me, f"{owner.name!r} owns it: it touched it first")

    def _refuse(self, obj: object, me: threading.Thread, why: str) -> None:
        raise _violation(
            ConfinedFieldError(
                f"thread {me.name!r} touched {type(obj).__name__}.{self.name}, confined to "
                f"the {self.thread} thread ({why})"
            )
        )

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        try:
            value = d[self.name]
        except KeyError:
            raise AttributeError(self.name) from None
        self._touch(obj, d)
        return value

    def __set__(self, obj: Any, value: Any) -> None:
        d = obj.__dict__
        if self.name in d:
            self._touch(obj, d)
        else:
            d[self._builder_key] = threading.current_thread()
        d[self.name] = value


_CHECKED_TAGS: dict[str, type[FieldTag]] = {
    "guarded": _CheckedGuarded,
    "immutable": _CheckedImmutable,
    "confined": _CheckedConfined,
}


def _tag(kind: str, lock: str | None = None, thread: str | None = None) -> FieldTag:
    tag = (_CHECKED_TAGS[kind] if CHECK else FieldTag)(lock=lock, thread=thread)
    tag.kind = kind
    return tag


def guarded(lock: str) -> Any:
    """Tag a field guarded by the lock stored in attribute `lock` of the same object.

    Check mode: reading it needs either side of the lock, rebinding it the write side,
    and it only ever holds a value that cannot change in place (see `_shareable`)."""
    return _tag("guarded", lock=lock)


def immutable() -> Any:
    """Tag a field bound once (in ``__init__``), never rebound, and read with no lock.

    Check mode: a second binding raises, and so does a value that can change in place."""
    return _tag("immutable")


def confined(thread: str, *, prefix: str | None = None) -> Any:
    """Tag a field that one thread alone touches, so it needs no lock and may hold a
    mutable value: `thread` says which ("task-run"). The thread that builds the object
    may prepare it; the first other thread to touch it owns it from then on (the
    builder is then locked out too) until that thread ends or calls `hand_over`. With
    `prefix`, every thread whose name starts with it is the owner. Check mode: a touch
    by any other thread raises (a thread inside `acting_as` a matching name counts as
    one of the prefix's)."""
    tag = _tag("confined", thread=thread)
    tag.prefix = prefix
    return tag


def acting_as(name: str) -> contextlib.AbstractContextManager[None]:
    """``with acting_as(name):`` the calling thread counts as a thread named `name` for
    the prefix of `confined(..., prefix=...)` fields, besides its own name. For a
    service whose threads share such a prefix, when it runs one of their turns on the
    thread that asked for it: the turn is still the only one of its kind running (the
    service's own bookkeeping says so), only on another thread. Nests; does nothing
    unless checking. Fields confined to one owning thread are not affected."""
    if not CHECK:
        return _NOT_CHECKING
    return _ActingAs(name)


_NOT_CHECKING: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


class _ActingAs:
    """Not thread-safe; owned by the thread in its ``with`` block. `acting_as`."""

    __slots__ = ("_name", "_outer")

    def __init__(self, name: str) -> None:
        self._name = name
        self._outer: str | None = None

    def __enter__(self) -> None:
        self._outer = _held.acting_as
        _held.acting_as = self._name

    def __exit__(self, *exc: object) -> None:
        _held.acting_as = self._outer


def hand_over(obj: object, *more: object) -> None:
    """The calling thread gives up the confined fields of `obj` (and of each of `more`)
    it owns; the next thread to touch one owns it. Call it just before the signal the
    next owner waits for (the event that orders the two threads), e.g. a run thread that
    has returned hands its hook state to the thread that runs the shutdown hooks. Does
    nothing unless checking."""
    if not CHECK:
        return
    me = threading.current_thread()
    for each in (obj, *more):
        d = getattr(each, "__dict__", None)
        if d is None:
            continue  # slots only: no confined field
        for tag in field_tags(type(each)).values():
            if isinstance(tag, _CheckedConfined) and d.get(tag._owner_key) is me:
                del d[tag._owner_key]


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


def _blocking_guard(what: str, own: object) -> None:
    """Raise if the calling thread holds a declared lock other than `own` (the lock a
    condition releases while it waits): `_blocking` asks before every blocking call."""
    stack = _held.stack
    if not stack or _held.waits_allowed:
        return
    held = [
        f"{lock.name}({mode})" for lock, mode in stack if lock is not own and lock.waits_checked
    ]
    if held:
        raise _violation(
            CalloutUnderLockError(
                f"{what} blocks while holding {', '.join(held)}: wait with no declared lock held"
            )
        )


def _no_value_check(value: object) -> str | None:
    return None


_why_mutable: Callable[[object], str | None] = _no_value_check


def _install_checks() -> None:
    """Check mode: load the value rule and wrap the blocking calls (once, at import)."""
    global _why_mutable
    from allocrunner import _blocking, _shareable

    _why_mutable = _shareable.why_mutable
    _blocking.install(_blocking_guard)


if CHECK:
    _install_checks()
