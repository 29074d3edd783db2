"""Fixtures for the command-line tests: a data dir whose processes (agents, tasks) are
all killed at the end of the test, and an agent subprocess serving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.cli.helpers import AgentProcess, kill_everything_under, start_agent, stop_agent


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose every process (agents, tasks) is killed at the end."""
    path = tmp_path / "data"
    try:
        yield path
    finally:
        kill_everything_under(path)


@pytest.fixture
def agent(data_dir: Path) -> Iterator[AgentProcess]:
    running = start_agent(data_dir)
    try:
        yield running
    finally:
        stop_agent(running)
