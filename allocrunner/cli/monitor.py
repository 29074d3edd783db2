"""Watching a job's allocations run: live task events, then a summary per allocation.

The watch is a loop of blocking queries on `GET /v1/job/:id/allocations` (the agent
answers as soon as something changed, or after the wait), then `GET /v1/allocation/:id`
for each allocation still running, whose task events are printed once each, oldest
first:

    12:00:01.250 hello-batch.greet[0] count: Terminated - Exit Code: 0

Before the watch, the register's evaluation is read (`GET /v1/evaluation/:id`). When
it could not place every allocation, its ``FailedTGAllocs`` are printed as Nomad's
monitor prints them (`print_placement_failures`):

    ==> <time>: Evaluation "1f2e3d4c" finished with status "complete" but failed to
    place all allocations:
        <time>: Task Group "g" (failed to place 1 allocation):
          * Constraint "${attr.kernel.name} = windows": 1 nodes excluded by filter
        <time>: Evaluation "5a6b7c8d" waiting for additional capacity to place
    remainder

(each message on one line).

and the command exits 2 (at once when nothing was placed, else once the placed
allocations are done).

An allocation is watched when this registration placed or changed it: its
`ModifyIndex` is at least the index the register answered with. When a register
changes nothing (an unchanged batch job that already ran), the job's existing
allocations are shown instead. The watch ends when every watched allocation is
terminal (complete, failed or lost).

Threads and locks: none; `JobWatch` and `EventPrinter` are owned by the command's
thread. Owner: `jobs.watch_to_the_end` drives a `JobWatch` for `job run` and `run`;
`job stop` and `alloc stop` wait with `wait_terminal`.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from allocrunner._locking import confined
from allocrunner.cli.api import ApiClient, ApiError
from allocrunner.cli.output import Output, clock, event_description, now_text, short_id

__all__ = [
    "EventPrinter",
    "JobWatch",
    "alloc_failed",
    "format_alloc_metric",
    "is_terminal",
    "placement_failed",
    "print_placement_failures",
    "print_summaries",
    "summary_line",
    "task_names",
    "wait_terminal",
]

TERMINAL_STATUSES = frozenset({"complete", "failed", "lost"})
POLL_WAIT = 2.0  # seconds a blocking query may wait for a change
NOTHING_PLACED_GRACE = 3.0  # seconds without any new allocation before showing the old ones
STDOUT_TAIL = 4096

Alloc = Mapping[str, Any]


def quote(value: str) -> str:
    """An id as one URL path segment."""
    return urllib.parse.quote(value, safe="")


def is_terminal(alloc: Alloc) -> bool:
    return alloc.get("ClientStatus") in TERMINAL_STATUSES


def task_states(alloc: Alloc) -> Mapping[str, Any]:
    states = alloc.get("TaskStates")
    return states if isinstance(states, Mapping) else {}


def task_names(alloc: Alloc) -> list[str]:
    """The group's tasks in job order (from the embedded job), else the reported ones."""
    job = alloc.get("Job")
    if isinstance(job, Mapping):
        for group in job.get("TaskGroups") or ():
            if group.get("Name") == alloc.get("TaskGroup"):
                return [t.get("Name", "") for t in group.get("Tasks") or ()]
    return list(task_states(alloc))


def alloc_failed(alloc: Alloc) -> bool:
    """A task failed, or the allocation itself did (failed, lost)."""
    if alloc.get("ClientStatus") in ("failed", "lost"):
        return True
    return any(bool(ts.get("Failed")) for ts in task_states(alloc).values())


def summary_line(alloc: Alloc) -> str:
    """`<name>: <client status> (task=state, …)`; a failed task reads `failed`."""
    parts = []
    for task, ts in task_states(alloc).items():
        parts.append(f"{task}={'failed' if ts.get('Failed') else ts.get('State', '')}")
    name = alloc.get("Name") or alloc.get("ID", "")
    return f"{name}: {alloc.get('ClientStatus', '')} ({', '.join(parts)})"


def _event_key(event: Mapping[str, Any]) -> tuple[Any, ...]:
    return (event.get("Time"), event.get("Type"), event.get("Message"), event.get("DisplayMessage"))


class EventPrinter:
    """Not thread-safe; owned by the command's main thread. Prints each task event once."""

    def __init__(self, out: Output) -> None:
        self._out = out
        self._last: dict[tuple[str, str], tuple[Any, ...]] = {}

    def show(self, alloc: Alloc) -> None:
        fresh: list[tuple[int, str, Mapping[str, Any]]] = []
        for task, ts in task_states(alloc).items():
            for event in self._new_events((alloc.get("ID", ""), task), ts.get("Events") or []):
                stamp = event.get("Time")
                fresh.append((stamp if isinstance(stamp, int) else 0, task, event))
        fresh.sort(key=lambda item: item[0])
        for stamp, task, event in fresh:
            line = f"{clock(stamp)} {alloc.get('Name', '')} {task}: {event.get('Type', '')}"
            text = event_description(event)
            if text:
                line += f" - {text}"
            self._out.line(line)

    def _new_events(
        self, key: tuple[str, str], events: list[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]]:
        """Events after the last one printed (all of them if it left the ring)."""
        last = self._last.get(key)
        if last is not None:
            for i in range(len(events) - 1, -1, -1):
                if _event_key(events[i]) == last:
                    events = events[i + 1 :]
                    break
        if events:
            self._last[key] = _event_key(events[-1])
        return list(events)


class JobWatch:
    """Not thread-safe; owned by the command's main thread. Follows one job's allocations.

    `since` is the register's index: allocations modified at or after it are watched.
    Each `poll()` is one blocking round; `allocs()` are the latest full allocations.
    """

    _index = confined("command main")
    _watched = confined("command main")
    _showing_old = confined("command main")

    def __init__(
        self, api: ApiClient, job_id: str, since: int, printer: EventPrinter | None
    ) -> None:
        self.api = api
        self.job_id = job_id
        self.since = since
        self.printer = printer
        self._index = 0
        self._watched: dict[str, Alloc] = {}
        self._started = time.monotonic()
        self._showing_old = False

    def allocs(self) -> list[Alloc]:
        return sorted(self._watched.values(), key=lambda a: (a.get("Name", ""), a.get("ID", "")))

    def done(self) -> bool:
        return bool(self._watched) and all(is_terminal(a) for a in self._watched.values())

    def nothing_placed(self) -> bool:
        """The grace passed, nothing new was placed and the job has no allocation at all."""
        return self._showing_old and not self._watched

    def poll(self, wait: float = POLL_WAIT) -> None:
        stubs, self._index = self.api.get(
            f"/v1/job/{quote(self.job_id)}/allocations", index=self._index, wait=wait
        )
        stubs = stubs or []
        for stub in stubs:
            if stub.get("ID") not in self._watched and self._wanted(stub):
                self._watched[stub["ID"]] = stub
        if not self._watched and time.monotonic() - self._started > NOTHING_PLACED_GRACE:
            self._showing_old = True
            for stub in stubs:
                self._watched[stub["ID"]] = stub
        self._refresh()

    def _wanted(self, stub: Alloc) -> bool:
        index = stub.get("ModifyIndex")
        return self._showing_old or not isinstance(index, int) or index >= self.since

    def _refresh(self) -> None:
        for alloc_id, known in list(self._watched.items()):
            if is_terminal(known) and "Job" in known:
                continue  # a full, terminal allocation never changes again
            try:
                full, _ = self.api.get(f"/v1/allocation/{quote(alloc_id)}")
            except ApiError as err:
                if err.status != 404:
                    raise
                continue
            self._watched[alloc_id] = full
            if self.printer is not None:
                self.printer.show(full)


def print_summaries(api: ApiClient, allocs: Iterable[Alloc], out: Output) -> None:
    """`==> <summary>` per allocation, then the tail of each task's stdout."""
    for alloc in allocs:
        out.line(f"==> {summary_line(alloc)}")
        for task in task_names(alloc):
            text = _stdout_tail(api, alloc.get("ID", ""), task)
            if text.strip():
                out.line(f"--- {task} stdout ---")
                out.write(text if text.endswith("\n") else text + "\n")


def _stdout_tail(api: ApiClient, alloc_id: str, task: str) -> str:
    params = {
        "task": task,
        "type": "stdout",
        "origin": "end",
        "offset": STDOUT_TAIL,
        "plain": True,
    }
    try:
        data = api.get_bytes(f"/v1/client/fs/logs/{quote(alloc_id)}", params)
    except ApiError:
        return ""
    return data.decode("utf-8", errors="replace")


def wait_terminal(api: ApiClient, alloc_ids: list[str], out: Output) -> None:
    """Block until each allocation is terminal (or gone), printing its new events."""
    printer = EventPrinter(out)
    index = 0
    pending = list(alloc_ids)
    while pending:
        still = []
        for alloc_id in pending:
            try:
                alloc, _ = api.get(f"/v1/allocation/{quote(alloc_id)}")
            except ApiError as err:
                if err.status == 404:
                    continue
                raise
            printer.show(alloc)
            if not is_terminal(alloc):
                still.append(alloc_id)
        pending = still
        if pending:
            _, index = api.get("/v1/allocations", index=max(index, 1), wait=2.0)


# --- placement failures ----------------------------------------------------------------


def _counts(metric: Mapping[str, Any], key: str) -> list[tuple[str, int]]:
    value = metric.get(key)
    if not isinstance(value, Mapping):
        return []
    return sorted((str(k), v) for k, v in value.items() if isinstance(v, int))


def format_alloc_metric(metric: Mapping[str, Any], prefix: str = "  ") -> list[str]:
    """The lines Nomad's CLI writes for one AllocMetric (nodes evaluated and available,
    class and constraint filters, exhausted resources, class and dimension, quota)."""
    lines: list[str] = []
    if not metric.get("NodesEvaluated"):
        lines.append(f"{prefix}* No nodes were eligible for evaluation")
    for dc, available in _counts(metric, "NodesAvailable"):
        if available == 0:
            lines.append(f'{prefix}* No nodes are available in datacenter "{dc}"')
    for name, count in _counts(metric, "ClassFiltered"):
        lines.append(f'{prefix}* Class "{name}": {count} nodes excluded by filter')
    for name, count in _counts(metric, "ConstraintFiltered"):
        lines.append(f'{prefix}* Constraint "{name}": {count} nodes excluded by filter')
    exhausted = metric.get("NodesExhausted")
    if isinstance(exhausted, int) and exhausted > 0:
        lines.append(f"{prefix}* Resources exhausted on {exhausted} nodes")
    for name, count in _counts(metric, "ClassExhausted"):
        lines.append(f'{prefix}* Class "{name}" exhausted on {count} nodes')
    for name, count in _counts(metric, "DimensionExhausted"):
        lines.append(f'{prefix}* Dimension "{name}" exhausted on {count} nodes')
    for name in metric.get("QuotaExhausted") or ():
        lines.append(f'{prefix}* Quota limit hit "{name}"')
    return lines


def placement_failed(evaluation: Mapping[str, Any]) -> bool:
    """Whether the evaluation could not place every allocation."""
    return bool(evaluation.get("FailedTGAllocs"))


def print_placement_failures(evaluation: Mapping[str, Any], out: Output) -> None:
    """Nomad's "failed to place all allocations" block for `evaluation`: a header, then
    per group the count and its metric, then the blocked evaluation."""
    failed = evaluation.get("FailedTGAllocs")
    if not isinstance(failed, Mapping) or not failed:
        return
    out.line(
        f'==> {now_text()}: Evaluation "{short_id(str(evaluation.get("ID", "")))}" finished'
        f' with status "{evaluation.get("Status", "")}" but failed to place all allocations:'
    )
    for group in sorted(failed):
        metric = failed[group] if isinstance(failed[group], Mapping) else {}
        coalesced = metric.get("CoalescedFailures")
        count = (coalesced if isinstance(coalesced, int) else 0) + 1
        noun = "allocation" if count == 1 else "allocations"
        out.line(f'    {now_text()}: Task Group "{group}" (failed to place {count} {noun}):')
        for line in format_alloc_metric(metric):
            out.line(f"    {line}")
    blocked = str(evaluation.get("BlockedEval") or "")
    if blocked:
        out.line(
            f'    {now_text()}: Evaluation "{short_id(blocked)}" waiting for additional'
            " capacity to place remainder"
        )
