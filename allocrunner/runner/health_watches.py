"""One thread for every allocation's health watch, instead of a thread per watch.

A health watch follows one allocation's client views until a verdict (see `health`):
it reacts to new views and to two timers (`min_healthy_time`, `healthy_deadline`), and
does nothing in between. A thread per watch would cost every new service allocation a
thread start and a stack for its first ten seconds or more; here every watch is a
small record that `HealthWatches` steps when the watch's broadcaster sends a view,
when its timer is due, or when it is stopped.

A step drains the views the watch has not seen into its `HealthTracker`, then either
ends the watch with what it found (a verdict, or none when the allocation stopped,
the listener closed or the watch was cancelled) or re-arms it: the listener wakes the
watch on the next send (`AllocListener.wake_on_new`) and a timer entry wakes it when
the tracker's next deadline comes. Ending a watch hands it to its `finish` callback
(the hook writes the verdict, which may wait on the state DB); a step never blocks.

Who steps a watch: a timer's step, and the ending of every watch, run on the one
``health-watches`` thread. A view's step is made by the thread that sent the view
(the allocation's state pass), at once, unless a step of that watch is running or
queued: then the watch is stepped again after it. So a view costs its sender a short
step instead of a wake-up of the service thread, which was most of what a watch cost
a start. A step that ends the watch leaves the ending to the service thread. One step
of a watch at a time: every step is marked under the lock before it begins, and a
timer that falls due meanwhile is kept for the step after it. The tracker and the
timer bookkeeping are confined to the watch's stepper, the service thread or a
thread acting as it for its step (`acting_as`).

A new watch is armed the same way by `add`, without a step: its listener wakes it on
the first view and a timer entry at its `healthy_deadline`. A step with no view to take
in would only re-arm what `add` armed, and a watch is added at an allocation's prerun,
before its runner has published a view, so stepping it at once cost every new service
allocation a wake-up of this thread for nothing.

The thread starts with the first watch and ends when none is left, so an idle agent
(and a test) has no such thread; the next watch starts a new one.

Threads: ``health-watches`` (started on demand by `add`; it ends on its own when the
last watch ends and no ending is left, and a `Client`'s shutdown waits for that with
`join_if_idle`), and the senders of views, for their steps. Locks:
``HealthWatches._lock`` (a leaf) guards the set of live watches, the ones ready to
step, the ones being stepped and what befell them meanwhile, the endings left for the
thread, the timer heap and the running flag; nothing is called while it is held.
Owner: `HealthHook` adds its watches to the process's one service, `WATCHES`; a test
may build its own.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol

from allocrunner._guarded import guarded_dict, guarded_list
from allocrunner._locking import (
    acting_as,
    calls_out,
    confined,
    guarded,
    immutable,
    make_lock,
    requires,
)
from allocrunner._sync import CancelToken, Kick, ThreadGroup
from allocrunner.broadcaster import AllocListener
from allocrunner.errors import BroadcasterClosed
from allocrunner.runner.health_tracker import STEPPER, STOPPED, HealthTracker, HealthVerdict
from allocrunner.structs import TaskGroup

__all__ = ["WATCHES", "HealthWatches", "Watch"]

log = logging.getLogger("allocrunner.runner.health")

THREAD_NAME = STEPPER  # "health-watches"
# The heap is purged of ended watches' entries once it holds this many (or twice the
# number kept at the last purge).
_PURGE_MIN = 64


class _Finish(Protocol):
    def __call__(self, watch: Watch, verdict: HealthVerdict | None) -> None: ...


class Watch:
    """Thread-safe. One health watch: what it tracks, how it is woken (`wake`, from any
    thread) and stopped (`stop`, from any thread); its tracker and timer are confined
    to its stepper (`step`, `end`, `rearm`): the service thread, or a thread the
    service lets step it, acting as that thread (`HealthWatches.ready`)."""

    _group = immutable()
    _start = immutable()
    params = immutable()
    cancel = immutable()
    listener = immutable()
    generation = immutable()
    alloc = immutable()
    _clock = immutable()
    _poll = immutable()
    _finish = immutable()
    _on_view = immutable()
    _service = immutable()
    first_timer = immutable()  # monotonic time of its first timer entry (`add`)
    _tracker = confined(THREAD_NAME, prefix=THREAD_NAME)
    _due = confined(THREAD_NAME, prefix=THREAD_NAME)  # its live timer entry's time, or None

    def __init__(
        self,
        *,
        alloc: object,
        group: TaskGroup,
        params: object,
        start: float,
        listener: AllocListener,
        generation: int,
        clock: Callable[[], float],
        poll: float | None,
        finish: _Finish,
        on_view: Callable[[], None],
        service: HealthWatches | None = None,
    ) -> None:
        self.alloc = alloc
        self._group = group
        self.params = params
        self._start = start
        self.cancel = CancelToken()
        self.listener = listener
        self.generation = generation
        self._clock = clock
        self._poll = poll
        self._finish = finish
        self._on_view = on_view
        self._service = service if service is not None else WATCHES
        self._tracker: HealthTracker | None = None
        # Its first timer, armed by `add`: at its healthy_deadline, or sooner, at its
        # poll interval.
        deadline = start + params.healthy_deadline  # type: ignore[attr-defined]
        wait = max(0.0, deadline - clock())
        if poll is not None:
            wait = min(wait, poll)
        self.first_timer = time.monotonic() + wait
        self._due: float | None = self.first_timer

    def wake(self) -> None:
        """Have this watch stepped: at once on this thread, or soon on the service
        thread (`HealthWatches.ready`). Never blocks."""
        self._service.ready(self)

    def stop(self) -> None:
        """Ask the watch to end (with no verdict); its `finish` runs on the service
        thread. Never blocks."""
        self.cancel.cancel("health watch stopped")
        self.listener.close()
        self.wake()

    # --- on the service thread ----------------------------------------------------------

    def step(self) -> tuple[bool, HealthVerdict | None, float | None]:
        """Take in what is new: (ended, verdict, next timer in monotonic seconds)."""
        if self.cancel.cancelled():
            return True, None, None
        if self._tracker is None:
            self._tracker = HealthTracker(self._group, self.params, self._start)  # type: ignore[arg-type]
        tracker = self._tracker
        verdict = tracker.due(self._clock())
        if verdict is not None:
            return True, verdict, None
        while True:
            try:
                view = self.listener.get(timeout=0)
            except TimeoutError:
                break
            except BroadcasterClosed:
                return True, None, None
            outcome = tracker.observe(view, self._clock())
            self._on_view()
            if outcome is STOPPED:
                return True, None, None
            if isinstance(outcome, HealthVerdict):
                return True, outcome, None
        if self.cancel.cancelled():
            return True, None, None
        self.listener.wake_on_new(self)
        wait = max(0.0, tracker.next_wakeup() - self._clock())
        if self._poll is not None:
            wait = min(wait, self._poll)
        return False, None, time.monotonic() + wait

    def end(self, verdict: HealthVerdict | None) -> None:
        self.listener.close()
        self._finish(self, verdict)

    def rearm(self, due: float) -> bool:
        """Whether a timer entry for `due` is needed: not when an earlier one is live
        (its step re-arms the watch for whatever is due then)."""
        if self._due is not None and self._due <= due:
            return False
        self._due = due
        return True

    def timer_fired(self, due: float) -> None:
        if self._due == due:
            self._due = None


class HealthWatches:
    """Thread-safe. Steps every added `Watch` on one thread (module docstring)."""

    # _lock guards: _watches, _ready, _stepping, _again, _ending, _timers, _running,
    # _purge_at
    _lock = immutable()
    _watches = immutable()  # checked map, changed in place: the live watches
    _ready = immutable()  # checked map, changed in place: watches to step next
    _stepping = immutable()  # checked map, changed in place: watches a step runs for
    _again = immutable()  # checked map: stepping watch -> the timers that fired meanwhile
    _ending = immutable()  # checked map: watch ended off the thread -> its verdict
    _timers = immutable()  # checked list, a heap of (due, seq, watch), changed in place
    _running = guarded("_lock")
    _purge_at = guarded("_lock")  # heap size at which entries of ended watches are dropped
    _kick = immutable()
    _seq = immutable()
    _threads = immutable()

    def __init__(self) -> None:
        self._lock = make_lock("HealthWatches._lock")
        self._watches: dict[Watch, None] = guarded_dict(self._lock)
        self._ready: dict[Watch, None] = guarded_dict(self._lock)
        self._stepping: dict[Watch, None] = guarded_dict(self._lock)
        self._again: dict[Watch, tuple[float, ...]] = guarded_dict(self._lock)
        self._ending: dict[Watch, HealthVerdict | None] = guarded_dict(self._lock)
        self._timers: list[tuple[float, int, Watch]] = guarded_list(self._lock)
        self._running = False
        self._purge_at = _PURGE_MIN
        self._kick = Kick()
        self._seq = itertools.count()
        self._threads = ThreadGroup(THREAD_NAME)

    def add(self, watch: Watch) -> None:
        """Run `watch` from now on: its first step comes with its first view, its first
        timer (`Watch.first_timer`) or its stop, whichever is first."""
        due = watch.first_timer
        with self._lock:
            self._watches[watch] = None
            earliest = not self._timers or due < self._timers[0][0]
            heapq.heappush(self._timers, (due, next(self._seq), watch))
            start = not self._running
            self._running = True
        if start:
            try:
                self._threads.spawn(THREAD_NAME, self._run)
            except BaseException:
                with self._lock:
                    self._running = False
                    self._drop_locked(watch)
                raise
        elif earliest:  # the thread waits for a later timer, or for nothing
            self._kick.kick()
        watch.listener.wake_on_new(watch)

    @calls_out
    def ready(self, watch: Watch) -> None:
        """Step `watch` (if it is still live) at once, on this thread, unless a step of it
        runs or is queued: then it is stepped again after that one. A step never
        blocks; one that ends the watch leaves the ending (which writes the verdict) to
        the service thread."""
        with self._lock:
            if watch not in self._watches:
                return
            if watch in self._stepping:
                self._again.setdefault(watch, ())
                return
            if watch in self._ready:
                return
            self._stepping[watch] = None
        with acting_as(THREAD_NAME):
            ended, verdict, due = self._step_watch(watch)
            with self._lock:
                if ended:
                    self._drop_locked(watch)
                    self._ending[watch] = verdict
                    kick = True
                else:
                    kick = self._stepped_locked(watch, due)
        if kick:
            self._kick.kick()

    def count(self) -> int:
        """How many watches are live (one ended off the service thread is not, though
        its ending is still to run there)."""
        with self._lock:
            return len(self._watches)

    @calls_out
    def join_if_idle(self, timeout: float) -> bool:
        """With no watch live, wait (at most `timeout` seconds) for the thread to end, as
        an owner's shutdown does for its threads; True if it ended (or none ran). False
        at once while a watch is live: the thread is someone else's to wait for."""
        with self._lock:
            if self._watches or self._ending:
                return False
        return self._threads.join(timeout)

    @calls_out
    def _run(self) -> None:
        while True:
            with self._lock:
                batch = self._take_due_locked(time.monotonic())
                ending = tuple(self._ending.items())
                self._ending.clear()
                timeout = None
                if not batch and not ending:
                    if not self._watches:
                        self._timers.clear()  # entries of ended watches only
                        self._running = False
                        return
                    if self._timers:
                        timeout = max(0.0, self._timers[0][0] - time.monotonic())
            if not batch and not ending:
                self._kick.wait(timeout)
                continue
            for watch, verdict in ending:
                self._end(watch, verdict)
            for watch in batch:
                self._step(watch)

    @requires("_lock")
    def _purge_locked(self) -> None:
        """Drop the timer entries of ended watches once they outnumber the live ones
        (an entry holds its watch, and so its hook and runner, until it is due):
        amortised O(1) per ended watch, and the heap stays proportional to the watches
        alive."""
        if len(self._timers) < self._purge_at:
            return
        kept = [entry for entry in self._timers if entry[2] in self._watches]
        heapq.heapify(kept)
        self._timers[:] = kept
        self._purge_at = max(_PURGE_MIN, 2 * len(kept))

    @requires("_lock")
    def _take_due_locked(self, now: float) -> list[Watch]:
        """The watches to step now, each marked as stepping. One a step runs for
        elsewhere is left to be stepped again after it, with the timers that fired for
        it (applied by that step's thread, the watch's stepper until it is over)."""
        batch = dict(self._ready)
        self._ready.clear()
        timers = self._timers
        while timers and timers[0][0] <= now:
            due, _, watch = heapq.heappop(timers)
            if watch not in self._watches:
                continue
            if watch in self._stepping:
                self._again[watch] = (*self._again.get(watch, ()), due)
            else:
                watch.timer_fired(due)
                batch[watch] = None
        for watch in batch:
            self._stepping[watch] = None
        return list(batch)

    @requires("_lock")
    def _drop_locked(self, watch: Watch) -> None:
        """`watch` is no longer live: forget it everywhere but the timer heap (purged in
        bulk, `_purge_locked`)."""
        self._stepping.pop(watch, None)
        self._again.pop(watch, None)
        self._watches.pop(watch, None)
        self._ready.pop(watch, None)

    @requires("_lock")
    def _stepped_locked(self, watch: Watch, due: float | None) -> bool:
        """After a step that left `watch` live: arm its timer for `due`, unmark it, and
        queue it again if it was woken (or its timer fired) meanwhile. Whether the
        service thread must be kicked: it waits for a later timer, or the watch is
        queued again."""
        assert due is not None
        kick = False
        if watch.rearm(due) and watch in self._watches:
            kick = not self._timers or due < self._timers[0][0]
            heapq.heappush(self._timers, (due, next(self._seq), watch))
        del self._stepping[watch]
        if watch in self._again:
            for fired in self._again.pop(watch):
                watch.timer_fired(fired)
            self._ready[watch] = None
            kick = True
        return kick

    def _step_watch(self, watch: Watch) -> tuple[bool, HealthVerdict | None, float | None]:
        try:
            return watch.step()
        except Exception:
            log.exception("health watch of %s failed", getattr(watch.alloc, "id", "?"))
            return True, None, None

    @calls_out
    def _step(self, watch: Watch) -> None:
        ended, verdict, due = self._step_watch(watch)
        with self._lock:
            if not ended:
                self._stepped_locked(watch, due)  # this thread is the one to kick
                return
            self._drop_locked(watch)
        self._end(watch, verdict)

    @calls_out
    def _end(self, watch: Watch, verdict: HealthVerdict | None) -> None:
        """End a watch no longer live: purge ended timer entries, then its `finish`."""
        with self._lock:
            self._purge_locked()
        try:
            watch.end(verdict)
        except Exception:
            log.exception("ending the health watch of %s failed", getattr(watch.alloc, "id", "?"))


WATCHES = HealthWatches()
"""The process's one health watch service."""
