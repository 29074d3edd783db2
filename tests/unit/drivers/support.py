"""Helpers shared by the driver tests: task configs, process-table checks."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from allocrunner.drivers import TaskConfig

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
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2 :].split()[0].decode()


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    return proc_state(pid) not in (None, "Z", "X")


def _stat_fields(pid: str) -> list[bytes] | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].split()


def all_pids() -> Iterator[int]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            yield int(name)


def live_children() -> set[int]:
    """Pids of the live (non-zombie) children of this process."""
    me = os.getpid()
    found = set()
    for pid in all_pids():
        fields = _stat_fields(str(pid))
        if fields and int(fields[1]) == me and fields[0] not in (b"Z", b"X"):
            found.add(pid)
    return found


def zombie_children() -> set[int]:
    """Pids of the unreaped children of this process."""
    me = os.getpid()
    found = set()
    for pid in all_pids():
        fields = _stat_fields(str(pid))
        if fields and int(fields[1]) == me and fields[0] == b"Z":
            found.add(pid)
    return found


def group_members(pgid: int) -> set[int]:
    """Live processes of process group `pgid`."""
    found = set()
    for pid in all_pids():
        fields = _stat_fields(str(pid))
        if fields and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            found.add(pid)
    return found


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
