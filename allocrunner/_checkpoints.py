"""Named interleaving points, for race tests that choose the order of threads.

Package code marks the few places where a race between two threads is decided with
`checkpoint(name, subject)`. Unarmed, as always outside tests, a checkpoint is one
read of a module global and a comparison with None (with check mode off it is not
even wrapped). A test arms a set of `Hold`s (`armed(...)`): the first thread to reach
a held point stops there until the test releases it, or until another held point has
been passed (`after=`), so the test decides which of two racing threads goes first
and can pin an interleaving that once failed. A `mark` is a hold that never stops: it
only records that some thread got there. A `Stall` delays every thread that gets there
a little, to widen a race window for a test that explores interleavings at random.

The checkpoints placed in the package (name, subject):

- ``alloc.destroy.launch``: `AllocRunner.destroy` decided to launch the destroy and
  is about to start its thread.
- ``alloc.destroy.delete``: the destroy thread is about to delete the allocation's
  state (after the tasks stopped and the destroy hooks ran).
- ``state.sibling_kill``: the state handler found a sibling rule to apply and is about
  to record its event on the live tasks of its snapshot.
- ``state.final_pass``: the state handler is about to make its last pass.
- ``state.await_final``: a thread is about to wait for the state handler's last pass.
- ``tasks.kill_wave`` (``leader``, ``mains``, ``sidecars``): a kill of the tasks
  (`KillSequence` on the state handler's thread, or `TaskSet.kill_all` on a destroy)
  is about to ask one wave to die.
- ``tasks.kill_one`` (task name): that kill looked at the task (to record Killing if
  it has not finished) and is about to ask it to die.
- ``task.restart.post`` (task name): a restart picked the instance to restart and is
  about to leave its request for the run thread.
- ``task.reap`` (task name): the first kill after a shutdown is about to stop the task
  the shutdown left running; ``task.reap.wait`` (task name): a later kill is about to
  wait for it.

Threads: `checkpoint` runs on any thread; a held thread waits on the hold's own
`_sync` tokens, never while holding a declared lock (check mode raises if it is
called with one held). Locks: none; a `Hold` is made of set-once tokens and the armed
harness is immutable once armed. Owner: tests arm it (`armed`); package code only
calls `checkpoint`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from allocrunner._locking import calls_out, immutable
from allocrunner._sync import CancelToken

__all__ = [
    "CHECKPOINTS",
    "HOLD_BOUND",
    "Hold",
    "Interleaving",
    "Point",
    "Stall",
    "armed",
    "checkpoint",
    "mark",
]

CHECKPOINTS: tuple[str, ...] = (
    "alloc.destroy.launch",
    "alloc.destroy.delete",
    "state.sibling_kill",
    "state.final_pass",
    "state.await_final",
    "tasks.kill_wave",
    "tasks.kill_one",
    "task.restart.post",
    "task.reap",
    "task.reap.wait",
)
"""The names of the checkpoints placed in the package (described above)."""

HOLD_BOUND = 30.0
"""The longest a thread stays held; past it the thread goes on and the hold says so."""


@calls_out
def checkpoint(name: str, subject: str = "") -> None:
    """A named point where an armed test may hold this thread; a no-op unless armed."""
    harness = _armed
    if harness is not None:
        harness.reach(name, subject)


class Hold:
    """Thread-safe. One point a test controls: the first thread to reach checkpoint
    `name` (for `subject`, when given) stops there until `release()`, or until the
    hold `after` has been passed; later threads go by. With `pause` False it never
    stops anyone and only records the first arrival (see `mark`)."""

    name = immutable()
    subject = immutable()
    _pause = immutable()
    _claimed = immutable()
    _arrived = immutable()
    _released = immutable()
    _passed = immutable()
    _timed_out = immutable()

    def __init__(
        self,
        name: str,
        subject: str | None = None,
        *,
        after: Hold | None = None,
        pause: bool = True,
    ) -> None:
        self.name = name
        self.subject = subject
        self._pause = pause
        self._claimed = CancelToken()
        self._arrived = CancelToken()
        self._released = CancelToken() if after is None else after._passed.child()
        self._passed = CancelToken()
        self._timed_out = CancelToken()

    def matches(self, name: str, subject: str) -> bool:
        return name == self.name and (self.subject is None or subject == self.subject)

    @calls_out
    def reach(self) -> bool:
        """Called on the arriving thread: True if this thread was the first (it is held
        here while paused); False if the hold was taken already."""
        if not self._claimed.cancel("claimed"):
            return False
        self._arrived.cancel("arrived")
        if self._pause and not self._released.wait(HOLD_BOUND):
            self._timed_out.cancel("held too long")
        self._passed.cancel("passed")
        return True

    def pauses(self) -> bool:
        return self._pause

    def release(self) -> None:
        """Let the held thread (or the first to come) go on."""
        self._released.cancel("released")

    def arrived(self) -> bool:
        return self._arrived.cancelled()

    def passed(self) -> bool:
        return self._passed.cancelled()

    def timed_out(self) -> bool:
        return self._timed_out.cancelled()

    @calls_out
    def wait_arrived(self, timeout: float = HOLD_BOUND) -> bool:
        """True once a thread has reached this point (and is held, if paused)."""
        return self._arrived.wait(timeout)

    @calls_out
    def wait_passed(self, timeout: float = HOLD_BOUND) -> bool:
        """True once the first thread to reach this point has gone on."""
        return self._passed.wait(timeout)

    def __repr__(self) -> str:
        where = self.name if self.subject is None else f"{self.name}[{self.subject}]"
        return f"<Hold {where} arrived={self.arrived()} passed={self.passed()}>"


def mark(name: str, subject: str | None = None) -> Hold:
    """A hold that never stops anyone: it records that a thread reached `name`."""
    return Hold(name, subject, pause=False)


class Stall:
    """Thread-safe. Every thread that reaches checkpoint `name` waits `seconds` there
    (cut short when the harness is left): it widens the window of a race for a test
    that explores interleavings at random rather than pinning one."""

    name = immutable()
    _seconds = immutable()
    _released = immutable()

    def __init__(self, name: str, seconds: float) -> None:
        self.name = name
        self._seconds = seconds
        self._released = CancelToken()

    def matches(self, name: str, subject: str) -> bool:
        return name == self.name

    @calls_out
    def reach(self) -> bool:
        self._released.wait(self._seconds)
        return True

    def pauses(self) -> bool:
        return False

    def release(self) -> None:
        self._released.cancel("released")

    def __repr__(self) -> str:
        return f"<Stall {self.name} {self._seconds}s>"


Point = Hold | Stall


class Interleaving:
    """Thread-safe. Immutable once armed: the holds of one test. A thread that reaches a
    point is held by the first pausing hold of it that it can claim (so two holds on
    one point stop its first two threads, in order), and is recorded by its marks."""

    _holds = immutable()

    def __init__(self, holds: tuple[Point, ...]) -> None:
        self._holds = holds

    @calls_out
    def reach(self, name: str, subject: str) -> None:
        for hold in self._holds:
            if hold.matches(name, subject) and hold.reach() and hold.pauses():
                return

    def release_all(self) -> None:
        for hold in self._holds:
            hold.release()


_armed: Interleaving | None = None


@contextlib.contextmanager
def armed(*holds: Point) -> Iterator[Interleaving]:
    """Arm `holds` for the duration of the block; on leaving, every hold is released
    and the checkpoints are no-ops again. One harness at a time."""
    global _armed
    if _armed is not None:
        raise RuntimeError("checkpoints are armed already")
    harness = Interleaving(tuple(holds))
    _armed = harness
    try:
        yield harness
    finally:
        _armed = None
        harness.release_all()
