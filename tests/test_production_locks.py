"""The stress and stateful tests pass on production locks too, not only in check mode.

Check mode swaps every lock for a checked wrapper (`CheckedLock`, the checked sides of
`CheckedRWLock`), which runs different code with different timing. This test runs the
`stress` and `stateful` tests again in a child pytest with ``ALLOCRUNNER_TEST_LOCKCHECK=0``:
tests/conftest.py then keeps check mode off (bare `threading.Lock`, the `RWLock` read
fast path, inert field tags) and still fails a test that leaks a thread. The child's
whole output is the failure message.

Threads: none of its own; it waits for the child process. Locks: none.
Owner: the main test run (the README's one test command runs both passes).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LOCKCHECK_SWITCH

REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT = 420.0  # seconds; the subset takes about a minute on 2 busy cores
SELECTION = "stress or stateful"


def _child_command() -> list[str]:
    return [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-m", SELECTION, "tests",
    ]  # fmt: skip


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ALLOCRUNNER_LOCKCHECK"}
    env[LOCKCHECK_SWITCH] = "0"
    return env


def _run_child() -> tuple[int | None, str]:
    """Run the subset; return its exit code (None if it overran) and its output."""
    child = subprocess.Popen(
        _child_command(),
        cwd=REPO_ROOT,
        env=_child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = child.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        output, _ = child.communicate()
        return None, output
    return child.returncode, output


@pytest.mark.timeout(CHILD_TIMEOUT + 60)
def test_stress_and_stateful_tests_pass_on_production_locks() -> None:
    if os.environ.get(LOCKCHECK_SWITCH) == "0":
        pytest.skip("this run is already the production-lock pass")
    # The child dumps the stacks of its own slow tests; this test only waits, and its
    # timeout marker bounds the wait, so the per-test traceback dump is not wanted here.
    faulthandler.cancel_dump_traceback_later()
    code, output = _run_child()
    assert code is not None, f"production-lock pass overran {CHILD_TIMEOUT:.0f} s:\n{output}"
    assert code == 0, f"production-lock pass failed (exit {code}):\n{output}"
    assert " passed" in output, f"production-lock pass ran nothing:\n{output}"
