"""Model-based tests of AllocBroadcaster: a sequential model checked step by step, and
a variant whose listeners are consumed by their own threads while values are sent from
several threads."""

from __future__ import annotations

import threading

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from allocrunner._sync import ThreadGroup
from allocrunner.broadcaster import AllocBroadcaster, AllocListener
from allocrunner.errors import BroadcasterClosed
from allocrunner.structs import Allocation
from allocrunner.testing import mock_alloc, wait_for

BASE = mock_alloc()


def alloc(index: int) -> Allocation:
    return attrs.evolve(BASE, alloc_modify_index=index)


@attrs.define
class ListenerModel:
    """Not thread-safe; owned by the state machine. What one listener should show."""

    listener: AllocListener
    seen: int = 0  # index of the last value it returned; 0 before the first
    closed: bool = False


class BroadcasterModel(RuleBasedStateMachine):
    """Sends, listens, gets and closes in any order, each checked against the model:
    the broadcaster's version is the number of values sent, and a listener's pending
    value is the newest one exactly when it has not returned that version yet."""

    listeners = Bundle("listeners")

    def __init__(self) -> None:
        super().__init__()
        self.b = AllocBroadcaster()
        self.sent = 0
        self.closed = False
        self.models: list[ListenerModel] = []

    @rule(count=st.integers(min_value=1, max_value=3))
    def send(self, count: int) -> None:
        for _ in range(count):
            if self.closed:
                with pytest.raises(BroadcasterClosed):
                    self.b.send(alloc(self.sent + 1))
                return
            self.sent += 1
            self.b.send(alloc(self.sent))

    @rule(target=listeners)
    def listen(self) -> ListenerModel:
        model = ListenerModel(self.b.listen())
        self.models.append(model)
        return model

    @rule(model=listeners)
    def get(self, model: ListenerModel) -> None:
        if model.closed:
            with pytest.raises(BroadcasterClosed, match="closed AllocListener"):
                model.listener.get(timeout=0)
        elif self.sent > model.seen:
            assert model.listener.get(timeout=0) == alloc(self.sent)
            model.seen = self.sent
        elif self.closed:
            with pytest.raises(BroadcasterClosed, match="every value was seen"):
                model.listener.get(timeout=0)
        else:
            with pytest.raises(TimeoutError):
                model.listener.get(timeout=0)

    @rule(model=listeners)
    def close_listener(self, model: ListenerModel) -> None:
        model.listener.close()
        model.closed = True

    @rule(model=consumes(listeners))
    def iterate_to_the_end(self, model: ListenerModel) -> None:
        if not self.closed:
            return
        got = [a.alloc_modify_index for a in model.listener]
        expected = [self.sent] if self.sent > model.seen and not model.closed else []
        assert got == expected
        model.seen = self.sent

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        self.b.close()
        self.closed = True

    @rule()
    def close_again(self) -> None:
        if self.closed:
            self.b.close()  # idempotent

    @invariant()
    def pending_matches_the_model(self) -> None:
        for model in self.models:
            expected = not model.closed and self.sent > model.seen
            assert model.listener.pending() == expected

    @invariant()
    def last_value_matches(self) -> None:
        assert self.b.last() == (alloc(self.sent) if self.sent else None)
        assert self.b.is_closed() == self.closed

    def teardown(self) -> None:
        self.b.close()
        for model in self.models:
            model.listener.close()


TestBroadcasterModel = BroadcasterModel.TestCase
TestBroadcasterModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


class Consumer:
    """Thread-safe. A listener drained by its own thread, recording what it got."""

    def __init__(self, listener: AllocListener) -> None:
        self.listener = listener
        self._mutex = threading.Lock()
        self._got: list[int] = []
        self._ended = False
        self.closed_by_test = False

    def run(self) -> None:
        with self.listener:
            for value in self.listener:
                with self._mutex:
                    self._got.append(value.alloc_modify_index)
        with self._mutex:
            self._ended = True

    def snapshot(self) -> tuple[list[int], bool]:
        with self._mutex:
            return list(self._got), self._ended


class ThreadedBroadcasterModel(RuleBasedStateMachine):
    """Listeners consumed by their own threads; values sent from the test thread and
    from bursts of sender threads (serialised by a test lock that also numbers them, so
    the numbering is the send order); listeners closed from the test thread while their
    consumer is blocked. No consumer may ever see an index go backwards, and each open
    consumer must eventually hold the newest value."""

    def __init__(self) -> None:
        super().__init__()
        self.b = AllocBroadcaster()
        self.group = ThreadGroup("model-consumers")
        self.send_lock = threading.Lock()  # a test-side lock: numbers sends in send order
        self.sent = 0
        self.closed = False
        self.consumers: list[Consumer] = []

    def _send_next(self) -> None:
        with self.send_lock:
            if self.closed:
                return
            self.sent += 1
            self.b.send(alloc(self.sent))

    @precondition(lambda self: not self.closed)
    @rule(count=st.integers(min_value=1, max_value=5))
    def send(self, count: int) -> None:
        for _ in range(count):
            self._send_next()

    @precondition(lambda self: not self.closed)
    @rule(threads=st.integers(min_value=2, max_value=4), each=st.integers(1, 10))
    def send_from_threads(self, threads: int, each: int) -> None:
        burst = ThreadGroup("model-senders")
        for i in range(threads):
            burst.spawn(f"model-sender-{i}", self._send_many, each)
        assert burst.join(10)

    def _send_many(self, count: int) -> None:
        for _ in range(count):
            self._send_next()

    @precondition(lambda self: len(self.consumers) < 6)
    @rule()
    def listen(self) -> None:
        consumer = Consumer(self.b.listen())
        self.consumers.append(consumer)
        self.group.spawn(f"model-consumer-{len(self.consumers)}", consumer.run)

    @precondition(lambda self: any(not c.closed_by_test for c in self.consumers))
    @rule(data=st.data())
    def close_listener(self, data: st.DataObject) -> None:
        open_ones = [c for c in self.consumers if not c.closed_by_test]
        consumer = data.draw(st.sampled_from(open_ones))
        consumer.listener.close()  # from another thread than its consumer
        consumer.closed_by_test = True
        wait_for(lambda: _assert_ended(consumer), 5)  # a blocked consumer wakes up

    @precondition(lambda self: not self.closed)
    @rule()
    def close(self) -> None:
        with self.send_lock:
            self.b.close()
            self.closed = True

    @rule()
    def everyone_catches_up(self) -> None:
        wait_for(self._assert_caught_up, 10)

    def _assert_caught_up(self) -> None:
        for consumer in self.consumers:
            got, ended = consumer.snapshot()
            if consumer.closed_by_test:
                continue
            if self.sent:
                assert got and got[-1] == self.sent, f"consumer at {got[-1:]} of {self.sent}"
            if self.closed:
                assert ended, "consumer still running after close"

    @invariant()
    def never_backwards(self) -> None:
        for consumer in self.consumers:
            got, _ = consumer.snapshot()
            assert got == sorted(set(got)), f"went backwards or repeated: {got}"
            assert all(1 <= index <= self.sent for index in got)

    def teardown(self) -> None:
        with self.send_lock:
            self.b.close()
            self.closed = True
        assert self.group.join(10), "consumers did not end after close"
        self.never_backwards()
        self._assert_caught_up()


def _assert_ended(consumer: Consumer) -> None:
    got, ended = consumer.snapshot()
    assert ended, f"consumer still blocked after its listener was closed (got {got})"


TestThreadedBroadcasterModel = ThreadedBroadcasterModel.TestCase
TestThreadedBroadcasterModel.settings = settings(
    max_examples=40, stateful_step_count=15, deadline=None
)
