"""Periodic jobs: when the next launch is, what child job a launch makes, and the
thread that launches them (Nomad's periodic dispatcher, nomad/periodic.go).

- `next_launch(periodic, after)`: the earliest next time of any of the config's cron
  specs after `after`, matched on wall-clock time in its time zone (see
  `allocrunner.structs.cron` for the DST rules); None when disabled or never again.
- `periodic_child(parent, launch)`: the job a launch registers, `<parent>/periodic-<unix>`.
- `PeriodicLauncher`: tracks the agent's active periodic jobs and, on its own thread,
  calls `launch(parent, when)` at each job's launch time. A job with
  `prohibit_overlap` skips a launch while a previous child still runs, as Nomad does.

Unlike Nomad, which would fire every launch it missed (after a suspend or a clock
jump) in a burst, the launcher fires the latest missed one once and schedules the
next after the present.

Threads: ``periodic-launcher``, started by `PeriodicLauncher.start` and joined by
`PeriodicLauncher.stop`. Lock: ``PeriodicLauncher._lock`` guards the tracked jobs and
the started flag; `launch` and `is_running` are called with it released. Owner: the
`Agent`, which feeds it every registered job and stops it on shutdown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock
from allocrunner._sync import CancelToken, Kick, ThreadGroup
from allocrunner.structs import PERIODIC_LAUNCH_SUFFIX, PERIODIC_SPEC_CRON, Job, PeriodicConfig
from allocrunner.structs.cron import load_zone, next_cron_time, parse_cron
from allocrunner.structs.frozen import FrozenDict

__all__ = ["PeriodicLauncher", "next_launch", "periodic_child"]

log = logging.getLogger(__name__)

THREAD_NAME = "periodic-launcher"

# The launcher re-reads the wall clock at least this often while it waits for a far
# launch, so a clock step or a suspend delays a launch by at most this much.
MAX_WAIT = 60.0

Launch = Callable[[Job, datetime], None]
IsRunning = Callable[[str], bool]
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def next_launch(periodic: PeriodicConfig, after: datetime) -> datetime | None:
    """The first launch time strictly after aware `after` across all of `periodic`'s
    specs, as an aware UTC datetime; None when it is disabled or no spec ever matches
    again. ValueError for an aware-less `after`, a bad spec or an unknown zone."""
    if after.tzinfo is None:
        raise ValueError("after must be a timezone-aware datetime")
    if not periodic.enabled or periodic.spec_type != PERIODIC_SPEC_CRON:
        return None
    zone = load_zone(periodic.time_zone)
    times = [next_cron_time(parse_cron(spec), after, zone) for spec in periodic.specs]
    found = [t for t in times if t is not None]
    return min(found) if found else None


def unix_seconds(when: datetime) -> int:
    """Whole seconds since the Unix epoch (Go's `Time.Unix`, floored)."""
    return int(when.timestamp() // 1)


def periodic_child_id(parent_id: str, launch: datetime) -> str:
    """`<parent>/periodic-<unix seconds>`: the id of the child launched at `launch`."""
    return f"{parent_id}{PERIODIC_LAUNCH_SUFFIX}{unix_seconds(launch)}"


def periodic_child(parent: Job, launch: datetime) -> Job:
    """The job a launch of `parent` at `launch` registers (Nomad's deriveJob): a copy
    named `<parent>/periodic-<unix>` with ParentID set and no periodic block."""
    child_id = periodic_child_id(parent.id, launch)
    return attrs.evolve(parent, id=child_id, name=child_id, parent_id=parent.id, periodic=None)


@attrs.frozen
class _Tracked:
    """Immutable. A tracked periodic job and its next launch (None: never again)."""

    job: Job
    next: datetime | None


_Key = tuple[str, str]  # (namespace, job id)


def _key(job_id: str, namespace: str) -> _Key:
    return (namespace, job_id)


class PeriodicLauncher:
    """Thread-safe. Launches periodic jobs at their times from one owned thread.

    `launch(parent, when)` and `is_running(parent_id)` are called with no lock held,
    on the launcher's thread (or the caller's, for `force_launch`). A `launch` that
    raises is logged and the launcher carries on. `clock` gives the current aware
    time (for the launch times; waiting itself uses the monotonic clock).
    """

    _launch = immutable()
    _is_running = immutable()
    _clock = immutable()
    _wake = immutable()
    _stopping = immutable()
    _threads = immutable()
    _lock = immutable()
    # _lock guards: _tracked, _started
    _tracked = guarded("_lock")
    _started = guarded("_lock")

    def __init__(
        self,
        launch: Launch,
        is_running: IsRunning,
        *,
        clock: Clock = _utc_now,
    ) -> None:
        self._launch = launch
        self._is_running = is_running
        self._clock = clock
        self._wake = Kick()
        self._stopping = CancelToken()
        self._threads = ThreadGroup("periodic")
        self._lock = make_lock("PeriodicLauncher._lock")
        self._tracked: FrozenDict[_Key, _Tracked] = FrozenDict()
        self._started = False

    # --- tracking -------------------------------------------------------------------

    def add(self, job: Job) -> bool:
        """Track `job` (or update it if tracked); True if it is now tracked.

        A job that is not an active periodic job (no periodic block, disabled,
        stopped, or parameterized) is untracked instead, as Nomad does on update.
        ValueError if its config cannot be evaluated.
        """
        key = _key(job.id, job.namespace)
        if not job.is_periodic_active():
            self._untrack(key)
            return False
        assert job.periodic is not None
        entry = _Tracked(job, next_launch(job.periodic, self._clock()))
        with self._lock:
            self._tracked = self._tracked.set(key, entry)
            self._wake.kick()
        return True

    def remove(self, job_id: str, namespace: str = "default") -> bool:
        """Stop tracking a job; False if it was not tracked."""
        return self._untrack(_key(job_id, namespace))

    def _untrack(self, key: _Key) -> bool:
        with self._lock:
            if key not in self._tracked:
                return False
            self._tracked = FrozenDict({k: v for k, v in self._tracked.items() if k != key})
            self._wake.kick()
        return True

    def tracked(self) -> list[Job]:
        """The tracked jobs."""
        with self._lock:
            entries = self._tracked
        return [entry.job for entry in entries.values()]

    def next_launch_time(self, job_id: str, namespace: str = "default") -> datetime | None:
        """When a tracked job launches next; None if untracked or never again."""
        with self._lock:
            entry = self._tracked.get(_key(job_id, namespace))
        return None if entry is None else entry.next

    @calls_out
    def force_launch(self, job_id: str, namespace: str = "default") -> datetime:
        """Launch a tracked job now, on the caller's thread, whatever its schedule and
        overlap rule (Nomad's `/v1/job/:id/periodic/force`); returns the launch time.
        KeyError if the job is not tracked; whatever `launch` raises propagates."""
        with self._lock:
            entry = self._tracked.get(_key(job_id, namespace))
        if entry is None:
            raise KeyError(f"can't force run non-tracked job {job_id!r} ({namespace})")
        when = self._clock()
        self._launch(entry.job, when)
        return when

    # --- the thread -----------------------------------------------------------------

    def start(self) -> None:
        """Start the launcher thread (once; a no-op after the first call or `stop`)."""
        with self._lock:
            if self._started or self._stopping.cancelled():
                return
            self._started = True
        self._threads.spawn(THREAD_NAME, self._run)

    @calls_out
    def stop(self, timeout: float | None = None) -> bool:
        """Stop the thread and wait for it; True if it ended within `timeout`. A launch
        in progress is waited for, not interrupted. Idempotent."""
        self._stopping.cancel("periodic launcher stopped")
        self._wake.kick()
        return self._threads.join(timeout)

    @calls_out
    def _run(self) -> None:
        while not self._stopping.cancelled():
            due, wait = self._take_due(self._clock())
            for job, when in due:
                if self._stopping.cancelled():
                    return
                self._fire(job, when)
            if not due:
                self._wake.wait(wait)

    def _take_due(self, now: datetime) -> tuple[list[tuple[Job, datetime]], float | None]:
        """The launches due at `now` (each job's next time moved past `now`), and how
        long to wait for the next one (None: nothing scheduled)."""
        due: list[tuple[Job, datetime]] = []
        with self._lock:
            tracked = self._tracked
        updated: dict[_Key, _Tracked] = {}
        for key, entry in tracked.items():
            if entry.next is not None and entry.next <= now:
                due.append((entry.job, entry.next))
                assert entry.job.periodic is not None
                updated[key] = attrs.evolve(entry, next=self._next_after(entry.job, now))
        if updated:
            with self._lock:
                current = dict(self._tracked)
                for key, entry in updated.items():
                    # A job updated or removed meanwhile keeps what add/remove set.
                    if current.get(key) is tracked[key]:
                        current[key] = entry
                self._tracked = FrozenDict(current)
        with self._lock:
            upcoming = [e.next for e in self._tracked.values() if e.next is not None]
        if not upcoming:
            return due, None
        delay = (min(upcoming) - now).total_seconds()
        return due, min(max(delay, 0.0), MAX_WAIT)

    @staticmethod
    def _next_after(job: Job, now: datetime) -> datetime | None:
        assert job.periodic is not None
        try:
            return next_launch(job.periodic, now)
        except ValueError:
            log.exception("periodic job %s: cannot compute its next launch", job.id)
            return None

    @calls_out
    def _fire(self, job: Job, when: datetime) -> None:
        assert job.periodic is not None
        try:
            if job.periodic.prohibit_overlap and self._is_running(job.id):
                log.debug("skipping launch of periodic job %s: it prohibits overlap", job.id)
                return
            log.debug("launching periodic job %s for %s", job.id, when.isoformat())
            self._launch(job, when)
        except Exception:
            log.exception("periodic job %s: launch for %s failed", job.id, when.isoformat())

    def __repr__(self) -> str:
        with self._lock:
            count = len(self._tracked)
        return f"<PeriodicLauncher tracking {count}>"
