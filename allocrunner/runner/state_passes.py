"""A few shared threads that run every allocation's state-handler passes, instead of a
thread per allocation.

An allocation's state handler (`state_handler`) does nothing between two kicks: it
makes one short pass when a task's state changed, an update arrived, a health verdict
came in or a deadline it keeps is due, and a pass never waits for a task. A thread per
allocation would cost every running allocation a thread start, a stack and a wake-up
per pass; here each handler is a `PassKick` that `StatePasses` runs on its own
threads, ``alloc-state-pool-<n>``.

Scheduling, per kick (all under the service's lock):

- `add` queues the handler's first pass, unless its owner says the first kick will
  come soon anyway (`first_pass=False`: an allocation starting afresh, whose first
  task event comes within its start; see `AllocRunner.run`), which saves the pass
  that would publish what nothing has changed yet.
- `wake` (the kick's `kick()`) queues the handler's next pass unless one is already
  queued; if its pass is running, the pass runs again once it is over. So passes of
  one allocation never overlap and never run out of order, and a kick during a pass is
  never lost, just as with a thread looping on a coalescing `Kick`.
- After a pass the handler says when its next deadline is (a monotonic time, or
  None); the service keeps one timer entry per handler for it, and a due entry queues
  a pass like a kick (a deadline earlier than the waiting worker's wake-up wakes it,
  and it then waits for the earliest). An entry for a deadline the handler no longer
  keeps is ignored. A deadline already past makes another pass at once, so a handler
  reports a deadline only until a pass has acted on it.
- A pass that reports the handler finished removes it: later kicks do nothing.
- `hold` defers a live, idle handler's passes while its owner makes a change in
  several steps that never wait (a launched start); `release` then makes one pass for
  all of them, on the releasing thread. Kicks meanwhile are absorbed (its ``_pending``
  hint stays True, so they return at once), and so is a deadline that falls due: the
  pass reads everything afresh and reports its deadline again. A fresh allocation's
  launch so makes one pass instead of one per task event, each of which woke a
  worker, and wakes no worker for it: the builder that made the start makes the pass
  as a worker would (the handler is `_RUNNING` meanwhile, so its passes still never
  overlap), and accounts for it as a worker does.

Threads: ``alloc-state-pool-<n>``, at most `MAX_WORKERS` at once, and the thread
that releases a hold, for that one pass. A worker takes one
queued pass at a time; while more are queued and no worker is parked, it starts another
worker first (so a pass that blocks, which a pass should never do, such as one held
at a test's checkpoint, cannot hold up other allocations). With nothing queued a
worker parks while any handler is live: the first to park is the keeper, which waits
for a wake or, if a handler keeps a deadline, until the earliest; the others are
spares, each waiting on a `Waiter` of its own with no timeout (never a timed wait but
the keeper's for a deadline: an idle node wakes no thread). A queued pass wakes a spare
first, then the keeper, and starts a worker only when none is parked. Workers end once
no handler is live: the pass that finishes the last one wakes the keeper and every
spare. So a node with no live allocation has no such thread, and one with any has at
most `MAX_WORKERS` parked threads for all of them. Parking rather than ending matters
when allocations start by the thousand: their passes come in bursts with gaps between,
and a worker that ended in each gap was started again for the next burst, hundreds of
thread starts per thousand allocations, each of which waits for the new thread to get
the GIL from a thousand others. The fields a handler confines to its thread are
confined to the ``alloc-state-`` prefix these threads share (a releasing thread acts
as one of them for its pass); that one allocation's passes never overlap is what
makes that safe.

Locks: ``StatePasses._lock`` (a leaf) guards the live handlers, the queue, the
running set, the timer heap, the worker counts and the parked spares; nothing is called
while it is held but notify-only `_sync` calls.

The one read without the lock: each kick's ``_pending`` hint, written only under the
lock, is True while the handler's next pass is certain to begin later (it is queued, or
its running pass will run again, or it is held and `release` will queue it). `wake`
returns at once when it reads True: that pass begins (the worker clears the hint under
the lock) after the read, so it sees whatever the waking thread changed before it woke.
With 1,000 allocations stopping at once their threads wake the same few handlers' queue
several times each while it is long; without the hint every one of those wakes took the
lock, and a holder that the GIL switched out made the others queue on it. Under a
free-threaded build (no GIL, so no ordering for a plain read) every wake takes the lock.

Crash cases: a pass that raises is logged and ends its handler (as an exception ended
the handler's thread before), and the handler's `finished` callback still runs, so
whoever waits for its last pass is released. The threads are daemons joined through
`join_if_idle`; an agent killed outright loses nothing here (all of it is in memory
and rebuilt by the restore).

Owner: every `AllocRunner` adds its handler to the process's one service, `PASSES`; a
test may build its own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import NamedTuple, TypeAlias

from allocrunner._guarded import guarded_dict, guarded_list
from allocrunner._locking import (
    acting_as,
    calls_out,
    guarded,
    immutable,
    make_lock,
    requires,
    thread_safe,
)
from allocrunner._rwlock import _GIL  # the GIL orders a plain read of `_pending`
from allocrunner._sync import Kick, ThreadGroup, Waiter

__all__ = ["MAX_WORKERS", "PASSES", "PassKick", "PassStep", "StatePasses"]

log = logging.getLogger("allocrunner.runner")

THREAD_PREFIX = "alloc-state-pool-"
MAX_WORKERS = 4
# The heap is purged of stale entries once it holds this many (or twice the number
# kept at the last purge).
_PURGE_MIN = 64

PassStep = Callable[[], "tuple[bool, float | None]"]
"""One pass: (finished, the monotonic time of the next deadline or None)."""

_QUEUED, _RUNNING, _AGAIN, _HELD = 0, 1, 2, 3

_Help: TypeAlias = "bool | Waiter | None"
"""What a queued pass needs (`StatePasses._help_locked`): a worker started (True), a
parked spare woken (its Waiter), the keeper woken (None), or nothing (False)."""


@thread_safe
class PassKick:
    """Thread-safe. The kick of one state handler: `kick()` (or a call of the kick
    itself) asks the service for a pass (notify-only, from any thread). Kicks before
    the handler is added, or after it finished, do nothing: `add` queues a first pass
    that reads everything afresh (or leaves it to the first kick after it, when told
    that one surely comes)."""

    __slots__ = ("_pending", "_service", "label")

    def __init__(self, service: StatePasses | None = None, label: str = "") -> None:
        self._service = service if service is not None else PASSES
        self.label = label
        # Written under the service's lock only: a pass of this handler will begin
        # later (queued, or the running one runs again). Read without it by `wake`.
        self._pending = False

    def kick(self) -> None:
        self._service.wake(self)

    def __call__(self) -> None:
        """`kick()`: the kick itself is the callback a task runner or an alloc hook is
        given, so that no bound method is kept per allocation for each of them."""
        self._service.wake(self)

    def hold(self) -> bool:
        """Defer this handler's passes until `release` (`StatePasses.hold`); True if
        they are deferred, and `release` must then be called."""
        return self._service.hold(self)

    def release(self) -> None:
        """End a `hold` with one pass, made on the calling thread, for every kick the
        hold absorbed (`StatePasses.release`)."""
        self._service.release(self)

    def __repr__(self) -> str:
        return f"<PassKick {self.label}>"


class StatePasses:
    """Thread-safe. Runs the passes of every added handler on a few threads (module
    docstring)."""

    # _lock guards: _steps, _finish, _sched, _queue, _due, _timers, _workers,
    # _waiting, _wait_until, _spares, _purge_at
    _lock = immutable()
    _steps = immutable()  # checked map, changed in place: live kick -> its pass
    _finish = immutable()  # checked map, changed in place: live kick -> its last rites
    _sched = immutable()  # checked map, changed in place: kick -> queued/running/again/held
    _queue = immutable()  # checked list used as a FIFO from _head: kicks to run
    _due = immutable()  # checked map, changed in place: kick -> its live timer's time
    _timers = immutable()  # checked list, a heap of (due, seq, kick), changed in place
    _head = guarded("_lock")
    _workers = guarded("_lock")
    _waiting = guarded("_lock")  # True while the keeper waits for a timer or a wake
    _wait_until = guarded("_lock")  # when that wait ends by itself (inf: never)
    _spares = guarded("_lock")  # tuple of the parked spares' Waiters; replaced
    _purge_at = guarded("_lock")
    _kick = immutable()
    _seq = immutable()
    _names = immutable()
    _threads = immutable()

    def __init__(self) -> None:
        self._lock = make_lock("StatePasses._lock")
        self._steps: dict[PassKick, PassStep] = guarded_dict(self._lock)
        self._finish: dict[PassKick, Callable[[], object]] = guarded_dict(self._lock)
        self._sched: dict[PassKick, int] = guarded_dict(self._lock)
        self._queue: list[PassKick] = guarded_list(self._lock)
        self._due: dict[PassKick, float] = guarded_dict(self._lock)
        self._timers: list[tuple[float, int, PassKick]] = guarded_list(self._lock)
        self._head = 0
        self._workers = 0
        self._waiting = False
        self._wait_until = math.inf
        self._spares: tuple[Waiter, ...] = ()
        self._purge_at = _PURGE_MIN
        self._kick = Kick()
        self._seq = itertools.count()
        self._names = itertools.count(1)
        self._threads = ThreadGroup("alloc-state-pool")

    def add(
        self,
        kick: PassKick,
        step: PassStep,
        finished: Callable[[], object],
        *,
        first_pass: bool = True,
    ) -> None:
        """Run `step` for `kick` from now on: a first time at once, or, without
        `first_pass`, on the first kick after this call; `finished` is called (on a
        worker) after the pass that reports the end, or one that raised."""
        with self._lock:
            if kick in self._steps:
                raise ValueError(f"{kick!r} was added twice")
            self._steps[kick] = step
            self._finish[kick] = finished
            if not first_pass:
                return
            spawn = self._queue_locked(kick)
        self._notify(spawn)

    def wake(self, kick: PassKick) -> None:
        """Have `kick`'s handler make a pass soon (if it is live). Notify-only."""
        if _GIL and kick._pending:
            return  # a pass begins after this read (module docstring)
        with self._lock:
            if kick not in self._steps:
                return
            state = self._sched.get(kick)
            if state is None:
                spawn = self._queue_locked(kick)
            else:
                if state == _RUNNING:
                    self._sched[kick] = _AGAIN
                    kick._pending = True
                return
        self._notify(spawn)

    def hold(self, kick: PassKick) -> bool:
        """Defer `kick`'s passes while its owner makes a change in several steps that
        never wait (a launched start: `AllocRunner.launch`): kicks meanwhile are taken
        up by the one pass `release` queues, instead of each waking a worker for a
        pass that the next step makes stale. True if deferred; False, and nothing is
        deferred, if the handler is not live or a pass of it is queued or running. The
        caller must call `release` once it returns True, whatever happens."""
        with self._lock:
            if kick not in self._steps or kick in self._sched:
                return False
            self._sched[kick] = _HELD
            kick._pending = True  # a pass begins later: the one `release` queues
            return True

    @calls_out
    def release(self, kick: PassKick) -> None:
        """End `kick`'s hold with its pass, made here on the calling thread, which reads
        everything the held steps changed (and whatever the kicks it absorbed were
        for). The holder has just made those steps and a pass never waits, so making it
        here costs that thread what it would cost a worker, without waking one; the
        pass counts as a worker's for the fields confined to the workers
        (`acting_as`), as it is the only pass of its handler running, as a worker's
        would be. Accounted for as a worker accounts for its passes: a kick during it
        queues the next pass for a worker, and a deadline it reports gets a worker to
        keep it if none runs."""
        with self._lock:
            if self._sched.get(kick) != _HELD:
                raise ValueError(f"{kick!r} is not held")
            self._sched[kick] = _RUNNING
            kick._pending = False  # before the pass: later wakes lock again
            step = self._steps[kick]
        with acting_as(THREAD_PREFIX):
            ran = _run_pass(kick, step)
        with self._lock:
            after = self._account_locked(ran)
            again = self._sched.get(kick) == _QUEUED
            spawn = self._help_locked() if again or (self._due and not self._workers) else False
        self._after_pass(after)
        self._notify(spawn)

    def live(self) -> int:
        """How many handlers are live."""
        with self._lock:
            return len(self._steps)

    def workers(self) -> int:
        """How many worker threads run now."""
        with self._lock:
            return self._workers

    @calls_out
    def join_if_idle(self, timeout: float) -> bool:
        """With no handler live, wait (at most `timeout` seconds) for the workers to
        end, as an owner's shutdown does for its threads; True if they ended (or none
        ran). False at once while a handler is live."""
        with self._lock:
            if self._steps:
                return False
        return self._threads.join(timeout)

    # --- scheduling (under the lock) ----------------------------------------------------

    @requires("_lock")
    def _queue_locked(self, kick: PassKick) -> _Help:
        """Queue a pass of `kick`; whether a worker must be started (True), a spare
        woken (its Waiter, taken off the parked ones), the keeper woken (None), or none
        of them, as a worker is free to take it soon (False)."""
        self._sched[kick] = _QUEUED
        kick._pending = True
        self._queue.append(kick)
        return self._help_locked()

    @requires("_lock")
    def _help_locked(self) -> _Help:
        if self._spares:
            spare, self._spares = self._spares[-1], self._spares[:-1]
            return spare
        if self._waiting:
            return None
        if self._workers < MAX_WORKERS:
            self._workers += 1
            return True
        return False

    def _notify(self, spawn: _Help) -> None:
        if spawn is None:
            self._kick.kick()
        elif isinstance(spawn, Waiter):
            spawn.wake()
        elif spawn:
            self._spawn_worker()

    def _spawn_worker(self) -> None:
        try:
            self._threads.spawn(f"{THREAD_PREFIX}{next(self._names)}", self._work)
        except BaseException:
            with self._lock:
                self._workers -= 1
            raise

    @requires("_lock")
    def _pop_locked(self) -> PassKick | None:
        queue = self._queue
        if self._head >= len(queue):
            return None
        kick = queue[self._head]
        self._head += 1
        if self._head >= len(queue):
            queue.clear()
            self._head = 0
        elif self._head >= _PURGE_MIN and 2 * self._head >= len(queue):
            del queue[: self._head]
            self._head = 0
        return kick

    @requires("_lock")
    def _fire_due_locked(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, _, kick = heapq.heappop(timers)
            if self._due.get(kick) != due:
                continue  # a deadline the handler no longer keeps
            del self._due[kick]
            if kick in self._steps and kick not in self._sched:
                self._sched[kick] = _QUEUED
                kick._pending = True
                self._queue.append(kick)

    @requires("_lock")
    def _arm_locked(self, kick: PassKick, due: float | None) -> bool:
        """Keep `due` as `kick`'s deadline; True if a waiting worker would sleep past
        it, and so must wake to wait for it instead."""
        if due is None:
            self._due.pop(kick, None)
            return False
        if self._due.get(kick) == due:
            return False
        self._due[kick] = due
        heapq.heappush(self._timers, (due, next(self._seq), kick))
        if len(self._timers) >= self._purge_at:
            kept = [entry for entry in self._timers if self._due.get(entry[2]) == entry[0]]
            heapq.heapify(kept)
            self._timers[:] = kept
            self._purge_at = max(_PURGE_MIN, 2 * len(kept))
        return self._waiting and due < self._wait_until

    # --- the workers --------------------------------------------------------------------

    @calls_out
    def _work(self) -> None:
        ran: _Ran | None = None  # the pass this worker just made, not yet accounted for
        while True:
            step: PassStep | None = None
            spawn: _Help = False
            timeout: float | None = None
            ending = False
            spare: Waiter | None = None
            after: _After | None = None
            # One turn of the lock accounts for the last pass and takes the next.
            with self._lock:
                if ran is not None:
                    after = self._account_locked(ran)
                    ran = None
                self._fire_due_locked(time.monotonic())
                kick = self._pop_locked()
                if kick is None:
                    if not self._steps:
                        self._workers -= 1
                        ending = True
                    elif self._waiting:
                        spare = Waiter()
                        self._spares = (*self._spares, spare)
                    else:
                        self._waiting = True
                        timeout = self._until_first_timer_locked()
                        now = time.monotonic()
                        self._wait_until = math.inf if timeout is None else now + timeout
                else:
                    self._sched[kick] = _RUNNING
                    kick._pending = False  # before the pass: later wakes lock again
                    more = self._head < len(self._queue)
                    spawn = self._help_locked() if more else False
                    step = self._steps[kick]
            if after is not None:
                self._after_pass(after)
            if ending:
                return
            if spare is not None:
                spare.wait()  # taken off the parked ones by whoever woke it
                continue
            if kick is None or step is None:
                self._kick.wait(timeout)
                with self._lock:
                    self._waiting = False
                    self._wait_until = math.inf
                continue
            self._notify(spawn)
            ran = _run_pass(kick, step)

    @requires("_lock")
    def _until_first_timer_locked(self) -> float | None:
        """Seconds until the earliest timer entry (None: no deadline is kept, so the
        wait has no timeout). A stale entry ends the wait early, once."""
        if not self._due:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    @requires("_lock")
    def _account_locked(self, ran: _Ran) -> _After:
        """After a pass: drop a finished handler, keep its deadline, queue it again if
        it was kicked meanwhile. What to do once the lock is released."""
        kick = ran.kick
        if ran.finished:
            del self._steps[kick]
            del self._sched[kick]
            kick._pending = False
            self._due.pop(kick, None)
            # With nothing live, the keeper and the spares end.
            spares: tuple[Waiter, ...] = ()
            if not self._steps:
                spares, self._spares = self._spares, ()
            return _After(kick, self._finish.pop(kick), self._waiting and not self._steps, spares)
        # A new earliest deadline: the waiting worker waits for it instead.
        wake_waiter = self._arm_locked(kick, ran.due)
        if self._sched[kick] == _AGAIN:
            self._sched[kick] = _QUEUED
            self._queue.append(kick)
        else:
            del self._sched[kick]
        return _After(kick, None, wake_waiter)

    @calls_out
    def _after_pass(self, after: _After) -> None:
        if after.wake_waiter:
            self._kick.kick()
        for spare in after.wake_spares:
            spare.wake()
        if after.last_rites is not None:
            try:
                after.last_rites()
            except Exception:
                log.exception("state handler %s: its last step failed", after.kick.label)


class _Ran(NamedTuple):
    """Immutable. How a pass ended: whether its handler finished, and its next deadline
    (a tuple: one is made per pass)."""

    kick: PassKick
    finished: bool
    due: float | None


class _After(NamedTuple):
    """Immutable. What a worker does, with no lock held, once a pass is accounted for."""

    kick: PassKick
    last_rites: Callable[[], object] | None
    wake_waiter: bool
    wake_spares: tuple[Waiter, ...] = ()


@calls_out
def _run_pass(kick: PassKick, step: PassStep) -> _Ran:
    """Make one pass; one that raises is logged and ends its handler."""
    try:
        finished, due = step()
    except Exception:
        log.exception("state handler %s failed", kick.label)
        finished, due = True, None
    return _Ran(kick, finished, due)


PASSES = StatePasses()
"""The process's one state-pass service."""
