"""The first life of `test_crash_kill9.py`: a process that runs a Client (SQLite state
DB, raw_exec) until it reaches a named step, says so on stdout and waits there for
its ``kill -9``.

Run as ``python -m tests.unit.client.crash_child SPEC`` from the repository root; SPEC
is JSON: ``data_dir``, ``alloc`` (the allocation, in API JSON), ``scenario`` (``run``,
``stop-collect`` or ``remove``), ``step`` and ``upstream`` (a file where each report
upstream is appended as a JSON line, flushed before the next step can be reached).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import attrs

from allocrunner.allocdir import fs_dirs
from allocrunner.allocdir.alloc_dir import AllocDir
from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.jobspec import decode_allocation
from allocrunner.runner.task_set import TaskSet
from allocrunner.state import LocalState, SQLiteStateDB
from allocrunner.structs import EVENT_RECEIVED, Allocation, TaskEvent, TaskState
from allocrunner.taskrunner.runner import MSG_RECEIVED
from allocrunner.testing import wait_for

CRASH_POINT = "CRASH-POINT"


def _stop_here(step: str) -> None:
    """Tell the parent where this process is, and wait for its kill."""
    print(f"{CRASH_POINT} {step}", flush=True)
    threading.Event().wait()


def _before(owner: Any, name: str, step: str, when: Callable[..., bool] = lambda *a: True):
    original = getattr(owner, name)

    def patched(*args: Any) -> Any:
        if when(*args):
            _stop_here(step)
        return original(*args)

    setattr(owner, name, patched)


def _after(owner: Any, name: str, step: str, when: Callable[..., bool] = lambda *a: True):
    original = getattr(owner, name)

    def patched(*args: Any) -> Any:
        result = original(*args)
        if when(*args):
            _stop_here(step)
        return result

    setattr(owner, name, patched)


def _has_handle(_db: SQLiteStateDB, _alloc_id: str, _task: str, local: LocalState) -> bool:
    return local.task_handle is not None


def _is_running(_db: SQLiteStateDB, _alloc_id: str, _task: str, state: TaskState) -> bool:
    return state.state == "running"


def _task_state_then_stop(db: SQLiteStateDB, alloc: Allocation) -> Callable[..., None]:
    """At the alloc dir's build: the first task state is saved, then the process dies."""
    build = AllocDir.build

    def patched(self: AllocDir) -> None:
        received = TaskEvent(EVENT_RECEIVED, message=MSG_RECEIVED, display_message=MSG_RECEIVED)
        for task in alloc.group().tasks:  # type: ignore[union-attr]
            db.put_task_state(alloc.id, task.name, TaskState().with_event(received))
        _stop_here("build-enter")
        build(self)

    return patched


def install_step(step: str, db: SQLiteStateDB, alloc: Allocation) -> None:
    if step == "build-enter":
        AllocDir.build = _task_state_then_stop(db, alloc)  # type: ignore[method-assign]
    elif step == "build-dir-made":
        _before(fs_dirs, "fill_private_dir", step)  # the alloc dir made
    elif step == "handle-queued":  # started, its handle queued but not yet committed
        _after(SQLiteStateDB, "queue_task_local_state", step, _has_handle)
    elif step == "task-running":  # the handle committed: by its put, or a launch's wait
        _after(SQLiteStateDB, "put_task_local_state", step, _has_handle)
        _after(SQLiteStateDB, "wait_committed", step)
    elif step == "running-state-saved":
        _after(SQLiteStateDB, "put_task_state", step, _is_running)
    elif step == "kill-enter":
        _before(TaskSet, "kill_waves", step)  # where every kill of the tasks begins
    elif step == "destroy-enter":
        _before(AllocDir, "destroy", step)
    elif step == "destroy-dir-gone":
        _after(AllocDir, "destroy", step)
    elif step == "state-delete":
        _before(SQLiteStateDB, "delete_allocation", step)
    else:
        raise SystemExit(f"unknown step {step!r}")


def _status(client: Client, alloc_id: str, want: str) -> None:
    runner = client.runner(alloc_id)
    assert runner is not None, f"{alloc_id} is not tracked"
    got = runner.alloc_state().client_status
    assert got == want, f"{alloc_id} is {got}, want {want}"


def run_scenario(client: Client, scenario: str, alloc: Allocation) -> None:
    client.run_allocs([alloc])
    if scenario == "run":
        return
    wait_for(lambda: _status(client, alloc.id, "running"), 30)
    if scenario == "remove":
        client.run_allocs([])
        return
    stopped = attrs.evolve(
        alloc, desired_status="stop", alloc_modify_index=alloc.alloc_modify_index + 1
    )
    client.run_allocs([stopped])
    wait_for(lambda: _status(client, alloc.id, "complete"), 30)
    wait_for(lambda: _collecting(client, alloc.id), 30)


def _collecting(client: Client, alloc_id: str) -> None:
    assert client.gc.collect_async(alloc_id), f"{alloc_id} is not marked for collection yet"


def main(spec: dict[str, Any]) -> None:
    alloc = decode_allocation(spec["alloc"])
    config = ClientConfig.for_data_dir(spec["data_dir"], gc_interval=3600.0)
    db = SQLiteStateDB(config.state_db_path())
    upstream = open(spec["upstream"], "a", encoding="utf-8")  # noqa: SIM115 (lives until the kill)
    report_lock = threading.Lock()

    def report(views: list[Allocation]) -> None:
        with report_lock:
            for view in views:
                upstream.write(json.dumps({"id": view.id, "status": view.client_status}) + "\n")
            upstream.flush()
            os.fsync(upstream.fileno())

    install_step(spec["step"], db, alloc)
    client = Client(config, state_db=db, state_updater=report, update_interval=0.01)
    client.start()
    run_scenario(client, spec["scenario"], alloc)
    threading.Event().wait()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
