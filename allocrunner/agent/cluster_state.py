"""The one-node cluster's data and its transitions, as pure functions over snapshots.

A `ClusterState` is one immutable snapshot of the jobs, allocations and evaluations
the agent serves, with one increasing index (Nomad's raft index) and the index of
each table's last change (what ``X-Nomad-Index`` answers for a list). Every write the
`Cluster` accepts is a function here from the current snapshot to a `Change`: the
next snapshot and the event-stream entries it emits, all at the next index.

- `register_job` versions the job and, when it runs at once, places it
  (`placement.place_job`: constraints, drivers, distinct_*, ports, resources) and
  links each replacement to the allocation it replaces; a stopped job's allocations
  are stopped. Groups it cannot place get no allocation: its evaluation carries
  Nomad's ``FailedTGAllocs`` and ``QueuedAllocations`` and names a ``blocked``
  evaluation made for them (``BlockedEval``); the job summary's ``Queued`` reads
  `ClusterState.queued`. A later evaluation of the job cancels its older blocked
  ones; freed capacity retries them (`retry_blocked`).
- `deregister_job` stops a job's allocations (and with ``purge`` forgets the job and
  them).
- `stop_allocation` stops one allocation; a live service job gets a replacement.
- `retry_blocked` processes a blocked evaluation once capacity was freed: it places
  what the job still lacks and completes (or names a new blocked evaluation).
- `merge_client_views` takes the client's state reports into the stored allocations.
- `adopt_restored` adds what the client restored that the snapshot does not know.

The cluster forgets as it goes (Nomad's server GC), so that a periodic job launching
every second does not grow the state without bound: only the newest `EVAL_LIMIT`
evaluations are kept, and only the newest `DEAD_CHILDREN_KEPT` finished children of
each parent job (with their allocations, which the client then collects).

The module is one concern, the cluster's data and every transition of it, which is why
it runs past 600 lines; evaluations live in `evaluations`, placement in `placement`.

Threads: none; the functions run on the caller's thread. Locks: none; the `Cluster`
calls them under ``Cluster._lock`` and publishes the result (they do no I/O and call
nothing out). Owner: `allocrunner.agent.cluster.Cluster`; the value types are read by
the API handlers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from allocrunner.agent import placement
from allocrunner.agent.errors import bad_request, not_found
from allocrunner.agent.evaluations import (
    EVAL_BLOCKED,
    EVAL_CANCELED,
    Evaluation,
    merged,
    write_evaluations,
)
from allocrunner.jobspec import encode_allocation, encode_job
from allocrunner.structs import DESIRED_RUN, Allocation, FrozenDict, Job
from allocrunner.structs.status import JOB_BATCH, JOB_SYSBATCH

__all__ = [
    "DEAD_CHILDREN_KEPT",
    "EVAL_LIMIT",
    "EVENT_BUFFER",
    "TOPIC_ALLOC",
    "TOPIC_EVAL",
    "TOPIC_JOB",
    "Change",
    "ClusterEvent",
    "ClusterState",
    "Evaluation",
    "RegisterResult",
    "adopt_restored",
    "blocked_evals",
    "check_placeable",
    "deregister_job",
    "encode_event_payload",
    "job_key",
    "merge_client_views",
    "register_job",
    "retry_blocked",
    "runs_at_once",
    "stop_allocation",
    "with_events",
]

# How many recent events the event stream can replay to a subscriber that asks for an
# index in the past.
EVENT_BUFFER = 1024
# What the cluster forgets as it goes: only the newest evaluations are kept, and only
# the newest finished children of each parent job.
EVAL_LIMIT = 1024
DEAD_CHILDREN_KEPT = 25

TOPIC_JOB = "Job"
TOPIC_ALLOC = "Allocation"
TOPIC_EVAL = "Evaluation"


# --- the data ------------------------------------------------------------------------


@attrs.frozen
class ClusterEvent:
    """Immutable. One entry of the event stream; the payload is encoded when sent."""

    topic: str
    type: str
    key: str
    index: int
    namespace: str
    filter_keys: tuple[str, ...]
    payload: Job | Allocation | Evaluation


@attrs.frozen
class ClusterState:
    """Immutable. One consistent snapshot of the cluster's jobs, allocations and evals."""

    index: int = 1
    jobs: FrozenDict[str, Job] = attrs.field(factory=FrozenDict)
    job_index: int = 1
    job_submit: FrozenDict[str, int] = attrs.field(factory=FrozenDict)
    allocs: FrozenDict[str, Allocation] = attrs.field(factory=FrozenDict)
    alloc_index: int = 1
    evals: FrozenDict[str, Evaluation] = attrs.field(factory=FrozenDict)
    eval_index: int = 1
    events: tuple[ClusterEvent, ...] = ()
    # job key -> {group: allocations left unplaced by the job's latest evaluation}
    queued: FrozenDict[str, FrozenDict[str, int]] = attrs.field(factory=FrozenDict)

    def job_allocs(self, job_id: str, namespace: str = "default") -> tuple[Allocation, ...]:
        return tuple(
            a for a in self.allocs.values() if a.job_id == job_id and a.namespace == namespace
        )

    def job_status(self, job: Job) -> str:
        """Nomad's job status: pending, running or dead."""
        allocs = self.job_allocs(job.id, job.namespace)
        if job.periodic is not None or job.parameterized is not None:
            return "dead" if job.stop else "running"
        live = [a for a in allocs if not a.terminal()]
        if live:
            return "running"
        if job.stop or allocs:
            if job.type in (JOB_BATCH, JOB_SYSBATCH) or job.stop:
                return "dead"
            return "dead" if all(a.terminal() for a in allocs) else "running"
        return "pending"

    def table_index(self, table: str) -> int:
        return {"jobs": self.job_index, "allocs": self.alloc_index, "evals": self.eval_index}.get(
            table, self.index
        )


@attrs.frozen
class RegisterResult:
    """Immutable. What a job register answers (Nomad's JobRegisterResponse)."""

    eval_id: str
    job_modify_index: int
    index: int
    warnings: tuple[str, ...] = ()


@attrs.frozen
class Change:
    """Immutable. One write's outcome: the next snapshot, the events it emits and, for
    a write that places allocations, what it placed (the cluster reads the allocations
    to create, and those stopped, from a dry run before it reserves their ports)."""

    state: ClusterState
    events: tuple[ClusterEvent, ...] = ()
    placed: placement.Placement = attrs.field(factory=placement.Placement)


def job_key(namespace: str, job_id: str) -> str:
    """The key of a job in `ClusterState.jobs`."""
    return f"{namespace}/{job_id}"


def runs_at_once(job: Job) -> bool:
    """Whether registering `job` places it now (not periodic, parameterized or stopped)."""
    return job.periodic is None and job.parameterized is None and not job.stop


def with_events(change: Change) -> ClusterState:
    """The snapshot to publish: `change`'s state with its events appended to the
    replay buffer (the newest `EVENT_BUFFER` kept)."""
    state = change.state
    if change.events:
        state = attrs.evolve(state, events=(*state.events, *change.events)[-EVENT_BUFFER:])
    return state


# --- transitions ---------------------------------------------------------------------


def check_placeable(job: Job) -> None:
    """400 for a job asking for more allocations than this node places."""
    if placement.total_count(job) > placement.MAX_ALLOCS_PER_JOB:
        raise bad_request(
            f"job {job.id!r} asks for {placement.total_count(job)} allocations; this node "
            f"places at most {placement.MAX_ALLOCS_PER_JOB} per job"
        )


def register_job(
    state: ClusterState,
    job: Job,
    *,
    node_id: str,
    eval_id: str,
    node: placement.NodeView | None = None,
    grants: placement.PortGrants | None = None,
) -> tuple[Change, Job]:
    """Register (or update) `job` and place it when it runs at once (`check_placeable`
    it first); the change and the job as stored (versioned, with its indexes). `node`
    and `grants`: see `placement.place_job`. Groups that cannot be placed get no
    allocation; the evaluation says why (and a blocked evaluation is made for them)."""
    index = state.index + 1
    key = job_key(job.namespace, job.id)
    job = _versioned(job, state.jobs.get(key), index)
    runs_now = runs_at_once(job)
    allocs = dict(state.allocs)
    events: list[ClusterEvent] = [_event(TOPIC_JOB, "JobRegistered", job, index)]
    placed = placement.Placement()
    if runs_now:
        placed = _place_and_record(
            state,
            job,
            allocs,
            events,
            index=index,
            node_id=node_id,
            eval_id=eval_id,
            node=node,
            grants=grants,
        )
    elif job.stop:
        for alloc in placement.stop_allocs(
            state.job_allocs(job.id, job.namespace), index, "alloc not needed: job stopped"
        ):
            allocs[alloc.id] = alloc
            events.append(_event(TOPIC_ALLOC, "PlanResult", alloc, index))
    evals = write_evaluations(state.evals, eval_id, job, "job-register", index, placed)
    events.extend(_event(TOPIC_EVAL, "EvaluationUpdated", e, index) for e in evals.values())
    registered = attrs.evolve(
        state,
        index=index,
        jobs=state.jobs.set(key, job),
        job_index=index,
        job_submit=state.job_submit.set(key, time.time_ns()),
        allocs=FrozenDict(allocs),
        alloc_index=index if runs_now or job.stop else state.alloc_index,
        evals=merged(state.evals, evals),
        eval_index=index,
        queued=state.queued.set(key, FrozenDict(placed.queued())),
    )
    change = Change(_forget_old(registered, job.parent_id, job.namespace), tuple(events), placed)
    return change, job


def deregister_job(
    state: ClusterState, job_id: str, namespace: str, *, purge: bool, eval_id: str
) -> tuple[Change, Job]:
    """Stop a job (and with `purge` forget it and its allocations); the change and the
    stopped job. 404 for an unknown job."""
    key = job_key(namespace, job_id)
    job = state.jobs.get(key)
    if job is None:
        raise not_found("job not found")
    index = state.index + 1
    stopped = attrs.evolve(job, stop=True, modify_index=index, job_modify_index=index)
    events = [_event(TOPIC_JOB, "JobDeregistered", stopped, index)]
    allocs = dict(state.allocs)
    for alloc in placement.stop_allocs(
        state.job_allocs(job_id, namespace), index, "alloc not needed: job stopped"
    ):
        allocs[alloc.id] = alloc
        events.append(_event(TOPIC_ALLOC, "AllocationUpdateDesiredStatus", alloc, index))
    if purge:
        for alloc in state.job_allocs(job_id, namespace):
            allocs.pop(alloc.id, None)
        jobs = FrozenDict({k: v for k, v in state.jobs.items() if k != key})
    else:
        jobs = state.jobs.set(key, stopped)
    evals = write_evaluations(
        state.evals, eval_id, job, "job-deregister", index, placement.Placement()
    )
    deregistered = attrs.evolve(
        state,
        index=index,
        jobs=jobs,
        job_index=index,
        allocs=FrozenDict(allocs),
        alloc_index=index,
        evals=merged(state.evals, evals),
        eval_index=index,
        queued=FrozenDict({k: v for k, v in state.queued.items() if k != key}),
    )
    return Change(deregistered, tuple(events)), stopped


def stop_allocation(
    state: ClusterState,
    alloc_id: str,
    *,
    node_id: str,
    eval_id: str,
    node: placement.NodeView | None = None,
    grants: placement.PortGrants | None = None,
) -> Change:
    """Stop one allocation; a live allocation of a service job that still runs gets a
    replacement (Nomad's alloc stop), placed as `register_job` places. 404 for an
    unknown allocation."""
    alloc = state.allocs.get(alloc_id)
    if alloc is None:
        raise not_found("alloc not found")
    index = state.index + 1
    allocs = dict(state.allocs)
    events = []
    stops = placement.stop_allocs((alloc,), index, "alloc was stopped by a user")
    for stopped in stops:
        allocs[stopped.id] = stopped
        events.append(_event(TOPIC_ALLOC, "AllocationUpdateDesiredStatus", stopped, index))
    job = state.jobs.get(job_key(alloc.namespace, alloc.job_id))
    placed = placement.Placement(changed=stops)
    if (
        job is not None
        and not job.stop
        and not alloc.client_terminal()
        and alloc.desired_status == DESIRED_RUN
    ):
        placed = placement.place_job(
            job,
            tuple(allocs[a.id] for a in state.job_allocs(job.id, job.namespace)),
            index=index,
            node_id=node_id,
            eval_id=eval_id,
            node_allocs=tuple(allocs.values()),
            node=node,
            grants=grants,
        )
        created = [attrs.evolve(a, previous_allocation=alloc.id) for a in placed.created]
        placed = attrs.evolve(placed, created=tuple(created), changed=(*stops, *placed.changed))
        for new in created:
            allocs[new.id] = new
        for changed in _link_previous(allocs, created, index):
            events.append(_event(TOPIC_ALLOC, "PlanResult", changed, index))
    evaluated = job or alloc.job or Job(id=alloc.job_id)
    evals = write_evaluations(state.evals, eval_id, evaluated, "alloc-stop", index, placed)
    key = job_key(evaluated.namespace, evaluated.id)
    stopped_state = attrs.evolve(
        state,
        index=index,
        allocs=FrozenDict(allocs),
        alloc_index=index,
        evals=merged(state.evals, evals),
        eval_index=index,
        queued=state.queued.set(key, FrozenDict(placed.queued())),
    )
    return Change(stopped_state, tuple(events), placed)


def blocked_evals(state: ClusterState) -> tuple[str, ...]:
    """The ids of the blocked evaluations that freed capacity may unblock, oldest
    first."""
    blocked = [e for e in state.evals.values() if e.waits_for_capacity()]
    return tuple(e.id for e in sorted(blocked, key=lambda e: e.create_index))


def retry_blocked(
    state: ClusterState,
    blocked_id: str,
    *,
    node_id: str,
    node: placement.NodeView | None = None,
    grants: placement.PortGrants | None = None,
) -> Change:
    """Process a blocked evaluation once capacity was freed (Nomad unblocks it): place
    what its job still lacks, as `register_job` places. The blocked evaluation
    completes; when something still does not fit it names a new blocked one. A job
    gone or stopped cancels it. `state` unchanged when it is not blocked any more."""
    blocked = state.evals.get(blocked_id)
    if blocked is None or blocked.status != EVAL_BLOCKED:
        return Change(state)
    index = state.index + 1
    job = state.jobs.get(job_key(blocked.namespace, blocked.job_id))
    allocs = dict(state.allocs)
    events: list[ClusterEvent] = []
    placed = placement.Placement()
    if job is not None and runs_at_once(job):
        placed = _place_and_record(
            state,
            job,
            allocs,
            events,
            index=index,
            node_id=node_id,
            eval_id=blocked_id,
            node=node,
            grants=grants,
        )
    evaluated = job or Job(id=blocked.job_id, namespace=blocked.namespace)
    evals = write_evaluations(
        state.evals, blocked_id, evaluated, blocked.triggered_by, index, placed
    )
    done = attrs.evolve(
        evals[blocked_id],
        status=EVAL_CANCELED if job is None or not runs_at_once(job) else "complete",
        previous_eval=blocked.previous_eval,
        create_index=blocked.create_index,
        create_time=blocked.create_time,
        modify_index=index,
    )
    evals[blocked_id] = done
    events.extend(_event(TOPIC_EVAL, "EvaluationUpdated", e, index) for e in evals.values())
    key = job_key(evaluated.namespace, evaluated.id)
    retried = attrs.evolve(
        state,
        index=index,
        allocs=FrozenDict(allocs),
        alloc_index=index if placed.created or placed.changed else state.alloc_index,
        evals=merged(state.evals, evals),
        eval_index=index,
        queued=state.queued.set(key, FrozenDict(placed.queued())),
    )
    return Change(_forget_old(retried, "", evaluated.namespace), tuple(events), placed)


def merge_client_views(state: ClusterState, views: Iterable[Allocation]) -> Change | None:
    """The client's state reports merged into the allocations they name (client status,
    task states, deployment status); None when none of them is known."""
    known = [v for v in views if v.id in state.allocs]
    if not known:
        return None
    index = state.index + 1
    allocs = dict(state.allocs)
    events = []
    for view in known:
        merged = _merge_client(allocs[view.id], view, index)
        allocs[view.id] = merged
        events.append(_event(TOPIC_ALLOC, "AllocationUpdated", merged, index))
    merged_state = attrs.evolve(state, index=index, allocs=FrozenDict(allocs), alloc_index=index)
    return Change(merged_state, tuple(events))


def adopt_restored(state: ClusterState, restored: Iterable[Allocation]) -> Change | None:
    """What the client restored that `state` does not know, added with the job each
    carries (a crash can lose the last cluster writes, never the client's); None when
    nothing is new."""
    allocs = dict(state.allocs)
    jobs = dict(state.jobs)
    index = state.index
    for view in restored:
        if view.id in allocs:
            continue
        allocs[view.id] = view
        index = max(index, view.modify_index, view.alloc_modify_index)
        key = job_key(view.namespace, view.job_id)
        if view.job is not None and key not in jobs:
            jobs[key] = view.job
    if len(allocs) == len(state.allocs):
        return None
    adopted = attrs.evolve(
        state,
        index=index + 1,
        jobs=FrozenDict(jobs),
        job_index=index + 1,
        allocs=FrozenDict(allocs),
        alloc_index=index + 1,
    )
    return Change(adopted)


# --- helpers -------------------------------------------------------------------------


def _forget_old(state: ClusterState, parent_id: str, namespace: str) -> ClusterState:
    """`state` without the evaluations past `EVAL_LIMIT` and, when a child of
    `parent_id` was just registered, without that parent's finished children past
    `DEAD_CHILDREN_KEPT` (with their allocations, which the client then collects)."""
    evals = state.evals
    if len(evals) > EVAL_LIMIT:
        newest = sorted(evals.values(), key=lambda e: e.create_index)[-EVAL_LIMIT:]
        evals = FrozenDict({e.id: e for e in newest})
    jobs, allocs = state.jobs, state.allocs
    if parent_id:
        dead = sorted(
            (
                j
                for j in jobs.values()
                if j.parent_id == parent_id
                and j.namespace == namespace
                and state.job_status(j) == "dead"
            ),
            key=lambda j: j.create_index,
        )[:-DEAD_CHILDREN_KEPT]
        if dead:
            gone = {job_key(j.namespace, j.id) for j in dead}
            jobs = FrozenDict({k: j for k, j in jobs.items() if k not in gone})
            allocs = FrozenDict(
                {i: a for i, a in allocs.items() if job_key(a.namespace, a.job_id) not in gone}
            )
    if evals is state.evals and jobs is state.jobs:
        return state
    return attrs.evolve(state, evals=evals, jobs=jobs, allocs=allocs)


def _place_and_record(
    state: ClusterState,
    job: Job,
    allocs: dict[str, Allocation],
    events: list[ClusterEvent],
    *,
    index: int,
    node_id: str,
    eval_id: str,
    node: placement.NodeView | None,
    grants: placement.PortGrants | None,
) -> placement.Placement:
    """Place `job` on the node (`placement.place_job`), record what it creates and
    changes in `allocs`, and a PlanResult event in `events` for each new allocation."""
    placed = placement.place_job(
        job,
        state.job_allocs(job.id, job.namespace),
        index=index,
        node_id=node_id,
        eval_id=eval_id,
        node_allocs=tuple(state.allocs.values()),
        node=node,
        grants=grants,
    )
    for alloc in (*placed.changed, *placed.created):
        allocs[alloc.id] = alloc
    for alloc in _link_previous(allocs, placed.created, index):
        events.append(_event(TOPIC_ALLOC, "PlanResult", alloc, index))
    return placed


def _link_previous(
    allocs: dict[str, Allocation], created: Iterable[Allocation], index: int
) -> list[Allocation]:
    """Point each replaced allocation at its replacement (Nomad's NextAllocation), in
    `allocs`; every allocation written (the replacements and the replaced)."""
    written: list[Allocation] = []
    for new in created:
        written.append(new)
        prev = allocs.get(new.previous_allocation) if new.previous_allocation else None
        if prev is not None:
            linked = attrs.evolve(prev, next_allocation=new.id, modify_index=index)
            allocs[prev.id] = linked
            written.append(linked)
    return written


def _versioned(job: Job, old: Job | None, index: int) -> Job:
    """`job` with Nomad's version and indexes: the version grows when the spec changes."""
    if old is None:
        return attrs.evolve(
            job,
            version=0,
            stop=job.stop,
            create_index=index,
            modify_index=index,
            job_modify_index=index,
        )
    unchanged = attrs.evolve(
        job,
        version=old.version,
        create_index=old.create_index,
        modify_index=old.modify_index,
        job_modify_index=old.job_modify_index,
    )
    if unchanged == old:
        return attrs.evolve(old, modify_index=index)
    return attrs.evolve(
        job,
        version=old.version + 1,
        create_index=old.create_index,
        modify_index=index,
        job_modify_index=index,
    )


def _merge_client(stored: Allocation, view: Allocation, index: int) -> Allocation:
    """The stored allocation with the client's fields from `view`."""
    return attrs.evolve(
        stored,
        client_status=view.client_status,
        client_description=view.client_description,
        task_states=view.task_states,
        deployment_status=view.deployment_status,
        modify_index=index,
        modify_time=time.time_ns(),
    )


def _event(
    topic: str, type_: str, payload: Job | Allocation | Evaluation, index: int
) -> ClusterEvent:
    if isinstance(payload, Allocation):
        key, namespace, filters = payload.id, payload.namespace, (payload.job_id, payload.eval_id)
    elif isinstance(payload, Job):
        key, namespace, filters = payload.id, payload.namespace, ()
    else:
        key, namespace, filters = payload.id, payload.namespace, (payload.job_id,)
    return ClusterEvent(topic, type_, key, index, namespace, filters, payload)


def encode_event_payload(event: ClusterEvent) -> Mapping[str, Any]:
    """The event's payload in Nomad's event stream shape."""
    payload = event.payload
    if isinstance(payload, Allocation):
        return {"Allocation": encode_allocation(payload)}
    if isinstance(payload, Job):
        return {"Job": encode_job(payload)}
    return {"Evaluation": payload.to_api()}
