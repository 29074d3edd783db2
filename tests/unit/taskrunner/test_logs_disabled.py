"""A task's ``logs { disabled = true }`` through a real task runner: the raw_exec task
writes to /dev/null, no log file appears, and a task with logs on still gets them."""

from __future__ import annotations

import os
from pathlib import Path

from allocrunner.structs.job import LogConfig
from allocrunner.taskrunner import TaskRunner
from allocrunner.testing import mock_task, wait_for
from tests.unit.taskrunner.conftest import alloc_of, event_types, wait_state


def chatty_task(*, disabled: bool):
    script = 'echo out; echo err >&2; echo $$ > "$NOMAD_TASK_DIR/pid"; exec sleep 30'
    return mock_task(
        driver="raw_exec",
        config={"command": "/bin/sh", "args": ["-c", script]},
        logs=LogConfig(disabled=disabled),
    )


def started_pid(tr: TaskRunner) -> int:
    path = Path(tr.task_dir.local_dir) / "pid"

    def written() -> int:
        text = path.read_text() if path.exists() else ""
        assert text.endswith("\n"), f"{path} not written yet"
        return int(text)

    return wait_for(written, 10.0)


def fd_targets(pid: int) -> dict[int, str]:
    return {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (1, 2)}


def test_disabled_logs_send_the_output_nowhere(harness) -> None:
    tr: TaskRunner = harness.runner(alloc_of(chatty_task(disabled=True)))
    pid = started_pid(tr)
    assert wait_state(tr, "running").state == "running"
    assert fd_targets(pid) == {1: "/dev/null", 2: "/dev/null"}
    logs_dir = Path(tr.task_dir.logs_dir)
    assert not [p.name for p in logs_dir.iterdir() if p.name.startswith("web.")]
    assert tr.kill(timeout=10), event_types(tr.task_state())


def test_enabled_logs_are_collected(harness) -> None:
    tr: TaskRunner = harness.runner(alloc_of(chatty_task(disabled=False)))
    pid = started_pid(tr)
    assert all(target.startswith("pipe:") for target in fd_targets(pid).values())
    stdout = Path(tr.task_dir.logs_dir) / "web.stdout.0"

    def collected() -> None:
        assert stdout.exists() and stdout.read_text() == "out\n"

    wait_for(collected, 10.0)
    assert tr.kill(timeout=10), event_types(tr.task_state())
