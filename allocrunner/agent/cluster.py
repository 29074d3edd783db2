"""The agent's server side: jobs, evaluations and allocations of a one-node cluster.

Nomad's servers keep jobs and allocations in a replicated state store with one
increasing index, and serve reads (and blocking queries) from it. Here the node is
the whole cluster, so the `Cluster` is that store:

- One immutable `ClusterState` snapshot is published at a time. Writers build a new
  one under ``Cluster._lock`` and publish it on a latest-only `Broadcaster`; readers
  take the current snapshot and never wait for a writer. Blocking queries and the
  event stream listen on the broadcaster (`wait_for`).
- Every change gets the next index. Each table (jobs, allocs, evals) records the
  index of its last change, which is what `X-Nomad-Index` answers for a list.
- Registering a job places it (`placement.place_job`) and records the allocations;
  the desired set is then handed to the `Client` with no lock held. The client's
  state reports (`client_updated`) merge task states and client status into the
  stored allocations.
- The state is saved to ``<data_dir>/server/state.json`` by one owned thread
  (``cluster-persist``), kicked after each change and flushed on `close`; a crash
  loses at most the last few changes, which `load` rebuilds from the allocations the
  client restored (they carry their job).

Lock: ``Cluster._lock`` guards `_state` and `_closed`; it is never held while calling
the client, the disk or a listener (the broadcaster's send is notify-only).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken, Kick, ThreadGroup
from allocrunner.agent import placement
from allocrunner.agent.errors import ApiError, bad_request, not_found
from allocrunner.broadcaster import Broadcaster
from allocrunner.errors import BroadcasterClosed, JobSpecError
from allocrunner.jobspec import decode_allocation, decode_job, encode_allocation, encode_job
from allocrunner.structs import DESIRED_RUN, Allocation, FrozenDict, Job
from allocrunner.structs.status import JOB_BATCH, JOB_SYSBATCH

__all__ = ["Cluster", "ClusterEvent", "ClusterState", "Evaluation", "RegisterResult"]

log = logging.getLogger("allocrunner.agent.cluster")

# How many recent events the event stream can replay to a subscriber that asks for an
# index in the past.
EVENT_BUFFER = 1024
# What the cluster forgets as it goes (Nomad's server GC), so that a periodic job
# launching every second does not grow the state without bound: only the newest
# evaluations are kept, and only the newest finished children of each parent job.
EVAL_LIMIT = 1024
DEAD_CHILDREN_KEPT = 25

TOPIC_JOB = "Job"
TOPIC_ALLOC = "Allocation"
TOPIC_EVAL = "Evaluation"


@attrs.frozen
class Evaluation:
    """Immutable. An evaluation, as Nomad's API shows it (they complete at once here)."""

    id: str
    job_id: str
    namespace: str
    type: str
    priority: int
    triggered_by: str
    create_index: int
    status: str = "complete"

    def to_api(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Namespace": self.namespace,
            "Priority": self.priority,
            "Type": self.type,
            "TriggeredBy": self.triggered_by,
            "JobID": self.job_id,
            "Status": self.status,
            "StatusDescription": "",
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }


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


def _key(namespace: str, job_id: str) -> str:
    return f"{namespace}/{job_id}"


class Cluster:
    """Thread-safe. The one-node cluster's state store (module docstring).

    `on_register(job)` is called, with no lock held, after each register of a job that
    does not run at once (periodic, parameterized) and after each deregister: the
    periodic launcher's feed.
    """

    _node_id = immutable()
    _path = immutable()
    _run_allocs = immutable()
    _tracked = immutable()
    _broadcaster = immutable()
    _persist_kick = immutable()
    _stop = immutable()
    _threads = immutable()
    _launch_hooks = immutable()
    _lock = immutable()
    # _lock guards _state and _closed
    _state = guarded("_lock")
    _closed = guarded("_lock")

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        node_id: str,
        run_allocs: Callable[[list[Allocation], int], None],
        tracked: Callable[[str], bool],
        on_register: Callable[[Job], None] | None = None,
    ) -> None:
        self._node_id = node_id
        self._path = Path(data_dir) / "server" / "state.json"
        self._run_allocs = run_allocs
        self._tracked = tracked
        self._broadcaster = Broadcaster()
        self._persist_kick = Kick()
        self._stop = CancelToken()
        self._threads = ThreadGroup("cluster")
        self._launch_hooks = (on_register,) if on_register is not None else ()
        self._lock = make_lock("Cluster._lock")
        self._state = ClusterState()
        self._closed = False

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

    def parked(self) -> int:
        """How many waits (blocking queries, event streams) are parked right now."""
        return self._broadcaster.blocked_listeners()

    def is_closed(self) -> bool:
        with self._lock:
            return self._closed

    def listen(self) -> Any:
        """A latest-only listener of snapshots (the event stream's feed)."""
        return self._broadcaster.listen()

    def job(self, job_id: str, namespace: str = "default") -> Job:
        job = self.state().jobs.get(_key(namespace, job_id))
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
        state = self._read_saved()
        with self._lock:
            self._state = state

    def adopt(self, restored: Iterable[Allocation]) -> None:
        """Add what the client restored that the saved state does not know (a crash can
        lose the last cluster writes, never the client's), with the job each carries."""
        with self._lock:
            state = self._state
            allocs = dict(state.allocs)
            jobs = dict(state.jobs)
            index = state.index
            for view in restored:
                if view.id in allocs:
                    continue
                allocs[view.id] = view
                index = max(index, view.modify_index, view.alloc_modify_index)
                key = _key(view.namespace, view.job_id)
                if view.job is not None and key not in jobs:
                    jobs[key] = view.job
            if len(allocs) == len(state.allocs):
                return
            self._publish_locked(
                attrs.evolve(
                    state,
                    index=index + 1,
                    jobs=FrozenDict(jobs),
                    job_index=index + 1,
                    allocs=FrozenDict(allocs),
                    alloc_index=index + 1,
                ),
                [],
            )

    def start(self) -> None:
        """Start the persisting thread and hand the desired set to the client."""
        self._threads.spawn("cluster-persist", self._persist_loop)
        self._push()

    @calls_out
    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking changes, wake every blocking query, save the state. Idempotent."""
        with self._lock:
            self._closed = True
        self._broadcaster.close()
        self._stop.cancel("cluster closed")
        self._persist_kick.kick()
        return self._threads.join(timeout)

    # --- jobs -----------------------------------------------------------------------

    @calls_out
    def register(self, job: Job, *, warnings: Iterable[str] = ()) -> RegisterResult:
        """Register (or update) `job` and place it; Nomad's ``PUT /v1/jobs``."""
        if placement.total_count(job) > placement.MAX_ALLOCS_PER_JOB:
            raise bad_request(
                f"job {job.id!r} asks for {placement.total_count(job)} allocations; this node "
                f"places at most {placement.MAX_ALLOCS_PER_JOB} per job"
            )
        eval_id = str(uuid.uuid4())
        with self._lock:
            self._check_open_locked()
            state = self._state
            index = state.index + 1
            key = _key(job.namespace, job.id)
            old = state.jobs.get(key)
            job = _versioned(job, old, index)
            runs_now = job.periodic is None and job.parameterized is None and not job.stop
            allocs = dict(state.allocs)
            events: list[ClusterEvent] = [_event(TOPIC_JOB, "JobRegistered", job, index)]
            if runs_now:
                placed = placement.place_job(
                    job,
                    state.job_allocs(job.id, job.namespace),
                    index=index,
                    node_id=self._node_id,
                    eval_id=eval_id,
                )
                for alloc in (*placed.changed, *placed.created):
                    allocs[alloc.id] = alloc
                for alloc in _link_previous(allocs, placed.created, index):
                    events.append(_event(TOPIC_ALLOC, "PlanResult", alloc, index))
            elif job.stop:
                for alloc in placement.stop_allocs(
                    state.job_allocs(job.id, job.namespace), index, "alloc not needed: job stopped"
                ):
                    allocs[alloc.id] = alloc
                    events.append(_event(TOPIC_ALLOC, "PlanResult", alloc, index))
            evaluation = _evaluation(eval_id, job, "job-register", index)
            events.append(_event(TOPIC_EVAL, "EvaluationUpdated", evaluation, index))
            registered = attrs.evolve(
                state,
                index=index,
                jobs=state.jobs.set(key, job),
                job_index=index,
                job_submit=state.job_submit.set(key, time.time_ns()),
                allocs=FrozenDict(allocs),
                alloc_index=index if runs_now or job.stop else state.alloc_index,
                evals=state.evals.set(eval_id, evaluation),
                eval_index=index,
            )
            self._publish_locked(_forget_old(registered, job.parent_id, job.namespace), events)
        self._after_change()
        if not runs_now:
            for hook in self._launch_hooks:
                hook(job)
        return RegisterResult(eval_id, job.job_modify_index, index, tuple(warnings))

    @calls_out
    def deregister(self, job_id: str, namespace: str = "default", *, purge: bool = False) -> str:
        """Stop a job (and with `purge` forget it and its allocations); the eval id."""
        eval_id = str(uuid.uuid4())
        with self._lock:
            self._check_open_locked()
            state = self._state
            key = _key(namespace, job_id)
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
            evaluation = _evaluation(eval_id, job, "job-deregister", index)
            self._publish_locked(
                attrs.evolve(
                    state,
                    index=index,
                    jobs=jobs,
                    job_index=index,
                    allocs=FrozenDict(allocs),
                    alloc_index=index,
                    evals=state.evals.set(eval_id, evaluation),
                    eval_index=index,
                ),
                events,
            )
        self._after_change()
        for hook in self._launch_hooks:
            hook(stopped)
        return eval_id

    # --- allocations ----------------------------------------------------------------

    @calls_out
    def stop_alloc(self, alloc_id: str) -> tuple[str, int]:
        """Stop one allocation; a service job gets a replacement (Nomad's alloc stop).
        Returns the eval id and the index."""
        eval_id = str(uuid.uuid4())
        with self._lock:
            self._check_open_locked()
            state = self._state
            alloc = state.allocs.get(alloc_id)
            if alloc is None:
                raise not_found("alloc not found")
            index = state.index + 1
            allocs = dict(state.allocs)
            events = []
            for stopped in placement.stop_allocs((alloc,), index, "alloc was stopped by a user"):
                allocs[stopped.id] = stopped
                events.append(_event(TOPIC_ALLOC, "AllocationUpdateDesiredStatus", stopped, index))
            job = state.jobs.get(_key(alloc.namespace, alloc.job_id))
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
                    node_id=self._node_id,
                    eval_id=eval_id,
                )
                created = [attrs.evolve(a, previous_allocation=alloc.id) for a in placed.created]
                for new in created:
                    allocs[new.id] = new
                for changed in _link_previous(allocs, created, index):
                    events.append(_event(TOPIC_ALLOC, "PlanResult", changed, index))
            evaluation = _evaluation(
                eval_id, job or alloc.job or Job(id=alloc.job_id), "alloc-stop", index
            )
            self._publish_locked(
                attrs.evolve(
                    state,
                    index=index,
                    allocs=FrozenDict(allocs),
                    alloc_index=index,
                    evals=state.evals.set(eval_id, evaluation),
                    eval_index=index,
                ),
                events,
            )
        self._after_change()
        return eval_id, index

    def client_updated(self, views: list[Allocation]) -> None:
        """The client's state reports: merge client status and task states (the
        Client's ``state_updater``; called on its update thread, no lock held)."""
        with self._lock:
            if self._closed:
                return
            state = self._state
            known = [v for v in views if v.id in state.allocs]
            if not known:
                return
            index = state.index + 1
            allocs = dict(state.allocs)
            events = []
            for view in known:
                merged = _merge_client(allocs[view.id], view, index)
                allocs[view.id] = merged
                events.append(_event(TOPIC_ALLOC, "AllocationUpdated", merged, index))
            self._publish_locked(
                attrs.evolve(state, index=index, allocs=FrozenDict(allocs), alloc_index=index),
                events,
            )
        self._persist_kick.kick()

    # --- internals ------------------------------------------------------------------

    @requires("_lock")
    def _check_open_locked(self) -> None:
        if self._closed:
            raise ApiError(503, "agent is shutting down")

    @requires("_lock")
    def _publish_locked(self, state: ClusterState, events: list[ClusterEvent]) -> None:
        if events:
            state = attrs.evolve(state, events=(*state.events, *events)[-EVENT_BUFFER:])
        self._state = state
        with contextlib.suppress(BroadcasterClosed):
            self._broadcaster.send(state)

    @calls_out
    def _after_change(self) -> None:
        self._persist_kick.kick()
        self._push()

    @calls_out
    def _push(self) -> None:
        """Hand the client the desired set: every allocation it tracks, and every one
        not finished yet. A finished allocation the client no longer tracks (collected,
        or stopped before it ever ran) is never handed over again: it would run anew."""
        state = self.state()
        desired = [a for a in state.allocs.values() if not a.terminal() or self._tracked(a.id)]
        self._run_allocs(desired, state.index)

    @calls_out
    def _persist_loop(self) -> None:
        written = -1
        while True:
            self._persist_kick.wait()
            state = self.state()
            if state.index != written:
                try:
                    self._write(state)
                    written = state.index
                except OSError as err:
                    log.error("saving the cluster state to %s failed: %s", self._path, err)
            if self._stop.cancelled() and not self._persist_kick.pending():
                return

    @calls_out
    def _write(self, state: ClusterState) -> None:
        data = {
            "Index": state.index,
            "Jobs": [encode_job(j) for j in state.jobs.values()],
            "Allocations": [_encode_stored(a) for a in state.allocs.values()],
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(self._path.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path)

    @calls_out
    def _read_saved(self) -> ClusterState:
        try:
            data = json.loads(self._path.read_text())
        except FileNotFoundError:
            return ClusterState()
        except (OSError, ValueError) as err:
            log.error(
                "cluster state %s unreadable (%s); rebuilding from the client", self._path, err
            )
            return ClusterState()
        try:
            jobs = {}
            for obj in data.get("Jobs") or ():
                job = decode_job(obj)
                jobs[_key(job.namespace, job.id)] = job
            allocs = {}
            for obj in data.get("Allocations") or ():
                alloc = decode_allocation(obj)
                allocs[alloc.id] = alloc
            index = int(data.get("Index") or 1)
        except (JobSpecError, ValueError, TypeError) as err:
            log.error("cluster state %s invalid (%s); rebuilding from the client", self._path, err)
            return ClusterState()
        return ClusterState(
            index=index,
            jobs=FrozenDict(jobs),
            job_index=index,
            allocs=FrozenDict(allocs),
            alloc_index=index,
            eval_index=index,
        )


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
            gone = {_key(j.namespace, j.id) for j in dead}
            jobs = FrozenDict({k: j for k, j in jobs.items() if k not in gone})
            allocs = FrozenDict(
                {i: a for i, a in allocs.items() if _key(a.namespace, a.job_id) not in gone}
            )
    if evals is state.evals and jobs is state.jobs:
        return state
    return attrs.evolve(state, evals=evals, jobs=jobs, allocs=allocs)


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


def _encode_stored(alloc: Allocation) -> dict[str, Any]:
    return encode_allocation(alloc)


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


def _evaluation(eval_id: str, job: Job, trigger: str, index: int) -> Evaluation:
    return Evaluation(
        id=eval_id,
        job_id=job.id,
        namespace=job.namespace,
        type=job.type,
        priority=job.priority,
        triggered_by=trigger,
        create_index=index,
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
