"""The agent's server side: jobs, evaluations and allocations of a one-node cluster.

Nomad's servers keep jobs and allocations in a replicated state store with one
increasing index, and serve reads (and blocking queries) from it. Here the node is
the whole cluster, so the `Cluster` is that store:

- One immutable `ClusterState` snapshot is published at a time. Writers build a new
  one under ``Cluster._lock`` and publish it on a latest-only `Broadcaster`; readers
  take the current snapshot and never wait for a writer. Blocking queries and the
  event stream listen on the broadcaster (`wait_for`).
- Every change gets the next index. What each write does to the snapshot (placing a
  registered job, stopping allocations, merging the client's state reports,
  forgetting old evaluations and finished children) is a pure transition in
  `allocrunner.agent.cluster_state`; this class runs it under its lock, publishes
  the result and then, with no lock held, hands the desired set to the `Client`.
- The state is saved to ``<data_dir>/server/state.json`` by a `StateSaver`
  (`allocrunner.agent.cluster_persist`), kicked after each change and flushed on
  `close`; a crash loses at most the last few changes, which `adopt` rebuilds from the
  allocations the client restored (they carry their job).

- Placing (a register, an alloc stop's replacement) checks the node (`set_node`; the
  API's register hands it over) and reserves host ports from the cluster's one
  `PortAllocator` (dynamic range 20000-32000). Reserving bind-tests ports, which is
  I/O, so it cannot run under the lock: a placing write is a dry run of its
  transition under the lock (the allocations to create, with their ids, and those it
  stops), then, lock released, the stopped ones' ports are freed and each new
  allocation's ports reserved, then the same transition again under the lock with
  those ids and ports (a refused static port fails that group:
  ``network: reserved port collision http=8080``). Placing writes, and every change
  to the allocator, take the planner turn (`Slots(1)`, not a declared lock) so two
  plans never interleave.
- Ports are freed when the allocation is terminal in Nomad's `TerminalStatus` sense
  (desired stop or evict, or client complete, failed or lost): from that moment
  Nomad's scheduler leaves the allocation out of the node's proposed allocations, so
  its ports may be given again. Its task may still be stopping and bound to the port;
  the host bind test therefore counts a port one of our own not yet finished
  allocations holds as free, as Nomad would place there. After each placing write,
  and on load and adopt, the allocator is made to agree with the state
  (`_sync_ports`): ports of terminal or unknown allocations released, ports of live
  ones it does not hold adopted (after a restart they come back from the saved
  state and the client's restored allocations, which carry them).

- A group that cannot be placed leaves a blocked evaluation. Whenever capacity is
  freed (an allocation reported finished, an allocation or job stopped) the
  ``cluster-unblock`` thread processes each blocked evaluation again, as Nomad's
  blocked-evals tracker unblocks them, and hands what it placed to the client.

Threads: ``cluster-persist`` (the saver's) and ``cluster-unblock`` (started by
`start`, joined by `close`); every other method runs on its caller's thread (HTTP
request threads, the periodic launcher, the client's update thread).
Lock: ``Cluster._lock`` guards `_state`, `_closed` and `_node`; it is never held
while calling the client, the disk, the port allocator or a listener (the
broadcaster's send and the saver's kick are notify-only). ``PortAllocator._lock`` is
the allocator's own leaf lock. Crash: the port table is memory only; the ports live in
the allocations and are adopted back on start. Owner: the `Agent` creates the cluster,
loads, adopts and starts it, and closes it first on shutdown.

The data types and transitions are re-exported here for the modules that import them
from this one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken, Kick, Slots, ThreadGroup
from allocrunner.agent import placement
from allocrunner.agent.cluster_persist import StateSaver, state_path
from allocrunner.agent.cluster_state import (
    DEAD_CHILDREN_KEPT,
    EVAL_LIMIT,
    EVENT_BUFFER,
    TOPIC_ALLOC,
    TOPIC_EVAL,
    TOPIC_JOB,
    Change,
    ClusterEvent,
    ClusterState,
    Evaluation,
    RegisterResult,
    adopt_restored,
    blocked_evals,
    check_placeable,
    deregister_job,
    encode_event_payload,
    job_key,
    merge_client_views,
    register_job,
    retry_blocked,
    runs_at_once,
    stop_allocation,
    with_events,
)
from allocrunner.agent.errors import ApiError, not_found
from allocrunner.broadcaster import AllocListener, Broadcaster
from allocrunner.errors import BroadcasterClosed
from allocrunner.placement import PortAllocator, PortPlacementError, port_is_free
from allocrunner.structs import Allocation, FrozenDict, Job

if TYPE_CHECKING:
    from allocrunner.agent.fingerprint import NodeInfo

log = logging.getLogger("allocrunner.agent.cluster")

# A placing write: the transition run twice, as a dry run (no grants) and for real.
Transition = Callable[[ClusterState, placement.PortGrants | None], Change]

__all__ = [
    "DEAD_CHILDREN_KEPT",
    "EVAL_LIMIT",
    "EVENT_BUFFER",
    "TOPIC_ALLOC",
    "TOPIC_EVAL",
    "TOPIC_JOB",
    "Cluster",
    "ClusterEvent",
    "ClusterState",
    "Evaluation",
    "RegisterResult",
    "encode_event_payload",
]


class Cluster:
    """Thread-safe. The one-node cluster's state store (module docstring).

    `on_register(job)` is called, with no lock held, after each register of a job that
    does not run at once (periodic, parameterized) and after each deregister: the
    periodic launcher's feed.
    """

    _node_id = immutable()
    _run_allocs = immutable()
    _tracked = immutable()
    _broadcaster = immutable()
    _saver = immutable()
    _launch_hooks = immutable()
    _ports = immutable()
    _planner = immutable()
    _retry = immutable()
    _stop = immutable()
    _threads = immutable()
    _lock = immutable()
    # _lock guards _state, _closed and _node
    _state = guarded("_lock")
    _closed = guarded("_lock")
    _node = guarded("_lock")

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        node_id: str,
        run_allocs: Callable[[list[Allocation], int], None],
        tracked: Callable[[str], bool],
        on_register: Callable[[Job], None] | None = None,
        *,
        node: NodeInfo | None = None,
        ports: PortAllocator | None = None,
    ) -> None:
        self._node_id = node_id
        self._run_allocs = run_allocs
        self._tracked = tracked
        self._broadcaster = Broadcaster()
        self._saver = StateSaver(state_path(data_dir), self.state)
        self._launch_hooks = (on_register,) if on_register is not None else ()
        self._ports = ports if ports is not None else PortAllocator(bind_test=self._port_free)
        self._planner = Slots(1)
        self._retry = Kick()
        self._stop = CancelToken()
        self._threads = ThreadGroup("cluster")
        self._lock = make_lock("Cluster._lock")
        self._state = ClusterState()
        self._closed = False
        self._node = placement.node_view(node) if node is not None else None

    # --- reads ----------------------------------------------------------------------

    def state(self) -> ClusterState:
        """The current snapshot (immutable)."""
        with self._lock:
            return self._state

    @calls_out
    def wait_for(
        self,
        ready: Callable[[ClusterState], bool],
        timeout: float,
        cancel: CancelToken | None = None,
    ) -> ClusterState:
        """The first snapshot for which `ready` holds, or the current one once `timeout`
        passes, `cancel` fires or the cluster closes (a blocking query's wait)."""
        deadline = time.monotonic() + timeout
        with self._broadcaster.listen() as listener:
            while True:
                state = self.state()
                if ready(state):
                    return state
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (cancel is not None and cancel.cancelled()):
                    return state
                try:
                    listener.get(timeout=remaining)
                except TimeoutError:
                    return self.state()
                except BroadcasterClosed:
                    return self.state()

    def set_node(self, node: NodeInfo) -> None:
        """The node placements are checked against (its fingerprint)."""
        view = placement.node_view(node)
        with self._lock:
            self._node = view

    @property
    def ports(self) -> PortAllocator:
        """The node's host port table (thread-safe)."""
        return self._ports

    def parked(self) -> int:
        """How many waits (blocking queries, event streams) are parked right now."""
        return self._broadcaster.blocked_listeners()

    def is_closed(self) -> bool:
        with self._lock:
            return self._closed

    def listen(self) -> AllocListener:
        """A latest-only listener of snapshots (the event stream's feed)."""
        return self._broadcaster.listen()

    def job(self, job_id: str, namespace: str = "default") -> Job:
        job = self.state().jobs.get(job_key(namespace, job_id))
        if job is None:
            raise not_found("job not found")
        return job

    def alloc(self, alloc_id: str) -> Allocation:
        alloc = self.state().allocs.get(alloc_id)
        if alloc is None:
            raise not_found("alloc not found")
        return alloc

    # --- lifecycle ------------------------------------------------------------------

    @calls_out
    def load(self) -> None:
        """Load the saved state (before the client starts, so that no state report of
        a restored allocation is dropped as unknown)."""
        state = self._saver.load()
        with self._lock:
            self._state = state
        with self._planning():
            self._sync_ports()

    def adopt(self, restored: Iterable[Allocation]) -> None:
        """Add what the client restored that the saved state does not know (a crash can
        lose the last cluster writes, never the client's), with the job each carries."""
        with self._lock:
            change = adopt_restored(self._state, restored)
            if change is not None:
                self._publish_locked(change)
        with self._planning():
            self._sync_ports()

    def start(self) -> None:
        """Start the persisting and retrying threads and hand the desired set to the
        client."""
        self._saver.start()
        self._threads.spawn("cluster-unblock", self._retry_loop)
        self._push()

    @calls_out
    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking changes, wake every blocking query, save the state. Idempotent."""
        with self._lock:
            self._closed = True
        self._broadcaster.close()
        self._stop.cancel("cluster closed")
        self._retry.kick()
        deadline = time.monotonic() + timeout
        retried = self._threads.join(timeout)
        return self._saver.close(max(0.0, deadline - time.monotonic())) and retried

    # --- jobs -----------------------------------------------------------------------

    @calls_out
    def register(
        self, job: Job, *, warnings: Iterable[str] = (), node: NodeInfo | None = None
    ) -> RegisterResult:
        """Register (or update) `job` and place it; Nomad's ``PUT /v1/jobs``. `node`,
        when given, becomes the node placements are checked against."""
        check_placeable(job)
        if node is not None:
            self.set_node(node)
        eval_id = str(uuid.uuid4())
        stored: list[Job] = []

        def transition(state: ClusterState, grants: placement.PortGrants | None) -> Change:
            change, versioned = register_job(
                state,
                job,
                node_id=self._node_id,
                eval_id=eval_id,
                node=self._node_view(),
                grants=grants,
            )
            stored.append(versioned)
            return change

        change = self._place(transition)
        registered = stored[-1]
        self._after_change()
        if not runs_at_once(registered):
            for hook in self._launch_hooks:
                hook(registered)
        return RegisterResult(
            eval_id, registered.job_modify_index, change.state.index, tuple(warnings)
        )

    @calls_out
    def deregister(self, job_id: str, namespace: str = "default", *, purge: bool = False) -> str:
        """Stop a job (and with `purge` forget it and its allocations); the eval id."""
        eval_id = str(uuid.uuid4())
        with self._lock:
            self._check_open_locked()
            change, stopped = deregister_job(
                self._state, job_id, namespace, purge=purge, eval_id=eval_id
            )
            self._publish_locked(change)
        with self._planning():
            self._sync_ports()
        self._after_change()
        self._capacity_freed()
        for hook in self._launch_hooks:
            hook(stopped)
        return eval_id

    # --- allocations ----------------------------------------------------------------

    @calls_out
    def stop_alloc(self, alloc_id: str) -> tuple[str, int]:
        """Stop one allocation; a service job gets a replacement (Nomad's alloc stop).
        Returns the eval id and the index."""
        eval_id = str(uuid.uuid4())

        def transition(state: ClusterState, grants: placement.PortGrants | None) -> Change:
            return stop_allocation(
                state,
                alloc_id,
                node_id=self._node_id,
                eval_id=eval_id,
                node=self._node_view(),
                grants=grants,
            )

        change = self._place(transition)
        self._after_change()
        self._capacity_freed()
        return eval_id, change.state.index

    def client_updated(self, views: list[Allocation]) -> None:
        """The client's state reports: merge client status and task states (the
        Client's ``state_updater``; called on its update thread, no lock held)."""
        with self._lock:
            if self._closed:
                return
            change = merge_client_views(self._state, views)
            if change is None:
                return
            self._publish_locked(change)
        ended = [view for view in views if view.client_terminal()]
        for view in ended:
            self._ports.release(view.id)
        self._saver.kick()
        if ended:
            self._capacity_freed()

    # --- internals ------------------------------------------------------------------

    def _node_view(self) -> placement.NodeView | None:
        """The node placements are checked against (None: not known, nothing checked).
        Read by the transitions, under the lock: the lock is not re-entered."""
        return self._node

    @contextlib.contextmanager
    def _planning(self) -> Iterator[None]:
        """The planner turn: one placing write, or port sync, at a time."""
        self._planner.acquire()
        try:
            yield
        finally:
            self._planner.release()

    @calls_out
    def _place(self, transition: Transition) -> Change:
        """Run a placing write: dry run, port reservations, then the write itself (module
        docstring); the change published."""
        with self._planning():
            with self._lock:
                self._check_open_locked()
                dry = transition(self._state, None)
            grants = self._grant_ports(dry.placed)
            try:
                with self._lock:
                    self._check_open_locked()
                    change = transition(self._state, grants)
                    if change.state is not self._state:
                        self._publish_locked(change)
            finally:
                self._sync_ports()
        return change

    @calls_out
    def _grant_ports(self, planned: placement.Placement) -> placement.PortGrants:
        """Free the ports of the allocations a plan stops, then reserve those of each
        allocation it creates (with no lock held: the reservations bind-test)."""
        for alloc in planned.changed:
            if alloc.terminal():
                self._ports.release(alloc.id)
        ids: dict[tuple[str, int], str] = {}
        granted: dict[str, tuple[placement.AllocatedPort, ...]] = {}
        refused: dict[str, str] = {}
        for alloc in planned.created:
            ids[(alloc.task_group, alloc.index())] = alloc.id
            asks = placement.group_port_asks(alloc.group())
            if not asks:
                continue
            try:
                granted[alloc.id] = tuple(self._ports.reserve(alloc.id, asks))
            except PortPlacementError as err:
                refused[alloc.id] = _network_dimension(err)
        return placement.PortGrants(FrozenDict(ids), FrozenDict(granted), FrozenDict(refused))

    @calls_out
    def _sync_ports(self) -> None:
        """Make the port table agree with the state: release what unknown allocations
        or ones whose client status is terminal hold (one stopped but still shutting
        down keeps its ports, as Nomad's scheduler counts it), adopt the ports of live
        ones it does not hold. Called with the planner turn held, so no reservation is
        under way."""
        state = self.state()
        held = self._ports.holders()
        for alloc_id in held:
            alloc = state.allocs.get(alloc_id)
            if alloc is None or alloc.client_terminal():
                self._ports.release(alloc_id)
        for alloc in state.allocs.values():
            if alloc.allocated_ports and not alloc.terminal() and alloc.id not in held:
                try:
                    self._ports.adopt(alloc.id, alloc.allocated_ports)
                except PortPlacementError as err:
                    log.error("allocation %s keeps ports another one holds: %s", alloc.id, err)

    @calls_out
    def _port_free(self, port: int) -> bool:
        """The host bind test of the port table: free on the host, or held by one of our
        own allocations whose task may still be stopping (module docstring)."""
        if port_is_free(port):
            return True
        holders = self._ports.holders()
        return any(
            a.id not in holders
            and not a.client_terminal()
            and any(p.value == port for p in a.allocated_ports)
            for a in self.state().allocs.values()
        )

    def _capacity_freed(self) -> None:
        """Allocations ended or were stopped: wake the retry of blocked evaluations, if
        there are any (notify-only)."""
        if blocked_evals(self.state()):
            self._retry.kick()

    @calls_out
    def _retry_loop(self) -> None:
        """The ``cluster-unblock`` thread: after each capacity change, process every
        blocked evaluation once more (oldest first), until the cluster closes."""
        while True:
            self._retry.wait()
            for blocked_id in blocked_evals(self.state()):
                if self._stop.cancelled():
                    return
                try:
                    self._retry_blocked(blocked_id)
                except ApiError:
                    return  # closed meanwhile
            if self._stop.cancelled():
                return

    @calls_out
    def _retry_blocked(self, blocked_id: str) -> None:
        def transition(state: ClusterState, grants: placement.PortGrants | None) -> Change:
            return retry_blocked(
                state, blocked_id, node_id=self._node_id, node=self._node_view(), grants=grants
            )

        self._place(transition)
        self._after_change()

    @requires("_lock")
    def _check_open_locked(self) -> None:
        if self._closed:
            raise ApiError(503, "agent is shutting down")

    @requires("_lock")
    def _publish_locked(self, change: Change) -> None:
        state = with_events(change)
        self._state = state
        with contextlib.suppress(BroadcasterClosed):
            self._broadcaster.send(state)

    @calls_out
    def _after_change(self) -> None:
        self._saver.kick()
        self._push()

    @calls_out
    def _push(self) -> None:
        """Hand the client the desired set: every allocation it tracks, and every one
        not finished yet. A finished allocation the client no longer tracks (collected,
        or stopped before it ever ran) is never handed over again: it would run anew."""
        state = self.state()
        desired = [a for a in state.allocs.values() if not a.terminal() or self._tracked(a.id)]
        self._run_allocs(desired, state.index)


def _network_dimension(err: PortPlacementError) -> str:
    """The AllocMetric dimension of a refused port, as Nomad's binpacking names it."""
    if err.label and err.port:
        return f"network: reserved port collision {err.label}={err.port}"
    return f"network: {err}"
