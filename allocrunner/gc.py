"""AllocGarbageCollector: destroys finished allocations to keep the node within limits.

An allocation that reached a terminal client status is *marked* for collection; it
stays on the node (its directory and logs readable) until the collector destroys it,
either because the server says so (`collect`), because an operator asks
(`collect_all`), or because the node is over one of its limits: disk use, inode use or
the number of live allocations (`keep_usage_below_threshold`, run on the owned ``gc``
thread every `gc_interval` seconds and whenever `trigger()` is called).

Two rules from Nomad's history shape it. Collection never blocks alloc placement
(Nomad #25123): destroys run on the collector's own pool of `gc_parallel_destroys`
worker threads, which bounds how many run at once, and the caller of `trigger` never
waits. And the collector never waits on a runner while holding a lock (Nomad PR #2852):
a runner's teardown may report state that leads back to the collector.

Threads (owned by one `ThreadGroup`, joined by `stop()`): ``gc`` (the threshold loop,
started by `start()`) and the destroy pool ``gc-destroy-<n>``, n < `gc_parallel_destroys`,
all started on first use (by `start()` or the first destroy asked for), never one per
allocation. Every destroy, whoever asks for it, is a `_DestroyJob` on the pool's
`WorkQueue`; a worker destroys the runner, waits (no timeout, no polling) until it is
destroyed or the collector stops, then closes it and reports the job done.
Locks: "GCQueue._lock" guards the queue's index of marked runners;
"AllocGarbageCollector._lock" guards the started flags and the in-flight counters. No
runner is called and no thread started with either held.
Owner: `Client` creates the collector, marks terminal allocations and stops it at
shutdown; an embedder may run one on its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Literal, Protocol, runtime_checkable

import attrs

from allocrunner._guarded import guarded_dict
from allocrunner._locking import calls_out, guarded, immutable, make_lock
from allocrunner._sync import CancelToken, Event, Kick, ThreadGroup, Waiter, WorkQueue
from allocrunner.config import ClientConfig

__all__ = [
    "AllocGarbageCollector",
    "DestroyNotifier",
    "GCQueue",
    "GCRunner",
    "HostStats",
    "statvfs_host_stats",
]

log = logging.getLogger("allocrunner.gc")

# How long stop() waits for the collector's threads by default.
STOP_TIMEOUT = 10.0
# How long a destroy worker waits for a runner's threads once it is destroyed.
_CLOSE_TIMEOUT = 30.0

REASON_DISK = "disk usage"
REASON_INODES = "inode usage"
REASON_MAX_ALLOCS = "number of allocations"

# What a threshold round does when it has no entry to destroy.
_Step = Literal["wait", "stop"]
_WAIT: _Step = "wait"
_STOP: _Step = "stop"


class GCRunner(Protocol):
    """What the collector needs of an allocation runner (an `AllocRunner` is one)."""

    def destroy(self) -> None:
        """Start destroying the allocation; returns at once."""
        ...

    def wait_destroyed(self, timeout: float | None = None) -> bool:
        """True once the destroy finished; False if `timeout` seconds passed first."""
        ...

    def is_destroyed(self) -> bool:
        """True once the destroy finished."""
        ...

    def close(self, timeout: float = ...) -> bool:
        """Join the runner's threads; False if some were still alive after `timeout`."""
        ...


@runtime_checkable
class DestroyNotifier(Protocol):
    """What a runner offers so that a wait for its destroy can also wake on the
    collector's stop: a callback when the destroy finishes. A runner without it is
    waited on with an untimed `wait_destroyed()`, which `stop()` cannot cut short."""

    def on_destroyed(self, callback: Callable[[], object]) -> Callable[[], None]:
        """Call `callback` once when the destroy finishes (at once if it has); returns
        a function that withdraws it. The callback is quick and never raises."""
        ...


@attrs.frozen
class HostStats:
    """Immutable. How full the filesystem holding the alloc dirs is, in percent."""

    disk_used_percent: float
    inodes_used_percent: float


def statvfs_host_stats(path: str | os.PathLike[str]) -> HostStats:
    """Disk and inode use of the filesystem holding `path` (created if missing).

    Disk use counts blocks reserved for root as unavailable, as `df` does:
    used / (used + available to unprivileged users).
    """
    os.makedirs(path, exist_ok=True)
    st = os.statvfs(path)
    used = st.f_blocks - st.f_bfree
    usable = used + st.f_bavail
    disk = 100.0 * used / usable if usable > 0 else 0.0
    inodes = 100.0 * (st.f_files - st.f_ffree) / st.f_files if st.f_files > 0 else 0.0
    return HostStats(disk_used_percent=disk, inodes_used_percent=inodes)


@attrs.frozen
class GCEntry:
    """Immutable. One allocation waiting for collection and when it was first marked."""

    alloc_id: str
    runner: GCRunner
    marked_at: float


class GCQueue:
    """Thread-safe. Allocations waiting for collection, oldest first-marked first,
    indexed by alloc id (Nomad's IndexedGCAllocPQ).

    Marks are serialised by the queue's lock and a mark never moves an entry, so the
    order of first marks is the priority order: the index is an insertion-ordered
    mapping, changed in place under the lock, whose first entry is always the oldest.
    """

    _lock = immutable()
    # _lock guards _entries, a checked container changed in place
    _entries = immutable()

    def __init__(self) -> None:
        self._lock = make_lock("GCQueue._lock")
        self._entries: dict[str, GCEntry] = guarded_dict(self._lock)

    def push(self, alloc_id: str, runner: GCRunner) -> bool:
        """Queue `runner` under `alloc_id`; False (and no change) if already queued."""
        if not isinstance(alloc_id, str) or not alloc_id:
            raise ValueError(f"alloc_id: expected a non-empty string, got {alloc_id!r}")
        with self._lock:
            if alloc_id in self._entries:
                return False
            self._entries[alloc_id] = GCEntry(alloc_id, runner, time.monotonic())
            return True

    def pop(self) -> GCEntry | None:
        """Remove and return the oldest entry; None when empty."""
        with self._lock:
            if not self._entries:
                return None
            return self._entries.pop(next(iter(self._entries)))

    def remove(self, alloc_id: str) -> GCEntry | None:
        """Remove and return the entry of `alloc_id`; None if it is not queued."""
        with self._lock:
            return self._entries.pop(alloc_id, None)

    def pop_all(self) -> list[GCEntry]:
        """Remove and return every entry, oldest first."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            return entries

    def ids(self) -> list[str]:
        """The queued alloc ids, oldest first."""
        with self._lock:
            return list(self._entries)

    def __contains__(self, alloc_id: object) -> bool:
        with self._lock:
            return alloc_id in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@attrs.frozen
class _DestroyJob:
    """Immutable. One destroy handed to the pool: `done` is set once a worker finished
    with it (destroyed and closed, or the wait abandoned at stop), and `notify`, if any,
    is kicked then too (the threshold loop's wake-up)."""

    entry: GCEntry
    reason: str
    done: Event = attrs.field(factory=Event)
    notify: Kick | None = None


def _report_done(job: _DestroyJob) -> None:
    """Tell whoever waits on `job` that the pool is finished with it."""
    job.done.set()
    if job.notify is not None:
        job.notify.kick()


class AllocGarbageCollector:
    """Thread-safe. Destroys marked allocations on request or when the node is over
    its disk, inode or allocation-count limits, a bounded number at a time.

    `host_stats` (default: `statvfs_host_stats` of `config.alloc_dir`) and `num_allocs`
    (default: always 0, so only disk and inodes count) are injected by the embedder.
    """

    _config = immutable()
    _host_stats = immutable()
    _num_allocs = immutable()
    _queue = immutable()
    _work = immutable()
    _pool_spawned = immutable()
    _parallel = immutable()
    _stopping = immutable()
    _trigger = immutable()
    _threads = immutable()
    _lock = immutable()
    # _lock guards: _started, _pool_started, _in_flight, _max_in_flight
    _started = guarded("_lock")
    _pool_started = guarded("_lock")
    _in_flight = guarded("_lock")
    _max_in_flight = guarded("_lock")

    def __init__(
        self,
        config: ClientConfig,
        *,
        host_stats: Callable[[], HostStats] | None = None,
        num_allocs: Callable[[], int] | None = None,
    ) -> None:
        self._config = config
        self._host_stats: Callable[[], HostStats] = (
            host_stats if host_stats is not None else partial(statvfs_host_stats, config.alloc_dir)
        )
        self._num_allocs = num_allocs if num_allocs is not None else (lambda: 0)
        parallel = config.gc_parallel_destroys
        if parallel <= 0:
            log.warning("gc_parallel_destroys is %d; using 1", parallel)
            parallel = 1
        self._parallel = parallel
        self._queue = GCQueue()
        self._work: WorkQueue[_DestroyJob] = WorkQueue()
        # Set once the pool's threads are all started (or never will be).
        self._pool_spawned = Event()
        self._stopping = CancelToken()
        self._trigger = Kick()
        self._threads = ThreadGroup("gc")
        self._lock = make_lock("AllocGarbageCollector._lock")
        self._started = False
        self._pool_started = False
        self._in_flight = 0
        self._max_in_flight = 0

    # --- queue --------------------------------------------------------------------------

    def mark_for_collection(self, alloc_id: str, runner: GCRunner) -> bool:
        """Queue a terminal allocation for collection; False if it was already queued
        (its place, set by the first mark, is kept)."""
        return self._queue.push(alloc_id, runner)

    def mark(self, alloc_id: str, runner: GCRunner) -> bool:
        """Short name of `mark_for_collection` (DESIGN's "mark")."""
        return self.mark_for_collection(alloc_id, runner)

    def is_marked(self, alloc_id: str) -> bool:
        """True while `alloc_id` waits in the queue."""
        return alloc_id in self._queue

    def queued(self) -> list[str]:
        """Alloc ids waiting for collection, oldest first."""
        return self._queue.ids()

    def __len__(self) -> int:
        return len(self._queue)

    # --- explicit collection ------------------------------------------------------------

    @calls_out
    def collect(self, alloc_id: str) -> bool:
        """Destroy a queued allocation now and wait until it is destroyed.

        The destroy runs on the pool like any other, so it counts against
        `gc_parallel_destroys` and may wait for a worker. False if it is not queued
        ("already garbage collected", or never marked). After `stop()` the destroy is
        launched but not waited for.
        """
        entry = self._queue.remove(alloc_id)
        if entry is None:
            log.debug("allocation %s: already garbage collected", alloc_id)
            return False
        job = self._submit(entry, "collect")
        if job is not None:
            job.done.wait(cancel=self._stopping)
        return True

    def collect_async(self, alloc_id: str) -> bool:
        """Like `collect`, without waiting: the pool destroys it; never blocks."""
        entry = self._queue.remove(alloc_id)
        if entry is None:
            log.debug("allocation %s: already garbage collected", alloc_id)
            return False
        self._submit(entry, "collect")
        return True

    @calls_out
    def collect_all(self) -> int:
        """Destroy every queued allocation, `gc_parallel_destroys` at a time, and wait
        for them (or for `stop()`). Returns how many were taken from the queue."""
        entries = self._queue.pop_all()
        jobs = [self._submit(entry, "collect all") for entry in entries]
        for job in jobs:
            if job is not None and not job.done.wait(cancel=self._stopping):
                break  # stopping: the jobs still queued are launched by stop()
        return len(entries)

    # --- threshold loop -----------------------------------------------------------------

    def trigger(self) -> None:
        """Ask the ``gc`` thread for a threshold pass soon; coalescing, never blocks."""
        self._trigger.kick()

    def _over_threshold(self, live: int) -> str | None:
        stats = self._host_stats()
        config = self._config
        if stats.disk_used_percent > config.gc_disk_usage_threshold:
            return REASON_DISK
        if stats.inodes_used_percent > config.gc_inode_usage_threshold:
            return REASON_INODES
        if live > config.gc_max_allocs:
            return REASON_MAX_ALLOCS
        return None

    @calls_out
    def keep_usage_below_threshold(self) -> int:
        """Destroy the oldest marked allocations while the node is over a limit.

        Each round reads the host stats and the live allocation count afresh. Destroys
        run on the pool, at most `gc_parallel_destroys` of this pass's at once; destroys
        already in flight are subtracted from the live count, and while one is in flight
        a disk or inode reason is re-checked only after it completes (until then its
        space is not yet free). Between rounds the pass sleeps until one of its destroys
        completes or the collector stops. Returns how many allocations were destroyed or
        launched.
        """
        in_flight: dict[str, _DestroyJob] = {}
        completed = Kick()
        withdraw = self._stopping.on_cancel(completed.kick)
        collected = 0
        try:
            while not self._stopping.cancelled():
                in_flight = {i: job for i, job in in_flight.items() if not job.done.is_set()}
                # In flight first, then the live count: a destroy that completes between
                # the two reads makes the count low, never high, so nothing extra is taken.
                busy = sum(1 for job in in_flight.values() if not job.entry.runner.is_destroyed())
                try:
                    reason = self._over_threshold(self._num_allocs() - busy)
                except Exception:
                    log.exception("garbage collection aborted: reading host stats failed")
                    break
                step = self._next_step(reason, in_flight)
                if step == _WAIT:
                    completed.wait()
                    continue
                if not isinstance(step, GCEntry) or reason is None:
                    break  # _STOP
                log.info(
                    "garbage collecting allocation %s: %s over threshold", step.alloc_id, reason
                )
                job = self._submit(step, reason, completed)
                if job is None:
                    break
                in_flight[step.alloc_id] = job
                collected += 1
        finally:
            withdraw()
        return collected

    def _next_step(self, reason: str | None, in_flight: dict[str, _DestroyJob]) -> GCEntry | _Step:
        """The next entry to destroy, or whether to wait for a destroy in flight or end
        the pass. Pops the entry it returns."""
        if reason is None or (reason != REASON_MAX_ALLOCS and in_flight):
            # Under the limits, or a disk/inode reason whose space is not yet freed.
            return _WAIT if in_flight else _STOP
        if len(in_flight) >= self._parallel:
            return _WAIT
        entry = self._queue.pop()
        if entry is not None:
            return entry
        if in_flight:
            return _WAIT
        self._log_nothing_to_collect(reason)
        return _STOP

    def _log_nothing_to_collect(self, reason: str) -> None:
        live = self._num_allocs()
        level = logging.WARNING
        if reason == REASON_MAX_ALLOCS and live < 2 * self._config.gc_max_allocs:
            level = logging.INFO
        log.log(
            level,
            "garbage collection skipped because no terminal allocations (%s over threshold)",
            reason,
        )

    # --- the destroy pool ---------------------------------------------------------------

    def _submit(
        self, entry: GCEntry, reason: str, notify: Kick | None = None
    ) -> _DestroyJob | None:
        """Hand `entry` to the pool; None once stopped (then its destroy is launched
        here and not waited for)."""
        self._ensure_pool()
        job = _DestroyJob(entry, reason, notify=notify)
        if self._work.put(job):
            return job
        self._launch(entry)
        return None

    def _ensure_pool(self) -> None:
        """Start the pool's workers unless they are started (or the collector stopped)."""
        with self._lock:
            if self._pool_started:
                return
            self._pool_started = True
        try:
            for n in range(self._parallel):
                self._threads.spawn(f"gc-destroy-{n}", self._work_loop)
        finally:
            self._pool_spawned.set()

    @calls_out
    def _work_loop(self) -> None:
        while (job := self._work.take()) is not None:
            try:
                self._destroy(job.entry, job.reason)
            except Exception:
                log.exception("allocation %s: destroy failed", job.entry.alloc_id)
            finally:
                _report_done(job)

    @calls_out
    def _destroy(self, entry: GCEntry, reason: str) -> None:
        """Destroy one runner, wait until it is destroyed (or the collector stops) and
        close it; counted in flight while waited on."""
        runner = entry.runner
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            log.debug("allocation %s: destroying (%s)", entry.alloc_id, reason)
            runner.destroy()
            destroyed = self._await_destroyed(runner)
        finally:
            with self._lock:
                self._in_flight -= 1
        if destroyed and not runner.close(_CLOSE_TIMEOUT):
            log.warning("allocation %s: runner threads still alive after destroy", entry.alloc_id)

    @calls_out
    def _await_destroyed(self, runner: GCRunner) -> bool:
        """Block until `runner` is destroyed or the collector stops; True if destroyed."""
        if not isinstance(runner, DestroyNotifier):
            return runner.wait_destroyed()
        waiter = Waiter()
        withdraw_stop = self._stopping.on_cancel(waiter.wake)
        withdraw_done = runner.on_destroyed(waiter.wake)
        try:
            waiter.wait()
        finally:
            withdraw_done()
            withdraw_stop()
        return runner.is_destroyed()

    @calls_out
    def _launch(self, entry: GCEntry) -> None:
        """Start a destroy that nobody will wait for (the collector is stopping)."""
        try:
            entry.runner.destroy()
        except Exception:
            log.exception("allocation %s: destroy failed", entry.alloc_id)

    def max_parallel_destroys_seen(self) -> int:
        """The most destroys that were ever in flight at once (for tests and metrics)."""
        with self._lock:
            return self._max_in_flight

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the ``gc`` thread (a threshold pass every `gc_interval` seconds and on
        every `trigger()`) and the destroy pool."""
        with self._lock:
            if self._started:
                raise RuntimeError("garbage collector already started")
            self._started = True
        if self._stopping.cancelled():
            return
        self._ensure_pool()
        # Were stop() to slip in here, the loop would still end at once: stop's kick
        # stays pending and the loop checks the token after every wake.
        self._threads.spawn("gc", self._run)

    @calls_out
    def _run(self) -> None:
        interval = self._config.gc_interval
        while True:
            self._trigger.wait(interval)
            if self._stopping.cancelled():
                return
            try:
                self.keep_usage_below_threshold()
            except Exception:
                log.exception("garbage collection pass failed")

    @calls_out
    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop the ``gc`` thread and the pool, and abandon waits on destroys in flight
        (the destroys themselves go on; those still queued are launched, not waited
        for). Idempotent; True if every collector thread ended in time."""
        deadline = time.monotonic() + timeout
        self._stopping.cancel("garbage collector stopped")
        self._trigger.kick()
        for job in self._work.close():
            self._launch(job.entry)
            _report_done(job)
        with self._lock:
            spawning = self._pool_started
            self._pool_started = True  # no pool from now on
        if not spawning:
            self._pool_spawned.set()
        # A first use racing this stop may still be starting the pool: join it whole.
        self._pool_spawned.wait(max(0.0, deadline - time.monotonic()))
        return self._threads.join(max(0.0, deadline - time.monotonic()))

    def stopped(self) -> bool:
        return self._stopping.cancelled()
