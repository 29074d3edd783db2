"""Nomad's allocation and evaluation endpoints.

``GET /v1/allocations`` (stubs, ``prefix``), ``GET /v1/allocation/:id`` (the full
allocation with its job), ``POST /v1/allocation/:id/stop``, ``GET /v1/evaluations``
and ``GET /v1/evaluation/:id``; every read is a blocking query.

Threads: the handlers run on the HTTP server's request threads; a blocking read parks
its thread on the cluster's broadcaster. Locks: none; each answer is read from one
immutable `ClusterState`. Owner: `build_router` adds the routes; `HttpServer` calls
them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from allocrunner.agent import blocking
from allocrunner.agent.cluster import ClusterState
from allocrunner.agent.context import ApiContext
from allocrunner.agent.encoded import json_list, versioned
from allocrunner.agent.errors import not_found
from allocrunner.agent.http import Request, Response, Router, json_response
from allocrunner.jobspec import encode_allocation
from allocrunner.structs import Allocation

__all__ = ["add_routes", "alloc_json", "alloc_stub"]


def add_routes(router: Router, ctx: ApiContext) -> None:
    router.add("GET", "/v1/allocations", lambda r: list_allocs(ctx, r))
    router.add("GET", "/v1/allocation/:id", lambda r: read_alloc(ctx, r))
    router.add("PUT POST", "/v1/allocation/:id/stop", lambda r: stop_alloc(ctx, r))
    router.add("GET", "/v1/evaluations", lambda r: list_evals(ctx, r))
    router.add("GET", "/v1/evaluation/:id", lambda r: read_eval(ctx, r))
    router.add("GET", "/v1/evaluation/:id/allocations", lambda r: eval_allocs(ctx, r))


def allocated_resources(alloc: Allocation) -> dict[str, Any] | None:
    """Nomad's AllocatedResources: what each task of the group and the group ask for."""
    group = alloc.group()
    if group is None:
        return None
    return {
        "Tasks": {
            t.name: {
                "Cpu": {"CpuShares": t.resources.cpu, "ReservedCores": None},
                "Memory": {
                    "MemoryMB": t.resources.memory_mb,
                    "MemoryMaxMB": t.resources.memory_max_mb,
                },
                "Networks": None,
                "Devices": None,
            }
            for t in group.tasks
        },
        "TaskLifecycles": {
            t.name: (
                {"Hook": t.lifecycle.hook, "Sidecar": t.lifecycle.sidecar}
                if t.lifecycle is not None
                else None
            )
            for t in group.tasks
        },
        "Shared": {"DiskMB": group.ephemeral_disk.size_mb, "Networks": None, "Ports": None},
    }


def alloc_json(alloc: Allocation) -> dict[str, Any]:
    """Nomad's Allocation: the API JSON with the job it runs."""
    out = encode_allocation(alloc)
    out["JobVersion"] = alloc.job.version if alloc.job is not None else 0
    out["AllocatedResources"] = allocated_resources(alloc)
    return out


def alloc_stub(alloc: Allocation, *, resources: bool = False) -> dict[str, Any]:
    """Nomad's AllocListStub: the allocation without its job (with `resources`, what it
    was allocated, as ``?resources=true`` asks)."""
    out = encode_allocation(alloc)
    job = out.pop("Job", None) or {}
    out["JobType"] = job.get("Type", "")
    out["JobVersion"] = job.get("Version", 0)
    out["NodeName"] = ""
    out["FollowupEvalID"] = ""
    out["RescheduleTracker"] = None
    out["PreemptedAllocations"] = None
    out["PreemptedByAllocation"] = ""
    if resources:
        out["AllocatedResources"] = allocated_resources(alloc)
    return out


stub_bytes = versioned(alloc_stub, "stub")
stub_with_resources_bytes = versioned(lambda a: alloc_stub(a, resources=True), "stub+res")
alloc_bytes = versioned(alloc_json, "full")


def stubs_response(allocs: list[Allocation], index: int, *, resources: bool = False) -> Response:
    """A list of allocation stubs, each encoded once per version."""
    encode = stub_with_resources_bytes if resources else stub_bytes
    return Response(body=json_list(encode(a) for a in allocs), index=index)


def list_allocs(ctx: ApiContext, req: Request) -> Response:
    state, index = blocking.query(ctx, req, lambda s: s.alloc_index)
    prefix = req.param("prefix") or ""
    namespace = req.param("namespace") or "default"
    resources = req.flag("resources")
    allocs = [
        a
        for a in sorted(state.allocs.values(), key=lambda a: a.create_index)
        if a.id.startswith(prefix) and namespace in ("*", a.namespace)
    ]
    return stubs_response(allocs, index, resources=resources)


def _alloc_index(alloc_id: str) -> Callable[[ClusterState], int]:
    def index_of(state: ClusterState) -> int:
        alloc = state.allocs.get(alloc_id)
        return alloc.modify_index if alloc is not None else state.alloc_index

    return index_of


def read_alloc(ctx: ApiContext, req: Request) -> Response:
    alloc_id = req.args[0]
    state, index = blocking.query(ctx, req, _alloc_index(alloc_id))
    alloc = state.allocs.get(alloc_id)
    if alloc is None:
        raise not_found("alloc not found")
    return Response(body=alloc_bytes(alloc), index=index)


def stop_alloc(ctx: ApiContext, req: Request) -> Response:
    eval_id, index = ctx.cluster.stop_alloc(req.args[0])
    return json_response({"EvalID": eval_id, "Index": index}, index=index)


def list_evals(ctx: ApiContext, req: Request) -> Response:
    state, index = blocking.query(ctx, req, lambda s: s.eval_index)
    prefix = req.param("prefix") or ""
    evals = [
        e.to_api()
        for e in sorted(state.evals.values(), key=lambda e: e.create_index)
        if e.id.startswith(prefix)
    ]
    return json_response(evals, index=index)


def read_eval(ctx: ApiContext, req: Request) -> Response:
    state, index = blocking.query(ctx, req, lambda s: s.eval_index)
    evaluation = state.evals.get(req.args[0])
    if evaluation is None:
        raise not_found("eval not found")
    return json_response(evaluation.to_api(), index=index)


def eval_allocs(ctx: ApiContext, req: Request) -> Response:
    state, index = blocking.query(ctx, req, lambda s: s.alloc_index)
    allocs = [a for a in state.allocs.values() if a.eval_id == req.args[0]]
    return stubs_response(allocs, index)
