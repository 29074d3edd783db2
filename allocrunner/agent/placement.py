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

Threads: none. Locks: none (the callers in `allocrunner.agent.cluster_state` run
under ``Cluster._lock``; nothing here blocks or calls out). Owner: the cluster's
transitions.
"""

from __future__ import annotations

import time
import uuid

import attrs

from allocrunner.structs import (
    CLIENT_COMPLETE,
    DESIRED_RUN,
    DESIRED_STOP,
    Allocation,
    Job,
    TaskGroup,
)
from allocrunner.structs.status import JOB_BATCH, JOB_SYSBATCH, JOB_SYSTEM

__all__ = ["MAX_ALLOCS_PER_JOB", "Placement", "group_count", "place_job", "stop_allocs"]

# More than this many allocations of one job cannot be placed on a single node; the
# register is refused with a clear error instead of building them for minutes.
MAX_ALLOCS_PER_JOB = 5000


@attrs.frozen
class Placement:
    """Immutable. The allocations a register creates and the ones it changes."""

    created: tuple[Allocation, ...] = ()
    changed: tuple[Allocation, ...] = ()


def group_count(job: Job, group: TaskGroup) -> int:
    """How many allocations of `group` this node runs."""
    if job.type in (JOB_SYSTEM, JOB_SYSBATCH):
        return 1
    return group.count


def total_count(job: Job) -> int:
    return sum(group_count(job, g) for g in job.task_groups)


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
    job: Job, group: str, i: int, *, index: int, node_id: str, eval_id: str, previous: str
) -> Allocation:
    now = _now_ns()
    return Allocation(
        id=str(uuid.uuid4()),
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


def place_job(
    job: Job,
    existing: tuple[Allocation, ...],
    *,
    index: int,
    node_id: str,
    eval_id: str,
) -> Placement:
    """Allocations to create and to change so that `job` runs as registered.

    `existing` are the job's allocations known so far (any status). `job` is the new
    version; each existing allocation carries the version it was placed with.
    """
    created: list[Allocation] = []
    changed: list[Allocation] = []
    by_slot: dict[tuple[str, int], Allocation] = {}
    for alloc in sorted(existing, key=lambda a: a.create_index):
        if alloc.desired_status == DESIRED_RUN:
            by_slot[(alloc.task_group, alloc.index())] = alloc
    done: dict[tuple[str, int], Allocation] = {}
    if job.type in (JOB_BATCH, JOB_SYSBATCH):
        done = {
            (a.task_group, a.index()): a
            for a in existing
            if a.client_status == CLIENT_COMPLETE
            and a.desired_status == DESIRED_RUN
            and (a.task_group, a.index()) not in by_slot
        }
    now = _now_ns()
    wanted: set[tuple[str, int]] = set()
    for group in job.task_groups:
        for i in range(group_count(job, group)):
            slot = (group.name, i)
            wanted.add(slot)
            live = by_slot.get(slot)
            if live is None:
                finished = done.get(slot)
                if finished is not None and not _group_changed(finished, job, group):
                    continue
                created.append(
                    _new_alloc(
                        job,
                        group.name,
                        i,
                        index=index,
                        node_id=node_id,
                        eval_id=eval_id,
                        previous=finished.id if finished is not None else "",
                    )
                )
                continue
            if _group_changed(live, job, group):
                changed.extend(
                    stop_allocs((live,), index, "alloc is being updated due to job update")
                )
                created.append(
                    _new_alloc(
                        job,
                        group.name,
                        i,
                        index=index,
                        node_id=node_id,
                        eval_id=eval_id,
                        previous=live.id,
                    )
                )
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
    changed.extend(stop_allocs(extra, index, "alloc not needed due to job update"))
    return Placement(created=tuple(created), changed=tuple(changed))


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
