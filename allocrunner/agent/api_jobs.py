"""Nomad's job endpoints, served by the one-node cluster.

``/v1/jobs`` (list, register), ``/v1/jobs/parse``, ``/v1/job/:id`` (read, register,
deregister), ``/v1/job/:id/{allocations,evaluations,summary,versions,dispatch}`` and
``/v1/job/:id/periodic/force``, in Nomad's JSON shapes and status codes.

A registered job's settings this node does not act on come back in the reply's
``Warnings`` (Nomad's multierror text, "" when none); a job this node would run
differently from what it says (a Consul template, a git artifact, a bridge network)
is refused with 400. An unknown driver is not refused here (nor by the parse), as in
Nomad: the job registers and its placement then fails with ``missing drivers``. A
register hands the cluster this node's fingerprint, which placement checks the job's
constraints and resources against; what could not be placed shows in the
evaluation's ``FailedTGAllocs`` and in the summary's ``Queued``.
``/v1/jobs/parse`` takes ``Variables`` (var-file text) and, beyond Nomad, adds
``Warnings`` to the parsed job when there are any.

Threads: the handlers run on the HTTP server's request threads; a blocking read parks
its thread on the cluster's broadcaster. Locks: none; reads come from one immutable
`ClusterState` and writes go through the `Cluster`. Owner: `build_router` adds the
routes; `HttpServer` calls them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from allocrunner.agent import blocking
from allocrunner.agent.api_allocs import stubs_response
from allocrunner.agent.cluster import ClusterState
from allocrunner.agent.context import ApiContext
from allocrunner.agent.dispatch import dispatch_job
from allocrunner.agent.errors import ApiError, bad_request, not_found
from allocrunner.agent.http import Request, Response, Router, json_response
from allocrunner.errors import JobSpecError
from allocrunner.jobspec import (
    canonicalize_api_job,
    decode_job,
    encode_job,
    format_warnings,
    json_warnings,
    parse_job_with_warnings,
)
from allocrunner.jobspec.runnable import ANY_DRIVER, check_runnable, runtime_warnings
from allocrunner.structs import CLIENT_STATUSES, Job
from allocrunner.structs.status import JOB_TYPES

__all__ = ["add_routes", "job_json", "job_stub"]


def add_routes(router: Router, ctx: ApiContext) -> None:
    router.add("GET", "/v1/jobs", lambda r: list_jobs(ctx, r))
    router.add("PUT POST", "/v1/jobs", lambda r: register(ctx, r, None))
    router.add("PUT POST", "/v1/jobs/parse", lambda r: parse(ctx, r))
    # A job id may hold slashes (periodic and dispatched children: `parent/periodic-N`)
    # and clients such as python-nomad send them unescaped; as Nomad does, the action
    # is told by the path's suffix and the rest is the id.
    router.add("GET", "/v1/job/*id/allocations", lambda r: job_allocations(ctx, r))
    router.add("GET", "/v1/job/*id/evaluations", lambda r: job_evaluations(ctx, r))
    router.add("GET", "/v1/job/*id/summary", lambda r: job_summary(ctx, r))
    router.add("GET", "/v1/job/*id/versions", lambda r: job_versions(ctx, r))
    router.add("PUT POST", "/v1/job/*id/dispatch", lambda r: dispatch(ctx, r))
    router.add("PUT POST", "/v1/job/*id/periodic/force", lambda r: periodic_force(ctx, r))
    router.add("GET", "/v1/job/*id", lambda r: read_job(ctx, r))
    router.add("PUT POST", "/v1/job/*id", lambda r: register(ctx, r, r.args[0]))
    router.add("DELETE", "/v1/job/*id", lambda r: deregister(ctx, r))


def _namespace(req: Request) -> str:
    return req.param("namespace") or "default"


# --- reads -------------------------------------------------------------------------


def list_jobs(ctx: ApiContext, req: Request) -> Response:
    state, index = blocking.query(ctx, req, lambda s: s.job_index)
    prefix = req.param("prefix") or ""
    namespace = req.param("namespace") or "default"
    jobs = [
        job_stub(state, j)
        for j in sorted(state.jobs.values(), key=lambda j: (j.namespace, j.id))
        if j.id.startswith(prefix) and namespace in ("*", j.namespace)
    ]
    return json_response(jobs, index=index)


def _job_index(job_id: str, namespace: str) -> Callable[[ClusterState], int]:
    key = f"{namespace}/{job_id}"

    def index_of(state: ClusterState) -> int:
        job = state.jobs.get(key)
        return job.modify_index if job is not None else state.job_index

    return index_of


def _blocking_job(
    ctx: ApiContext, req: Request, missing: str = "job not found"
) -> tuple[ClusterState, Job, int]:
    """The job the URL names, after the blocking wait on it; 404 `missing` if none."""
    job_id, namespace = req.args[0], _namespace(req)
    state, index = blocking.query(ctx, req, _job_index(job_id, namespace))
    job = state.jobs.get(f"{namespace}/{job_id}")
    if job is None:
        raise not_found(missing)
    return state, job, index


def read_job(ctx: ApiContext, req: Request) -> Response:
    state, job, index = _blocking_job(ctx, req)
    return json_response(job_json(state, job), index=index)


def job_allocations(ctx: ApiContext, req: Request) -> Response:
    job_id, namespace = req.args[0], _namespace(req)

    def index_of(state: ClusterState) -> int:
        allocs = state.job_allocs(job_id, namespace)
        return max((a.modify_index for a in allocs), default=state.job_index)

    state, index = blocking.query(ctx, req, index_of)
    allocs = sorted(state.job_allocs(job_id, namespace), key=lambda a: a.create_index)
    return stubs_response(allocs, index)


def job_evaluations(ctx: ApiContext, req: Request) -> Response:
    job_id, namespace = req.args[0], _namespace(req)
    state, index = blocking.query(ctx, req, lambda s: s.eval_index)
    evals = [
        e.to_api()
        for e in sorted(state.evals.values(), key=lambda e: e.create_index)
        if e.job_id == job_id and e.namespace == namespace
    ]
    return json_response(evals, index=index)


def job_summary(ctx: ApiContext, req: Request) -> Response:
    state, job, index = _blocking_job(ctx, req)
    return json_response(summary_json(state, job), index=index)


def job_versions(ctx: ApiContext, req: Request) -> Response:
    state, job, index = _blocking_job(ctx, req, "job versions not found")
    return json_response({"Versions": [job_json(state, job)], "Diffs": None}, index=index)


# --- JSON shapes ---------------------------------------------------------------------


def job_json(state: ClusterState, job: Job) -> dict[str, Any]:
    """Nomad's Job, with the server's status fields."""
    out = encode_job(job)
    out["Status"] = state.job_status(job)
    out["StatusDescription"] = ""
    out["SubmitTime"] = state.job_submit.get(f"{job.namespace}/{job.id}", 0)
    out["Stable"] = False
    return out


def summary_json(state: ClusterState, job: Job) -> dict[str, Any]:
    queued = state.queued.get(f"{job.namespace}/{job.id}") or {}
    groups: dict[str, dict[str, int]] = {
        g.name: {
            "Queued": queued.get(g.name, 0),
            "Complete": 0,
            "Failed": 0,
            "Running": 0,
            "Starting": 0,
            "Lost": 0,
            "Unknown": 0,
        }
        for g in job.task_groups
    }
    names = {
        "pending": "Starting",
        "running": "Running",
        "complete": "Complete",
        "failed": "Failed",
        "lost": "Lost",
    }
    for alloc in state.job_allocs(job.id, job.namespace):
        counts = groups.setdefault(
            alloc.task_group,
            dict.fromkeys(
                ("Queued", "Complete", "Failed", "Running", "Starting", "Lost", "Unknown"), 0
            ),
        )
        status = alloc.client_status if alloc.client_status in CLIENT_STATUSES else "unknown"
        counts[names.get(status, "Unknown")] += 1
    children = {"Pending": 0, "Running": 0, "Dead": 0}
    for child in state.jobs.values():
        if child.parent_id == job.id and child.namespace == job.namespace:
            children[state.job_status(child).capitalize()] += 1
    return {
        "JobID": job.id,
        "Namespace": job.namespace,
        "Summary": groups,
        "Children": children,
        "CreateIndex": job.create_index,
        "ModifyIndex": job.modify_index,
    }


def job_stub(state: ClusterState, job: Job) -> dict[str, Any]:
    """Nomad's JobListStub."""
    full = encode_job(job)
    return {
        "ID": job.id,
        "ParentID": job.parent_id,
        "Name": job.name or job.id,
        "Namespace": job.namespace,
        "Datacenters": list(job.datacenters),
        "Multiregion": None,
        "Type": job.type,
        "Priority": job.priority,
        "Periodic": job.periodic is not None,
        "ParameterizedJob": job.parameterized is not None,
        "Stop": job.stop,
        "Status": state.job_status(job),
        "StatusDescription": "",
        "JobSummary": summary_json(state, job),
        "CreateIndex": job.create_index,
        "ModifyIndex": job.modify_index,
        "JobModifyIndex": job.job_modify_index,
        "SubmitTime": state.job_submit.get(f"{job.namespace}/{job.id}", 0),
        "Meta": full.get("Meta") or {},
    }


# --- writes --------------------------------------------------------------------------


def decode_api_job(obj: Any, path_id: str | None) -> Job:
    """A register body's job: canonicalized and decoded, errors naming the field."""
    return decode_api_job_with_warnings(obj, path_id)[0]


def decode_api_job_with_warnings(obj: Any, path_id: str | None) -> tuple[Job, list[str]]:
    """`decode_api_job`, and the warnings about the settings this node ignores."""
    if not isinstance(obj, dict):
        raise bad_request("request body: expected a JSON object")
    raw = obj.get("Job")
    if not isinstance(raw, dict):
        raise bad_request("Job: missing or not an object")
    try:
        job = decode_job(canonicalize_api_job(raw))
    except JobSpecError as err:
        raise bad_request(str(err)) from None
    if path_id is not None and job.id != path_id:
        raise bad_request(f"Job.ID: {job.id!r} does not match the URL's job id {path_id!r}")
    if job.type not in JOB_TYPES:
        raise bad_request(f"Job.Type: invalid job type {job.type!r}")
    if not job.task_groups:
        raise bad_request("Job.TaskGroups: a job needs at least one task group")
    try:
        check_runnable(job, style="json", drivers=ANY_DRIVER)
    except JobSpecError as err:
        raise bad_request(str(err)) from None
    return job, json_warnings(raw) + runtime_warnings(job, style="json")


def register(ctx: ApiContext, req: Request, path_id: str | None) -> Response:
    body = req.json()
    job, warnings = decode_api_job_with_warnings(body, path_id)
    if body.get("EnforceIndex"):
        expected = body.get("JobModifyIndex", 0)
        current = ctx.cluster.state().jobs.get(f"{job.namespace}/{job.id}")
        actual = current.job_modify_index if current is not None else 0
        if expected != actual:
            raise bad_request(
                f"Enforcing job modify index {expected}: job "
                + ("does not exist" if current is None else f"exists with modify index {actual}")
            )
    result = ctx.cluster.register(job, warnings=warnings, node=ctx.node)
    return json_response(
        {
            "EvalID": result.eval_id,
            "EvalCreateIndex": result.index,
            "JobModifyIndex": result.job_modify_index,
            "Warnings": format_warnings(result.warnings),
            "Index": result.index,
            "KnownLeader": True,
            "LastContact": 0,
        },
        index=result.index,
    )


def parse(ctx: ApiContext, req: Request) -> Response:
    body = req.json()
    if not isinstance(body, dict) or not isinstance(body.get("JobHCL"), str):
        raise bad_request("JobHCL: missing or not a string")
    if not body["JobHCL"]:
        raise bad_request("Job spec is empty")
    variables = body.get("Variables") or ""
    if not isinstance(variables, str):
        raise bad_request("Variables: expected var-file text (a string)")
    try:
        job, warnings = parse_job_with_warnings(
            body["JobHCL"], "hcl", source="JobHCL", var_content=variables, drivers=ANY_DRIVER
        )
    except JobSpecError as err:
        raise bad_request(str(err)) from None
    out = encode_job(job)
    if warnings:
        out["Warnings"] = format_warnings(warnings)
    return json_response(out)


def deregister(ctx: ApiContext, req: Request) -> Response:
    eval_id = ctx.cluster.deregister(req.args[0], _namespace(req), purge=req.flag("purge"))
    state = ctx.cluster.state()
    return json_response(
        {
            "EvalID": eval_id,
            "EvalCreateIndex": state.index,
            "JobModifyIndex": state.index,
            "Index": state.index,
        },
        index=state.index,
    )


def dispatch(ctx: ApiContext, req: Request) -> Response:
    parent = ctx.cluster.job(req.args[0], _namespace(req))
    body = req.json() if req.body else {}
    if not isinstance(body, dict):
        raise bad_request("request body: expected a JSON object")
    meta = body.get("Meta") or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise bad_request("Meta: expected an object of strings")
    raw = body.get("Payload") or ""
    if not isinstance(raw, str):
        raise bad_request("Payload: expected a base64 string")
    try:
        payload = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("Payload: not valid base64") from None
    template = body.get("IdPrefixTemplate") or ""
    if not isinstance(template, str) or "/" in template:
        raise bad_request("IdPrefixTemplate: expected a string without '/'")
    child = dispatch_job(
        parent, meta=meta, payload=payload, now=datetime.now(UTC), id_prefix_template=template
    )
    result = ctx.cluster.register(child, node=ctx.node)
    return json_response(
        {
            "DispatchedJobID": child.id,
            "EvalID": result.eval_id,
            "EvalCreateIndex": result.index,
            "JobCreateIndex": result.index,
            "Index": result.index,
        },
        index=result.index,
    )


def periodic_force(ctx: ApiContext, req: Request) -> Response:
    job = ctx.cluster.job(req.args[0], _namespace(req))
    if job.periodic is None:
        raise bad_request("can't force launch non-periodic job")
    if job.stop:
        raise ApiError(400, "can't force launch a stopped job")
    try:
        ctx.periodic.force_launch(job.id, job.namespace)
    except KeyError:
        raise bad_request(f"job {job.id!r} is not scheduled for periodic launches") from None
    state = ctx.cluster.state()
    return json_response({"EvalID": "", "EvalCreateIndex": state.index, "Index": state.index})
