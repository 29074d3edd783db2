"""Helpers shared by the driver tests: task configs, process-table checks (through the
package's own /proc reader, `allocrunner.drivers._process`)."""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
from pathlib import Path
from typing import Any

from allocrunner.drivers import TaskConfig
from allocrunner.drivers._process import (
    all_processes,
    children_of,
    group_processes,
    pid_alive,
    read_pid_stat,
)

PATH = "/usr/local/bin:/usr/bin:/bin"

_ids = itertools.count()


def task_config(
    root: Path,
    driver_config: dict[str, Any],
    *,
    name: str = "web",
    env: dict[str, str] | None = None,
    **fields: Any,
) -> TaskConfig:
    """A TaskConfig with a fresh id and real task and logs dirs under `root`."""
    task_dir = root / name
    logs_dir = root / "alloc" / "logs"
    task_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    return TaskConfig(
        id=f"alloc-1/{name}/{next(_ids)}",
        alloc_id="alloc-1",
        name=name,
        driver_config=driver_config,
        env={"PATH": PATH} if env is None else env,
        task_dir=str(task_dir),
        logs_dir=str(logs_dir),
        **fields,
    )


def sh(script: str) -> dict[str, Any]:
    """A raw_exec config running `script` with /bin/sh."""
    return {"command": "/bin/sh", "args": ["-c", script]}


def proc_state(pid: int) -> str | None:
    """The /proc state letter of `pid`, or None if it is gone."""
    found = read_pid_stat(pid)
    return None if found is None else found.state


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    return pid_alive(pid)


def live_children() -> set[int]:
    """Pids of the live (non-zombie) children of this process."""
    return {s.pid for s in children_of(os.getpid())}


def zombie_children() -> set[int]:
    """Pids of the unreaped children of this process."""
    me = os.getpid()
    return {s.pid for s in all_processes() if s.ppid == me and s.state == "Z"}


def group_members(pgid: int) -> set[int]:
    """Live processes of process group `pgid`."""
    return {s.pid for s in group_processes([pgid])[pgid]}


def kill_leftovers(before: set[int]) -> list[str]:
    """Kill the process groups of children started since `before`; describe them."""
    import signal

    problems = []
    for pid in sorted(live_children() - before):
        problems.append(f"process {pid} left running")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return problems


def in_frame(thread: threading.Thread, function: str) -> None:
    """Assert that `thread` is running `function` (somewhere in its stack)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function:
            return
        frame = frame.f_back
    raise AssertionError(f"{thread.name} is not in {function}")
