"""The `allocrunner` command: run Nomad job files on this machine and inspect them.

    allocrunner run JOBFILE [--data-dir DIR]    run every group of a job, live status
    allocrunner status [--json] --data-dir DIR  allocations recorded in DIR
    allocrunner logs --data-dir DIR ALLOC TASK [--stderr]
    allocrunner stop --data-dir DIR [ALLOC]     stop allocations (all by default)
    allocrunner gc --data-dir DIR [ALLOC]       remove finished allocations

Exit codes: 0 every task succeeded, 1 a task failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import attrs

from allocrunner.allocdir import AllocDir
from allocrunner.config import ClientConfig
from allocrunner.drivers import default_drivers
from allocrunner.errors import AllocRunnerError, JobSpecError, StateDBError
from allocrunner.jobspec import encode_allocation, load_job
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.state import SQLiteStateDB
from allocrunner.structs import (
    Allocation,
    AllocState,
    TaskEvent,
    TaskState,
    client_status_from_task_states,
    new_allocation,
)

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
POLL = 0.1
ALL = "all"


class _Printer:
    """Not thread-safe; owned by the command's main thread. Prints each new task event."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last: dict[tuple[str, str], TaskEvent] = {}

    def show(self, alloc: Allocation, state: AllocState) -> None:
        fresh = [
            (event, task)
            for task, ts in state.task_states.items()
            for event in self._new_events((alloc.id, task), ts)
        ]
        fresh.sort(key=lambda pair: pair[0].time or datetime.min.replace(tzinfo=UTC))
        for event, task in fresh:
            text = event.display_message or event.message
            stamp = event.time.strftime("%H:%M:%S.%f")[:-3] if event.time else ""
            line = f"{stamp} {alloc.name} {task}: {event.type}"
            if text:
                line += f" - {text}"
            print(line, file=self._out, flush=True)

    def _new_events(self, key: tuple[str, str], ts: TaskState) -> list[TaskEvent]:
        """Events after the last one printed (all of them if it left the ring)."""
        events = list(ts.events)
        last = self._last.get(key)
        if last is not None:
            for i in range(len(events) - 1, -1, -1):
                if events[i] == last:
                    events = events[i + 1 :]
                    break
        if events:
            self._last[key] = events[-1]
        return events


def _summary(ar: AllocRunner) -> str:
    state = ar.alloc_state()
    parts = []
    for task, ts in state.task_states.items():
        mark = "failed" if ts.failed else ts.state
        parts.append(f"{task}={mark}")
    return f"{ar.alloc().name}: {state.client_status} ({', '.join(parts)})"


def _print_output(ar: AllocRunner, out: TextIO, limit: int = 4096) -> None:
    """The tail of each task's stdout, so a short job shows what it printed."""
    logs_dir = ar.alloc_dir.logs_dir
    for task in ar.task_names():
        files = _log_files(logs_dir, task, "stdout")
        text = "".join(p.read_text(errors="replace") for p in files)[-limit:]
        if text.strip():
            print(f"--- {task} stdout ---", file=out)
            out.write(text if text.endswith("\n") else text + "\n")


def _log_files(logs_dir: Path, task: str, stream: str) -> list[Path]:
    """`<task>.<stream>.N` files in rotation order (oldest first)."""
    prefix = f"{task}.{stream}."
    if not logs_dir.is_dir():
        return []
    return sorted(
        (p for p in logs_dir.glob(prefix + "*") if p.name[len(prefix) :].isdigit()),
        key=lambda p: int(p.name[len(prefix) :]),
    )


def cmd_run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        job = load_job(args.jobfile)
    except JobSpecError as exc:
        print(f"allocrunner: {exc}", file=err)
        return EXIT_BAD_INPUT
    temporary = args.data_dir is None
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="allocrunner-"))
    config = ClientConfig.for_data_dir(data_dir)
    try:
        db = SQLiteStateDB(config.state_db_path())
    except StateDBError as exc:
        print(f"allocrunner: {exc}", file=err)
        return EXIT_BAD_INPUT
    drivers = default_drivers()
    runners: list[AllocRunner] = []
    interrupted = False
    pid_file = _pid_file(data_dir)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(str(os.getpid()))
    try:
        for group in job.task_groups:
            for index in range(group.count):
                alloc = new_allocation(job, group.name, index=index)
                runners.append(AllocRunner(alloc, config, state_db=db, drivers=drivers))
        print(f"==> running job {job.id!r}: {len(runners)} allocation(s) in {data_dir}", file=out)
        for ar in runners:
            ar.start()
        interrupted = _watch(runners, out, _stop_dir(data_dir))
        for ar in runners:
            print(f"==> {_summary(ar)}", file=out)
            _print_output(ar, out)
    finally:
        pid_file.unlink(missing_ok=True)
        if temporary:
            for ar in runners:
                ar.destroy()
            for ar in runners:
                ar.wait_destroyed(60)
        for ar in runners:
            ar.close()
        for driver in drivers.values():
            driver.close()
        db.close()
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    if interrupted:
        return EXIT_INTERRUPTED
    failed = any(ts.failed for ar in runners for ts in ar.alloc_state().task_states.values())
    return EXIT_TASK_FAILED if failed else EXIT_OK


def _stop_update(ar: AllocRunner) -> None:
    alloc = ar.alloc()
    ar.update(
        attrs.evolve(alloc, desired_status="stop", alloc_modify_index=alloc.alloc_modify_index + 1)
    )


def _take_stop_requests(runners: Sequence[AllocRunner], stop_dir: Path, out: TextIO) -> None:
    """Apply `allocrunner stop` requests left in `stop_dir` by another process."""
    if not stop_dir.is_dir():
        return
    for request in stop_dir.iterdir():
        prefix = request.name
        request.unlink(missing_ok=True)
        for ar in runners:
            if prefix == ALL or ar.id.startswith(prefix):
                print(f"==> stop requested for {ar.alloc().name}", file=out)
                _stop_update(ar)


def _watch(runners: Sequence[AllocRunner], out: TextIO, stop_dir: Path) -> bool:
    """Print events until every allocation has finished; on Ctrl-C stop them all."""
    printer = _Printer(out)
    interrupted = False
    previous = signal.getsignal(signal.SIGINT)
    try:
        while True:
            try:
                for ar in runners:
                    printer.show(ar.alloc(), ar.alloc_state())
                if all(ar.wait(0) for ar in runners):
                    break
                _take_stop_requests(runners, stop_dir, out)
                time.sleep(POLL)
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                print("==> interrupted: stopping allocations (Ctrl-C again to abort)", file=out)
                for ar in runners:
                    _stop_update(ar)
        for ar in runners:
            printer.show(ar.alloc(), ar.alloc_state())
    finally:
        signal.signal(signal.SIGINT, previous)
    return interrupted


def _open_db(data_dir: str, err: TextIO) -> SQLiteStateDB | None:
    config = ClientConfig.for_data_dir(data_dir)
    path = config.state_db_path()
    if not path.is_file():
        print(f"allocrunner: no state database at {path}", file=err)
        return None
    try:
        return SQLiteStateDB(path)
    except StateDBError as exc:
        print(f"allocrunner: {exc}", file=err)
        return None


def _client_view(db: SQLiteStateDB, alloc: Allocation) -> Allocation:
    group = alloc.group()
    states: dict[str, TaskState] = {}
    for task in group.tasks if group else ():
        _, state = db.task_runner_state(alloc.id, task.name)
        if state is not None:
            states[task.name] = state
    status, description = client_status_from_task_states(states)
    return attrs.evolve(
        alloc,
        client_status=status or alloc.client_status,
        client_description=description,
        task_states=states,
    )


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    db = _open_db(args.data_dir, err)
    if db is None:
        return EXIT_BAD_INPUT
    try:
        views = [_client_view(db, alloc) for alloc in db.all_allocations()]
    finally:
        db.close()
    views.sort(key=lambda a: a.name)
    if args.json:
        json.dump([encode_allocation(v) for v in views], out, indent=2)
        out.write("\n")
        return EXIT_OK
    if not views:
        print("No allocations", file=out)
    for view in views:
        tasks = ", ".join(
            f"{name}={'failed' if ts.failed else ts.state}" for name, ts in view.task_states.items()
        )
        print(f"{view.id[:8]}  {view.name:<30} {view.client_status:<9} {tasks}", file=out)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = ClientConfig.for_data_dir(args.data_dir)
    root = Path(config.alloc_dir)
    matches = [p for p in root.iterdir() if p.name.startswith(args.alloc)] if root.is_dir() else []
    if len(matches) != 1:
        what = "no allocation" if not matches else "several allocations"
        print(f"allocrunner: {what} matching {args.alloc!r} in {root}", file=err)
        return EXIT_BAD_INPUT
    stream = "stderr" if args.stderr else "stdout"
    files = _log_files(matches[0] / "alloc" / "logs", args.task, stream)
    if not files:
        print(f"allocrunner: no {stream} logs for task {args.task!r}", file=err)
        return EXIT_BAD_INPUT
    for path in files:
        out.write(path.read_text(errors="replace"))
    out.flush()
    return EXIT_OK


def _pid_file(data_dir: str | Path) -> Path:
    return Path(data_dir) / "client" / "agent.pid"


def _stop_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "client" / "stop-requests"


def _agent_pid(data_dir: str | Path) -> int | None:
    """The pid of an `allocrunner run` still working on `data_dir`, if any."""
    try:
        pid = int(_pid_file(data_dir).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _matching(db: SQLiteStateDB, prefix: str | None) -> list[Allocation]:
    return [a for a in db.all_allocations() if prefix is None or a.id.startswith(prefix)]


def _all_dead(view: Allocation) -> bool:
    return bool(view.task_states) and all(ts.is_dead() for ts in view.task_states.values())


def cmd_stop(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    db = _open_db(args.data_dir, err)
    if db is None:
        return EXIT_BAD_INPUT
    try:
        targets = _matching(db, args.alloc)
        if not targets:
            print(f"allocrunner: no allocation matching {args.alloc or 'any'!r}", file=err)
            return EXIT_BAD_INPUT
        if _agent_pid(args.data_dir) is not None:
            return _request_stop(args, db, targets, out, err)
        return _stop_here(args, db, targets, out)
    finally:
        db.close()


def _request_stop(
    args: argparse.Namespace,
    db: SQLiteStateDB,
    targets: list[Allocation],
    out: TextIO,
    err: TextIO,
) -> int:
    """Ask the running agent to stop the allocations, then wait for their tasks to die."""
    stop_dir = _stop_dir(args.data_dir)
    stop_dir.mkdir(parents=True, exist_ok=True)
    (stop_dir / (args.alloc or ALL)).touch()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if all(_all_dead(_client_view(db, a)) for a in targets):
            for alloc in targets:
                print(f"==> stopped {alloc.name}", file=out)
            return EXIT_OK
        time.sleep(POLL)
    print(f"allocrunner: allocations still running after {args.timeout}s", file=err)
    return EXIT_TASK_FAILED


def _stop_here(
    args: argparse.Namespace, db: SQLiteStateDB, targets: list[Allocation], out: TextIO
) -> int:
    """No agent is running: restore each allocation here and stop its tasks."""
    config = ClientConfig.for_data_dir(args.data_dir)
    drivers = default_drivers()
    try:
        for alloc in targets:
            if _all_dead(_client_view(db, alloc)):
                continue
            ar = AllocRunner(alloc, config, state_db=db, drivers=drivers)
            try:
                ar.restore()
            except FileNotFoundError:
                continue
            _stop_update(ar)
            ar.start()
            ar.wait(args.timeout)
            ar.close()
            print(f"==> stopped {alloc.name}", file=out)
    finally:
        for driver in drivers.values():
            driver.close()
    return EXIT_OK


def cmd_gc(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if _agent_pid(args.data_dir) is not None:
        print("allocrunner: an agent is running on this data dir; stop it first", file=err)
        return EXIT_BAD_INPUT
    db = _open_db(args.data_dir, err)
    if db is None:
        return EXIT_BAD_INPUT
    config = ClientConfig.for_data_dir(args.data_dir)
    try:
        for alloc in _matching(db, args.alloc):
            if not _all_dead(_client_view(db, alloc)):
                print(f"==> kept {alloc.name}: tasks still running", file=out)
                continue
            AllocDir(config.alloc_dir, alloc.id).destroy()
            db.delete_allocation(alloc.id)
            print(f"==> collected {alloc.name}", file=out)
    finally:
        db.close()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="allocrunner", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every group of a job file and show live task status")
    run.add_argument("jobfile", help="a .json, .hcl, .nomad or .nomad.hcl job file")
    run.add_argument("--data-dir", help="keep state and alloc dirs here (default: a temp dir)")
    status = sub.add_parser("status", help="list allocations recorded in a data dir")
    status.add_argument("--data-dir", required=True)
    status.add_argument("--json", action="store_true", help="Nomad API JSON")
    logs = sub.add_parser("logs", help="print a task's logs")
    logs.add_argument("--data-dir", required=True)
    logs.add_argument("alloc", help="allocation id or a unique prefix of it")
    logs.add_argument("task")
    logs.add_argument("--stderr", action="store_true")
    stop = sub.add_parser("stop", help="stop allocations (all, or those matching ALLOC)")
    stop.add_argument("--data-dir", required=True)
    stop.add_argument("alloc", nargs="?", help="allocation id or a unique prefix of it")
    stop.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    gc = sub.add_parser("gc", help="remove the alloc dirs and state of finished allocations")
    gc.add_argument("--data-dir", required=True)
    gc.add_argument("alloc", nargs="?", help="allocation id or a unique prefix of it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_BAD_INPUT if exc.code else EXIT_OK
    commands = {
        "run": cmd_run,
        "status": cmd_status,
        "logs": cmd_logs,
        "stop": cmd_stop,
        "gc": cmd_gc,
    }
    try:
        return commands[args.command](args, sys.stdout, sys.stderr)
    except AllocRunnerError as exc:
        print(f"allocrunner: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
