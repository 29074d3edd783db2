"""Helpers for the raw_exec tests: a driver per test with its own spawner dir, and the
check that its spawner retires (so no task and no spawner outlives a test)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from allocrunner.drivers._process import children_of, pid_alive
from allocrunner.drivers.spawner import LOCK_NAME
from allocrunner.testing import wait_for


def spawner_pid(state_dir: Path) -> int | None:
    """The pid the dir's spawner wrote in its lock file (None if none ever ran)."""
    try:
        text = (state_dir / LOCK_NAME).read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def assert_spawner_retires(state_dir: Path, timeout: float = 5.0) -> None:
    """Wait for the dir's spawner to exit (it does once it has no task and no agent);
    otherwise kill it and its tasks and fail, naming them."""
    pid = spawner_pid(state_dir)
    if pid is None:
        return

    def gone() -> None:
        assert not pid_alive(pid), f"spawner {pid} still runs"

    try:
        wait_for(gone, timeout=timeout)
    except AssertionError:
        tasks = [child.pid for child in children_of(pid)]
        for task in tasks:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(task, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        pytest.fail(f"spawner {pid} still runs, with tasks {tasks}", pytrace=False)
