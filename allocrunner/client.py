"""Client: the node agent facade over many AllocRunners.

A `Client` is what an embedder runs on a node. It keeps the registry of allocation
runners, creates one for every allocation the server places on the node, feeds
updates to them, hands removed and finished allocations to the garbage collector,
reports the runners' state upstream in coalesced batches, restores everything from the
state database after an agent restart, and shuts down leaving the tasks running.

Rules it keeps, from Nomad's history:

- The registry lock guards the maps only (Nomad PRs #2152, #4990): runners, the state
  DB, the collector and callbacks are called with no lock held, on a snapshot.
- Stale server views are ignored (Nomad PR #5906): an update whose
  `alloc_modify_index` is not above the one already accepted is dropped, and a whole
  desired set carrying an `index` not above the last one applied is dropped.
- A runner's state callback only records the newest view and kicks; one owned thread
  (``client-updates``) sends batches upstream and marks terminal allocations for
  collection, so a runner's teardown never waits on the collector (Nomad PR #2852).
- An allocation id the client removed (or failed to restore) is never run again: ids
  are never reused, so a later view that still lists it is stale, and a second runner
  would share the alloc dir and state the first one is destroying.
- Restore is per allocation and best effort (Nomad #2560, #16638): an allocation saved
  with no task state is dropped (the server will send it again), unless its destroy was
  under way (its runner finishes it); one whose restore fails is marked failed and
  destroyed. Each restored allocation reports its state once (the last report may be lost).

`run_allocs` calls from several threads are applied one at a time, newest desired set
first: a caller whose set was superseded by a newer one while it waited returns once the
newer one is applied (the server's latest view of the node is what counts). Applying a
set never waits on a runner: new allocations are queued in the registry, in order, and
the ``client-starter`` thread builds their runners and starts them (with up to
`BUILDERS` - 1 ``client-builder`` helpers while more than one waits: in queue order,
except that a replacement waits until its previous allocation's runner is built); the
runner's own ``alloc-<id8>`` thread then writes the allocation to the state DB and runs
it, except that the builder itself makes the start of a fresh single-task allocation
whose start never waits, and that thread takes the run up from there
(`AllocRunner.launch`): a few warm threads make a thousand starts for less than a
thousand new ones. A builder begins up to `LAUNCH_BATCH` such starts before it
finishes them, so that one state DB commit holds all their tasks' driver handles
(`AllocRunner.begin_launch`, `finish_launch`). The views (`runner`, `runners`,
`allocs`) wait for the queued runners they would show to be built, so a caller sees
every allocation of the sets it applied; a `runner` call is woken when its own
allocation leaves the queue, not by every build.

Threads (owned, joined by `shutdown()`): ``client-starter`` (and its ``client-builder``
helpers, which end once the queue is empty), ``client-updates`` and the
collector's ``gc`` (and its fixed pool of ``gc-destroy-<n>`` workers); each runner owns its own.
Locks: "Client._allocs_lock" guards the registry (the queued allocations included, and
the ids of its destroyed runners, which each runner's destroy reports so that
`num_allocs`, asked on every collector pass, costs O(1)) and the `run_allocs` turn (see
the class); nothing is called with it held.
Owner: the embedder, or the agent (`allocrunner.agent`), which is a thin layer over it.

The module runs past 600 lines because it is one concern: the registry of runners and
every path that changes it (restore, apply a set, build the queued runners, collect,
report upstream) share one lock and one set of invariants, which are easier to check
when they sit together.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import attrs

from allocrunner._guarded import guarded_dict
from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken, Kick, ThreadGroup, Waiter
from allocrunner.allocwatcher import new_prev_watcher
from allocrunner.config import ClientConfig
from allocrunner.drivers import default_drivers
from allocrunner.drivers.base import Driver
from allocrunner.errors import AllocRunnerError, StateDBError
from allocrunner.gc import AllocGarbageCollector
from allocrunner.runner.alloc_runner import AllocRunner, PendingLaunch
from allocrunner.runner.health_watches import WATCHES as HEALTH_WATCHES
from allocrunner.runner.state_passes import PASSES as STATE_PASSES
from allocrunner.state import SQLiteStateDB, StateDB
from allocrunner.state.marks import destroy_interrupted
from allocrunner.structs import CLIENT_FAILED, Allocation, FrozenDict

__all__ = ["Client"]

log = logging.getLogger("allocrunner.client")

T = TypeVar("T")

_Begun = tuple[AllocRunner, PendingLaunch]
"""A launch a builder began and has yet to finish."""

SHUTDOWN_TIMEOUT = 30.0
# How many removed alloc ids are remembered to ignore stale views that list them again.
TOMBSTONES = 4096

_NEW = "new"
_STARTING = "starting"
_RUNNING = "running"
_SHUTDOWN = "shutdown"

LAUNCH_BATCH = 8
"""How many launches a builder begins before it finishes them (`Client._build`): their
tasks' driver handles are then committed in one state DB transaction, where one each
cost the writer several times what their rows do, and each is reported running at most
that many starts after its own."""

BUILDERS = 4
"""How many threads build queued runners at once while the queue is long: the
``client-starter`` and up to three ``client-builder`` helpers, which it starts when more
than one allocation waits and which end once none is left to take. One builder alone
gets too small a share of the GIL while the runners it has started run: a start-all of
1,000 allocations then waits on it."""


@attrs.frozen
class _Desired:
    """Immutable. One submitted desired set of allocations."""

    seq: int
    allocs: tuple[Allocation, ...]
    index: int | None


class _Shut:
    """Immutable. What `Client._take_queued` returns once the client no longer runs."""


_SHUT = _Shut()


class _RunnerDestroyed:
    """Immutable. The callback the client gives a runner it registers
    (`AllocRunner.on_destroyed`): it tells the client that runner is destroyed. One
    small object per runner, where a partial of a bound method is three for the
    collector to walk."""

    __slots__ = ("_ar", "_client")

    def __init__(self, client: Client, ar: AllocRunner) -> None:
        self._client = client
        self._ar = ar

    def __call__(self) -> None:
        self._client._runner_destroyed(self._ar)


class Client:
    """Thread-safe. Runs the allocations the server places on this node.

    `start()` restores from the state DB and starts the background threads;
    `run_allocs()` applies the server's desired set; `shutdown()` stops everything,
    leaving tasks running for the next `start()`.
    """

    _config = immutable()
    _db = immutable()
    _owns_db = immutable()
    _drivers = immutable()
    _owned_drivers = immutable()
    _state_updater = immutable()
    _record_view = immutable()  # `_record_update`, bound once: every runner holds it
    _update_interval = immutable()
    _gc = immutable()
    _threads = immutable()
    _update_kick = immutable()
    _updates_stop = immutable()
    _shutdown_done = immutable()
    _start_kick = immutable()
    _starter = immutable()
    _allocs_lock = immutable()
    # _allocs_lock guards the registry: _runners, _gone, _indexes, _retired, _marked, _pending,
    # _phase, _list_index, _tombstones, _queued, _built, _view_waits, _building, _helpers, and the
    # run_allocs turn: _desired, _submitted, _applied, _applying, _waiters
    # Checked containers, changed in place under _allocs_lock (a copy per change would
    # make starting or removing N allocations O(N^2)); never handed out.
    _runners = immutable()
    _gone = immutable()  # checked map (a set): ids in _runners whose runner is destroyed
    _queued = immutable()  # id -> latest Allocation whose runner is not built yet
    _built = guarded("_allocs_lock")  # made by a waiting `runners`; cancelled (and dropped)
    # when the queue shrinks
    _view_waits = immutable()  # checked map: queued id -> the token its `runner` calls wait on
    _building = guarded("_allocs_lock")  # ids of queued allocations a builder has taken
    _helpers = guarded("_allocs_lock")  # client-builder threads started and not ended
    _indexes = guarded("_allocs_lock")
    _retired = immutable()  # checked map changed in place: removed runners not destroyed yet
    _marked = guarded("_allocs_lock")
    _pending = immutable()  # a checked container, changed in place under _allocs_lock
    _phase = guarded("_allocs_lock")
    _list_index = guarded("_allocs_lock")
    _tombstones = guarded("_allocs_lock")
    _desired = guarded("_allocs_lock")
    _submitted = guarded("_allocs_lock")
    _applied = guarded("_allocs_lock")
    _applying = guarded("_allocs_lock")
    _waiters = guarded("_allocs_lock")

    def __init__(
        self,
        config: ClientConfig,
        *,
        state_db: StateDB | None = None,
        drivers: Mapping[str, Driver] | None = None,
        state_updater: Callable[[list[Allocation]], None] | None = None,
        update_interval: float = 0.2,
    ) -> None:
        if not isinstance(config, ClientConfig):
            raise TypeError(f"config: expected ClientConfig, got {type(config).__name__}")
        if update_interval < 0:
            raise ValueError(f"update_interval: must be >= 0, got {update_interval!r}")
        self._config = config
        self._owns_db = state_db is None
        self._db: StateDB = SQLiteStateDB(config.state_db_path()) if state_db is None else state_db
        built = default_drivers(str(config.raw_exec_state_dir())) if drivers is None else {}
        self._owned_drivers: tuple[Driver, ...] = tuple(built.values())
        self._drivers: FrozenDict[str, Driver] = FrozenDict(built if drivers is None else drivers)
        self._state_updater = state_updater
        self._record_view = self._record_update
        self._update_interval = update_interval
        self._gc = AllocGarbageCollector(config, num_allocs=self.num_allocs)
        self._threads = ThreadGroup("client")
        self._update_kick = Kick()
        self._updates_stop = CancelToken()
        self._shutdown_done = CancelToken()
        self._start_kick = Kick()
        self._starter = ThreadGroup("client-starter")

        self._allocs_lock = make_lock("Client._allocs_lock")
        self._runners: dict[str, AllocRunner] = guarded_dict(self._allocs_lock)
        self._gone: dict[str, None] = guarded_dict(self._allocs_lock)
        self._indexes: FrozenDict[str, int] = FrozenDict()
        self._retired: dict[str, AllocRunner] = guarded_dict(self._allocs_lock)
        self._marked: frozenset[str] = frozenset()
        # Changed in place (one view per alloc, newest wins): a copy per update would
        # make a stop of N allocations cost O(N^2).
        self._pending: dict[str, Allocation] = guarded_dict(self._allocs_lock)
        self._phase = _NEW
        self._list_index = -1
        self._tombstones: FrozenDict[str, None] = FrozenDict()
        self._queued: dict[str, Allocation] = guarded_dict(self._allocs_lock)
        self._built: CancelToken | None = None
        self._view_waits: dict[str, CancelToken] = guarded_dict(self._allocs_lock)
        self._building: frozenset[str] = frozenset()
        self._helpers = 0
        self._desired: _Desired | None = None
        self._submitted = 0
        self._applied = 0
        self._applying = False
        self._waiters: tuple[Waiter, ...] = ()

    # --- views --------------------------------------------------------------------------

    @property
    def config(self) -> ClientConfig:
        return self._config

    @property
    def gc(self) -> AllocGarbageCollector:
        """The client's garbage collector."""
        return self._gc

    @property
    def state_db(self) -> StateDB:
        """The state DB the client restores from and its runners write to."""
        return self._db

    @calls_out
    def runner(self, alloc_id: str) -> AllocRunner | None:
        """The tracked runner of `alloc_id`, or None; waits while it is queued, not built
        (woken when it leaves the queue, not by the others)."""
        while True:
            with self._allocs_lock:
                ar = self._runners.get(alloc_id)
                queued = alloc_id in self._queued
                built = None
                if ar is None and queued:
                    built = self._view_waits.get(alloc_id)
                    if built is None:
                        built = self._view_waits[alloc_id] = CancelToken()
            if built is None:
                return ar
            built.wait()

    @calls_out
    def runners(self) -> list[AllocRunner]:
        """Every tracked runner (destroyed ones included until the server removes them);
        waits until the runners of the allocations queued so far are built."""
        with self._allocs_lock:
            queued = frozenset(self._queued)
        while True:
            with self._allocs_lock:
                runners = list(self._runners.values())
                waiting = not queued.isdisjoint(self._queued)
                built = self._built
                if waiting and built is None:
                    built = self._built = CancelToken()
            if built is None or not waiting:
                return runners
            built.wait()

    @calls_out
    def allocs(self) -> list[Allocation]:
        """The client view (client status, task states filled) of every tracked alloc."""
        return [r.client_alloc() for r in self.runners()]

    def num_allocs(self) -> int:
        """How many tracked allocations are not destroyed (queued ones included);
        never waits. O(1): the collector asks on every pass."""
        with self._allocs_lock:
            return len(self._queued) + len(self._runners) - len(self._gone)

    def _track_destroy(self, runners: Iterable[AllocRunner]) -> None:
        """Have `num_allocs` stop counting each of `runners` (just put in the registry)
        once it is destroyed; at once for one destroyed already."""
        for ar in runners:
            ar.on_destroyed(_RunnerDestroyed(self, ar))

    def _runner_destroyed(self, ar: AllocRunner) -> None:
        """`ar` was destroyed (on the destroying thread, no lock held; notify-only): it is
        counted as gone while it is the registry's runner of its id."""
        with self._allocs_lock:
            if self._runners.get(ar.id) is ar:
                self._gone[ar.id] = None

    # --- lifecycle ----------------------------------------------------------------------

    @calls_out
    def start(self) -> None:
        """Restore the allocations saved in the state DB, start their runners, the
        garbage collector and the upstream-update thread."""
        with self._allocs_lock:
            if self._phase != _NEW:
                raise AllocRunnerError(f"client cannot start: it is {self._phase}")
            self._phase = _STARTING
        restored, failed = self._restore()
        indexes = FrozenDict({r.id: r.alloc().alloc_modify_index for r in restored})
        with self._allocs_lock:
            aborted = self._phase != _STARTING
            if not aborted:
                self._phase = _RUNNING
            self._runners.update((r.id, r) for r in restored)
            for r in restored:
                self._gone.pop(r.id, None)
            self._indexes = indexes
            self._retired.update((r.id, r) for r in failed)
            self._bury_locked(r.id for r in failed)
        self._track_destroy(restored)
        self._forget_once_destroyed(failed)
        if aborted:
            # shutdown() came first and saw none of these: leave them as it would.
            self._shutdown_runners(restored, failed, SHUTDOWN_TIMEOUT)
            return
        # Before the runners start, so that nothing they report later is overwritten.
        for ar in restored:
            self._record_update(ar.client_alloc())
        for ar in restored:
            ar.start()
        self._gc.start()
        self._threads.spawn("client-updates", self._send_updates)
        self._starter.spawn("client-starter", self._start_queued)
        # Allocations that had finished before the restart report no new state, so
        # they are marked for collection here (Nomad's client does the same on restore).
        finished = [ar for ar in restored if ar.client_alloc().client_terminal()]
        with self._allocs_lock:
            self._marked = self._marked | {ar.id for ar in finished}
        for ar in finished:
            self._gc.mark_for_collection(ar.id, ar)
        self._gc.trigger()

    @calls_out
    def _restore(self) -> tuple[list[AllocRunner], list[AllocRunner]]:
        restored: list[AllocRunner] = []
        failed: list[AllocRunner] = []
        try:
            stored = self._db.all_allocations()
        except Exception:
            log.exception("restoring allocations: reading the state DB failed")
            return restored, failed
        for alloc in stored:
            if not self._has_task_state(alloc) and not destroy_interrupted(self._db, alloc.id):
                log.warning(
                    "allocation %s: saved without any task state; dropped until the "
                    "server sends it again",
                    alloc.id,
                )
                self._forget(alloc.id)
                continue
            try:
                ar = self._new_runner(alloc)
            except Exception:
                log.exception("allocation %s: cannot be restored; dropped", alloc.id)
                self._forget(alloc.id)
                continue
            try:
                ar.restore()
            except Exception:
                log.exception("allocation %s: restore failed; destroying it", alloc.id)
                ar.set_client_status(CLIENT_FAILED)
                ar.destroy()
                failed.append(ar)
                continue
            restored.append(ar)
        return restored, failed

    def _has_task_state(self, alloc: Allocation) -> bool:
        group = alloc.group()
        if group is None:
            return False
        for task in group.tasks:
            local, state = self._db.task_runner_state(alloc.id, task.name)
            if local is not None or state is not None:
                return True
        return False

    @calls_out
    def _forget(self, alloc_id: str) -> None:
        try:
            self._db.delete_allocation(alloc_id)
        except Exception:
            log.exception("allocation %s: deleting its state failed", alloc_id)

    def _new_runner(self, alloc: Allocation, prev_runner: AllocRunner | None = None) -> AllocRunner:
        """The runner factory: every runner shares the client's state DB and drivers."""
        watcher, migrator = None, None
        if alloc.previous_allocation:
            watcher, migrator = new_prev_watcher(alloc, prev_runner=prev_runner)
        return AllocRunner(
            alloc,
            self._config,
            state_db=self._db,
            drivers=self._drivers,
            state_updater=self._record_view,
            prev_watcher=watcher,
            prev_migrator=migrator,
        )

    @calls_out
    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
        """Stop accepting allocations, shut every runner down at once (tasks keep
        running, their state saved), stop the collector and the update thread, close
        the drivers and the state DB this client opened. Idempotent; True if everything
        ended within `timeout` seconds."""
        with self._allocs_lock:
            first = self._phase != _SHUTDOWN
            self._phase = _SHUTDOWN
            waiter = self._wait_turn_locked() if first else None
        if not first:
            return self._shutdown_done.wait(timeout)
        if waiter is not None:
            waiter.wait(timeout)
        self._start_kick.kick()
        ok = self._starter.join(timeout)
        self._drop_queued()
        ok = self._gc.stop(timeout) and ok
        with self._allocs_lock:
            tracked = list(self._runners.values())
            retired = list(self._retired.values())
        ok = self._shutdown_runners(tracked, retired, timeout) and ok
        # Its runners' health watches and state handlers have ended: the shared threads
        # end unless another client's allocations keep them.
        HEALTH_WATCHES.join_if_idle(timeout)
        STATE_PASSES.join_if_idle(timeout)
        self._updates_stop.cancel("client shutting down")
        self._update_kick.kick()
        ok = self._threads.join(timeout) and ok
        for driver in self._owned_drivers:
            driver.close()
        if self._owns_db:
            try:
                self._db.close()
            except StateDBError:
                log.exception("state database: writes were lost before shutdown")
                ok = False
        self._shutdown_done.cancel("shut down")
        return ok

    @calls_out
    def _shutdown_runners(
        self, tracked: list[AllocRunner], retired: list[AllocRunner], timeout: float
    ) -> bool:
        """Shut every runner down at once (the retired ones are being destroyed, which
        shutdown leaves alone), wait for them, save the tracked ones, join them all."""
        ok = True
        everyone = tracked + retired
        for ar in everyone:
            ar.shutdown()
        for ar in everyone:
            if not ar.wait_shutdown(timeout):
                log.warning("allocation %s: not shut down within %.1fs", ar.id, timeout)
                ok = False
        for ar in tracked:
            ar.persist_state()
        for ar in everyone:
            if not ar.close(timeout):
                log.warning("allocation %s: threads still alive after shutdown", ar.id)
                ok = False
        return ok

    def __enter__(self) -> Client:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- applying the server's desired set -------------------------------------------------

    @calls_out
    def run_allocs(self, allocs: Iterable[Allocation], *, index: int | None = None) -> None:
        """Make the node run exactly `allocs`, the server's full desired set for it.

        New ids get a runner (a replacement waits for, and may inherit the data of,
        the tracked runner of its previous allocation); known ids with a higher
        `alloc_modify_index` are updated; tracked ids missing from the set are untracked
        and collected in the background. `index` (the server's index of this view)
        makes a set not newer than the last one applied be ignored. Ignored after
        `shutdown()`; AllocRunnerError before `start()`.

        Returns once this set, or a newer one, has been applied, which never waits on a
        runner: the set is diffed against the registry, updates are handed to the
        runners' mailboxes, removed allocations are untracked, and new ones are queued
        in the registry (tracked from now on). The ``client-starter`` thread (and its
        helpers while the queue is long) builds their runners in order (a replacement
        after its previous allocation) and starts them; each runner's own thread writes
        its allocation to the state DB first. An agent killed before that write loses
        the allocation, which the server sends again.
        """
        desired = self._check_allocs(allocs)
        with self._allocs_lock:
            if self._phase in (_NEW, _STARTING):
                raise AllocRunnerError("run_allocs before start(): the client is not running")
            if self._phase != _RUNNING:
                return
            self._submitted += 1
            seq = self._submitted
            self._desired = _Desired(seq, desired, index)
        while True:
            with self._allocs_lock:
                if self._applied >= seq or self._phase != _RUNNING:
                    return
                waiter = self._wait_turn_locked()
                job = None
                if waiter is None:
                    self._applying = True
                    job = self._desired
            if waiter is not None:
                waiter.wait()
                continue
            assert job is not None
            try:
                self._apply(job)
            finally:
                with self._allocs_lock:
                    self._applied = max(self._applied, job.seq)
                    self._applying = False
                    waiters, self._waiters = self._waiters, ()
                for w in waiters:
                    w.wake()

    @requires("_allocs_lock")
    def _wait_turn_locked(self) -> Waiter | None:
        """A waiter to be woken when the set being applied is done; None if none is."""
        if not self._applying:
            return None
        waiter = Waiter()
        self._waiters = (*self._waiters, waiter)
        return waiter

    @staticmethod
    def _check_allocs(allocs: Iterable[Allocation]) -> tuple[Allocation, ...]:
        out = tuple(allocs)
        seen: set[str] = set()
        for n, alloc in enumerate(out):
            if not isinstance(alloc, Allocation):
                raise TypeError(f"allocs[{n}]: expected Allocation, got {type(alloc).__name__}")
            if alloc.id in seen:
                raise ValueError(f"allocs[{n}].id: allocation {alloc.id} appears twice")
            seen.add(alloc.id)
        return out

    @calls_out
    def _apply(self, job: _Desired) -> None:
        with self._allocs_lock:
            if job.index is not None:
                if job.index <= self._list_index:
                    log.debug("ignoring stale allocation set %d", job.index)
                    return
                self._list_index = job.index
            known = frozenset(self._runners) | frozenset(self._queued)
            indexes = self._indexes
            buried = [i for i in (a.id for a in job.allocs) if i in self._tombstones]
        if buried:
            log.debug("ignoring removed allocations listed again: %s", ", ".join(buried))
        desired = {a.id: a for a in job.allocs}
        removed = frozenset(i for i in known if i not in desired)
        updates = [
            a for i, a in desired.items() if i in known and a.alloc_modify_index > indexes[i]
        ]
        adds = _order_adds([a for i, a in desired.items() if i not in known and i not in buried])

        if removed:
            self._remove(removed)
        if updates:
            self._update(updates)
        if adds:
            self._queue(adds)
        if updates or adds:
            self._gc.trigger()

    def _remove(self, removed: frozenset[str]) -> None:
        """Untrack `removed` (an allocation still queued has no runner: it is dropped)."""
        with self._allocs_lock:
            # Read here, not from the caller's snapshot: the starter may have built a
            # queued one since.
            built = {i: self._runners.pop(i) for i in removed if i in self._runners}
            for alloc_id in built:
                self._gone.pop(alloc_id, None)
            dropped = [i for i in removed if self._queued.pop(i, None) is not None]
            if dropped:
                self._signal_built_locked(dropped)
            self._indexes = FrozenDict(
                {i: n for i, n in self._indexes.items() if i not in removed}
            )
            self._marked = self._marked - frozenset(removed)
            self._retired.update(built)
            self._bury_locked(removed)
        self._forget_once_destroyed(built.values())
        for alloc_id, ar in built.items():
            log.debug("allocation %s: removed by the server; collecting", alloc_id)
            self._gc.mark_for_collection(alloc_id, ar)
            self._gc.collect_async(alloc_id)

    def _forget_once_destroyed(self, retired: Iterable[AllocRunner]) -> None:
        """A retired runner needs no more watching once destroyed: it leaves the
        registry then (not at the next removal), so a removed batch does not stay in
        memory until the server removes another."""
        for ar in retired:
            ar.on_destroyed(functools.partial(self._forget_retired, ar))

    def _forget_retired(self, ar: AllocRunner) -> None:
        """`ar` was destroyed (on the destroying thread, no lock held). Notify-only."""
        with self._allocs_lock:
            if self._retired.get(ar.id) is ar:
                del self._retired[ar.id]

    @requires("_allocs_lock")
    def _bury_locked(self, alloc_ids: Iterable[str]) -> None:
        tombstones = dict(self._tombstones)
        tombstones.update(dict.fromkeys(alloc_ids))
        while len(tombstones) > TOMBSTONES:
            del tombstones[next(iter(tombstones))]
        self._tombstones = FrozenDict(tombstones)

    def _update(self, updates: list[Allocation]) -> None:
        targets: list[tuple[AllocRunner, Allocation]] = []
        with self._allocs_lock:
            indexes = dict(self._indexes)
            for alloc in updates:
                known = alloc.id in self._queued or alloc.id in self._runners
                if not known or alloc.alloc_modify_index <= indexes[alloc.id]:
                    continue
                indexes[alloc.id] = alloc.alloc_modify_index
                ar = self._runners.get(alloc.id)
                if ar is not None:
                    targets.append((ar, alloc))
                else:
                    # Not built yet: it will be built from this newer version.
                    self._queued[alloc.id] = alloc
            self._indexes = FrozenDict(indexes)
        for ar, alloc in targets:
            ar.update(alloc)

    def _queue(self, adds: list[Allocation]) -> None:
        """Track `adds` (in order) and wake the starter, which builds their runners."""
        with self._allocs_lock:
            if self._phase != _RUNNING:
                return
            self._queued.update((a.id, a) for a in adds)
            self._indexes = FrozenDict(
                {**self._indexes, **{a.id: a.alloc_modify_index for a in adds}}
            )
        self._start_kick.kick()

    @requires("_allocs_lock")
    def _signal_built_locked(self, alloc_ids: Iterable[str] | None = None) -> None:
        """`alloc_ids` (None: every one) left the queue: wake the views waiting for
        them, and those waiting for all the queued ones to be built (notify-only). A
        build wakes nobody else: with a thousand queued, a view waiting for the last
        one was woken a thousand times."""
        if self._built is not None:
            self._built.cancel("queue changed")
            self._built = None
        if not self._view_waits:
            return
        if alloc_ids is None:
            woken = list(self._view_waits.values())
            self._view_waits.clear()
        else:
            woken = []
            for alloc_id in alloc_ids:
                token = self._view_waits.pop(alloc_id, None)
                if token is not None:
                    woken.append(token)
        for token in woken:
            token.cancel("built")

    @calls_out
    def _start_queued(self) -> None:
        """The ``client-starter`` thread: build and start the queued runners, in order,
        until the client shuts down; while more than one waits it has up to
        `BUILDERS` - 1 ``client-builder`` helpers take the next ones."""
        begun: list[_Begun] = []
        try:
            while True:
                taken = self._take_queued(may_add_helper=True)
                if taken is None or isinstance(taken, _Shut):
                    self._finish_launches(begun)  # before any wait, and before it ends
                if isinstance(taken, _Shut):
                    # The helpers it started end at once now; joined here, so that the
                    # shutdown that joins this thread has joined them too, even one
                    # started while that shutdown began.
                    self._starter.join()
                    return
                if taken is None:
                    self._start_kick.wait()
                    continue
                alloc, prev, add_helper = taken
                if add_helper:
                    self._add_helper()
                self._build_taken(alloc, prev, begun)
                if len(begun) >= LAUNCH_BATCH:
                    self._finish_launches(begun)
        finally:
            self._finish_launches(begun)  # none is left begun, whatever ends the thread

    @calls_out
    def _help_build(self) -> None:
        """A ``client-builder`` thread: build queued runners until none is left to take
        (or the client shuts down), then end."""
        begun: list[_Begun] = []
        try:
            while True:
                taken = self._take_queued(may_add_helper=False)
                if taken is None or isinstance(taken, _Shut):
                    return
                alloc, prev, _ = taken
                self._build_taken(alloc, prev, begun)
                if len(begun) >= LAUNCH_BATCH:
                    self._finish_launches(begun)
        finally:
            try:
                self._finish_launches(begun)
            finally:
                with self._allocs_lock:
                    self._helpers -= 1

    def _add_helper(self) -> None:
        """Start a ``client-builder`` (counted already by `_take_queued`); if no thread
        can be started, the builders there are go on without it."""
        try:
            self._starter.spawn("client-builder", self._help_build)
        except Exception:
            log.exception("a client-builder thread could not be started")
            with self._allocs_lock:
                self._helpers -= 1

    def _take_queued(
        self, *, may_add_helper: bool
    ) -> tuple[Allocation, AllocRunner | None, bool] | _Shut | None:
        """Take the first queued allocation no builder has taken whose previous
        allocation is not queued itself (a replacement is built after it, so that it
        finds its runner): the allocation, the runner of its previous one, and whether
        the caller should start a helper (more are left to take, and fewer than
        `BUILDERS` build). None if there is nothing to take; `_SHUT` once the client
        is no longer running."""
        with self._allocs_lock:
            if self._phase != _RUNNING:
                return _SHUT
            queued = self._queued
            building = self._building
            for alloc in queued.values():
                if alloc.id in building or alloc.previous_allocation in queued:
                    continue
                self._building = building | {alloc.id}
                prev = None
                if alloc.previous_allocation:
                    prev = self._runners.get(alloc.previous_allocation)
                add_helper = (
                    may_add_helper
                    and self._helpers < BUILDERS - 1
                    and len(queued) > len(self._building)
                )
                if add_helper:
                    self._helpers += 1
                return alloc, prev, add_helper
            return None

    @calls_out
    def _build_taken(
        self, alloc: Allocation, prev: AllocRunner | None, begun: list[_Begun]
    ) -> None:
        """Build the runner of `alloc`, taken by this builder, then release it; if a
        replacement was held back for it, the starter is woken to take that. A launch
        it begins is added to `begun`, for this builder to finish."""
        try:
            self._build(alloc, prev, begun)
        finally:
            with self._allocs_lock:
                self._building = self._building - {alloc.id}
                waiting = len(self._queued) > len(self._building)
            if waiting:
                self._start_kick.kick()

    @calls_out
    def _build(self, alloc: Allocation, prev: AllocRunner | None, begun: list[_Begun]) -> None:
        """Build the runner of the queued `alloc` and start it, unless the allocation
        was removed (or the client shut down) meanwhile; a newer version queued while it
        was built is handed to it as an update. A start it makes is begun
        (`AllocRunner.begin_launch`) and added to `begun`: the builder finishes it
        with the others it begins, up to `LAUNCH_BATCH` (`_finish_launches`)."""
        try:
            ar = self._new_runner(alloc, prev)
        except Exception as err:
            log.error("allocation %s: cannot be run: %s", alloc.id, err)
            with self._allocs_lock:
                if self._queued.pop(alloc.id, None) is not None:
                    self._indexes = _without(self._indexes, alloc.id)
                    self._signal_built_locked((alloc.id,))
            self._forget(alloc.id)
            self._record_update(
                attrs.evolve(alloc, client_status=CLIENT_FAILED, client_description=str(err))
            )
            return
        given = alloc
        while True:
            with self._allocs_lock:
                latest = self._queued.get(alloc.id)
                if latest is None or self._phase != _RUNNING:
                    return  # removed, or shutting down: the runner never ran
                registered = latest.alloc_modify_index <= given.alloc_modify_index
                if registered:
                    self._runners[alloc.id] = ar
                    self._gone.pop(alloc.id, None)
                    del self._queued[alloc.id]
                    self._signal_built_locked((alloc.id,))
            if registered:
                self._track_destroy((ar,))
                break
            # Given before it is registered, so no later update can overtake it.
            ar.update(latest)
            given = latest
        try:
            pending = ar.begin_launch()  # a fresh allocation's start is made here
        except Exception:  # e.g. no thread can be started: the starter goes on
            self._launch_failed(ar)
            return
        if pending is not None:
            begun.append((ar, pending))

    @calls_out
    def _finish_launches(self, begun: list[_Begun]) -> None:
        """Finish the launches this builder began, in order, and forget them: the first
        waits for the commit of every driver handle they queued, so the others find
        theirs committed (`AllocRunner.finish_launch`)."""
        for ar, pending in begun:
            try:
                ar.finish_launch(pending)
            except Exception:
                self._launch_failed(ar)
        begun.clear()

    def _launch_failed(self, ar: AllocRunner) -> None:
        log.exception("allocation %s: its runner could not be started", ar.id)
        ar.set_client_status(CLIENT_FAILED)
        self._record_update(ar.client_alloc())

    def _drop_queued(self) -> None:
        """Shutting down: forget the allocations whose runners were never built (the
        server sends them again after the restart)."""
        with self._allocs_lock:
            self._queued.clear()
            self._signal_built_locked()

    # --- explicit collection ------------------------------------------------------------

    @calls_out
    def collect(self, alloc_id: str) -> bool:
        """Destroy a terminal allocation marked for collection now; False if it is not
        marked (still running, or already collected)."""
        return self._gc.collect(alloc_id)

    @calls_out
    def collect_all(self) -> int:
        """Destroy every allocation marked for collection; how many were collected."""
        return self._gc.collect_all()

    # --- upstream updates ---------------------------------------------------------------

    def _record_update(self, view: Allocation) -> None:
        """A runner's state callback: keep the newest view of its alloc and kick."""
        with self._allocs_lock:
            self._pending[view.id] = view
        self._update_kick.kick()

    @calls_out
    def _send_updates(self) -> None:
        """The ``client-updates`` thread: at most one batch every `update_interval`."""
        while True:
            self._update_kick.wait()
            with self._allocs_lock:
                batch = list(self._pending.values())
                self._pending.clear()
            if batch:
                self._deliver(batch)
            if self._updates_stop.cancelled():
                with self._allocs_lock:
                    drained = not self._pending
                if drained:
                    return
                continue
            self._updates_stop.wait(self._update_interval)

    @calls_out
    def _deliver(self, views: list[Allocation]) -> None:
        if self._state_updater is not None:
            try:
                self._state_updater(views)
            except Exception:
                log.exception("state updater failed")
        done = {v.id for v in views if v.client_terminal()}
        if not done:
            return
        with self._allocs_lock:
            fresh = [
                (i, self._runners[i]) for i in done if i in self._runners and i not in self._marked
            ]
            self._marked = self._marked | {i for i, _ in fresh}
        for alloc_id, ar in fresh:
            self._gc.mark_for_collection(alloc_id, ar)
        if fresh:
            self._gc.trigger()

    def __repr__(self) -> str:
        return f"<Client {self._config.data_dir}>"


def _without(mapping: FrozenDict[str, T], key: str) -> FrozenDict[str, T]:
    """A copy of `mapping` without `key` (order kept)."""
    return FrozenDict({k: v for k, v in mapping.items() if k != key})


def _order_adds(adds: list[Allocation]) -> list[Allocation]:
    """New allocations with each replacement after the previous allocation it replaces,
    when both are new, so the replacement finds the previous one's runner."""
    pending = {a.id: a for a in adds}
    ordered: list[Allocation] = []
    placed: set[str] = set()

    def place(alloc: Allocation, depth: int = 0) -> None:
        if alloc.id in placed:
            return
        prev = pending.get(alloc.previous_allocation)
        if prev is not None and depth < len(adds):
            place(prev, depth + 1)
        placed.add(alloc.id)
        ordered.append(alloc)

    for alloc in adds:
        place(alloc)
    return ordered
