"""Fixtures for the garbage collector tests: fake runners whose destroys take a while
and count how many are in flight at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from allocrunner._sync import Event, ThreadGroup


class Teardowns:
    """Thread-safe. Counts fake destroys in flight and the most ever at once."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.active = 0
        self.peak = 0
        self.order: list[str] = []

    def begin(self, alloc_id: str) -> None:
        with self._mutex:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.order.append(alloc_id)

    def end(self) -> None:
        with self._mutex:
            self.active -= 1


class FakeRunner:
    """Thread-safe. Stands in for an AllocRunner: `destroy()` returns at once and the
    teardown finishes `teardown` seconds later on a thread of its own (never, when
    `teardown` is None, until `finish()`). It offers `on_destroyed`, so the collector
    can wait for it and for its own stop at once; `LegacyFakeRunner` does not."""

    def __init__(self, alloc_id: str, teardowns: Teardowns, teardown: float | None = 0.02):
        self.id = alloc_id
        self._teardowns = teardowns
        self._teardown = teardown
        self._mutex = threading.Lock()
        self._launched = False
        self.destroy_calls = 0
        self._finish = threading.Event()
        self._destroyed = Event()
        self._threads = ThreadGroup(f"fake-{alloc_id}")

    def destroy(self) -> None:
        with self._mutex:
            self.destroy_calls += 1
            if self._launched:
                return
            self._launched = True
        self._teardowns.begin(self.id)
        self._threads.spawn(f"fake-destroy-{self.id}", self._tear_down)

    def _tear_down(self) -> None:
        # Simulated teardown work: it lasts `teardown` seconds unless finished early.
        self._finish.wait(self._teardown)
        self._teardowns.end()
        self._destroyed.set()

    def finish(self) -> None:
        self._finish.set()

    def destroy_launched(self) -> bool:
        with self._mutex:
            return self._launched

    def is_destroyed(self) -> bool:
        return self._destroyed.is_set()

    def wait_destroyed(self, timeout: float | None = None) -> bool:
        return self._destroyed.wait(timeout)

    def on_destroyed(self, callback: Callable[[], object]) -> Callable[[], None]:
        return self._destroyed.on_set(callback)

    def close(self, timeout: float = 30.0) -> bool:
        return self._threads.join(timeout)


class LegacyFakeRunner(FakeRunner):
    """A runner without `on_destroyed`: waited on with `wait_destroyed()` alone."""

    on_destroyed = None  # type: ignore[assignment]


@pytest.fixture
def teardowns() -> Teardowns:
    return Teardowns()


@pytest.fixture
def fakes(teardowns) -> Iterator[list[FakeRunner]]:
    made: list[FakeRunner] = []
    yield made
    for runner in made:
        runner.finish()
        assert runner.close(10), f"{runner.id} teardown thread still alive"
