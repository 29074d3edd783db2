"""Small synchronisation primitives that replace Go's context and channel idioms.

- `CancelToken`: a closed-once "done" signal with a reason (Go's context.Context);
  `any_of` joins several into one. It asks for work to stop.
- `Event`: a set-once event (a closed ``chan struct{}``): it reports that something
  happened (a write finished, a request was handled, a run returned), with no reason
  and no request to stop anything; `on_set` and `wait(cancel=...)` compose it with a
  token (wake on whichever comes first) without polling.
- `Kick`: a coalescing notification (a capacity-1 ``chan struct{}``): extra kicks
  while one is pending are dropped.
- `LatestValue`: a one-slot box where the newest value wins (a drain-and-replace
  channel), with an optional rule to keep the pending value instead.
- `Slots`: a counting semaphore (at most N holders at a time).
- `Fifo`: a first-in, first-out queue that never blocks (hand-off of work or results).
- `WorkQueue`: a first-in, first-out queue whose `take` blocks until work comes or the
  queue is closed (the feed of a fixed pool of worker threads).
- `ThreadGroup`: named threads owned by one component and joined with a timeout.
- `Waiter`: a one-shot wake-up for one blocked thread, for building a condition whose
  waiters are woken after the waker has released its own lock (so that they do not
  all pile up on that lock as they wake, as `threading.Condition` waiters do).

`cancel`, `Event.set`, `kick`, `offer`, `Waiter.wake`, `Slots.release`, `Fifo.put`,
`WorkQueue.put` and `WorkQueue.close` are notify-only: O(1) (`close` O(items left)),
never block for long and take only their own private leaf lock, so they may be called
while holding a declared lock (DESIGN.md §4 rule 4). Every waiting method carries
`@calls_out`.

Threads: none of their own except the ones a `ThreadGroup` starts for its owner; any
thread may use them. Locks: each primitive owns one private raw mutex (or a
`PrivateCondition` over one, which the blocking-wait check exempts: it is how the
primitive blocks; `CancelToken`s and `Event`s take theirs from a fixed set of shared
stripes, `_STRIPES`, as none is held while taking another), never a declared lock,
and calls nothing while holding it (except `ThreadGroup.spawn`, which starts the
thread under its mutex; see there). The
callbacks of `CancelToken.on_cancel` and `Event.on_set` run after that mutex is
released, on the thread that cancels or sets. This
module, `_locking` and `_rwlock` are the only places that build synchronisation
objects by hand. Each class is marked `thread_safe`, so a tagged field may hold one.
It is longer than most modules but a single concern: the primitives share the latch,
the fire-once base and the rule that waking never blocks, and splitting them would
spread that rule over several files.
Owner: every component of the package builds the primitives it needs.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Generic, TypeAlias, TypeVar

from allocrunner._locking import calls_out, thread_safe
from allocrunner._rwlock import PrivateCondition

T = TypeVar("T")

# A token's derived tokens: none, one (its weak reference) or several (by id).
_Children: TypeAlias = "weakref.ref[CancelToken] | dict[int, weakref.ref[CancelToken]] | None"


def _nothing() -> None:
    """The withdrawal of a callback that already ran."""


# A parent drops the entries of dead children once it holds this many (or twice the
# number alive at the last purge), so its table stays proportional to live children.
_PURGE_MIN = 16


class _Latch:
    """A one-shot flag that sleepers can wait on, built from one bare lock.

    Held from birth; `open` releases it once, and each waiter acquires and at once
    releases it, so every waiter, present or future, passes. It costs one lock where a
    `threading.Event` costs a Condition, a lock and a deque (about ten times the
    memory), which matters because every allocation owns a dozen of them. Not
    thread-safe on its own: its owner calls `open` at most once, under its own mutex.
    """

    __slots__ = ("_gate", "_open")

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()
        self._open = False

    def open(self) -> None:
        self._open = True
        self._gate.release()

    def is_open(self) -> bool:
        return self._open

    def wait(self, timeout: float | None) -> bool:
        if self._open:
            return True
        if timeout is None:
            passed = self._gate.acquire()
        else:
            passed = self._gate.acquire(True, max(0.0, timeout))
        if passed:
            self._gate.release()
        return self._open


# The mutexes of `CancelToken`s and `Event`s: every allocation owns about fifty of
# them, so they share a fixed set of bare locks, picked by address, instead of owning
# one each. Sharing is safe because a mutex is held only for a few field reads and
# writes: never while taking another token's or event's mutex, never while calling
# out (callbacks, children and parents are dealt with after it is released). Two
# primitives on one stripe at most wait for each other's few instructions.
_STRIPE_COUNT = 64
_STRIPES = tuple(threading.Lock() for _ in range(_STRIPE_COUNT))


class _FiresOnce:
    """The shared half of `CancelToken` and `Event`: a mutex (one of `_STRIPES`),
    callbacks that are kept until the primitive fires once and are then run by the
    firing thread, and the flag waiters wait on. The flag's `_Latch` is made by the
    first thread that has to wait: most tokens and events are only ever tested, never
    waited on, and every allocation owns a score of them. Subclasses say, under the
    mutex, whether it has fired."""

    __slots__ = ("_callbacks", "_latch", "_mutex", "_open")

    def __init__(self) -> None:
        self._mutex = _STRIPES[(id(self) >> 4) % _STRIPE_COUNT]  # picked by address
        self._callbacks: tuple[Callable[[], object], ...] = ()
        self._latch: _Latch | None = None
        self._open = False  # read without the mutex: it only ever turns True

    def _open_under_mutex(self) -> None:
        """Mark it fired and release every waiter, present or future (once)."""
        self._open = True
        if self._latch is not None:
            self._latch.open()

    def _wait_open(self, timeout: float | None) -> bool:
        if self._open:
            return True
        with self._mutex:
            if self._open:
                return True
            latch = self._latch
            if latch is None:
                latch = self._latch = _Latch()
        return latch.wait(timeout)

    def _fired_under_mutex(self) -> bool:
        raise NotImplementedError

    def _take_callbacks_under_mutex(self) -> tuple[Callable[[], object], ...]:
        callbacks, self._callbacks = self._callbacks, ()
        return callbacks

    def _add_callback(self, callback: Callable[[], object]) -> Callable[[], None]:
        with self._mutex:
            if not self._fired_under_mutex():
                self._callbacks = (*self._callbacks, callback)
                return partial(self._withdraw, callback)
        callback()
        return _nothing

    def _withdraw(self, callback: Callable[[], object]) -> None:
        with self._mutex:
            self._callbacks = tuple(c for c in self._callbacks if c is not callback)


@thread_safe
class CancelToken(_FiresOnce):
    """Thread-safe. Cancelled at most once; waiters wake and see the first reason.

    A token remembers its derived tokens (`child`, `any_of`) only weakly, so a
    long-lived parent (an agent's shutdown token) does not accumulate the children of
    every component that came and went.
    """

    __slots__ = (
        "__weakref__",
        "_children",
        "_parents",
        "_purge_at",
        "_reason",
    )

    def __init__(self) -> None:
        super().__init__()
        self._reason: str | None = None
        # Made by the first adoption: most tokens never have a child, and most of the
        # others have one, kept as its weak reference alone; two or more, in a dict by id.
        self._children: _Children = None
        self._purge_at = _PURGE_MIN
        self._parents: tuple[CancelToken, ...] = ()

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel with `reason`; True if this call did it, False if already cancelled."""
        with self._mutex:
            if self._reason is not None:
                return False
            self._reason = reason
            children = self._children
            self._children = None
            parents = self._parents
            self._parents = ()
            callbacks = self._take_callbacks_under_mutex()
            self._open_under_mutex()
        for callback in callbacks:
            callback()
        for parent in parents:
            parent._forget(self)
        if children is not None:
            for ref in children.values() if isinstance(children, dict) else (children,):
                child = ref()
                if child is not None:
                    child.cancel(reason)
        return True

    def cancelled(self) -> bool:
        """True once cancelled."""
        return self._open

    @property
    def reason(self) -> str | None:
        """Why it was cancelled, or None while it is not."""
        with self._mutex:
            return self._reason

    @calls_out
    def wait(self, timeout: float | None = None) -> bool:
        """Block until cancelled or `timeout` passes; True if cancelled."""
        return self._wait_open(timeout)

    def on_cancel(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call `callback` once, on the cancelling thread, when this token is cancelled
        (at once, on this thread, if it already is). Returns a function that withdraws
        the callback; waiters on file descriptors use it to wake a self-pipe instead of
        polling the token. The callback must be quick and must not raise."""
        return self._add_callback(callback)

    def _fired_under_mutex(self) -> bool:
        return self._reason is not None

    def child(self) -> CancelToken:
        """A new token cancelled with this one (and cancellable on its own)."""
        return CancelToken.any_of(self)

    @staticmethod
    def any_of(*tokens: CancelToken) -> CancelToken:
        """A new token cancelled as soon as any of `tokens` is (with that token's reason)."""
        joined = CancelToken()
        joined._parents = tokens
        for token in tokens:
            reason = token._adopt(joined)
            if reason is not None:
                joined.cancel(reason)
                break
        return joined

    def _adopt(self, child: CancelToken) -> str | None:
        with self._mutex:
            if self._reason is None:
                children = self._children
                if children is None:
                    self._children = weakref.ref(child)
                    return None
                if not isinstance(children, dict):
                    first = children()
                    if first is None:  # the one child is gone: take its place
                        self._children = weakref.ref(child)
                        return None
                    children = self._children = {id(first): children}
                children[id(child)] = weakref.ref(child)
                if len(children) > self._purge_at:
                    self._children = {
                        key: ref for key, ref in children.items() if ref() is not None
                    }
                    self._purge_at = max(_PURGE_MIN, 2 * len(self._children))
            return self._reason

    def _forget(self, child: CancelToken) -> None:
        with self._mutex:
            children = self._children
            if children is None:
                return
            if not isinstance(children, dict):
                if children() is child:
                    self._children = None
                return
            ref = children.get(id(child))
            if ref is not None and ref() is child:
                del children[id(child)]
                if not children:
                    self._children = None

    def __repr__(self) -> str:
        return f"<CancelToken cancelled={self._reason!r}>"


@thread_safe
class Event(_FiresOnce):
    """Thread-safe. Set at most once and never cleared; every waiter, present or
    future, wakes once it is set.

    Unlike a CancelToken it carries no reason and asks nothing to stop: it tells
    waiters that something happened. `set` reports whether this call was the one that
    set it, so of several racing callers exactly one sees True. `on_set` lets a waiter
    compose it with other wake-ups (a `Waiter` woken by an event or a token).
    """

    __slots__ = ()

    def set(self) -> bool:
        """Set it, wake the waiters and run the `on_set` callbacks (on this thread, after
        the private lock is released); True if this call set it, False if it was set."""
        with self._mutex:
            if self._open:
                return False
            self._open_under_mutex()
            callbacks = self._take_callbacks_under_mutex()
        for callback in callbacks:
            callback()
        return True

    def is_set(self) -> bool:
        """True once set."""
        return self._open

    def on_set(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call `callback` once, on the setting thread, when this event is set (at once,
        on this thread, if it already is). Returns a function that withdraws it. The
        callback must be quick, must not block and must not raise: `set` is notify-only
        and may be called under a declared lock."""
        return self._add_callback(callback)

    def _fired_under_mutex(self) -> bool:
        return self._open

    @calls_out
    def wait(self, timeout: float | None = None, *, cancel: CancelToken | None = None) -> bool:
        """Block until set, `cancel` is cancelled or `timeout` passes; True if set."""
        if cancel is None or self._open:
            return self._wait_open(timeout)
        waiter = Waiter()
        withdraw_set = self.on_set(waiter.wake)
        withdraw_cancel = cancel.on_cancel(waiter.wake)
        try:
            waiter.wait(timeout)
        finally:
            withdraw_cancel()
            withdraw_set()
        return self._open

    def __repr__(self) -> str:
        return f"<Event set={self._open}>"


@thread_safe
class Kick:
    """Thread-safe. A coalescing notification: many kicks before a wait count as one."""

    __slots__ = ("_cond", "_pending")

    def __init__(self) -> None:
        self._cond = PrivateCondition(threading.Lock())
        self._pending = False

    def kick(self) -> None:
        """Mark pending and wake a waiter; never blocks."""
        with self._cond:
            self._pending = True
            self._cond.notify()

    @calls_out
    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a kick and consume it; False if `timeout` passed with none pending."""
        with self._cond:
            if not self._pending:
                self._cond.wait_for(lambda: self._pending, timeout)
            pending, self._pending = self._pending, False
            return pending

    def pending(self) -> bool:
        """True if a kick is waiting to be consumed."""
        with self._cond:
            return self._pending


_EMPTY: Any = object()


@thread_safe
class LatestValue(Generic[T]):
    """Thread-safe. A one-slot box: `offer` replaces the pending value, `take` removes it.

    Its condition is made by the first `take` that has to wait: every allocation owns
    several boxes, most of which are only ever polled. Its mutex is its own, not one of
    `_STRIPES`: a box is offered to and polled while allocations stop by the thousand,
    when a stripe taken by a thread the GIL switched out would hold up every token and
    event on it."""

    __slots__ = ("_closed", "_cond", "_mutex", "_value")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond: PrivateCondition | None = None  # made (under the mutex) by a waiter
        self._value: Any = _EMPTY
        self._closed = False

    def offer(self, value: T, *, keep_pending: Callable[[T, T], bool] | None = None) -> bool:
        """Put `value`, replacing any pending one, unless `keep_pending(pending, value)`
        says the pending one should stay (then `value` is dropped). Returns True if
        `value` was stored. Offers after `close()` are dropped. `keep_pending` runs under
        the box's mutex, so it must be a pure comparison."""
        with self._mutex:
            if self._closed:
                return False
            if (
                self._value is not _EMPTY
                and keep_pending is not None
                and keep_pending(self._value, value)
            ):
                return False
            self._value = value
            if self._cond is not None:
                self._cond.notify()
            return True

    def poll(self) -> T | None:
        """Take the pending value without waiting; None if there is none."""
        with self._mutex:
            value, self._value = self._value, _EMPTY
        return None if value is _EMPTY else value

    def peek(self) -> T | None:
        """The pending value, left in place; None if there is none."""
        with self._mutex:
            return None if self._value is _EMPTY else self._value

    @calls_out
    def take(self, timeout: float | None = None) -> T:
        """Wait for and remove the pending value. TimeoutError when `timeout` passes;
        EOFError once closed and empty."""
        with self._mutex:
            if self._value is _EMPTY and not self._closed:
                cond = self._cond
                if cond is None:
                    cond = self._cond = PrivateCondition(self._mutex)
                cond.wait_for(lambda: self._value is not _EMPTY or self._closed, timeout)
            if self._value is _EMPTY:
                if self._closed:
                    raise EOFError("LatestValue closed")
                raise TimeoutError("no value offered in time")
            value, self._value = self._value, _EMPTY
            return value

    def close(self) -> None:
        """Refuse further offers and wake waiters; a pending value can still be taken."""
        with self._mutex:
            self._closed = True
            if self._cond is not None:
                self._cond.notify_all()


@thread_safe
class Waiter:
    """Thread-safe. A one-shot wake-up: one thread waits, any thread wakes it (once or
    more; extra wakes are harmless). A wake that comes before the wait is not lost."""

    __slots__ = ("_gate",)

    def __init__(self) -> None:
        self._gate = threading.Lock()
        self._gate.acquire()  # held until woken; the waiter blocks on it

    def wake(self) -> None:
        """Release the waiter; never blocks."""
        with contextlib.suppress(RuntimeError):  # woken already
            self._gate.release()

    @calls_out
    def wait(self, timeout: float | None = None) -> bool:
        """Block until woken; False if `timeout` seconds passed first."""
        if timeout is None:
            return self._gate.acquire()
        return self._gate.acquire(True, max(timeout, 0.0))


@thread_safe
class Slots:
    """Thread-safe. A counting semaphore: at most `count` holders at a time (e.g. the
    garbage collector's parallel destroys). `release` is notify-only."""

    __slots__ = ("_cond", "_count", "_free")

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"Slots: count must be at least 1, got {count}")
        self._cond = PrivateCondition(threading.Lock())
        self._count = count
        self._free = count

    @calls_out
    def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot, waiting up to `timeout` seconds for one; False if none came."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._free > 0, timeout):
                return False
            self._free -= 1
            return True

    def release(self) -> None:
        """Give a slot back and wake one waiter. ValueError if none is taken."""
        with self._cond:
            if self._free >= self._count:
                raise ValueError("Slots.release without a matching acquire")
            self._free += 1
            self._cond.notify()

    def free(self) -> int:
        """How many slots are free now."""
        with self._cond:
            return self._free


@thread_safe
class Fifo(Generic[T]):
    """Thread-safe. A first-in, first-out queue that never blocks: `put` appends and
    `take` removes the oldest item (None when empty). For work handed to a fixed set of
    threads that all start before they take, and for results they leave behind."""

    __slots__ = ("_items", "_mutex")

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._mutex = threading.Lock()
        self._items: collections.deque[T] = collections.deque(items)

    def put(self, item: T) -> None:
        with self._mutex:
            self._items.append(item)

    def take(self) -> T | None:
        """The oldest item, removed; None if there is none."""
        with self._mutex:
            return self._items.popleft() if self._items else None

    def drain(self) -> list[T]:
        """Every item, oldest first, removed."""
        with self._mutex:
            items = list(self._items)
            self._items.clear()
        return items


@thread_safe
class WorkQueue(Generic[T]):
    """Thread-safe. A first-in, first-out queue of work for a fixed pool of threads:
    `take` blocks, with no timeout, until an item comes or the queue is closed. `put`
    is notify-only; `close` refuses further items, wakes every taker and hands back what
    was left, so that the owner decides what becomes of it."""

    __slots__ = ("_closed", "_cond", "_items")

    def __init__(self) -> None:
        self._cond = PrivateCondition(threading.Lock())
        self._items: collections.deque[T] = collections.deque()
        self._closed = False

    def put(self, item: T) -> bool:
        """Append `item` and wake one taker; False (item not queued) once closed."""
        with self._cond:
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    @calls_out
    def take(self) -> T | None:
        """Wait for the oldest item and remove it; None once the queue is closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed)
            if self._closed:
                return None
            return self._items.popleft()

    def close(self) -> list[T]:
        """Refuse further items, wake every taker and return the items left, oldest
        first. Idempotent (a second call returns [])."""
        with self._cond:
            self._closed = True
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
        return items

    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class _Thread(threading.Thread):
    """Not thread-safe; owned by the `ThreadGroup` that starts it. A daemon
    `threading.Thread` without two per-thread objects that CPython keeps for the whole
    of its run: its excepthook closure (a function, its five cells and their tuple) and
    its started Event (with a Condition, a lock, two bound methods and a deque). A
    thousand allocations run a thousand threads, and those fifteen objects were the
    largest share of what the cyclic garbage collector walked per allocation. Each
    thread shares one closure made the same way (what it captures, the hooks to fall
    back on, is the same for every thread), and once started, it shares one set Event:
    CPython reads that event only to know that the thread has started. Where either
    attribute is missing (another Python), the thread keeps its own."""

    def __init__(self, target: Callable[..., object], args: tuple[Any, ...], name: str) -> None:
        super().__init__(target=target, args=args, name=name, daemon=True)
        if _SHARED_EXCEPTHOOK is not None and hasattr(self, "_invoke_excepthook"):
            self._invoke_excepthook = _SHARED_EXCEPTHOOK

    def start(self) -> None:
        super().start()  # returns once the new thread has set its own started Event
        if isinstance(getattr(self, "_started", None), threading.Event):
            self._started = _STARTED


_make_excepthook = getattr(threading, "_make_invoke_excepthook", None)
_SHARED_EXCEPTHOOK: Callable[[threading.Thread], None] | None = (
    _make_excepthook() if _make_excepthook is not None else None
)
_STARTED = threading.Event()
_STARTED.set()


@thread_safe
class ThreadGroup:
    """Thread-safe. Starts named threads and joins them together with a deadline.

    Threads are daemons so that a bug can never keep the interpreter alive, but every
    owner joins its group on shutdown; the test harness fails on any thread left alive.
    A spawn costs amortised O(1): the record of threads forgets the dead ones only once
    it has grown past twice the number alive at the last purge, so it stays proportional
    to the threads alive, however many short-lived ones a long-lived group starts.
    """

    __slots__ = ("_mutex", "_purge_at", "_threads", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._mutex = threading.Lock()
        # Insertion-ordered; only started threads are recorded, so a purge (which drops
        # the threads that are not alive) never drops one that has yet to start.
        self._threads: dict[threading.Thread, None] = {}
        self._purge_at = _PURGE_MIN

    def spawn(self, name: str, target: Callable[..., object], *args: Any) -> threading.Thread:
        """Start `target(*args)` on a new thread called `name`."""
        thread = _Thread(target, args, name)
        with self._mutex:
            # Started under the group's private mutex so that `join` and `alive` never see
            # a thread that is recorded but not started; start() only waits for the new
            # thread to begin, and the new thread never takes this mutex.
            thread.start()
            if len(self._threads) >= self._purge_at:
                self._threads = {t: None for t in self._threads if t.is_alive()}
                self._purge_at = max(_PURGE_MIN, 2 * len(self._threads))
            self._threads[thread] = None
        return thread

    @calls_out
    def join(self, timeout: float | None = None) -> bool:
        """Join every thread started so far; True if all ended within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._mutex:
            threads = list(self._threads)
        current = threading.current_thread()
        for thread in threads:
            if thread is current:
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(t.is_alive() for t in threads if t is not current)

    def alive(self) -> list[threading.Thread]:
        """Threads of this group that are still running."""
        with self._mutex:
            return [t for t in self._threads if t.is_alive()]
