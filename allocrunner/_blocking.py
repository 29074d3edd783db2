"""Check mode: a blocking wait while holding a declared lock raises (DESIGN.md §4 rule 4).

`@calls_out` catches a wait only in functions that carry it. In check mode
`allocrunner._locking` calls `install(guard)` once, at its import, and this module
wraps the standard library's blocking calls so that each asks `guard(what, own)` first;
the guard raises `CalloutUnderLockError` when the calling thread holds a declared lock
other than `own`:

- ``threading``: `Event.wait`, `Condition.wait` (and so `wait_for`, and a Semaphore or
  Barrier that has to wait), `Thread.join`;
- ``time.sleep``; ``queue.Queue.get`` / ``put`` (LifoQueue and PriorityQueue too);
- ``subprocess.Popen.wait`` / ``communicate``;
- ``select.select``, and the ``poll`` method of ``select.poll()`` and ``select.epoll()``
  objects (also through ``selectors``).

A call that cannot block is not a wait: a zero timeout or delay, or ``block=False``.
`Condition.wait` releases its own lock while it waits, so that lock (`own`) may be held
(a condition from `make_condition`); any other declared lock may not. The exemptions,
all explicit: a condition whose class sets ``lockcheck_exempt`` (`_rwlock`'s
`PrivateCondition`, over the raw mutex of an RWLock or a `_sync` primitive: it is how
that primitive blocks, and the primitive's waiting methods carry `@calls_out` or take
a declared lock in rank order); a lock built by hand rather than by `make_lock` /
`make_rwlock` (only the lock primitives' own tests do that); a test inside
`_locking.waits_allowed_here()`; and code that bound one of these functions before
this module ran (``from time import sleep``: `_rwlock` does so for its yield to a
writer). With check mode off nothing here is imported: production pays nothing.

Threads: any; the wrappers run in the calling thread. Locks: none. Owner:
`allocrunner._locking` (check mode only).
"""

from __future__ import annotations

import functools
import queue
import select
import selectors
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from allocrunner._locking import thread_safe

__all__ = ["Guard", "install"]

Guard = Callable[[str, object], None]
"""guard(what, own): raise if the calling thread holds a declared lock other than `own`."""

_installed: list[Guard] = []


def install(guard: Guard) -> None:
    """Wrap the blocking calls listed in the module docstring (once per process)."""
    if _installed:
        return
    _installed.append(guard)
    _wrap_threading(guard)
    _wrap_method(time, "sleep", guard, "time.sleep", _seconds_arg(0))
    _wrap_method(queue.Queue, "get", guard, "queue.Queue.get", _queue_wait(0, 1))
    _wrap_method(queue.Queue, "put", guard, "queue.Queue.put", _queue_wait(1, 2))
    _wrap_method(subprocess.Popen, "wait", guard, "Popen.wait", _timeout_arg(0))
    _wrap_method(subprocess.Popen, "communicate", guard, "Popen.communicate", _timeout_arg(1))
    _wrap_select(guard)


# --- which calls can block -------------------------------------------------------------

Blocks = Callable[[tuple[Any, ...], dict[str, Any]], bool]


def _positional(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


def _seconds_arg(index: int, name: str = "secs") -> Blocks:
    """Blocks unless the delay or timeout is zero (None waits for ever)."""

    def blocks(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        value = _positional(args, kwargs, index, name)
        return value is None or value != 0

    return blocks


def _timeout_arg(index: int, name: str = "timeout") -> Blocks:
    return _seconds_arg(index, name)


def _queue_wait(block_index: int, timeout_index: int) -> Blocks:
    """A queue call blocks unless ``block=False`` or a zero timeout."""

    def blocks(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        block = _positional(args, kwargs, block_index, "block")
        if block is not None and not block:
            return False
        timeout = _positional(args, kwargs, timeout_index, "timeout")
        return timeout is None or timeout != 0

    return blocks


# --- wrapping --------------------------------------------------------------------------


def _wrap_method(owner: Any, attr: str, guard: Guard, what: str, blocks: Blocks) -> None:
    """Replace ``owner.attr`` (a method, or a module's function) by a checked twin.
    For a method, `blocks` sees the arguments after ``self``."""
    original = getattr(owner, attr)
    is_method = isinstance(owner, type)

    if is_method:

        @functools.wraps(original)
        def checked_method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if blocks(args, kwargs):
                guard(what, None)
            return original(self, *args, **kwargs)

        setattr(owner, attr, checked_method)
        return

    @functools.wraps(original)
    def checked_function(*args: Any, **kwargs: Any) -> Any:
        if blocks(args, kwargs):
            guard(what, None)
        return original(*args, **kwargs)

    setattr(owner, attr, checked_function)


def _wrap_threading(guard: Guard) -> None:
    _wrap_method(threading.Event, "wait", guard, "Event.wait", _timeout_arg(0))
    _wrap_method(threading.Thread, "join", guard, "Thread.join", _timeout_arg(0))
    original_wait = threading.Condition.wait
    blocks = _timeout_arg(0)

    @functools.wraps(original_wait)
    def condition_wait(self: threading.Condition, *args: Any, **kwargs: Any) -> bool:
        if not getattr(self, "lockcheck_exempt", False) and blocks(args, kwargs):
            guard("Condition.wait", getattr(self, "_lock", None))
        return original_wait(self, *args, **kwargs)

    threading.Condition.wait = condition_wait  # type: ignore[method-assign]  # check mode


def _wrap_select(guard: Guard) -> None:
    original_select = select.select
    original_poll = select.poll
    original_epoll = select.epoll

    @functools.wraps(original_select)
    def checked_select(*args: Any, **kwargs: Any) -> Any:
        if _seconds_arg(3, "timeout")(args, kwargs):
            guard("select.select", None)
        return original_select(*args, **kwargs)

    @thread_safe
    class CheckedPoll:
        """Thread-safe as the poll object it wraps: its `poll` checks for held locks."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner

        def poll(self, *args: Any, **kwargs: Any) -> Any:
            if _seconds_arg(0, "timeout")(args, kwargs):
                guard(f"{type(self._inner).__name__}.poll", None)
            return self._inner.poll(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def __enter__(self) -> CheckedPoll:
            self._inner.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self._inner.__exit__(*exc)

    def checked_poll() -> CheckedPoll:
        return CheckedPoll(original_poll())

    def checked_epoll(*args: Any, **kwargs: Any) -> CheckedPoll:
        return CheckedPoll(original_epoll(*args, **kwargs))

    def epoll_fromfd(fd: int) -> CheckedPoll:
        return CheckedPoll(original_epoll.fromfd(fd))

    checked_epoll.fromfd = epoll_fromfd  # type: ignore[attr-defined]  # select.epoll's API
    select.select = checked_select
    select.poll = checked_poll  # type: ignore[assignment]  # same calls, checked
    select.epoll = checked_epoll  # type: ignore[assignment,misc]  # same calls, checked
    # selectors bound these when it was imported
    if hasattr(selectors, "EpollSelector"):
        selectors.EpollSelector._selector_cls = staticmethod(checked_epoll)  # type: ignore[attr-defined]
    if hasattr(selectors, "PollSelector"):
        selectors.PollSelector._selector_cls = staticmethod(checked_poll)  # type: ignore[attr-defined]
    selectors.SelectSelector._select = staticmethod(checked_select)  # type: ignore[attr-defined]
