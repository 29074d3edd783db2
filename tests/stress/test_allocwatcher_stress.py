"""Stress: many waiters on one previous allocation, cancelled or released at random,
with the interpreter switching threads as often as it can. Every wait ends, each in
the way its token and the previous allocation allow, and the flags settle."""

from __future__ import annotations

import random
import time

import pytest

from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.allocwatcher import GroupPrevAllocWatcher, LocalPrevAlloc, PrevAllocWaitCancelled
from allocrunner.structs import CLIENT_PENDING, CLIENT_RUNNING
from tests.unit.allocwatcher.helpers import TASKS, PrevRunner, prev_and_next, run_in_thread


@pytest.mark.stress
def test_waiters_cancelled_or_released(fast_switching):
    deadline = time.monotonic() + 3.0
    rng = random.Random(7)
    rounds = 0
    while time.monotonic() < deadline and rounds < 20:
        rounds += 1
        prev, _ = prev_and_next()
        runner = PrevRunner(prev, None)
        local = LocalPrevAlloc(prev, None, runner.listen, TASKS, sticky=False)
        watchers = [local, GroupPrevAllocWatcher([local])]
        group = ThreadGroup("watcher-stress")
        tokens = [CancelToken() for _ in range(8)]
        outcomes = [
            run_in_thread(group, f"waiter-{i}", watchers[i % 2].wait, token)
            for i, token in enumerate(tokens)
        ]
        cancelled = set(rng.sample(range(len(tokens)), 4))
        for i in sorted(cancelled):
            runner.set_status(rng.choice([CLIENT_PENDING, CLIENT_RUNNING]))
            tokens[i].cancel("stress")
        for i in cancelled:
            assert outcomes[i].done.wait(2.0), "a cancelled wait did not end"
        runner.finish()
        assert group.join(timeout=10)
        for i, outcome in enumerate(outcomes):
            assert outcome.done.is_set()
            if i in cancelled:
                # it may have seen the terminal status first only if cancel came late;
                # here cancel always precedes finish, so it must be a cancellation
                assert isinstance(outcome.error, PrevAllocWaitCancelled), outcome.error
            else:
                assert outcome.error is None, outcome.error
        assert not local.is_waiting() and not watchers[1].is_waiting()
