"""Latest-only broadcast of an allocation's client view to any number of listeners.

An `AllocBroadcaster` holds one versioned slot: the newest allocation sent and a
version number that every send bumps. An `AllocListener` remembers the version it
last returned, so its "pending value" is simply the slot whenever the slot is newer
than that version. Hence:

- a send costs the same with no listener or a thousand, and never waits for a slow
  listener (there is no queue per listener to fill);
- a listener holds at most one pending value and it is always the newest; values in
  between may be skipped, never reordered, so a listener cannot see an older value
  after a newer one;
- a new listener is primed with the last value sent, if any, so it never misses the
  final state of an allocation that stopped changing before it started listening.

This is Nomad's client-side ``AllocBroadcaster`` (capacity-1 channel per listener,
primed with the last value) with the channels replaced by one slot and a condition.
The condition is hand-made from one-shot `Waiter`s that a send wakes after releasing
the lock: with `threading.Condition` every woken listener would first queue up on the
lock the sender still holds, and a hundred listeners would then wake one by one.

`Broadcaster[T]` carries any immutable value; `AllocBroadcaster` is the one of
allocations that each AllocRunner owns.

Threads: none of its own; senders never block, listeners block in ``get`` on their own
threads. Locks: "AllocBroadcaster._lock" (a leaf) guards the slot, its version, the
closed flag, the blocked listeners and every listener's fields; waiters are woken after
it is released. Owner: an `AllocRunner` creates its broadcaster and sends the client
view on every state change; the agent's cluster owns one for its snapshots; anyone
may listen.
"""

from __future__ import annotations

from collections.abc import Iterator
from time import monotonic
from typing import Generic, Protocol, TypeVar

from allocrunner._locking import calls_out, guarded, immutable, make_lock
from allocrunner._sync import Waiter
from allocrunner.errors import BroadcasterClosed
from allocrunner.structs import Allocation

__all__ = ["AllocBroadcaster", "AllocListener", "Broadcaster"]

T = TypeVar("T")


class Wakeable(Protocol):
    """Anything a send can wake: a blocked `get`'s `Waiter`, or a consumer that is
    woken rather than blocked (`AllocListener.wake_on_new`). `wake` must not block."""

    def wake(self) -> None: ...


class Broadcaster(Generic[T]):
    """Thread-safe. Sends immutable values to every listener; each keeps only the newest.

    `AllocBroadcaster` is this broadcaster restricted to allocations; the agent uses
    it as it is for its own snapshots (the blocking queries and the event stream).

    ``send`` never blocks (it takes one leaf lock for O(1) work, then wakes the
    listeners blocked in ``get``, if any) and may be called while holding another
    declared lock. After ``close`` further sends raise `BroadcasterClosed`; listeners
    still receive the last value they have not seen, then `BroadcasterClosed`.
    """

    # _lock guards: _value, _version, _closed, _waiters, and every listener's fields.
    _lock = immutable()
    _value = guarded("_lock")
    _version = guarded("_lock")
    _closed = guarded("_lock")
    _waiters = guarded("_lock")  # tuple of Wakeable: blocked get()s and armed wakers; replaced

    def __init__(self) -> None:
        self._lock = make_lock("AllocBroadcaster._lock")
        self._value: T | None = None
        self._version = 0  # 0: nothing sent yet
        self._closed = False
        self._waiters: tuple[Wakeable, ...] = ()

    def send(self, alloc: T) -> None:
        """Publish `alloc` as the newest value. Raises `BroadcasterClosed` after close()."""
        with self._lock:
            if self._closed:
                raise BroadcasterClosed("send on a closed AllocBroadcaster")
            self._value = alloc
            self._version += 1
            waiters, self._waiters = self._waiters, ()
        for waiter in waiters:
            waiter.wake()

    def close(self) -> None:
        """Stop broadcasting; idempotent. Blocked listeners wake up."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiters, self._waiters = self._waiters, ()
        for waiter in waiters:
            waiter.wake()

    def listen(self) -> AllocListener[T]:
        """A new listener, primed with the last value sent (if any)."""
        return AllocListener(self)

    def last(self) -> T | None:
        """The last value sent, or None if nothing was sent yet."""
        with self._lock:
            return self._value

    def is_closed(self) -> bool:
        """True once `close()` was called."""
        with self._lock:
            return self._closed

    def blocked_listeners(self) -> int:
        """How many listeners are blocked in ``get`` right now."""
        with self._lock:
            return len(self._waiters)

    def __repr__(self) -> str:
        # Lock-free on purpose (a repr may be taken while the lock is held); the
        # figures are a racy glance, read past the field checks.
        fields = vars(self)
        return f"<AllocBroadcaster version={fields['_version']} closed={fields['_closed']}>"


class AllocBroadcaster(Broadcaster[Allocation]):
    """Thread-safe. A `Broadcaster` of allocations: `send` refuses anything else."""

    def send(self, alloc: Allocation) -> None:
        """Publish `alloc` as the newest value. Raises `BroadcasterClosed` after close()."""
        if not isinstance(alloc, Allocation):
            raise TypeError(
                f"AllocBroadcaster.send: alloc must be an Allocation, got {type(alloc).__name__}"
            )
        super().send(alloc)


class AllocListener(Generic[T]):
    """Thread-safe. One consumer's view of a `Broadcaster` (an `AllocBroadcaster`'s
    listener yields allocations): the newest value it has not returned yet.

    Normally one thread consumes it (``get`` or iteration); ``close`` may come from any
    thread and wakes a consumer blocked in ``get``. Use it as a context manager so it is
    closed when the consumer is done.
    """

    # The broadcaster's lock guards the listener's fields too: one lock for the slot
    # and every view of it.
    _broadcaster = immutable()
    _lock = immutable()
    _seen = guarded("_lock")  # version of the last value returned; 0 before the first
    _closed = guarded("_lock")
    _waiter = guarded("_lock")  # the Waiter of a get() blocked right now, else None

    def __init__(self, broadcaster: Broadcaster[T]) -> None:
        self._broadcaster = broadcaster
        self._lock = broadcaster._lock
        self._seen = 0
        self._closed = False
        self._waiter: Waiter | None = None

    @calls_out
    def get(self, timeout: float | None = None) -> T:
        """The next value not seen yet, waiting up to `timeout` seconds (None: forever).

        Raises TimeoutError when the time passes with nothing new, and
        `BroadcasterClosed` when this listener is closed, or when the broadcaster is
        closed and every value it sent was seen.
        """
        b = self._broadcaster
        deadline = None if timeout is None else monotonic() + timeout
        woken = True
        while True:
            with self._lock:
                if self._waiter is not None:  # back from a wait (close() may clear it)
                    if not woken:  # timed out: unless a waker just took it, still listed
                        b._waiters = tuple(w for w in b._waiters if w is not self._waiter)
                    self._waiter = None
                if self._closed:
                    raise BroadcasterClosed("get on a closed AllocListener")
                version = b._version
                if version != self._seen:
                    self._seen = version
                    return b._value  # type: ignore[return-value]  # set once version > 0
                if b._closed:
                    raise BroadcasterClosed("AllocBroadcaster closed and every value was seen")
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no new allocation within {timeout}s")
                waiter = Waiter()
                self._waiter = waiter
                b._waiters = (*b._waiters, waiter)
            woken = waiter.wait(remaining)

    def wake_on_new(self, waker: Wakeable) -> None:
        """Have `waker` woken once, when a value this listener has not seen is sent or
        the broadcaster closes; at once if one is already there. For a consumer that is
        stepped rather than blocked in ``get``. Notify-only."""
        b = self._broadcaster
        with self._lock:
            now = self._closed or b._closed or b._version != self._seen
            if not now and waker not in b._waiters:
                b._waiters = (*b._waiters, waker)
        if now:
            waker.wake()

    def pending(self) -> bool:
        """True if a value not seen yet is waiting (``get`` would return at once)."""
        b = self._broadcaster
        with self._lock:
            return not self._closed and b._version != self._seen

    def close(self) -> None:
        """Stop listening; idempotent. A ``get`` blocked in another thread wakes up and
        raises `BroadcasterClosed`."""
        b = self._broadcaster
        with self._lock:
            if self._closed:
                return
            self._closed = True
            waiter, self._waiter = self._waiter, None
            if waiter is not None:
                b._waiters = tuple(w for w in b._waiters if w is not waiter)
        if waiter is not None:
            waiter.wake()

    def __iter__(self) -> Iterator[T]:
        """Each new value until the broadcaster (or this listener) is closed."""
        while True:
            try:
                yield self.get()
            except BroadcasterClosed:
                return

    def __enter__(self) -> AllocListener[T]:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __repr__(self) -> str:
        fields = vars(self)  # lock-free, as AllocBroadcaster.__repr__
        return f"<AllocListener seen={fields['_seen']} closed={fields['_closed']}>"
