"""Placing a job on this node: what a scheduler would do when the whole cluster is one node.

Pure functions over immutable values, so the cluster state can call them under its
lock and tests can call them on their own.

- Every group gets ``count`` allocations named ``<job>.<group>[<i>]``; system and
  sysbatch groups get one (this node is every eligible node).
- Re-registering a job whose group changed replaces that group's live allocations:
  the old one is stopped and the new one names it as `previous_allocation`, so a
  sticky or migrating ephemeral disk moves across (Nomad's destructive update). A
  group that did not change keeps its allocations, which take the new job version in
  place.
- A batch allocation that completed (and was not stopped) counts as placed:
  re-registering an unchanged batch job never runs it again. A service allocation
  that ended, or any allocation stopped with its job, leaves its slot free.
- A count that goes down, or a group that disappears, stops the extra allocations.

Feasibility (Nomad's generic scheduler at v1.6.0: scheduler/feasible.go, rank.go,
generic_sched.go). The stops a plan makes are decided first; then each new allocation
is checked, when the node is known (`NodeView`), in the order of Nomad's stack: job
constraints, task drivers, group and task constraints, distinct_hosts and
distinct_property (`allocrunner.placement.check_placement`), then the network ports
(`PortGrants`, decided by the cluster outside its lock), then cpu, memory and disk
(`check_resources`: the group's tasks summed, on top of every live allocation on the
node, live meaning not `TerminalStatus`, less those this plan stops). A slot that
fails gets no allocation and is counted in its group's `GroupFailure` (the first
failure's reason, as Nomad keeps the first metric and coalesces the rest); when it was
the replacement of a destructive update the old allocation is not stopped after all,
as Nomad takes the stop back when the placement fails.

Threads: none. Locks: none (the callers in `allocrunner.agent.cluster_state` run
under ``Cluster._lock``; nothing here blocks or calls out). Owner: the cluster's
transitions.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from allocrunner.placement import (
    AllocatedPort,
    Capacity,
    ConstraintFailure,
    PlacedAlloc,
    PortAsk,
    alloc_metric,
    check_placement,
    check_resources,
)
from allocrunner.structs import (
    CLIENT_COMPLETE,
    DESIRED_RUN,
    DESIRED_STOP,
    Allocation,
    FrozenDict,
    Job,
    TaskGroup,
)
from allocrunner.structs.status import JOB_BATCH, JOB_SYSBATCH, JOB_SYSTEM

if TYPE_CHECKING:
    from allocrunner.agent.fingerprint import NodeInfo

__all__ = [
    "MAX_ALLOCS_PER_JOB",
    "GroupFailure",
    "NodeView",
    "Placement",
    "PortGrants",
    "group_count",
    "group_port_asks",
    "node_view",
    "place_job",
    "stop_allocs",
]

# More than this many allocations of one job cannot be placed on a single node; the
# register is refused with a clear error instead of building them for minutes.
MAX_ALLOCS_PER_JOB = 5000

_DISTINCT = ("distinct_hosts", "distinct_property")

Slot = tuple[str, int]


@attrs.frozen
class NodeView:
    """Immutable. What feasibility reads of the node: its constraint targets
    (``node.*``, ``attr.*``, ``meta.*``) and what it offers."""

    node_vars: FrozenDict[str, str]
    capacity: Capacity
    datacenter: str = ""
    node_class: str = ""


def node_view(node: NodeInfo) -> NodeView:
    """The `NodeView` of a fingerprinted node."""
    from allocrunner.agent.fingerprint import interpolation_vars

    res = node.resources
    return NodeView(
        node_vars=FrozenDict(interpolation_vars(node)),
        capacity=Capacity(res.cpu_mhz, res.memory_mb, res.disk_mb),
        datacenter=node.datacenter,
        node_class=node.node_class,
    )


@attrs.frozen
class GroupFailure:
    """Immutable. Why a group's allocations could not be placed: the first failure
    (a constraint that filtered the node, or an exhausted dimension) and how many
    allocations failed. `metric_json` is Nomad's AllocMetric of it."""

    filtered: ConstraintFailure | None = None
    exhausted: str | None = None
    count: int = 1
    datacenter: str = ""
    node_class: str = ""
    # The job's datacenters when none holds this node: it was not even evaluated.
    outside: tuple[str, ...] = ()

    def metric_json(self) -> dict[str, Any]:
        out = alloc_metric(
            filtered=self.filtered,
            exhausted=self.exhausted,
            node_class=self.node_class,
            datacenter=self.datacenter,
        )
        if self.outside:
            # Nomad's readyNodesInDCs: no ready node in the job's datacenters, so none
            # was evaluated and each of them shows 0 available.
            out.update(
                NodesEvaluated=0,
                NodesFiltered=0,
                NodesExhausted=0,
                NodesAvailable=dict.fromkeys(self.outside, 0),
                ClassFiltered=None,
                ConstraintFiltered=None,
                ClassExhausted=None,
                DimensionExhausted=None,
            )
        out["CoalescedFailures"] = self.count - 1
        return out


def in_any_datacenter(datacenter: str, patterns: Iterable[str]) -> bool:
    """Whether a node of `datacenter` is in one of a job's `datacenters` (each may
    hold ``*`` wildcards, as Nomad's glob matching)."""
    return any(_glob(pattern, datacenter) for pattern in patterns)


def _glob(pattern: str, text: str) -> bool:
    if "*" not in pattern:
        return pattern == text
    first, *middle, last = pattern.split("*")
    if not text.startswith(first) or len(text) < len(first) + len(last):
        return False
    rest = text[len(first) : len(text) - len(last)]
    for piece in middle:
        at = rest.find(piece)
        if at < 0:
            return False
        rest = rest[at + len(piece) :]
    return text.endswith(last)


@attrs.frozen
class PortGrants:
    """Immutable. The host ports the cluster reserved for a plan, outside its lock:
    the id each new slot got in the dry run, the ports granted to each of them and,
    for those refused, the AllocMetric dimension (``network: reserved port collision
    http=8080``)."""

    ids: FrozenDict[Slot, str] = attrs.field(factory=FrozenDict)
    ports: FrozenDict[str, tuple[AllocatedPort, ...]] = attrs.field(factory=FrozenDict)
    refused: FrozenDict[str, str] = attrs.field(factory=FrozenDict)


@attrs.frozen
class Placement:
    """Immutable. The allocations a register creates and the ones it changes, and the
    groups it could not place (with how many allocations each lacks)."""

    created: tuple[Allocation, ...] = ()
    changed: tuple[Allocation, ...] = ()
    failed: FrozenDict[str, GroupFailure] = attrs.field(factory=FrozenDict)

    def queued(self) -> dict[str, int]:
        """Allocations left unplaced, per group (Nomad's QueuedAllocations)."""
        return {name: f.count for name, f in self.failed.items()}


def group_count(job: Job, group: TaskGroup) -> int:
    """How many allocations of `group` this node runs."""
    if job.type in (JOB_SYSTEM, JOB_SYSBATCH):
        return 1
    return group.count


def total_count(job: Job) -> int:
    return sum(group_count(job, g) for g in job.task_groups)


def group_port_asks(group: TaskGroup | None) -> tuple[PortAsk, ...]:
    """The host ports a group's networks ask for: the static ones, then the dynamic."""
    if group is None:
        return ()
    return tuple(
        PortAsk(label=p.label, value=p.value, to=p.to, host_network=p.host_network)
        for network in group.networks
        for p in network.ports()
    )


def group_resources(group: TaskGroup | None) -> Capacity:
    """What one allocation of `group` takes: its tasks' cpu and memory summed, and its
    ephemeral disk."""
    if group is None:
        return Capacity()
    return Capacity(
        cpu_mhz=sum(t.resources.cpu for t in group.tasks),
        memory_mb=sum(t.resources.memory_mb for t in group.tasks),
        disk_mb=group.ephemeral_disk.size_mb,
    )


def _now_ns() -> int:
    return time.time_ns()


def stop_allocs(
    allocs: tuple[Allocation, ...], index: int, description: str
) -> tuple[Allocation, ...]:
    """`allocs` (those still desired to run) with desired status stop at `index`."""
    now = _now_ns()
    return tuple(
        attrs.evolve(
            a,
            desired_status=DESIRED_STOP,
            desired_description=description,
            alloc_modify_index=index,
            modify_index=index,
            modify_time=now,
        )
        for a in allocs
        if a.desired_status == DESIRED_RUN
    )


def _new_alloc(
    job: Job, group: str, i: int, *, index: int, node_id: str, eval_id: str, previous: str, id_: str
) -> Allocation:
    now = _now_ns()
    return Allocation(
        id=id_,
        name=f"{job.id}.{group}[{i}]",
        namespace=job.namespace,
        node_id=node_id,
        eval_id=eval_id,
        job_id=job.id,
        job=job,
        task_group=group,
        desired_status=DESIRED_RUN,
        previous_allocation=previous,
        alloc_modify_index=index,
        create_index=index,
        modify_index=index,
        create_time=now,
        modify_time=now,
    )


@attrs.frozen
class _Want:
    """Immutable. One new allocation a plan wants: its slot and what it replaces."""

    group: TaskGroup
    index: int
    previous: str = ""
    replaces: Allocation | None = None


@attrs.frozen
class _Account:
    """Immutable. The running account of the node during one `place_job`: resources in
    use by live allocations, the job's live allocations (for distinct_*), and the
    failures so far; each step makes a new account."""

    view: NodeView | None
    in_use: Capacity = attrs.field(factory=Capacity)
    job_live: tuple[PlacedAlloc, ...] = ()
    failed: FrozenDict[str, GroupFailure] = attrs.field(factory=FrozenDict)

    def with_alloc(self, alloc: Allocation, job_id: str) -> _Account:
        job_live = self.job_live
        if alloc.job_id == job_id:
            job_live = (*job_live, PlacedAlloc(alloc.job_id, alloc.task_group))
        return attrs.evolve(
            self, in_use=self.in_use + group_resources(alloc.group()), job_live=job_live
        )

    def with_failure(
        self, group: str, filtered: ConstraintFailure | None, exhausted: str | None
    ) -> _Account:
        known = self.failed.get(group)
        if known is not None:
            failure = attrs.evolve(known, count=known.count + 1)
        else:
            view = self.view
            failure = GroupFailure(
                filtered=filtered,
                exhausted=exhausted,
                datacenter=view.datacenter if view is not None else "",
                node_class=view.node_class if view is not None else "",
            )
        return attrs.evolve(self, failed=self.failed.set(group, failure))

    def outside(self, group: str, datacenters: tuple[str, ...]) -> _Account:
        """One more allocation of `group` not placed: the node is in none of the job's
        `datacenters`."""
        known = self.failed.get(group)
        if known is not None:
            failure = attrs.evolve(known, count=known.count + 1)
        else:
            failure = GroupFailure(outside=datacenters)
        return attrs.evolve(self, failed=self.failed.set(group, failure))

    def constraint_failure(self, job: Job, group: TaskGroup) -> ConstraintFailure | None:
        """The first constraint (or distinct_*) failure of one more `group` here."""
        view = self.view
        if view is None:
            return None
        distinct = any(c.operand in _DISTINCT for c in (*job.constraints, *group.constraints))
        return check_placement(
            job_id=job.id,
            group=group.name,
            node_vars=view.node_vars,
            job_constraints=job.constraints,
            drivers=sorted({t.driver for t in group.tasks}),
            group_constraints=group.constraints,
            task_constraints=[c for t in group.tasks for c in t.constraints],
            live=self.job_live if distinct else (),
        )

    def exhausted(self, group: TaskGroup) -> str | None:
        if self.view is None:
            return None
        return check_resources(group_resources(group), node=self.view.capacity, in_use=self.in_use)


def _opening_account(view: NodeView | None, job_id: str, live: Iterable[Allocation]) -> _Account:
    in_use = Capacity()
    job_live: list[PlacedAlloc] = []
    for alloc in live:
        in_use = in_use + group_resources(alloc.group())
        if alloc.job_id == job_id:
            job_live.append(PlacedAlloc(alloc.job_id, alloc.task_group))
    return _Account(view, in_use, tuple(job_live))


def _ports_for(
    alloc_id: str, group: TaskGroup, grants: PortGrants | None
) -> tuple[tuple[AllocatedPort, ...], str | None]:
    """The ports granted to a new allocation, or the network dimension it fails on."""
    if grants is None or not group_port_asks(group):
        return (), None
    refused = grants.refused.get(alloc_id)
    if refused is not None:
        return (), refused
    granted = grants.ports.get(alloc_id)
    if granted is None:
        return (), "network: no ports were reserved"
    return granted, None


def place_job(
    job: Job,
    existing: tuple[Allocation, ...],
    *,
    index: int,
    node_id: str,
    eval_id: str,
    node_allocs: Iterable[Allocation] = (),
    node: NodeView | None = None,
    grants: PortGrants | None = None,
) -> Placement:
    """Allocations to create and to change so that `job` runs as registered, and the
    groups that could not be placed (module docstring).

    `existing` are the job's allocations known so far (any status); `node_allocs`
    every allocation on the node (any job, any status). `job` is the new version; each
    existing allocation carries the version it was placed with. Without `node`,
    nothing is checked; without `grants` (a dry run), ports are neither given nor
    checked."""
    changed: list[Allocation] = []
    wants, stops = _plan_slots(job, existing, index, eval_id, changed)
    stopping = {a.id for a in stops}
    # Nomad's ProposedAllocs (v1.6): an allocation counts until its client status is
    # terminal, unless this very plan stops it; one stopped earlier and still shutting
    # down (a shutdown_delay, a kill_timeout) keeps its resources and ports.
    live = (a for a in node_allocs if not a.client_terminal() and a.id not in stopping)
    account = _opening_account(node, job.id, live)
    created: list[Allocation] = []
    kept_running: set[str] = set()
    ids = grants.ids if grants is not None else FrozenDict[Slot, str]()
    outside = (
        node is not None
        and bool(job.datacenters)
        and not in_any_datacenter(node.datacenter, job.datacenters)
    )
    for want in wants:
        group = want.group
        if outside:
            account = account.outside(group.name, job.datacenters)
            if want.replaces is not None:
                kept_running.add(want.replaces.id)
                account = account.with_alloc(want.replaces, job.id)
            continue
        alloc_id = ids.get((group.name, want.index)) or str(uuid.uuid4())
        filtered = account.constraint_failure(job, group)
        ports, exhausted = _ports_for(alloc_id, group, grants)
        if filtered is None and exhausted is None:
            exhausted = account.exhausted(group)
        if filtered is not None or exhausted is not None:
            account = account.with_failure(group.name, filtered, exhausted)
            if want.replaces is not None:
                kept_running.add(want.replaces.id)
                account = account.with_alloc(want.replaces, job.id)
            continue
        alloc = _new_alloc(
            job,
            group.name,
            want.index,
            index=index,
            node_id=node_id,
            eval_id=eval_id,
            previous=want.previous,
            id_=alloc_id,
        )
        alloc = attrs.evolve(alloc, allocated_ports=ports)
        account = account.with_alloc(alloc, job.id)
        created.append(alloc)
    changed.extend(a for a in stops if a.id not in kept_running)
    return Placement(created=tuple(created), changed=tuple(changed), failed=account.failed)


def _plan_slots(
    job: Job,
    existing: tuple[Allocation, ...],
    index: int,
    eval_id: str,
    changed: list[Allocation],
) -> tuple[list[_Want], list[Allocation]]:
    """The new allocations `job` wants, slot by slot, and the allocations it stops;
    in-place updates are appended to `changed`."""
    by_slot: dict[Slot, Allocation] = {}
    for alloc in sorted(existing, key=lambda a: a.create_index):
        if alloc.desired_status == DESIRED_RUN:
            by_slot[(alloc.task_group, alloc.index())] = alloc
    done: Mapping[Slot, Allocation] = {}
    if job.type in (JOB_BATCH, JOB_SYSBATCH):
        done = {
            (a.task_group, a.index()): a
            for a in existing
            if a.client_status == CLIENT_COMPLETE
            and a.desired_status == DESIRED_RUN
            and (a.task_group, a.index()) not in by_slot
        }
    now = _now_ns()
    wants: list[_Want] = []
    stops: list[Allocation] = []
    wanted: set[Slot] = set()
    for group in job.task_groups:
        for i in range(group_count(job, group)):
            slot = (group.name, i)
            wanted.add(slot)
            live = by_slot.get(slot)
            if live is None:
                finished = done.get(slot)
                if finished is not None and not _group_changed(finished, job, group):
                    continue
                wants.append(_Want(group, i, previous=finished.id if finished else ""))
            elif _group_changed(live, job, group):
                stops.extend(
                    stop_allocs((live,), index, "alloc is being updated due to job update")
                )
                wants.append(_Want(group, i, previous=live.id, replaces=live))
            elif live.job != job:
                changed.append(
                    attrs.evolve(
                        live,
                        job=job,
                        eval_id=eval_id,
                        alloc_modify_index=index,
                        modify_index=index,
                        modify_time=now,
                    )
                )
    extra = tuple(a for slot, a in by_slot.items() if slot not in wanted)
    stops.extend(stop_allocs(extra, index, "alloc not needed due to job update"))
    return wants, stops


def _group_changed(alloc: Allocation, job: Job, group: TaskGroup) -> bool:
    """True when the allocation's group differs from `group` in anything but count."""
    old = alloc.group()
    if old is None:
        return True
    return (
        attrs.evolve(old, count=group.count) != group
        or alloc.job is None
        or (alloc.job.type != job.type)
    )
