"""The alloc health watcher: decides once whether a new allocation became healthy.

Deployments and migrations need to know whether an allocation came up well. For
service and system jobs the watcher follows the allocation's client view on the alloc
runner's broadcaster and reaches one verdict per watch:

- unhealthy as soon as a task fails, a task that should keep running exits (ephemeral
  prestart and poststart tasks may complete), or the client status is failed;
- healthy once every task that should be running (poststop tasks aside; ephemeral
  prestart tasks need only have completed successfully, a successful ephemeral
  poststart task no longer counts) has been running for `min_healthy_time` without a
  restart;
- unhealthy when `healthy_deadline` passes first.

The parameters come from the group's update strategy (else the job's) when the
allocation is part of a deployment, otherwise from its migrate strategy. Nothing is
watched for batch and sysbatch jobs, when health is already set, when the allocation is
stopping, or for a deployment whose update strategy is absent, empty or "manual".
Service checks are not consulted: "checks" and "task_states" both mean task states.
These rules, and the tracker that applies them to a watch's views, are in
`health_tracker` (re-exported here); this module runs the watches.

A watch has its own listener and is stepped, with every other allocation's, by the
service of `health_watches`: on the thread that sent its view, or on the one
``health-watches`` thread for its timers and its end (a thread per watch would cost
every new service allocation a thread for its first ten seconds). An update stops the watch and
starts a new one for the new allocation (clearing the health first when the deployment
changed); postrun and shutdown stop it. Health is set once per watch, by design: a
later failure does not revise a verdict already given.

An update never waits for the old watch (the alloc runner's state thread applies
updates, and a verdict may be queued on a slow state DB): each replacement makes a new
generation, and only the watch of the current generation writes its verdict. Writing
a verdict, clearing the health and starting a watch are done by one thread at a time
(the hook's *server*, see `HealthHook`), so a verdict being written lands before the
next watch starts and a stale one is never written after it.

Threads: the phases run on the alloc runner's threads; the watches are stepped by
the threads that send their views and on ``health-watches``, and their verdicts are
written on ``health-watches`` (postrun, shutdown and destroy wait for this hook's
watches to end). Locks: ``HealthHook._lock`` guards the hook's phase
bookkeeping, the generation, the current watch, the live watch count, the request left
for the server and who the server is (a leaf: nothing else is taken under it, and it
is never held while calling out).
Owner: the AllocRunner builds one HealthHook per allocation and runs its phases as
an alloc hook; the verdict goes back through the callbacks it was built with.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken, Waiter
from allocrunner.broadcaster import AllocListener
from allocrunner.runner.health_tracker import (
    HEALTH_CHECK_CHECKS,
    HEALTH_CHECK_MANUAL,
    HEALTH_CHECK_TASK_STATES,
    HEALTH_JOB_TYPES,
    MSG_EXITED,
    MSG_FAILED,
    MSG_NOT_COMPLETED,
    MSG_NOT_LONG_ENOUGH,
    MSG_NOT_RUNNING,
    STOPPED,
    HealthParams,
    HealthTracker,
    HealthVerdict,
    health_params,
)
from allocrunner.runner.health_watches import WATCHES, HealthWatches, Watch
from allocrunner.structs import Allocation, TaskEvent

__all__ = [
    "HEALTH_CHECK_CHECKS",
    "HEALTH_CHECK_MANUAL",
    "HEALTH_CHECK_TASK_STATES",
    "HEALTH_JOB_TYPES",
    "MSG_EXITED",
    "MSG_FAILED",
    "MSG_NOT_COMPLETED",
    "MSG_NOT_LONG_ENOUGH",
    "MSG_NOT_RUNNING",
    "STOPPED",
    "HealthHook",
    "HealthParams",
    "HealthSink",
    "HealthTracker",
    "HealthVerdict",
    "health_params",
]

log = logging.getLogger("allocrunner.runner.health")

# With a clock other than time.monotonic, real waits cannot be derived from clock
# readings, so the watcher re-reads the clock at least this often (seconds).
FOREIGN_CLOCK_POLL = 0.01
JOIN_TIMEOUT = 30.0


class HealthSink(Protocol):
    """Where a health hook's verdicts go (the allocation's state handler): one object,
    rather than a bound method per call, which every running allocation would keep."""

    def set_health(self, healthy: bool, events: Mapping[str, TaskEvent]) -> None:
        """Record the deployment health and the task events that explain it."""
        ...

    def has_health(self) -> bool:
        """True once a health is recorded for the current deployment."""
        ...

    def clear_health(self) -> None:
        """Forget the recorded health (the deployment changed)."""
        ...


@attrs.frozen
class _Request:
    """Immutable. A watch to start for `alloc`, made current by `generation`; the
    health is cleared first when `clear_first` (the deployment changed)."""

    alloc: Allocation
    generation: int
    clear_first: bool


class HealthHook:
    """Thread-safe. The alloc runner hook that watches a new allocation's health.

    Hook phases (`prerun`, `update`, `postrun`, `shutdown`, `destroy`) may come from
    any thread. Each one that replaces the watch makes a new generation: the old watch
    is stopped and left to end on its own (its thread is joined by the terminal
    phases), and a verdict is written only by the watch of the current generation.

    The health is changed (`set_health`, `clear_health`) and a new watch is started by
    one thread at a time, the *server*: a phase serves its own request on its caller's
    thread, unless a watch is writing its verdict at that moment; then the request
    waits, the phase returns at once, and the watch thread serves it once the verdict
    is written. So `update` never waits for a verdict being written (the state DB may
    be slow), and a verdict being written always lands before the next watch starts.
    `postrun`, `shutdown` and `destroy` stop watching for good, wait for the server and
    join the watch threads (at most `JOIN_TIMEOUT` seconds). `set_health` is called at
    most once per watch, from the watch thread, with no lock held; none of the
    callbacks may call back into this hook.
    """

    name = "alloc_health_watcher"

    # _lock guards: _alloc, _ran_once, _stopped, _generation, _watch, _live, _pending,
    # _serving, _idle_waiters, _ended_waiters, _views_seen
    _lock = immutable()
    _alloc = guarded("_lock")
    _ran_once = guarded("_lock")  # prerun or update ran (a later prerun is a no-op)
    _stopped = guarded("_lock")  # postrun/shutdown/destroy ran: never watch again
    _generation = guarded("_lock")  # bumped by every phase that replaces the watch
    _watch = guarded("_lock")  # the watch of the current generation, until it ends
    _live = guarded("_lock")  # watches added to the service and not ended yet
    _ended_waiters = guarded("_lock")  # woken when _live drops to 0
    _pending = guarded("_lock")  # a request left for the server
    _serving = guarded("_lock")  # a thread is the server
    _idle_waiters = guarded("_lock")  # woken when the server role is given back
    _views_seen = guarded("_lock")
    _alloc_id = immutable()
    _watched_type = immutable()
    _listen = immutable()
    _health = immutable()
    _clock = immutable()
    _poll = immutable()
    _watches = immutable()

    def __init__(
        self,
        alloc: Allocation,
        *,
        listen: Callable[[], AllocListener],
        health: HealthSink,
        clock: Callable[[], float] = time.monotonic,
        poll_interval: float | None = None,
        watches: HealthWatches | None = None,
    ) -> None:
        if not isinstance(alloc, Allocation):
            raise TypeError(f"HealthHook: alloc must be an Allocation, got {type(alloc).__name__}")
        health_params(alloc)  # validate now: a bad strategy is a construction error
        if poll_interval is not None and poll_interval <= 0:
            raise ValueError("HealthHook: poll_interval must be positive")
        self._lock = make_lock("HealthHook._lock")
        self._alloc = alloc
        self._ran_once = False
        self._stopped = False
        self._generation = 0
        self._watch: Watch | None = None
        self._live = 0
        self._ended_waiters: tuple[Waiter, ...] = ()
        self._pending: _Request | None = None
        self._serving = False
        self._idle_waiters: tuple[Waiter, ...] = ()
        self._views_seen = 0
        self._alloc_id = alloc.id
        self._watched_type = alloc.job is not None and alloc.job.type in HEALTH_JOB_TYPES
        self._listen = listen
        self._health = health
        self._clock = clock
        if poll_interval is None and clock is not time.monotonic:
            poll_interval = FOREIGN_CLOCK_POLL
        self._poll = poll_interval
        self._watches = watches if watches is not None else WATCHES

    # --- hook phases ------------------------------------------------------------------

    @calls_out
    def prerun(self, cancel: CancelToken | None = None) -> None:
        """Start watching, unless an update already did (or the hook was stopped)."""
        if not self._watched_type:
            return
        with self._lock:
            if self._ran_once or self._stopped:
                return
            self._ran_once = True
            self._request_locked(self._alloc, clear_first=False)
            serve = self._claim_locked()
        if serve:
            self._serve()

    @calls_out
    def update(self, alloc: Allocation) -> None:
        """Replace the watch by one of the new version of the allocation, clearing the
        health first (through `clear_health`) when its deployment changed. Never waits
        for the old watch: it is stopped and ends on its own."""
        if not isinstance(alloc, Allocation):
            raise TypeError(f"HealthHook.update: alloc must be an Allocation, got {alloc!r}")
        if alloc.id != self._alloc_id:
            raise ValueError(f"HealthHook.update: allocation {alloc.id} is not {self._alloc_id}")
        if not self._watched_type:
            with self._lock:
                self._alloc = alloc
            return
        health_params(alloc)  # validate before touching the running watch
        with self._lock:
            self._ran_once = True
            old, self._alloc = self._alloc, alloc
            if self._stopped:
                return
            superseded = self._supersede_locked()
            # A clear still pending (an update not served yet) is kept.
            pending = self._pending
            clear = alloc.deployment_id != old.deployment_id
            clear = clear or (pending is not None and pending.clear_first)
            self._request_locked(alloc, clear_first=clear)
            serve = self._claim_locked()
        if superseded is not None:
            superseded.stop()
        if serve:
            self._serve()

    @calls_out
    def postrun(self) -> None:
        """Stop watching for good; wait for the server and for this hook's watches to
        end."""
        with self._lock:
            self._stopped = True
            superseded = self._supersede_locked()
        if superseded is not None:
            superseded.stop()
        deadline = time.monotonic() + JOIN_TIMEOUT
        idle = self._wait_idle(deadline)
        if not idle or not self._wait_watches_ended(deadline):
            log.warning(
                "allocation %s: health watch did not stop within %ss", self._alloc_id, JOIN_TIMEOUT
            )

    @calls_out
    def shutdown(self) -> None:
        """Same as `postrun` (the agent is shutting down)."""
        self.postrun()

    @calls_out
    def destroy(self) -> None:
        """Same as `postrun` (the allocation is being destroyed)."""
        self.postrun()

    # --- diagnostics ------------------------------------------------------------------

    def watching(self) -> bool:
        """True while a watch runs (or writes its verdict), or one is about to start."""
        with self._lock:
            return self._watch is not None or self._pending is not None

    def live_watches(self) -> int:
        """How many of this hook's watches have not ended yet (stopped ones included
        until the service has ended them)."""
        with self._lock:
            return self._live

    def views_seen(self) -> int:
        """How many client views the watches of this hook have taken in so far."""
        with self._lock:
            return self._views_seen

    # --- generations and the server role ------------------------------------------------

    @requires("_lock")
    def _supersede_locked(self) -> Watch | None:
        """Make a new generation; the current watch (returned, to be stopped by the
        caller once the lock is released) is no longer current."""
        self._generation += 1
        watch, self._watch = self._watch, None
        return watch

    @requires("_lock")
    def _request_locked(self, alloc: Allocation, *, clear_first: bool) -> None:
        self._pending = _Request(alloc, self._generation, clear_first)

    @requires("_lock")
    def _claim_locked(self) -> bool:
        """Become the server; False if another thread is (it serves what is pending)."""
        if self._serving:
            return False
        self._serving = True
        return True

    @calls_out
    def _serve(self, finished: Watch | None = None) -> None:
        """As the server: serve the requests pending, then give the role back (and
        forget `finished`, the watch whose thread this is, in the same step)."""
        waiters: tuple[Waiter, ...] = ()
        try:
            while True:
                with self._lock:
                    request, self._pending = self._pending, None
                    if request is None:
                        waiters = self._release_locked(finished)
                        return
                self._serve_one(request)
        except BaseException:
            with self._lock:
                waiters = self._release_locked(finished)
            raise
        finally:
            for waiter in waiters:
                waiter.wake()

    @requires("_lock")
    def _release_locked(self, finished: Watch | None) -> tuple[Waiter, ...]:
        self._serving = False
        if finished is not None and self._watch is finished:
            self._watch = None
        waiters, self._idle_waiters = self._idle_waiters, ()
        return waiters

    @calls_out
    def _wait_idle(self, deadline: float) -> bool:
        """Wait until no thread is the server; False if `deadline` passed first."""
        while True:
            with self._lock:
                if not self._serving:
                    return True
                waiter = Waiter()
                self._idle_waiters = (*self._idle_waiters, waiter)
            if not waiter.wait(max(0.0, deadline - time.monotonic())):
                return False

    @calls_out
    def _wait_watches_ended(self, deadline: float) -> bool:
        """Wait until every watch of this hook has ended; False if `deadline` passed."""
        while True:
            with self._lock:
                if self._live == 0:
                    return True
                waiter = Waiter()
                self._ended_waiters = (*self._ended_waiters, waiter)
            if not waiter.wait(max(0.0, deadline - time.monotonic())):
                return False

    def _is_current(self, generation: int) -> bool:
        with self._lock:
            return self._generation == generation

    @calls_out
    def _serve_one(self, request: _Request) -> None:
        """Clear the health if asked, then start the watch of `request` if it is still
        current and its health is to be watched. Failures are logged."""
        try:
            if request.clear_first:
                self._health.clear_health()
            if self._is_current(request.generation):
                self._start_watch(request)
        except Exception:
            log.exception("allocation %s: starting the health watch failed", self._alloc_id)

    @calls_out
    def _start_watch(self, request: _Request) -> None:
        alloc = request.alloc
        params = health_params(alloc)
        group = alloc.group()
        if params is None or group is None or alloc.server_terminal() or self._health.has_health():
            return
        watch = Watch(
            alloc=alloc,
            group=group,
            params=params,
            start=self._clock(),
            listener=self._listen(),
            generation=request.generation,
            clock=self._clock,
            poll=self._poll,
            finish=self._watch_ended,
            on_view=self._count_view,
            service=self._watches,
        )
        with self._lock:
            current = self._generation == request.generation
            if current:
                self._watch = watch
                self._live += 1
        if not current:
            watch.listener.close()
            return
        try:
            self._watches.add(watch)
        except BaseException:
            self._forget(watch)
            watch.listener.close()
            raise

    # --- on the health-watches thread ------------------------------------------------------

    def _count_view(self) -> None:
        with self._lock:
            self._views_seen += 1

    @calls_out
    def _watch_ended(self, watch: Watch, verdict: HealthVerdict | None) -> None:
        """The service ended `watch` (its listener closed): write its verdict if it is
        still current, as the server, then serve what was requested meanwhile."""
        try:
            if verdict is not None:
                self._write_verdict(watch, verdict)
        finally:
            self._forget(watch)

    @calls_out
    def _write_verdict(self, watch: Watch, verdict: HealthVerdict) -> None:
        log.debug(
            "allocation %s: %s (%s)",
            self._alloc_id,
            "healthy" if verdict.healthy else "unhealthy",
            verdict.reason,
        )
        if not self._claim_for(watch):
            return
        try:
            self._health.set_health(verdict.healthy, verdict.events)
        except Exception:
            log.exception("allocation %s: setting health failed", self._alloc_id)
        finally:
            self._serve(finished=watch)

    @calls_out
    def _claim_for(self, watch: Watch) -> bool:
        """Become the server to write `watch`'s verdict: True once it is, False as soon
        as the watch is no longer current."""
        while True:
            with self._lock:
                if self._generation != watch.generation:
                    return False
                if self._claim_locked():
                    return True
                waiter = Waiter()
                self._idle_waiters = (*self._idle_waiters, waiter)
            waiter.wait()

    def _forget(self, watch: Watch) -> None:
        """`watch` ended: it is no longer the current one, nor live."""
        with self._lock:
            if self._watch is watch:
                self._watch = None
            self._live -= 1
            waiters: tuple[Waiter, ...] = ()
            if self._live == 0:
                waiters, self._ended_waiters = self._ended_waiters, ()
        for waiter in waiters:
            waiter.wake()

    def __repr__(self) -> str:
        return f"<HealthHook alloc={self._alloc_id[:8]}>"
