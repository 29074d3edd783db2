"""Function calls counted while a stretch of a benchmark runs: every call of a Python
function and of a C function (a builtin, a method of a C type) made by the threads
counted. A time moves with the host's load from run to run; a count barely does (only
where a wait or a lock turns out contended), so it shows how much work a code path does,
and what a change to it saved, without interleaved runs.

Threads and locks: the profile hook runs on the thread that installs the counter and on
every thread started while it is installed; threads that were running before are not
counted. Each thread counts into a cell of its own, registered once under the counter's
lock, so no count is lost to a race; `total()` sums the cells as they are. Owner: the
benchmark that installs it.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

__all__ = ["CallCounter"]

_COUNTED = frozenset({"call", "c_call"})


class CallCounter:
    """Thread-safe. Counts function calls while installed (`installed()`): on the
    installing thread, and on each thread started meanwhile for as long as that thread
    runs with the hook. Once uninstalled, the hook removes itself from a thread the
    next time it runs there, so no thread keeps paying for it; `stop_here()` does so at
    once for the calling thread (a thread that goes on to do what must not be
    counted, such as a benchmark's own polling)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cells: list[list[int]] = []  # guarded by _lock: appended to, never replaced
        self._local = threading.local()
        self._on = False

    @contextmanager
    def installed(self) -> Iterator[CallCounter]:
        """Count on this thread and on every thread started until the block ends."""
        self._on = True
        threading.setprofile(self._hook)
        sys.setprofile(self._hook)
        try:
            yield self
        finally:
            self._on = False
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]

    def stop_here(self) -> None:
        """Stop counting on the calling thread."""
        sys.setprofile(None)

    def total(self) -> int:
        """The calls counted so far, on every thread."""
        with self._lock:
            cells = list(self._cells)
        return sum(cell[0] for cell in cells)

    def _hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self._on:
            sys.setprofile(None)
            return
        if event in _COUNTED:
            try:
                self._local.cell[0] += 1
            except AttributeError:
                cell = [1]
                self._local.cell = cell
                with self._lock:
                    self._cells.append(cell)
