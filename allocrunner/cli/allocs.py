"""`alloc status|logs|fs|restart|signal|stop` and `node status`, in Nomad's shapes.

Every alloc command takes an allocation id or a unique prefix of it (at least two
characters), resolved through `GET /v1/allocations?prefix=`; an unknown or ambiguous
one is bad input (exit 2). `alloc status` prints the allocation the way Nomad does,
with a "Recent Events" table per task, newest first; `-json` prints the API JSON.

Threads: each handler runs on the command's thread; `alloc logs -f` without
-stdout or -stderr also follows stderr on a daemon thread (`_follow_both`). Locks:
none. Owner: `main` dispatches to these handlers through the parser
`args.build_parser` builds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
from collections.abc import Mapping
from typing import Any

from allocrunner.cli.api import ApiClient, ApiError
from allocrunner.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, CliError, bad_input
from allocrunner.cli.connect import open_session
from allocrunner.cli.monitor import quote, task_names, task_states, wait_terminal
from allocrunner.cli.output import (
    Output,
    event_description,
    format_kv,
    format_table,
    format_time,
    format_time_ns,
    from_ns,
    human_size,
    now_text,
    parse_rfc3339,
    pretty_time_ago,
    short_id,
)

__all__ = [
    "alloc_fs",
    "alloc_logs",
    "alloc_restart",
    "alloc_signal",
    "alloc_status",
    "alloc_stop",
    "node_status",
    "resolve_alloc",
    "resolve_task",
    "stream_logs",
]

DEFAULT_TAIL_LINES = 10
TAIL_BYTES_PER_LINE = 128

Alloc = Mapping[str, Any]


def _prefix_query(prefix: str) -> str:
    """Nomad's id index wants an even number of hex digits; ask for a superset."""
    return prefix if len(prefix.replace("-", "")) % 2 == 0 else prefix[:-1]


def resolve_alloc(api: ApiClient, prefix: str) -> Alloc:
    """The full allocation whose id is `prefix` or starts with it."""
    if len(prefix) < 2:
        raise bad_input("Identifier must contain at least two characters.")
    stubs, _ = api.get("/v1/allocations", {"prefix": _prefix_query(prefix)})
    matches = [s for s in stubs or [] if str(s.get("ID", "")).startswith(prefix)]
    exact = [s for s in matches if s.get("ID") == prefix]
    if exact:
        matches = exact
    if not matches:
        raise bad_input(f"No allocation(s) with prefix or id {prefix!r} found")
    if len(matches) > 1:
        names = ", ".join(f"{short_id(s['ID'])} ({s.get('Name', '')})" for s in matches)
        raise bad_input(f"Prefix {prefix!r} matched multiple allocations: {names}")
    try:
        alloc, _ = api.get(f"/v1/allocation/{quote(matches[0]['ID'])}")
    except ApiError as err:
        if err.status == 404:
            raise bad_input(f"No allocation(s) with prefix or id {prefix!r} found") from None
        raise
    return alloc


def resolve_task(alloc: Alloc, task: str | None) -> str:
    """`task`, checked against the group; or the group's only task."""
    names = task_names(alloc)
    if task:
        if names and task not in names:
            raise bad_input(f"Could not find task named: {task} (tasks: {', '.join(names)})")
        return task
    if len(names) == 1:
        return names[0]
    raise bad_input(f"Allocation has multiple tasks; name one of: {', '.join(names)}")


def _alloc_info(alloc: Alloc) -> list[tuple[str, Any]]:
    job = alloc.get("Job") or {}
    pairs = [
        ("ID", alloc.get("ID")),
        ("Eval ID", short_id(alloc.get("EvalID") or "")),
        ("Name", alloc.get("Name")),
        ("Node ID", short_id(alloc.get("NodeID") or "")),
        ("Node Name", alloc.get("NodeName")),
        ("Job ID", alloc.get("JobID")),
        ("Job Version", job.get("Version", 0)),
        ("Client Status", alloc.get("ClientStatus")),
        ("Client Description", alloc.get("ClientDescription")),
        ("Desired Status", alloc.get("DesiredStatus")),
        ("Desired Description", alloc.get("DesiredDescription")),
        ("Created", pretty_time_ago(from_ns(alloc.get("CreateTime")))),
        ("Modified", pretty_time_ago(from_ns(alloc.get("ModifyTime")))),
    ]
    if alloc.get("DeploymentID"):
        pairs.append(("Deployment ID", short_id(alloc["DeploymentID"])))
    if alloc.get("PreviousAllocation"):
        pairs.append(("Previous Alloc ID", short_id(alloc["PreviousAllocation"])))
    return pairs


def _task_lifecycle(alloc: Alloc, task: str) -> str:
    job = alloc.get("Job") or {}
    for group in job.get("TaskGroups") or ():
        if group.get("Name") != alloc.get("TaskGroup"):
            continue
        for t in group.get("Tasks") or ():
            lifecycle = t.get("Lifecycle") or {}
            if t.get("Name") == task and lifecycle.get("Hook"):
                sidecar = " sidecar" if lifecycle.get("Sidecar") else ""
                return f" ({lifecycle['Hook']}{sidecar})"
    return ""


def task_report(alloc: Alloc, task: str, state: Mapping[str, Any]) -> list[str]:
    """The lines Nomad prints for one task: its state, times and recent events."""
    lines = [f'Task "{task}"{_task_lifecycle(alloc, task)} is "{state.get("State", "")}"']
    lines.append("Task Events:")
    times = [
        ("Started At", format_time(parse_rfc3339(state.get("StartedAt")))),
        ("Finished At", format_time(parse_rfc3339(state.get("FinishedAt")))),
        ("Total Restarts", state.get("Restarts", 0)),
        ("Last Restart", format_time(parse_rfc3339(state.get("LastRestart")))),
    ]
    lines.append(format_kv(times))
    lines.append("")
    lines.append("Recent Events:")
    rows: list[list[Any]] = [["Time", "Type", "Description"]]
    for event in reversed(state.get("Events") or []):
        rows.append(
            [format_time_ns(event.get("Time")), event.get("Type"), event_description(event)]
        )
    lines.append(format_table(rows))
    return lines


def _addresses(alloc: Alloc) -> str:
    """Nomad's "Allocation Addresses" block: one row per allocated port ("" when the
    allocation has no network with ports)."""
    shared = (alloc.get("AllocatedResources") or {}).get("Shared") or {}
    networks = shared.get("Networks") or []
    ports = shared.get("Ports") or []
    if not networks or not ports:
        return ""
    rows: list[list[Any]] = [["Label", "Dynamic", "Address"]]
    for port in ports:
        address = f"{port.get('HostIP', '')}:{port.get('Value')}"
        if (port.get("To") or 0) > 0:
            address += f" -> {port['To']}"
        # Nomad marks every allocated port "yes" here, static ones included.
        rows.append([f"*{port.get('Label', '')}", "yes", address])
    mode = networks[0].get("Mode") or ""
    title = f'Allocation Addresses (mode = "{mode}"):' if mode else "Allocation Addresses:"
    return f"{title}\n{format_table(rows)}"


def alloc_status(args: argparse.Namespace, out: Output) -> int:
    with open_session(args, out) as session:
        alloc = resolve_alloc(session.api, args.alloc)
    if args.json:
        out.line(json.dumps(alloc, indent=4, sort_keys=True))
        return EXIT_OK
    out.line(format_kv(_alloc_info(alloc)))
    addresses = _addresses(alloc)
    if addresses:
        out.line()
        out.line(addresses)
    states = task_states(alloc)
    ordered = [t for t in task_names(alloc) if t in states] + [
        t for t in states if t not in task_names(alloc)
    ]
    for task in ordered:
        out.line()
        for line in task_report(alloc, task, states[task]):
            out.line(line)
    return EXIT_OK


def _tail_bytes(api: ApiClient, alloc_id: str, params: dict[str, Any], lines: int) -> bytes:
    """The last `lines` lines of a log, asking for more bytes until they are there."""
    want = max(lines, 1) * TAIL_BYTES_PER_LINE
    while True:
        data = api.get_bytes(
            f"/v1/client/fs/logs/{quote(alloc_id)}", {**params, "origin": "end", "offset": want}
        )
        if data.count(b"\n") > lines or len(data) < want:
            break
        want *= 4
    kept = data.splitlines(keepends=True)[-lines:] if lines > 0 else []
    return b"".join(kept)


def stream_logs(
    api: ApiClient,
    out: Output,
    alloc_id: str,
    task: str,
    *,
    stderr: bool = False,
    follow: bool = False,
    tail_lines: int | None = None,
) -> None:
    """Copy a task's log to `out`: all of it, or its last lines; then follow it."""
    params: dict[str, Any] = {"task": task, "type": "stderr" if stderr else "stdout"}
    params["plain"] = True
    origin, offset = "start", 0
    if tail_lines is not None:
        tail = _tail_bytes(api, alloc_id, params, tail_lines)
        if not follow:
            out.write_bytes(tail)
            return
        origin, offset = "end", len(tail)
    query = {**params, "origin": origin, "offset": offset, "follow": follow}
    path = f"/v1/client/fs/logs/{quote(alloc_id)}"
    if not follow:
        out.write_bytes(api.get_bytes(path, query))
        return
    chunks = api.stream(path, query, timeout=None)
    try:
        for chunk in chunks:
            out.write_bytes(chunk)
            if out.closed:
                return
    finally:
        chunks.close()


def alloc_logs(args: argparse.Namespace, out: Output) -> int:
    tail = None
    if args.tail or args.lines is not None:
        tail = DEFAULT_TAIL_LINES if args.lines is None else args.lines
        if tail < 0:
            raise bad_input("-n must be zero or more")
    if args.stdout and args.stderr:
        raise bad_input("-stdout and -stderr cannot be used together")
    with open_session(args, out) as session:
        alloc = resolve_alloc(session.api, args.alloc)
        task = resolve_task(alloc, args.task)
        if args.follow and not (args.stdout or args.stderr or tail is not None):
            _follow_both(session.api, out, alloc["ID"], task)
            return EXIT_OK
        stream_logs(
            session.api,
            out,
            alloc["ID"],
            task,
            stderr=args.stderr,
            follow=args.follow,
            tail_lines=tail,
        )
    return EXIT_OK


def _follow_both(api: ApiClient, out: Output, alloc_id: str, task: str) -> None:
    """Nomad's `alloc logs -f` with neither -stdout nor -stderr: stdout is followed on
    this thread into stdout, and stderr at the same time on a `logs-stderr` thread into
    stderr; it returns once both logs ended (the task is dead and read to the end). The
    thread is a daemon, so an interrupted command never waits for it."""
    failures: list[BaseException] = []

    def copy_stderr() -> None:
        path = f"/v1/client/fs/logs/{quote(alloc_id)}"
        query = {"task": task, "type": "stderr", "plain": True, "follow": True}
        try:
            chunks = api.stream(path, query, timeout=None)
            try:
                for chunk in chunks:
                    _write_stderr(chunk)
            finally:
                chunks.close()
        except Exception as err:  # reported by the main thread
            failures.append(err)

    errors = threading.Thread(target=copy_stderr, name="logs-stderr", daemon=True)
    errors.start()
    stream_logs(api, out, alloc_id, task, follow=True)
    errors.join()
    if failures:
        raise failures[0]


def _write_stderr(data: bytes) -> None:
    """Log bytes to the command's stderr as they are; a closed stderr drops them."""
    buffer = getattr(sys.stderr, "buffer", None)
    with contextlib.suppress(OSError, ValueError):
        if buffer is None:
            sys.stderr.write(data.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        else:
            buffer.write(data)
            buffer.flush()


def _fs_rows(entries: list[Mapping[str, Any]]) -> list[list[Any]]:
    rows: list[list[Any]] = [["Mode", "Size", "Modified Time", "Name"]]
    for entry in entries:
        name = str(entry.get("Name", ""))
        rows.append(
            [
                entry.get("FileMode"),
                human_size(entry.get("Size")),
                format_time(parse_rfc3339(entry.get("ModTime"))),
                name + "/" if entry.get("IsDir") else name,
            ]
        )
    return rows


def _fs_call(api: ApiClient, kind: str, alloc_id: str, path: str) -> Any:
    try:
        if kind == "cat":
            return api.get_bytes(f"/v1/client/fs/cat/{quote(alloc_id)}", {"path": path})
        data, _ = api.get(f"/v1/client/fs/{kind}/{quote(alloc_id)}", {"path": path})
        return data
    except ApiError as err:
        if 400 <= err.status < 500:
            raise bad_input(f"{path}: {err.message}") from None
        raise


def alloc_fs(args: argparse.Namespace, out: Output) -> int:
    with open_session(args, out) as session:
        api = session.api
        alloc = resolve_alloc(api, args.alloc)
        path = args.path or "/"
        stat = _fs_call(api, "stat", alloc["ID"], path) or {}
        if args.stat:
            out.line(format_table(_fs_rows([stat])))
        elif stat.get("IsDir"):
            entries = _fs_call(api, "ls", alloc["ID"], path) or []
            out.line(format_table(_fs_rows(entries)))
        else:
            out.write_bytes(_fs_call(api, "cat", alloc["ID"], path))
    return EXIT_OK


def _task_arg(args: argparse.Namespace) -> str | None:
    if args.task and args.task_flag and args.task != args.task_flag:
        raise bad_input("give the task once: as an argument or with -task")
    return args.task or args.task_flag


def _client_action(what: str, call: Any) -> None:
    try:
        call()
    except ApiError as err:
        code = EXIT_BAD_INPUT if err.status in (400, 404) else EXIT_FAILED
        raise CliError(f"{what}: {err.message}", code) from None


def alloc_restart(args: argparse.Namespace, out: Output) -> int:
    task = _task_arg(args)
    if task and args.all_tasks:
        raise bad_input("The -all-tasks option is not allowed when restarting a specific task.")
    with open_session(args, out) as session:
        alloc = resolve_alloc(session.api, args.alloc)
        if task:
            resolve_task(alloc, task)
        body = {"TaskName": task or "", "AllTasks": bool(args.all_tasks)}
        path = f"/v1/client/allocation/{quote(alloc['ID'])}/restart"
        what = f"Failed to restart {short_id(alloc['ID'])}"
        _client_action(what, lambda: session.api.post(path, body))
    return EXIT_OK


def _signal_name(text: str) -> str:
    name = text.strip().upper()
    if name.isalpha() and not name.startswith("SIG"):
        name = "SIG" + name
    return name


def alloc_signal(args: argparse.Namespace, out: Output) -> int:
    task = _task_arg(args)
    with open_session(args, out) as session:
        alloc = resolve_alloc(session.api, args.alloc)
        if task:
            resolve_task(alloc, task)
        body = {"Task": task or "", "Signal": _signal_name(args.signal)}
        path = f"/v1/client/allocation/{quote(alloc['ID'])}/signal"
        _client_action("Error signalling allocation", lambda: session.api.post(path, body))
    return EXIT_OK


def alloc_stop(args: argparse.Namespace, out: Output) -> int:
    with open_session(args, out) as session:
        api = session.api
        alloc = resolve_alloc(api, args.alloc)
        path = f"/v1/allocation/{quote(alloc['ID'])}/stop"
        reply: dict[str, Any] = {}

        def stop() -> None:
            data, _ = api.post(path)
            reply.update(data or {})

        _client_action("Error stopping allocation", stop)
        eval_id = str(reply.get("EvalID") or "")
        if args.detach:
            out.line(eval_id)
            return EXIT_OK
        out.line(f'==> {now_text()}: Monitoring evaluation "{short_id(eval_id)}"')
        wait_terminal(api, [alloc["ID"]], out)
        out.line(f'==> {now_text()}: Allocation "{short_id(alloc["ID"])}" stopped')
    return EXIT_OK


def _node_rows(nodes: list[Mapping[str, Any]]) -> list[list[Any]]:
    rows: list[list[Any]] = [
        ["ID", "Node Pool", "DC", "Name", "Class", "Drain", "Eligibility", "Status"]
    ]
    for node in nodes:
        rows.append(
            [
                short_id(node.get("ID", "")),
                node.get("NodePool") or "default",
                node.get("Datacenter"),
                node.get("Name"),
                node.get("NodeClass"),
                str(bool(node.get("Drain"))).lower(),
                node.get("SchedulingEligibility"),
                node.get("Status"),
            ]
        )
    return rows


def _node_info(node: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("ID", node.get("ID")),
        ("Name", node.get("Name")),
        ("Node Pool", node.get("NodePool") or "default"),
        ("Class", node.get("NodeClass")),
        ("DC", node.get("Datacenter")),
        ("Drain", str(bool(node.get("Drain"))).lower()),
        ("Eligibility", node.get("SchedulingEligibility")),
        ("Status", node.get("Status")),
    ]


def node_status(args: argparse.Namespace, out: Output) -> int:
    with open_session(args, out) as session:
        nodes, _ = session.api.get("/v1/nodes")
        nodes = nodes or []
        if not args.node:
            out.line(format_table(_node_rows(nodes)) if nodes else "No nodes registered")
            return EXIT_OK
        matches = [n for n in nodes if str(n.get("ID", "")).startswith(args.node)]
        if len(matches) != 1:
            what = "No node(s)" if not matches else "Multiple nodes"
            raise bad_input(f"{what} with prefix or id {args.node!r}")
        node, _ = session.api.get(f"/v1/node/{quote(matches[0]['ID'])}")
        out.line(format_kv(_node_info(node or matches[0])))
    return EXIT_OK
