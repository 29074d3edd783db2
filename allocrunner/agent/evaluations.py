"""Evaluations of the one-node cluster, in the shape of Nomad's API.

Every write to the cluster is evaluated at once, so an evaluation is born
``complete``. One that could not place every allocation carries, as Nomad's does
(nomad/structs Evaluation and CreateBlockedEval at v1.6.0), the failures per group
(``FailedTGAllocs``: Nomad's AllocMetric of each), the allocations left per group
(``QueuedAllocations``) and the id of a second evaluation made for them
(``BlockedEval``): status ``blocked``, triggered by ``queued-allocs``, naming the first
as ``PreviousEval``. A later evaluation of the same job supersedes the job's blocked
ones (status ``canceled``, Nomad's spelling). When capacity is freed (an allocation
ends or is stopped) the cluster processes again each blocked evaluation that waits
for capacity (`Evaluation.waits_for_capacity`), as Nomad unblocks them: it completes,
and names a new blocked one if some still do not fit.

Threads: none. Locks: none; pure values and functions, called by the cluster's
transitions under ``Cluster._lock`` and read by the API handlers. Owner:
`allocrunner.agent.cluster_state`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from allocrunner.agent import placement
from allocrunner.placement import ConstraintFailure
from allocrunner.structs import FrozenDict, Job

__all__ = [
    "BLOCKED_DESCRIPTION",
    "EVAL_BLOCKED",
    "EVAL_CANCELED",
    "EVAL_TRIGGER_QUEUED",
    "Evaluation",
    "evaluation_from_api",
    "merged",
    "new_evaluation",
    "write_evaluations",
]

# Nomad's evaluation statuses and trigger of a blocked evaluation (nomad/structs).
EVAL_BLOCKED = "blocked"
EVAL_CANCELED = "canceled"
EVAL_TRIGGER_QUEUED = "queued-allocs"
BLOCKED_DESCRIPTION = "created to place remaining allocations"


@attrs.frozen
class Evaluation:
    """Immutable. An evaluation, as Nomad's API shows it (they complete at once here).

    An evaluation that could not place every allocation carries the groups' failures
    (`failed`, Nomad's FailedTGAllocs), the count left per group (`queued`) and the id
    of the blocked evaluation made for the rest (`blocked_eval`); that one has status
    ``blocked`` and names this one as `previous_eval`."""

    id: str
    job_id: str
    namespace: str
    type: str
    priority: int
    triggered_by: str
    create_index: int
    status: str = "complete"
    status_description: str = ""
    modify_index: int = 0
    job_modify_index: int = 0
    failed: FrozenDict[str, placement.GroupFailure] = attrs.field(factory=FrozenDict)
    queued: FrozenDict[str, int] = attrs.field(factory=FrozenDict)
    blocked_eval: str = ""
    previous_eval: str = ""
    create_time: int = 0

    def waits_for_capacity(self) -> bool:
        """Whether freed capacity may let this blocked evaluation place more: some group
        ran out of a resource or port, or was filtered by distinct_hosts /
        distinct_property (which count allocations). A group filtered by the node's own
        attributes waits for the job to change instead, as Nomad's blocked evaluations
        skip a node class they were not eligible on."""
        return self.status == EVAL_BLOCKED and any(
            f.exhausted is not None
            or (f.filtered is not None and f.filtered.reason.startswith("distinct_"))
            for f in self.failed.values()
        )

    def to_api(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Namespace": self.namespace,
            "Priority": self.priority,
            "Type": self.type,
            "TriggeredBy": self.triggered_by,
            "JobID": self.job_id,
            "JobModifyIndex": self.job_modify_index,
            "NodeID": "",
            "NodeModifyIndex": 0,
            "DeploymentID": "",
            "Status": self.status,
            "StatusDescription": self.status_description,
            "Wait": 0,
            "WaitUntil": None,
            "NextEval": "",
            "PreviousEval": self.previous_eval,
            "BlockedEval": self.blocked_eval,
            "RelatedEvals": None,
            "FailedTGAllocs": (
                {g: f.metric_json() for g, f in self.failed.items()} if self.failed else None
            ),
            "ClassEligibility": None,
            "EscapedComputedClass": False,
            "QuotaLimitReached": "",
            "AnnotatePlan": False,
            "QueuedAllocations": dict(self.queued),
            "SnapshotIndex": self.create_index,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index or self.create_index,
            "CreateTime": self.create_time,
            "ModifyTime": self.create_time,
        }


def new_evaluation(eval_id: str, job: Job, trigger: str, index: int) -> Evaluation:
    return Evaluation(
        id=eval_id,
        job_id=job.id,
        namespace=job.namespace,
        type=job.type,
        priority=job.priority,
        triggered_by=trigger,
        create_index=index,
        job_modify_index=job.job_modify_index,
        create_time=time.time_ns(),
    )


def write_evaluations(
    evals: Mapping[str, Evaluation],
    eval_id: str,
    job: Job,
    trigger: str,
    index: int,
    placed: placement.Placement,
) -> dict[str, Evaluation]:
    """The evaluations a write adds or changes: its own (complete); when groups could
    not be placed, the blocked one made for them (Nomad's CreateBlockedEval); and the
    job's earlier blocked evaluations, which a newer evaluation of the job supersedes
    (status ``canceled``, Nomad's spelling)."""
    out: dict[str, Evaluation] = {}
    for old in evals.values():
        if old.status == EVAL_BLOCKED and (old.job_id, old.namespace) == (job.id, job.namespace):
            out[old.id] = attrs.evolve(
                old,
                status=EVAL_CANCELED,
                status_description=f"evaluation {eval_id!r} superseded it",
                modify_index=index,
            )
    evaluation = new_evaluation(eval_id, job, trigger, index)
    if placed.failed:
        blocked = attrs.evolve(
            new_evaluation(str(uuid.uuid4()), job, EVAL_TRIGGER_QUEUED, index),
            status=EVAL_BLOCKED,
            status_description=BLOCKED_DESCRIPTION,
            previous_eval=eval_id,
            failed=placed.failed,
        )
        evaluation = attrs.evolve(
            evaluation,
            failed=placed.failed,
            queued=FrozenDict(placed.queued()),
            blocked_eval=blocked.id,
        )
        out[blocked.id] = blocked
    out[eval_id] = evaluation
    return out


def merged(
    evals: FrozenDict[str, Evaluation], new: Mapping[str, Evaluation]
) -> FrozenDict[str, Evaluation]:
    merged = dict(evals)
    merged.update(new)
    return FrozenDict(merged)


def _first_key(value: Any) -> str | None:
    if isinstance(value, Mapping) and value:
        return str(next(iter(value)))
    return None


def _failure_from_api(metric: Any) -> placement.GroupFailure:
    """A `GroupFailure` back from its AllocMetric JSON (`GroupFailure.metric_json`)."""
    if not isinstance(metric, Mapping):
        raise ValueError("an AllocMetric must be an object")
    reason = _first_key(metric.get("ConstraintFiltered"))
    coalesced = metric.get("CoalescedFailures") or 0
    if not isinstance(coalesced, int):
        raise ValueError("CoalescedFailures must be an integer")
    node_class = _first_key(metric.get("ClassFiltered")) or _first_key(metric.get("ClassExhausted"))
    available = metric.get("NodesAvailable")
    if metric.get("NodesEvaluated") == 0 and isinstance(available, Mapping):
        return placement.GroupFailure(count=coalesced + 1, outside=tuple(map(str, available)))
    return placement.GroupFailure(
        filtered=ConstraintFailure(reason) if reason is not None else None,
        exhausted=_first_key(metric.get("DimensionExhausted")),
        count=coalesced + 1,
        datacenter=_first_key(metric.get("NodesAvailable")) or "",
        node_class=node_class or "",
    )


def evaluation_from_api(obj: Any) -> Evaluation:
    """An `Evaluation` back from its `Evaluation.to_api` JSON (the saved cluster
    state); ValueError or TypeError when it is not one."""
    if not isinstance(obj, Mapping):
        raise ValueError("an evaluation must be an object")
    failed = obj.get("FailedTGAllocs") or {}
    queued = obj.get("QueuedAllocations") or {}
    if not isinstance(failed, Mapping) or not isinstance(queued, Mapping):
        raise ValueError("FailedTGAllocs and QueuedAllocations must be objects")
    return Evaluation(
        id=str(obj["ID"]),
        job_id=str(obj["JobID"]),
        namespace=str(obj.get("Namespace") or "default"),
        type=str(obj.get("Type") or ""),
        priority=int(obj.get("Priority") or 0),
        triggered_by=str(obj.get("TriggeredBy") or ""),
        create_index=int(obj.get("CreateIndex") or 0),
        status=str(obj.get("Status") or "complete"),
        status_description=str(obj.get("StatusDescription") or ""),
        modify_index=int(obj.get("ModifyIndex") or 0),
        job_modify_index=int(obj.get("JobModifyIndex") or 0),
        failed=FrozenDict({str(g): _failure_from_api(m) for g, m in failed.items()}),
        queued=FrozenDict({str(g): int(n) for g, n in queued.items()}),
        blocked_eval=str(obj.get("BlockedEval") or ""),
        previous_eval=str(obj.get("PreviousEval") or ""),
        create_time=int(obj.get("CreateTime") or 0),
    )
