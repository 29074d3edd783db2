"""One contract for every reader-writer lock: the production `RWLock` and the
`CheckedRWLock` that replaces it in check mode.

Go `sync.RWMutex` semantics (DESIGN.md §4 rule 8): writers are alone, readers share;
a waiting writer blocks new readers (no writer starvation); the readers that queued
behind a writer go in together before the next writer (no reader starvation);
timeouts are honoured on both sides; releasing what is not held is an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from allocrunner import _locking
from allocrunner._locking import CheckedRWLock, RWLock
from allocrunner.errors import LockNotHeldError
from allocrunner.testing import assert_stays, wait_for

IMPLEMENTATIONS: dict[str, Callable[[], RWLock]] = {
    "RWLock": lambda: RWLock("AllocDir._lock"),
    "CheckedRWLock": lambda: CheckedRWLock("AllocDir._lock"),
}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def lock(request: pytest.FixtureRequest) -> RWLock:
    return IMPLEMENTATIONS[request.param]()


def _queued(lock: RWLock, readers: int = 0, writers: int = 0) -> Callable[[], None]:
    """A wait_for check: that many readers and writers are blocked in the lock."""

    def check() -> None:
        got = (lock._readers_waiting, lock._writers_waiting)
        assert got == (readers, writers), f"(readers, writers) waiting: {got}"

    return check


class Threads:
    """Not thread-safe; owned by one test. Named helper threads, joined together.

    Unlike `ThreadGroup.join` (a checked callout), joining here is allowed while the
    test thread holds the lock under test: the helpers only ever try with timeouts or
    wait for something the test thread does without joining.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._threads: list[threading.Thread] = []

    def spawn(self, name: str, target: Callable[..., object], *args: object) -> None:
        # daemon: should the lock under test deadlock, the test fails instead of the
        # interpreter hanging at exit
        thread = threading.Thread(target=target, args=args, name=f"{self.name}-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)


class Tally:
    """Thread-safe. Who is inside the lock right now, and the most readers seen at once."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.readers = 0
        self.writers = 0
        self.max_readers = 0
        self.reads = 0
        self.writes = 0
        self.errors: list[str] = []

    def enter(self, write: bool) -> None:
        with self._mutex:
            if write:
                self.writers += 1
                self.writes += 1
                if self.writers != 1 or self.readers:
                    self.errors.append(
                        f"writer with {self.writers} writers, {self.readers} readers"
                    )
            else:
                self.readers += 1
                self.reads += 1
                self.max_readers = max(self.max_readers, self.readers)
                if self.writers:
                    self.errors.append(f"reader with {self.writers} writers inside")

    def leave(self, write: bool) -> None:
        with self._mutex:
            if write:
                self.writers -= 1
            else:
                self.readers -= 1


def test_context_managers_return_the_lock(lock: RWLock) -> None:
    with lock.read() as held:
        assert held is lock
    with lock.write() as held:
        assert held is lock


def test_the_production_lock_is_its_own_write_side() -> None:
    """The write side costs no object of its own: an allocation holds a few RWLocks."""
    lock = RWLock("AllocDir._lock")
    assert lock.write() is lock
    with lock.write():
        assert lock._writer
        assert not lock.acquire_read(timeout=0)
    assert not lock._writer
    assert lock.acquire_read(timeout=0)
    lock.release_read()


def test_writer_is_alone(lock: RWLock) -> None:
    with lock.write():
        results: list[bool] = []
        group = Threads("writer-alone")
        group.spawn("try-read", lambda: results.append(lock.acquire_read(timeout=0.05)))
        group.spawn("try-write", lambda: results.append(lock.acquire_write(timeout=0.05)))
        assert group.join(10)
        assert results == [False, False]


def test_readers_share(lock: RWLock) -> None:
    both_inside = threading.Barrier(2)  # passes only with two readers inside at once
    group = Threads("readers-share")
    passed: list[bool] = []

    def read() -> None:
        with lock.read():
            both_inside.wait(10)
            passed.append(True)

    group.spawn("reader-a", read)
    group.spawn("reader-b", read)
    assert group.join(10)
    assert passed == [True, True]


def test_mutual_exclusion_under_many_threads(lock: RWLock) -> None:
    tally = Tally()
    stop = time.monotonic() + 1.0
    group = Threads("exclusion")

    def work(write_every: int) -> None:
        n = 0
        while time.monotonic() < stop:
            n += 1
            write = write_every and n % write_every == 0
            side = lock.write() if write else lock.read()
            with side:
                tally.enter(bool(write))
                time.sleep(0)  # let the others run while inside
                tally.leave(bool(write))

    for i in range(6):
        group.spawn(f"reader-{i}", work, 0)
    for i in range(2):
        group.spawn(f"writer-{i}", work, 3)
    assert group.join(20)
    assert tally.errors == []
    assert tally.readers == 0 and tally.writers == 0
    assert tally.writes > 10 and tally.reads > 10
    assert tally.max_readers >= 2, "readers never overlapped"
    assert lock.acquire_write(timeout=0)
    lock.release_write()


def test_waiting_writer_blocks_new_readers(lock: RWLock) -> None:
    lock.acquire_read()
    group = Threads("writer-preferred")
    got: list[str] = []

    def writer() -> None:
        ok = lock.acquire_write(timeout=10)
        got.append(f"writer {ok}")
        if ok:
            lock.release_write()

    group.spawn("writer", writer)
    wait_for(_queued(lock, writers=1), 10)
    # a new reader now waits for the writer (Go semantics), even though a reader is in
    late = Threads("late-reader")
    late.spawn("reader", lambda: got.append(f"reader {lock.acquire_read(timeout=0.05)}"))
    assert late.join(10)
    assert got == ["reader False"]
    lock.release_read()
    assert group.join(10)
    assert got == ["reader False", "writer True"]


def test_no_writer_starvation(lock: RWLock) -> None:
    stop = threading.Event()
    group = Threads("starvation")
    reads = [0] * 8

    def hammer(i: int) -> None:
        while not stop.is_set():
            with lock.read():
                time.sleep(0)
            reads[i] += 1

    for i in range(8):
        group.spawn(f"hammer-{i}", hammer, i)
    try:
        wait_for(lambda: _assert_true(all(reads), f"readers not all running: {reads}"), 10)
        waits = []
        for _ in range(20):
            start = time.monotonic()
            assert lock.acquire_write(timeout=5), "writer starved by 8 readers"
            waits.append(time.monotonic() - start)
            lock.release_write()
            time.sleep(0.001)
    finally:
        stop.set()
        assert group.join(10)
    assert max(waits) < 2.0, waits


def test_queued_readers_go_before_the_next_writer(lock: RWLock) -> None:
    order: list[str] = []
    record = threading.Lock()
    group = Threads("reader-batch")
    both_readers_in = threading.Barrier(2)
    release_writer_1 = threading.Event()

    def note(what: str) -> None:
        with record:
            order.append(what)

    def writer(name: str, hold: threading.Event | None) -> None:
        with lock.write():
            note(name)
            if hold is not None:
                hold.wait(10)

    def reader() -> None:
        with lock.read():
            note("reader")
            both_readers_in.wait(10)  # the two queued readers are inside together

    lock.acquire_read()  # a reader in front of everybody
    group.spawn("writer-1", writer, "writer-1", release_writer_1)
    wait_for(_queued(lock, writers=1), 10)
    group.spawn("reader-1", reader)
    group.spawn("reader-2", reader)
    wait_for(_queued(lock, readers=2, writers=1), 10)  # queued behind writer-1
    lock.release_read()
    wait_for(lambda: _assert_true(order == ["writer-1"], f"order so far {order}"), 10)
    group.spawn("writer-2", writer, "writer-2", None)
    wait_for(_queued(lock, readers=2, writers=1), 10)  # writer-2 waits too now
    release_writer_1.set()
    assert group.join(10)
    assert order == ["writer-1", "reader", "reader", "writer-2"], order


def test_readers_queued_behind_a_writer_go_first_even_with_writers_waiting(
    lock: RWLock,
) -> None:
    order: list[str] = []
    record = threading.Lock()
    group = Threads("batch-before-writer")
    both_readers_in = threading.Barrier(2)

    def note(what: str) -> None:
        with record:
            order.append(what)

    def writer(name: str) -> None:
        with lock.write():
            note(name)

    def reader() -> None:
        with lock.read():
            note("reader")
            both_readers_in.wait(10)

    lock.acquire_write()  # the writer in front of everybody
    group.spawn("reader-1", reader)
    group.spawn("reader-2", reader)
    wait_for(_queued(lock, readers=2), 10)
    group.spawn("writer-2", writer, "writer-2")
    wait_for(_queued(lock, readers=2, writers=1), 10)
    lock.release_write()
    assert group.join(10)
    assert order == ["reader", "reader", "writer-2"], order


def test_read_timeout(lock: RWLock) -> None:
    lock.acquire_write()
    start = time.monotonic()
    got: list[bool] = []
    group = Threads("read-timeout")
    group.spawn("timed-reader", lambda: got.append(lock.acquire_read(timeout=0.1)))
    assert group.join(10)
    assert got == [False]
    assert time.monotonic() - start >= 0.1
    assert lock._readers_waiting == 0
    lock.release_write()
    # the timed-out reader left nothing behind: a writer gets straight in
    assert lock.acquire_write(timeout=0)
    lock.release_write()


def test_write_timeout_lets_queued_readers_in(lock: RWLock) -> None:
    lock.acquire_read()  # R0 keeps reading throughout
    group = Threads("write-timeout")
    results: dict[str, object] = {}

    def timed_writer() -> None:
        start = time.monotonic()
        results["writer"] = lock.acquire_write(timeout=0.2)
        results["writer_waited"] = time.monotonic() - start

    def queued_reader() -> None:
        ok = lock.acquire_read(timeout=10)
        results["reader"] = ok
        if ok:
            lock.release_read()

    group.spawn("timed-writer", timed_writer)
    wait_for(_queued(lock, writers=1), 10)
    group.spawn("queued-reader", queued_reader)
    wait_for(_queued(lock, readers=1, writers=1), 10)
    assert group.join(10)
    assert results["writer"] is False and results["writer_waited"] >= 0.2
    assert results["reader"] is True, "the reader queued behind a timed-out writer stayed stuck"
    lock.release_read()
    assert lock.acquire_write(timeout=0)
    lock.release_write()


def test_timeout_zero_is_a_try(lock: RWLock) -> None:
    assert lock.acquire_write(timeout=0)
    group = Threads("try-lock")
    got: list[bool] = []
    group.spawn("try-reader", lambda: got.append(lock.acquire_read(timeout=0)))
    assert group.join(10)
    lock.release_write()
    assert lock.acquire_read(timeout=0)
    group.spawn("try-writer", lambda: got.append(lock.acquire_write(timeout=0)))
    assert group.join(10)
    assert got == [False, False]
    lock.release_read()


def test_release_without_acquire_raises(lock: RWLock) -> None:
    with pytest.raises((RuntimeError, LockNotHeldError)):
        lock.release_read()
    with pytest.raises((RuntimeError, LockNotHeldError)):
        lock.release_write()
    _locking.take_violations()
    # and the lock still works
    with lock.write():
        pass
    with lock.read():
        pass


def test_blocked_reader_and_writer_wake_on_release(lock: RWLock) -> None:
    group = Threads("wake")
    got: list[str] = []
    reader_may_leave = threading.Event()

    def blocked_reader() -> None:
        ok = lock.acquire_read(timeout=10)
        got.append(f"read {ok}")
        if ok:
            reader_may_leave.wait(10)
            lock.release_read()

    lock.acquire_write()
    group.spawn("blocked-reader", blocked_reader)
    wait_for(_queued(lock, readers=1), 10)
    assert_stays(lambda: _assert_true(got == [], f"got {got}"), 0.05)
    lock.release_write()
    wait_for(lambda: _assert_true(got == ["read True"], f"got {got}"), 10)

    def blocked_writer() -> None:
        ok = lock.acquire_write(timeout=10)
        got.append(f"write {ok}")
        if ok:
            lock.release_write()

    group.spawn("blocked-writer", blocked_writer)
    wait_for(_queued(lock, writers=1), 10)
    assert_stays(lambda: _assert_true(len(got) == 1, f"got {got}"), 0.05)
    reader_may_leave.set()
    assert group.join(10)
    assert got == ["read True", "write True"]


def _assert_true(condition: bool, message: str) -> None:
    assert condition, message


def test_a_writer_on_its_way_goes_before_new_readers(lock: RWLock) -> None:
    """While a writer waits for the internal mutex (its holder was switched out), new
    readers hold back instead of taking the mutex ahead of it; a timed reader gives
    up at its deadline."""
    order: list[str] = []
    record = threading.Lock()
    group = Threads("writer-on-its-way")

    def note(what: str) -> None:
        with record:
            order.append(what)

    def writer() -> None:
        with lock.write():
            note("writer")

    def reader() -> None:
        with lock.read():
            note("reader")

    lock._mutex.acquire()  # as if a thread holding it had been switched out
    try:
        group.spawn("writer", writer)
        wait_for(lambda: _assert_true(lock._intent, "the writer never raised its hint"), 10)
        group.spawn("reader", reader)
        timed: list[bool] = []
        group.spawn("timed-reader", lambda: timed.append(lock.acquire_read(timeout=0.05)))
        wait_for(lambda: _assert_true(timed == [False], f"timed reader got {timed}"), 10)
        assert order == []
    finally:
        lock._mutex.release()
    assert group.join(10)
    assert order == ["writer", "reader"], order
    assert not lock._intent
