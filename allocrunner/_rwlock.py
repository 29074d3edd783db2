"""RWLock: the project's writer-preferring reader-writer lock (DESIGN.md §4, rule 8).

What it is for: the lock `make_rwlock` returns when the lock check is off, with Go
`sync.RWMutex` semantics (a waiting writer blocks new readers; the readers queued behind
a writer go before the next writer). `allocrunner._locking.CheckedRWLock` adds the
order and ownership checks on top of it, and `_locking` re-exports every name here.
It is the project's own because the PyPI reader-writer locks are slower and cannot
carry a name and a rank.

Threads: none of its own; any thread may take either side.
Locks: each RWLock is built from two raw mutexes that are its implementation, not
declared locks, and are never held outside its own methods: ``_mutex`` guards its
counters and flags (readers, writer, waiting counts, admission generation) and is the
lock of its two conditions (`PrivateCondition`s, the one exemption of the blocking-wait
check besides the `_sync` primitives'); ``_intent_gate`` makes writers take turns
raising the ``_intent`` hint. Nothing else is called while either is held. The
conditions and the gate are made by the first thread that needs them: every allocation
owns several RWLocks that are never contended, and each of these objects is one more
for the cyclic garbage collector to walk. A condition is made under ``_mutex`` before
its waiter is counted, so a notifier that sees a waiter counted finds it; a gate is
made under ``_GATE_INIT``, a module-level raw lock held for two attribute operations.
Owner: `allocrunner._locking.make_rwlock` creates the package's RWLocks (named and
ranked); the benchmarks also build bare ones.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from time import monotonic as _monotonic
from time import sleep as _sleep
from types import TracebackType
from typing import Protocol, TypeVar

T = TypeVar("T")
_allocate_lock = threading.Lock

__all__ = ["LockSide", "PrivateCondition", "RWLock"]

# How long a reader sleeps while a writer is on its way to the RWLock mutex, or while
# the mutex is held by a thread that the GIL switched out. A real sleep, not sleep(0):
# a thread that only yields takes the GIL straight back and can keep the thread it
# waits for from running.
_YIELD_SLEEP = 50e-6

# Without a GIL (free-threaded CPython) a thread holding the mutex is running, so
# readers simply block on it.
_GIL: bool = getattr(sys, "_is_gil_enabled", lambda: True)()

# Makes the intent gates of RWLocks on their first contended write (see the module
# docstring); held for a test and an assignment, never while anything else is taken.
_GATE_INIT = threading.Lock()


def _take_contended(mutex: threading.Lock) -> None:
    """Take an RWLock mutex that a reader found held.

    Under the GIL the holder is a thread that was switched out right after taking it
    (it holds it for a few bytecodes otherwise). A reader that blocked on the mutex
    inside C would get it the moment it is released and then wait, holding it, for
    the GIL, so one switched-out holder would turn every reader into a convoy. So a
    reader sleeps a little and tries again, holding nothing while it waits."""
    if not _GIL:
        mutex.acquire()
        return
    while not mutex.acquire(False):
        _sleep(_YIELD_SLEEP)


class PrivateCondition:
    """A condition over a primitive's own raw mutex (an RWLock's, a `_sync` primitive's).

    Waiting on it is how that primitive blocks, so in check mode the blocking-wait check
    (`allocrunner._blocking`) lets it wait while the caller holds declared locks: taking
    an RWLock is ordered by the lock checker instead, and the `_sync` primitives' waiting
    methods carry `@calls_out`. Nothing else may use it.

    It is not a `threading.Condition`, whose bound methods and waiter deque cost about
    1.2 KB each: every allocation owns a dozen of these (two per RWLock, one per `Kick`
    and `LatestValue`), and most are never waited on. This one is two slots, and its
    waiter list is made by the first wait. Semantics are `threading.Condition`'s over a
    plain lock: the caller holds the mutex around `wait`, `wait_for` and `notify*`; a
    waiter is woken in arrival order; a waiter whose timeout ends while it is being
    notified counts the notification and returns True, so no notification is lost.
    """

    __slots__ = ("_mutex", "_waiters")

    lockcheck_exempt = True

    def __init__(self, mutex: threading.Lock) -> None:
        self._mutex = mutex
        self._waiters: list[threading.Lock] | None = None

    def __enter__(self) -> bool:
        return self._mutex.acquire()

    def __exit__(self, *exc: object) -> None:
        self._mutex.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the mutex, sleep until notified or `timeout` passes, take it back.
        True if notified."""
        waiter = _allocate_lock()
        waiter.acquire()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        self._mutex.release()
        woken = False
        try:
            if timeout is None:
                woken = waiter.acquire()
            elif timeout > 0:
                woken = waiter.acquire(True, timeout)
            else:
                woken = waiter.acquire(False)
        finally:
            self._mutex.acquire()
            if not woken:
                try:
                    self._waiters.remove(waiter)
                except ValueError:  # a notify took it off the list as the wait ended
                    woken = True
        return woken

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Wait until `predicate()` is true or `timeout` passes; the predicate's last
        value."""
        deadline = None if timeout is None else _monotonic() + timeout
        result = predicate()
        while not result:
            if deadline is None:
                self.wait()
            else:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    break
                self.wait(remaining)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wake up to `n` waiters, longest-waiting first."""
        waiters = self._waiters
        while waiters and n > 0:
            waiters.pop(0).release()
            n -= 1

    def notify_all(self) -> None:
        """Wake every waiter."""
        waiters = self._waiters
        if waiters:
            self._waiters = []
            for waiter in waiters:
                waiter.release()


class LockSide(Protocol):
    """One side of an RWLock as a context manager: ``with lock.read(): ...``."""

    def __enter__(self) -> RWLock: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> None: ...


class RWLock:
    """Thread-safe. A writer-preferring reader-writer lock with Go `sync.RWMutex` semantics.

    A waiting writer blocks new readers, so a steady stream of readers cannot starve
    it; when a writer releases, the readers that queued behind it are admitted
    together before the next writer, so writers cannot starve readers either. The
    read side is not reentrant (a reader that re-reads while a writer waits would
    deadlock, exactly as in Go).

    All state lives under one small mutex. A plain mutex is not fair, and under the
    GIL a thread that gets a lock can then wait a whole switch interval for the GIL
    while holding it: readers that take the mutex in a tight loop could keep a writer
    from it for many milliseconds. So a writer on its way to the mutex raises a hint
    (``_intent``, read without the mutex) and readers that see it yield the GIL, holding
    nothing, until the writer has registered; writers take turns at ``_intent_gate``,
    which readers never touch. The hint is only a hint: correctness rests on the state
    under the mutex, whatever a reader happened to read.
    """

    __slots__ = (
        "_admit_gen",
        "_intent",
        "_intent_gate",
        "_mutex",
        "_read_side",
        "_readers",
        "_readers_ok",
        "_readers_waiting",
        "_writer",
        "_writer_ok",
        "_writers_waiting",
        "name",
    )

    def __init__(self, name: str = "RWLock") -> None:
        self.name = name
        self._mutex = threading.Lock()
        # Made under the mutex by the first reader or writer that waits.
        self._readers_ok: PrivateCondition | None = None
        self._writer_ok: PrivateCondition | None = None
        self._readers = 0  # readers holding the lock (admitted ones included)
        self._writer = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._admit_gen = 0  # bumped each time queued readers are admitted as a batch
        self._intent = False  # hint: a writer is on its way to the mutex
        self._intent_gate: threading.Lock | None = None  # writers take turns at it
        self._read_side: LockSide = _ReadSide(self)

    def read(self) -> LockSide:
        """Context manager for the read side: ``with lock.read(): ...``."""
        return self._read_side

    def write(self) -> LockSide:
        """Context manager for the write side: ``with lock.write(): ...``. The lock
        itself, so that the write side costs no object of its own (every allocation
        holds a few RWLocks, each one more object for the cyclic collector to walk)."""
        return self

    def __enter__(self) -> RWLock:
        """The write side (see `write`)."""
        self.acquire_write()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.release_write()

    def acquire_read(self, timeout: float | None = None) -> bool:
        """Take the read side; False if `timeout` seconds passed first."""
        if self._intent:
            deadline = None if timeout is None else _monotonic() + timeout
            if not self._yield_to_writer(deadline):
                return False
            if deadline is not None:
                timeout = max(0.0, deadline - _monotonic())
        mutex = self._mutex
        if mutex.locked():
            _take_contended(mutex)
        else:
            mutex.acquire()
        if not self._writer and not self._writers_waiting:
            self._readers += 1
            mutex.release()
            return True
        try:
            return self._wait_read_locked(timeout)
        finally:
            mutex.release()

    def _yield_to_writer(self, deadline: float | None) -> bool:
        """Let a writer on its way to the mutex get there first (it takes microseconds
        unless the writer waits for the GIL, which yielding hands over). False if the
        deadline passed first."""
        while self._intent:
            if deadline is not None and _monotonic() >= deadline:
                return False
            _sleep(_YIELD_SLEEP)
        return True

    def _wait_read_locked(self, timeout: float | None) -> bool:
        readers_ok = self._readers_ok
        if readers_ok is None:
            readers_ok = self._readers_ok = PrivateCondition(self._mutex)
        self._readers_waiting += 1
        gen = self._admit_gen
        if timeout is None:
            while self._admit_gen == gen:
                readers_ok.wait()
            return True
        deadline = _monotonic() + timeout
        while self._admit_gen == gen:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                self._readers_waiting -= 1
                return False
            readers_ok.wait(remaining)
        return True

    def _writer_cond_locked(self) -> PrivateCondition:
        """The writers' condition, made now if no writer waited before (under the
        mutex)."""
        writer_ok = self._writer_ok
        if writer_ok is None:
            writer_ok = self._writer_ok = PrivateCondition(self._mutex)
        return writer_ok

    def _gate(self) -> threading.Lock:
        """The intent gate, made by the first writer that finds the mutex taken."""
        gate = self._intent_gate
        if gate is None:
            with _GATE_INIT:
                gate = self._intent_gate
                if gate is None:
                    gate = self._intent_gate = threading.Lock()
        return gate

    def _notify_writer_locked(self) -> None:
        """Wake one waiting writer; only called with a writer counted as waiting, which
        made the condition before it was counted."""
        writer_ok = self._writer_ok
        assert writer_ok is not None
        writer_ok.notify()

    def release_read(self) -> None:
        """Release the read side."""
        mutex = self._mutex
        if mutex.locked():
            _take_contended(mutex)
        else:
            mutex.acquire()
        readers = self._readers
        if readers <= 0:
            mutex.release()
            raise RuntimeError(f"release_read of {self.name} without a reader")
        self._readers = readers - 1
        if readers == 1 and self._writers_waiting:
            self._notify_writer_locked()
        mutex.release()

    def acquire_write(self, timeout: float | None = None) -> bool:
        """Take the write side; False if `timeout` seconds passed first."""
        mutex = self._mutex
        if not mutex.locked():  # nobody in the way: no need to raise the hint
            mutex.acquire()
            if not self._writer and not self._readers:
                self._writer = True
                mutex.release()
                return True
            mutex.release()
        deadline = None if timeout is None else _monotonic() + timeout
        gate = self._gate()
        if timeout is None:
            with gate:  # no GIL switch can fall between taking the gate and the hint
                self._intent = True
                try:
                    mutex.acquire()
                finally:
                    self._intent = False
        else:
            if not gate.acquire(True, max(timeout, 0.0)):
                return False
            try:
                self._intent = True
                mutex.acquire()
            finally:
                self._intent = False
                gate.release()
        try:
            if not self._writer and not self._readers:
                self._writer = True
                return True
            writer_ok = self._writer_cond_locked()
            self._writers_waiting += 1
            while self._writer or self._readers:
                if deadline is None:
                    writer_ok.wait()
                    continue
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    self._writers_waiting -= 1
                    if not self._writers_waiting and not self._writer:
                        self._admit_readers_locked()
                    return False
                writer_ok.wait(remaining)
            self._writers_waiting -= 1
            self._writer = True
            return True
        finally:
            mutex.release()

    def release_write(self) -> None:
        """Release the write side; queued readers go before the next writer."""
        mutex = self._mutex
        mutex.acquire()
        try:
            if not self._writer:
                raise RuntimeError(f"release_write of {self.name} without a writer")
            self._writer = False
            if self._readers_waiting:
                self._admit_readers_locked()
            elif self._writers_waiting:
                self._notify_writer_locked()
        finally:
            mutex.release()

    def _admit_readers_locked(self) -> None:
        if self._readers_waiting:
            self._readers += self._readers_waiting
            self._readers_waiting = 0
            self._admit_gen += 1
            readers_ok = self._readers_ok
            assert readers_ok is not None  # made before the first reader was counted
            readers_ok.notify_all()

    def __repr__(self) -> str:
        return f"<RWLock {self.name} readers={self._readers} writer={self._writer}>"


class _ReadSide:
    """The ``with lock.read():`` context manager; the uncontended path is inlined here
    because it is the hot path of every reader."""

    __slots__ = ("_mutex", "_rw")

    def __init__(self, rw: RWLock) -> None:
        self._rw = rw
        self._mutex = rw._mutex

    def __enter__(self) -> RWLock:
        rw = self._rw
        if rw._intent:
            rw._yield_to_writer(None)
        mutex = self._mutex
        if mutex.locked():
            _take_contended(mutex)
        else:
            mutex.acquire()
        if rw._writer or rw._writers_waiting:
            try:
                rw._wait_read_locked(None)
            finally:
                mutex.release()
        else:
            rw._readers += 1
            mutex.release()
        return rw

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        rw = self._rw
        mutex = self._mutex
        if mutex.locked():
            _take_contended(mutex)
        else:
            mutex.acquire()
        readers = rw._readers
        if readers <= 0:
            mutex.release()
            raise RuntimeError(f"release_read of {rw.name} without a reader")
        rw._readers = readers - 1
        if readers == 1 and rw._writers_waiting:
            rw._notify_writer_locked()
        mutex.release()
