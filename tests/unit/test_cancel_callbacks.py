"""CancelToken.on_cancel: the hook that lets a wait on file descriptors wake on a
token without polling it. Single-threaded except where a test starts a canceller."""

from __future__ import annotations

import threading

import pytest

from allocrunner._sync import CancelToken

pytestmark = pytest.mark.timeout(10)


def test_callback_runs_once_on_cancel_and_not_before() -> None:
    token = CancelToken()
    calls: list[str] = []
    token.on_cancel(lambda: calls.append("x"))
    assert calls == []
    token.cancel("stop")
    token.cancel("again")
    assert calls == ["x"]


def test_callback_on_a_cancelled_token_runs_at_once() -> None:
    token = CancelToken()
    token.cancel()
    calls: list[int] = []
    withdraw = token.on_cancel(lambda: calls.append(1))
    assert calls == [1]
    withdraw()  # harmless


def test_withdrawn_callback_never_runs() -> None:
    token = CancelToken()
    calls: list[int] = []
    withdraw = token.on_cancel(lambda: calls.append(1))
    keep = token.on_cancel(lambda: calls.append(2))
    withdraw()
    token.cancel()
    assert calls == [2]
    keep()


def test_child_cancel_through_parent_runs_child_callbacks_on_the_cancelling_thread() -> None:
    parent = CancelToken()
    child = parent.child()
    seen: list[str] = []
    child.on_cancel(lambda: seen.append(threading.current_thread().name))
    canceller = threading.Thread(target=parent.cancel, name="canceller")
    canceller.start()
    canceller.join()
    assert seen == ["canceller"]
