"""An idle client wakes no thread: with 100 allocations running long mock tasks and
nothing happening, no package thread makes a single timed wait for two seconds. Nor
does an idle HTTP server (the agent's accept loop).

A timed wait is a call with a finite timeout to `threading.Condition.wait` (which
`threading.Event.wait` and every `_sync` primitive built on a condition go through),
`threading.Thread.join`, `_sync.Waiter.wait` (a lock acquired with a timeout),
`time.sleep`, `select.select`, a `select.poll`/`select.epoll` object's ``poll`` and a
`selectors` selector's ``select``. Polling loops are made of exactly these calls, so an
idle process that makes none of them never wakes. The test thread itself is not
counted (it sleeps in `assert_stays` while it watches). The collector's interval and
the client's update coalescing interval are configured intervals, not polls; the first
is set far beyond the window and the second only runs after a state change.
"""

from __future__ import annotations

import select
import selectors
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from allocrunner._sync import Waiter
from allocrunner.agent.http import HttpServer, Router
from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver
from allocrunner.state import MemDB
from allocrunner.structs import Allocation, new_allocation
from allocrunner.testing import assert_stays, mock_job, mock_task, wait_for

ALLOCS = 100
WINDOW = 2.0


class TimedWaits:
    """Thread-safe. Every timed wait a thread other than `exempt` makes while counting."""

    def __init__(self, exempt: threading.Thread) -> None:
        self._exempt = exempt
        self._mutex = threading.Lock()
        self._seen: list[str] = []
        self.counting = False

    def record(self, what: str, timeout: float | None) -> None:
        if not self.counting or timeout is None or timeout < 0:
            return
        me = threading.current_thread()
        if me is self._exempt:
            return
        with self._mutex:
            self._seen.append(f"{me.name}: {what}({timeout}) from {_caller()}")

    def seen(self) -> list[str]:
        with self._mutex:
            return list(self._seen)


_PLUMBING = ("threading.py", "selectors.py", "_sync.py", "test_idle_polling.py")


def _caller() -> str:
    """The innermost frame outside the waiting primitives: the code that waits."""
    for frame in reversed(traceback.extract_stack()):
        if not frame.filename.endswith(_PLUMBING):
            return f"{frame.filename.rsplit('/', 2)[-1]}:{frame.lineno} {frame.name}"
    return "?"


class _PollObject:
    """A `select.poll`/`select.epoll` object whose ``poll`` is counted."""

    def __init__(self, inner: Any, waits: TimedWaits, what: str) -> None:
        self._inner = inner
        self._waits = waits
        self._what = what

    def poll(self, timeout: float | None = None, *args: Any) -> Any:
        finite = None if timeout is None or timeout < 0 else timeout
        self._waits.record(self._what, finite)
        return self._inner.poll(timeout, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


def _timeout_arg(position: int) -> Callable[..., float | None]:
    def timeout(*args: Any, **kwargs: Any) -> float | None:
        if "timeout" in kwargs:
            return kwargs["timeout"]
        return args[position] if len(args) > position else None

    return timeout


def _wrap(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, waits: TimedWaits, position: int
) -> None:
    original = getattr(owner, name)
    what = f"{getattr(owner, '__name__', owner)}.{name}"
    timeout_of = _timeout_arg(position)

    def counted(*args: Any, **kwargs: Any) -> Any:
        waits.record(what, timeout_of(*args, **kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def count_timed_waits(monkeypatch: pytest.MonkeyPatch, waits: TimedWaits) -> None:
    _wrap(monkeypatch, threading.Condition, "wait", waits, 1)
    _wrap(monkeypatch, threading.Thread, "join", waits, 1)
    _wrap(monkeypatch, Waiter, "wait", waits, 1)
    _wrap(monkeypatch, time, "sleep", waits, 0)
    _wrap(monkeypatch, select, "select", waits, 3)
    for selector in (selectors.SelectSelector, selectors.PollSelector, selectors.EpollSelector):
        _wrap(monkeypatch, selector, "select", waits, 1)
    real_poll, real_epoll = select.poll, select.epoll
    monkeypatch.setattr(select, "poll", lambda: _PollObject(real_poll(), waits, "poll"))
    monkeypatch.setattr(
        select, "epoll", lambda *a, **k: _PollObject(real_epoll(*a, **k), waits, "epoll")
    )


class Upstream:
    """Thread-safe. The last view of each allocation the client sent upstream."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._views: dict[str, Allocation] = {}
        self._batches = 0

    def record(self, views: list[Allocation]) -> None:
        with self._mutex:
            self._batches += 1
            for view in views:
                self._views[view.id] = view

    def batches(self) -> int:
        with self._mutex:
            return self._batches

    def running(self) -> int:
        with self._mutex:
            return sum(1 for v in self._views.values() if v.client_status == "running")


def _is_waiting(client: Client, alloc_id: str) -> bool:
    runner = client.runner(alloc_id)
    return runner is not None and runner.is_waiting()


def _check(value: bool, message: str) -> None:
    assert value, message


@pytest.mark.stress
@pytest.mark.timeout(180)
def test_an_idle_client_makes_no_timed_wait(tmp_path, monkeypatch):
    config = ClientConfig.for_data_dir(tmp_path, gc_interval=3600.0, gc_max_allocs=1000)
    upstream = Upstream()
    client = Client(
        config,
        state_db=MemDB(),
        drivers={"mock_driver": MockDriver()},
        state_updater=upstream.record,
        update_interval=0.05,
    )
    job = mock_job(mock_task("t", config={"run_for": "1h"}))
    allocs = [new_allocation(job, "web", index=n) for n in range(ALLOCS)]
    # One replacement waits (on its previous allocation's broadcaster) all along.
    replacement = new_allocation(job, "web", index=0, previous=allocs[0])
    waits = TimedWaits(exempt=threading.current_thread())
    count_timed_waits(monkeypatch, waits)
    client.start()
    try:
        client.run_allocs([*allocs, replacement])
        wait_for(
            lambda: _check(upstream.running() == ALLOCS, f"{upstream.running()} running"),
            timeout=120,
        )
        wait_for(lambda: _check(_is_waiting(client, replacement.id), "replacement not waiting"))
        batches = upstream.batches()

        def quiet() -> None:
            nonlocal batches
            now = upstream.batches()
            changed, batches = now != batches, now
            assert not changed, "the client is still sending updates"

        wait_for(lambda: assert_stays(quiet, 0.5), timeout=60)
        waits.counting = True
        assert_stays(lambda: _check(not waits.seen(), "\n".join(waits.seen())), WINDOW)
        waits.counting = False
    finally:
        waits.counting = False
        assert client.shutdown()


@pytest.mark.stress
def test_an_idle_http_server_makes_no_timed_wait(monkeypatch):
    waits = TimedWaits(exempt=threading.current_thread())
    count_timed_waits(monkeypatch, waits)
    server = HttpServer(Router(), ("127.0.0.1", 0))
    server.start()
    try:
        wait_for(lambda: _check(_answers(server.address), "not serving yet"))
        waits.counting = True
        assert_stays(lambda: _check(not waits.seen(), "\n".join(waits.seen())), WINDOW / 2)
        waits.counting = False
    finally:
        waits.counting = False
        assert server.shutdown(timeout=10)


def _answers(address: str) -> bool:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(12).startswith(b"HTTP/1.1")
