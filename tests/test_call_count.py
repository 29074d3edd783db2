"""The benchmarks' call counter (`benchmarks.call_count`): it counts every call made on
the installing thread and on threads started while it is installed, none on a thread
started before, and none once a thread has been told to stop or the counter is
uninstalled, so the scale benchmark's calls-per-allocation figure counts only the
stretch it names.

Threads and locks: each test starts at most one thread and joins it. Owner: pytest.
"""

from __future__ import annotations

import threading

import pytest

from benchmarks.call_count import CallCounter

CALLS = 1000
# What one `total()` read adds on the reading thread: its own call and the few C calls
# it makes (the lock, the list copy, the sum and its generator).
READ_SLACK = 20


def _noop() -> None:
    pass


def _calls(n: int) -> None:
    for _ in range(n):
        _noop()


@pytest.mark.timeout(30)
def test_calls_on_the_installing_thread_are_counted_one_each() -> None:
    counter = CallCounter()
    with counter.installed():
        before = counter.total()
        _calls(CALLS)
        counted = counter.total() - before
    assert CALLS + 1 <= counted <= CALLS + 1 + READ_SLACK


@pytest.mark.timeout(30)
def test_a_thread_started_while_installed_is_counted_until_it_is_uninstalled() -> None:
    counter = CallCounter()
    go_on = threading.Event()
    first_done = threading.Event()

    def work() -> None:
        _calls(CALLS)
        first_done.set()
        go_on.wait()
        _calls(CALLS)  # after the block: not counted

    with counter.installed():
        thread = threading.Thread(target=work)
        before = counter.total()
        thread.start()
        assert first_done.wait(10)
        during = counter.total() - before
    after_block = counter.total()
    go_on.set()
    thread.join(10)
    assert during >= CALLS
    assert counter.total() == after_block


@pytest.mark.timeout(30)
def test_a_thread_started_before_it_was_installed_is_not_counted() -> None:
    counter = CallCounter()
    go_on = threading.Event()
    done = threading.Event()

    def work() -> None:
        go_on.wait()
        _calls(CALLS)
        done.set()

    thread = threading.Thread(target=work)
    thread.start()
    with counter.installed():
        counter.stop_here()
        before = counter.total()
        go_on.set()
        assert done.wait(10)
        assert counter.total() == before
    thread.join(10)


@pytest.mark.timeout(30)
def test_stop_here_stops_counting_on_the_calling_thread_only() -> None:
    counter = CallCounter()
    with counter.installed():
        counter.stop_here()
        before = counter.total()
        _calls(CALLS)
        assert counter.total() == before
