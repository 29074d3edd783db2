"""The older commands, kept working as clients of the agent: `status`, `logs`, `stop`, `gc`
(and `run`, which is `job run` in `jobs`).

They take `--data-dir` and talk to that data dir's agent, starting one inside the
command when none runs (so they work on a data dir nobody serves):

- `status [--json]`: every allocation, sorted by name; `--json` prints the list in
  Nomad's API shape (`ID`, `Name`, `ClientStatus`, `TaskStates` with `Events`, …).
- `logs ALLOC TASK [--stderr]`: a task's whole log.
- `stop [ALLOC]`: stop the matching allocations (all by default) and wait until their
  tasks are dead. Stopping everything deregisters the jobs, so nothing replaces them.
- `gc [ALLOC]`: remove finished allocations, their files and their state.

Threads and locks: none; handlers run on the command's thread. Owner: `main`
dispatches to these handlers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from typing import Any

from allocrunner.cli.allocs import resolve_alloc, resolve_task, stream_logs
from allocrunner.cli.api import ApiClient, ApiError
from allocrunner.cli.common import EXIT_FAILED, EXIT_OK, bad_input
from allocrunner.cli.connect import open_session
from allocrunner.cli.monitor import is_terminal, quote, task_states
from allocrunner.cli.output import Output, short_id

__all__ = ["all_allocations", "legacy_gc", "legacy_logs", "legacy_status", "legacy_stop"]

Alloc = Mapping[str, Any]
POLL_WAIT = 2.0


def all_allocations(api: ApiClient) -> list[Alloc]:
    """Every allocation in full (task events included), sorted by name then id."""
    stubs, _ = api.get("/v1/allocations")
    full = []
    for stub in stubs or []:
        try:
            alloc, _ = api.get(f"/v1/allocation/{quote(stub['ID'])}")
        except ApiError as err:
            if err.status == 404:  # collected between the two calls
                continue
            raise
        full.append(alloc)
    return sorted(full, key=lambda a: (a.get("Name", ""), a.get("ID", "")))


def _task_summary(alloc: Alloc) -> str:
    return ", ".join(
        f"{name}={'failed' if ts.get('Failed') else ts.get('State', '')}"
        for name, ts in task_states(alloc).items()
    )


def legacy_status(args: argparse.Namespace, out: Output) -> int:
    with open_session(args, out, embed=True) as session:
        allocs = all_allocations(session.api)
    if args.json:
        out.line(json.dumps(allocs, indent=2))
        return EXIT_OK
    if not allocs:
        out.line("No allocations")
    for a in allocs:
        name, status = a.get("Name", ""), a.get("ClientStatus", "")
        out.line(f"{short_id(a.get('ID', ''))}  {name:<30} {status:<9} {_task_summary(a)}")
    return EXIT_OK


def legacy_logs(args: argparse.Namespace, out: Output) -> int:
    with open_session(args, out, embed=True) as session:
        alloc = resolve_alloc(session.api, args.alloc)
        task = resolve_task(alloc, args.task)
        stream_logs(session.api, out, alloc["ID"], task, stderr=args.stderr)
    return EXIT_OK


def _matching(allocs: list[Alloc], prefix: str | None) -> list[Alloc]:
    return [a for a in allocs if prefix is None or str(a.get("ID", "")).startswith(prefix)]


def _request_stops(api: ApiClient, targets: list[Alloc], everything: bool) -> None:
    """Deregister the jobs when stopping everything, else stop each allocation."""
    if everything:
        for job_id in sorted({str(a.get("JobID", "")) for a in targets}):
            api.delete(f"/v1/job/{quote(job_id)}")
        return
    for alloc in targets:
        api.post(f"/v1/allocation/{quote(alloc['ID'])}/stop")


def _wait_all_terminal(api: ApiClient, ids: list[str], timeout: float) -> list[Alloc]:
    """The allocations once all are terminal; the ones still running after `timeout`."""
    deadline = time.monotonic() + timeout
    index = 0
    while True:
        current = [a for a in all_allocations(api) if a.get("ID") in ids]
        running = [a for a in current if not is_terminal(a)]
        if not running:
            return []
        left = deadline - time.monotonic()
        if left <= 0:
            return running
        _, index = api.get("/v1/allocations", index=max(index, 1), wait=min(POLL_WAIT, left))


def _agent_went_away(err: ApiError) -> bool:
    """The agent stopped answering (unreachable, or shutting down): an embedded agent
    of a `run` that just finished does exactly that."""
    return err.status in (0, 503)


def _stop_targets(api: ApiClient, prefix: str | None) -> list[Alloc]:
    targets = _matching(all_allocations(api), prefix)
    if not targets:
        raise bad_input(f"no allocation matching {prefix or 'any'!r}")
    return [a for a in targets if not is_terminal(a)]


def legacy_stop(args: argparse.Namespace, out: Output) -> int:
    deadline = time.monotonic() + args.timeout
    live: list[Alloc] | None = None
    running: list[Alloc] = []
    while True:
        with open_session(args, out, embed=True) as session:
            try:
                if live is None:
                    live = _stop_targets(session.api, args.alloc)
                    _request_stops(session.api, live, everything=args.alloc is None)
                ids = [a["ID"] for a in live]
                left = max(0.0, deadline - time.monotonic())
                running = _wait_all_terminal(session.api, ids, left)
            except ApiError as err:
                if live is None or not _agent_went_away(err) or time.monotonic() > deadline:
                    raise
                continue  # ask whichever agent serves the data dir now
        break
    if running:
        names = ", ".join(str(a.get("Name", "")) for a in running)
        out.line(f"==> still running after {args.timeout}s: {names}")
        return EXIT_FAILED
    for alloc in live:
        out.line(f"==> stopped {alloc.get('Name', '')}")
    return EXIT_OK


def legacy_gc(args: argparse.Namespace, out: Output) -> int:
    with open_session(args, out, embed=True) as session:
        api = session.api
        targets = _matching(all_allocations(api), args.alloc)
        if args.alloc is not None and not targets:
            raise bad_input(f"no allocation matching {args.alloc!r}")
        for alloc in targets:
            if not is_terminal(alloc):
                out.line(f"==> kept {alloc.get('Name', '')}: tasks still running")
                continue
            api.get(f"/v1/client/allocation/{quote(alloc['ID'])}/gc")
            out.line(f"==> collected {alloc.get('Name', '')}")
    return EXIT_OK
