"""`job run|status|stop|dispatch`: jobs through the agent's API, in Nomad's shapes.

`job run` parses the job file here (so a bad file is reported before any agent is
involved), registers it with `PUT /v1/jobs`, prints the warnings (the file's settings
this node ignores, and the agent's) under Nomad's `Job Warnings:` header on stdout,
and unless `-detach` watches the allocations it placed until every one is terminal.
When the evaluation of the register (or of a `job dispatch`) could not place every
allocation, Nomad's placement-failure block is printed first
(`monitor.print_placement_failures`) and the exit code is 2 (at once when nothing was
placed). The exit code is the outcome: 0 all tasks succeeded, 1 a task failed, 2 bad
input or not every allocation could be placed, 130 interrupted. When the agent is
embedded in this command, an interrupt (Ctrl-C or SIGTERM) first stops the job's
allocations and waits for their tasks to die, so a demo never leaves tasks behind; a
second interrupt gives up at once, quietly.

Threads and locks: none; handlers run on the command's thread. Signal handlers are
installed only on the main thread (elsewhere signals are left alone) and restored when
the block ends. Owner: `main` dispatches to these handlers; `legacy_run` is the older
`run`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from allocrunner.cli.api import ApiClient, ApiError
from allocrunner.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
    bad_input,
)
from allocrunner.cli.connect import Session, open_session
from allocrunner.cli.monitor import (
    EventPrinter,
    JobWatch,
    alloc_failed,
    format_alloc_metric,
    is_terminal,
    placement_failed,
    print_placement_failures,
    print_summaries,
    quote,
    wait_terminal,
)
from allocrunner.cli.output import (
    Output,
    format_kv,
    format_table,
    format_time_ns,
    from_ns,
    now_text,
    pretty_time_ago,
    short_id,
)
from allocrunner.errors import JobSpecError
from allocrunner.jobspec import encode_job, format_warnings, json_warnings, load_job_with_warnings
from allocrunner.structs import Job

__all__ = ["job_dispatch", "job_run", "job_status", "job_stop", "legacy_run", "load_job_file"]


def load_job_file(
    path: str, variables: list[tuple[str, str]], var_files: list[str]
) -> tuple[Job, list[str]]:
    """The job in `path`, evaluated with `-var` and `-var-file`, and its warnings (one
    per setting this node ignores, each starting with its field path). A bad file is
    bad input (exit 2)."""
    try:
        return load_job_with_warnings(
            path, variables=[f"{k}={v}" for k, v in variables], var_files=tuple(var_files)
        )
    except JobSpecError as err:
        raise bad_input(str(err)) from None


def _print_warnings(out: Output, warnings: list[str]) -> None:
    """Nomad's `Job Warnings:` block on stdout: the multierror text, then a blank line."""
    if not warnings:
        return
    out.line("Job Warnings:")
    out.line(format_warnings(warnings))
    out.line()


def _register(api: ApiClient, job_json: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        reply, index = api.put("/v1/jobs", {"Job": job_json})
    except ApiError as err:
        code = EXIT_BAD_INPUT if 400 <= err.status < 500 else EXIT_FAILED
        raise CliError(f"Error submitting job: {err.message}", code) from None
    reply = dict(reply or {})
    reply.setdefault("Index", index)
    return reply


def _since(reply: Mapping[str, Any]) -> int:
    for key in ("JobModifyIndex", "EvalCreateIndex", "Index"):
        value = reply.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def _server_warnings(reply: Mapping[str, Any], sent: Mapping[str, Any]) -> list[str]:
    """The reply's warnings (Nomad's multierror text, or plain lines), less those the
    agent derives from the job JSON we sent: the file's own warnings already say so."""
    text = str(reply.get("Warnings") or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    bullets = [line[2:].strip() for line in lines if line.startswith("* ")]
    found = bullets if bullets else lines
    echoed = set(json_warnings(sent))
    return [w for w in found if w not in echoed]


def job_run(args: argparse.Namespace, out: Output) -> int:
    return _run(args, out, temporary=False)


def legacy_run(args: argparse.Namespace, out: Output) -> int:
    """`run JOBFILE`: `job run`, with a temporary data dir when none is given."""
    return _run(args, out, temporary=True)


def _run(args: argparse.Namespace, out: Output, *, temporary: bool) -> int:
    job, load_warnings = load_job_file(args.jobfile, args.var, args.var_file)
    job_json = encode_job(job)
    with open_session(args, out, embed=True, temporary=temporary) as session:
        reply = _register(session.api, job_json)
        _print_warnings(out, load_warnings + _server_warnings(reply, job_json))
        eval_id = str(reply.get("EvalID") or "")
        if args.detach or job_json.get("Periodic") or job_json.get("ParameterizedJob"):
            out.line("Job registration successful")
            if eval_id and not job_json.get("ParameterizedJob"):
                out.line(f"Evaluation ID: {eval_id}")
            return EXIT_OK
        out.line(f'==> {now_text()}: Monitoring evaluation "{short_id(eval_id)}"')
        failed = _report_placement(session.api, eval_id, out)
        if failed is not None and not failed:
            return EXIT_BAD_INPUT
        code = watch_to_the_end(session, str(job_json.get("ID", job.id)), _since(reply), out)
        return EXIT_BAD_INPUT if failed else code


def _report_placement(api: ApiClient, eval_id: str, out: Output) -> list[str] | None:
    """Print the evaluation's placement failures, if any: None when it placed every
    allocation, else the ids of the allocations it did place (maybe none)."""
    if not eval_id:
        return None
    try:
        evaluation, _ = api.get(f"/v1/evaluation/{quote(eval_id)}")
    except ApiError as err:
        if err.status == 404:
            return None
        raise
    if not isinstance(evaluation, Mapping) or not placement_failed(evaluation):
        return None
    print_placement_failures(evaluation, out)
    placed, _ = api.get(f"/v1/evaluation/{quote(eval_id)}/allocations")
    return [str(a.get("ID", "")) for a in placed or [] if isinstance(a, Mapping)]


class _Interrupt(KeyboardInterrupt):
    """SIGTERM, delivered to the main thread as Ctrl-C is."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupt()


def _exit_now(signum: int, frame: FrameType | None) -> None:
    """A second interrupt: leave at once, quietly, whatever is still stopping."""
    os._exit(EXIT_INTERRUPTED)


@contextlib.contextmanager
def _handling(handler: Callable[[int, FrameType | None], None], *signums: int) -> Iterator[None]:
    """`handler` for `signums` inside the block (main thread only; an ignored signal
    stays ignored, as a background job's SIGINT is)."""
    previous: dict[int, Any] = {}
    try:
        for signum in signums:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread: signals stay as they are
        pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _poll_until(watch: JobWatch, stop: Callable[[], bool]) -> None:
    while not stop():
        watch.poll()
        if watch.nothing_placed():
            return


def watch_to_the_end(session: Session, job_id: str, since: int, out: Output) -> int:
    """Print events until every watched allocation is terminal; the exit code."""
    watch = JobWatch(session.api, job_id, since, EventPrinter(out))
    external = not session.embedded
    sigterm = _handling(_raise_interrupt, signal.SIGTERM)
    with sigterm if session.embedded else contextlib.nullcontext():
        try:
            _poll_until(watch, lambda: watch.done() or (external and out.closed))
        except KeyboardInterrupt:
            if external:
                out.line("==> detached: the job keeps running")
                return EXIT_INTERRUPTED
            return _stop_after_interrupt(session, watch, job_id, out)
    if watch.nothing_placed():
        raise bad_input(f"no allocation of job {job_id!r} could be placed")
    print_summaries(session.api, watch.allocs(), out)
    return EXIT_FAILED if any(alloc_failed(a) for a in watch.allocs()) else EXIT_OK


def _stop_after_interrupt(session: Session, watch: JobWatch, job_id: str, out: Output) -> int:
    out.line("==> interrupted: stopping the job's allocations (Ctrl-C again to quit now)")
    with _handling(_exit_now, signal.SIGINT, signal.SIGTERM):
        session.api.delete(f"/v1/job/{quote(job_id)}")
        _poll_until(watch, lambda: not watch.allocs() or watch.done())
        for alloc in watch.allocs():
            out.line(f"==> stopped {alloc.get('Name', '')}")
    return EXIT_INTERRUPTED


def _job_rows(jobs: list[Mapping[str, Any]]) -> list[list[Any]]:
    rows: list[list[Any]] = [["ID", "Type", "Priority", "Status", "Submit Date"]]
    for job in sorted(jobs, key=lambda j: j.get("ID", "")):
        rows.append(
            [
                job.get("ID"),
                job.get("Type"),
                job.get("Priority"),
                job.get("Status"),
                format_time_ns(job.get("SubmitTime")),
            ]
        )
    return rows


def _find_job(api: ApiClient, job_id: str) -> Mapping[str, Any]:
    """The job `job_id`, or the one job whose id starts with it."""
    try:
        job, _ = api.get(f"/v1/job/{quote(job_id)}")
        return job
    except ApiError as err:
        if err.status != 404:
            raise
    stubs, _ = api.get("/v1/jobs", {"prefix": job_id})
    matches = [j for j in stubs or [] if str(j.get("ID", "")).startswith(job_id)]
    if not matches:
        raise bad_input(f"no job(s) with prefix or id {job_id!r} found")
    if len(matches) > 1:
        ids = ", ".join(sorted(str(j.get("ID")) for j in matches))
        raise bad_input(f"prefix {job_id!r} matched multiple jobs: {ids}")
    job, _ = api.get(f"/v1/job/{quote(matches[0]['ID'])}")
    return job


_SUMMARY_COLUMNS = (
    ("Queued", ()),
    ("Starting", ("pending",)),
    ("Running", ("running",)),
    ("Failed", ("failed",)),
    ("Complete", ("complete",)),
    ("Lost", ("lost",)),
)


def _summary_rows(
    job: Mapping[str, Any], allocs: list[Mapping[str, Any]], queued: Mapping[str, int]
) -> list[list[Any]]:
    rows: list[list[Any]] = [["Task Group", *(name for name, _ in _SUMMARY_COLUMNS)]]
    for group in job.get("TaskGroups") or ():
        mine = [a for a in allocs if a.get("TaskGroup") == group.get("Name")]
        counts = [
            sum(1 for a in mine if a.get("ClientStatus") in statuses)
            for _, statuses in _SUMMARY_COLUMNS
        ]
        counts[0] = queued.get(str(group.get("Name")), 0)
        rows.append([group.get("Name"), *counts])
    return rows


def _queued(api: ApiClient, job_id: str) -> dict[str, int]:
    """Allocations left unplaced per group (the job summary's Queued)."""
    try:
        summary, _ = api.get(f"/v1/job/{quote(job_id)}/summary")
    except ApiError:
        return {}
    groups = (summary or {}).get("Summary") or {}
    return {
        str(name): counts.get("Queued", 0)
        for name, counts in groups.items()
        if isinstance(counts, Mapping) and isinstance(counts.get("Queued", 0), int)
    }


def _placement_failure_lines(api: ApiClient, job_id: str) -> list[str]:
    """Nomad's "Placement Failure" section of `job status`: while the job has a blocked
    evaluation, the failures of its latest evaluation that has some, group by group."""
    evals, _ = api.get(f"/v1/job/{quote(job_id)}/evaluations")
    evals = [e for e in evals or [] if isinstance(e, Mapping)]
    failing = [e for e in evals if e.get("FailedTGAllocs")]
    if not failing or not any(e.get("Status") == "blocked" for e in evals):
        return []
    latest = max(failing, key=lambda e: e.get("CreateIndex", 0))
    failed = latest["FailedTGAllocs"]
    lines = ["", "Placement Failure"]
    for i, group in enumerate(sorted(failed)):
        lines.append(f'Task Group "{group}":')
        metric = failed[group] if isinstance(failed[group], Mapping) else {}
        lines.extend(format_alloc_metric(metric))
        if i != len(failed) - 1:
            lines.append("")
    return lines


def alloc_rows(allocs: list[Mapping[str, Any]]) -> list[list[Any]]:
    """Nomad's allocation table: id, node, group, version, desired, status, ages."""
    rows: list[list[Any]] = [
        ["ID", "Node ID", "Task Group", "Version", "Desired", "Status", "Created", "Modified"]
    ]
    for a in sorted(allocs, key=lambda a: a.get("CreateIndex", 0), reverse=True):
        rows.append(
            [
                short_id(a.get("ID", "")),
                short_id(a.get("NodeID", "")),
                a.get("TaskGroup"),
                a.get("JobVersion", (a.get("Job") or {}).get("Version", 0)),
                a.get("DesiredStatus"),
                a.get("ClientStatus"),
                pretty_time_ago(from_ns(a.get("CreateTime"))),
                pretty_time_ago(from_ns(a.get("ModifyTime"))),
            ]
        )
    return rows


def _job_info(job: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("ID", job.get("ID")),
        ("Name", job.get("Name")),
        ("Submit Date", format_time_ns(job.get("SubmitTime"))),
        ("Type", job.get("Type")),
        ("Priority", job.get("Priority")),
        ("Datacenters", ",".join(job.get("Datacenters") or ())),
        ("Namespace", job.get("Namespace") or "default"),
        ("Status", job.get("Status")),
        ("Periodic", str(bool(job.get("Periodic"))).lower()),
        ("Parameterized", str(bool(job.get("ParameterizedJob"))).lower()),
    ]


def job_status(args: argparse.Namespace, out: Output) -> int:
    with open_session(args, out) as session:
        api = session.api
        if not args.job:
            jobs, _ = api.get("/v1/jobs")
            if not jobs:
                out.line("No running jobs")
                return EXIT_OK
            out.line(format_table(_job_rows(jobs)))
            return EXIT_OK
        job = _find_job(api, args.job)
        allocs, _ = api.get(f"/v1/job/{quote(job['ID'])}/allocations")
        allocs = allocs or []
        out.line(format_kv(_job_info(job)))
        out.line()
        out.line("Summary")
        out.line(format_table(_summary_rows(job, allocs, _queued(api, job["ID"]))))
        for line in _placement_failure_lines(api, job["ID"]):
            out.line(line)
        out.line()
        out.line("Allocations")
        out.line(format_table(alloc_rows(allocs)) if allocs else "No allocations placed")
    return EXIT_OK


def job_stop(args: argparse.Namespace, out: Output) -> int:
    with open_session(args, out) as session:
        api = session.api
        job = _find_job(api, args.job)
        job_id = str(job["ID"])
        allocs, _ = api.get(f"/v1/job/{quote(job_id)}/allocations")
        reply, _ = api.delete(f"/v1/job/{quote(job_id)}", {"purge": True if args.purge else None})
        eval_id = str((reply or {}).get("EvalID") or "")
        if args.detach:
            out.line(eval_id)
            return EXIT_OK
        out.line(f'==> {now_text()}: Monitoring evaluation "{short_id(eval_id)}"')
        live = [a["ID"] for a in allocs or [] if not is_terminal(a)]
        wait_terminal(api, live, out)
        out.line(f'==> {now_text()}: Job "{job_id}" stopped')
    return EXIT_OK


def _read_payload(source: str | None) -> bytes:
    if source is None:
        return b""
    try:
        if source == "-":
            return sys.stdin.buffer.read()
        return Path(source).read_bytes()
    except OSError as err:
        raise bad_input(f"Error reading input data: {err.strerror or err}") from None


def job_dispatch(args: argparse.Namespace, out: Output) -> int:
    payload = _read_payload(args.input)
    body = {"Payload": base64.b64encode(payload).decode("ascii"), "Meta": dict(args.meta)}
    with open_session(args, out) as session:
        try:
            reply, _ = session.api.post(f"/v1/job/{quote(args.job)}/dispatch", body)
        except ApiError as err:
            code = EXIT_BAD_INPUT if 400 <= err.status < 500 else EXIT_FAILED
            raise CliError(f"Failed to dispatch job: {err.message}", code) from None
        reply = reply or {}
        dispatched = str(reply.get("DispatchedJobID") or "")
        eval_id = str(reply.get("EvalID") or "")
        pairs = [("Dispatched Job ID", dispatched)]
        if eval_id:
            pairs.append(("Evaluation ID", short_id(eval_id)))
        out.line(format_kv(pairs))
        if args.detach or not eval_id or not dispatched:
            return EXIT_OK
        out.line()
        failed = _report_placement(session.api, eval_id, out)
        if failed is not None and not failed:
            return EXIT_BAD_INPUT
        code = watch_to_the_end(session, dispatched, _since(reply), out)
        return EXIT_BAD_INPUT if failed else code
