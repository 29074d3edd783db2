"""Fixtures for driver tests: drivers closed after each test, no process left behind."""

from __future__ import annotations

import contextlib

import pytest

from allocrunner.drivers import MockDriver, RawExecDriver
from allocrunner.testing import wait_for
from tests.unit.drivers.support import kill_leftovers, live_children, zombie_children


@pytest.fixture
def no_leftover_processes():
    """Fail a test that leaves a child process running or unreaped."""
    before = live_children()
    zombies_before = zombie_children()
    yield
    with contextlib.suppress(AssertionError):
        wait_for(lambda: _assert_none(live_children() - before, "left running"), timeout=5)
    problems = kill_leftovers(before)
    problems += [f"process {pid} left unreaped" for pid in zombie_children() - zombies_before]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def _assert_none(pids: set[int], what: str) -> None:
    assert not pids, f"processes {sorted(pids)} {what}"


@pytest.fixture
def raw(no_leftover_processes):
    driver = RawExecDriver()
    yield driver
    driver.close()


@pytest.fixture
def mock():
    driver = MockDriver()
    yield driver
    driver.close()
