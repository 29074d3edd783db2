"""Test harness: lock check mode, and every test fails on leaked threads or on any
lock-discipline violation, even one raised (and swallowed) in a background thread.

Check mode is on unless ``ALLOCRUNNER_TEST_LOCKCHECK=0``: that switch runs the tests on
production locks (bare `threading.Lock`, the `RWLock` fast path, inert field tags) and
is how `tests/test_production_locks.py` runs the stress and stateful tests a second
time. With the switch off the harness forces check mode off whatever the environment
says, asserts that it is off, still fails on leaked threads, and skips the tests marked
``requires_lockcheck`` (they assert what the checker catches; they ran in the main pass).

Threads: none of its own. Locks: none. Owner: pytest loads it for every test run.
"""

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

LOCKCHECK_SWITCH = "ALLOCRUNNER_TEST_LOCKCHECK"
CHECK_WANTED = os.environ.get(LOCKCHECK_SWITCH, "1") != "0"

# Check mode is read once, when allocrunner._locking is first imported: set it first.
os.environ["ALLOCRUNNER_LOCKCHECK"] = "1" if CHECK_WANTED else "0"

from allocrunner import _locking  # noqa: E402
from allocrunner.testing import ThreadLeakCheck  # noqa: E402

if CHECK_WANTED:
    assert _locking.CHECK, "lock check mode must be on in tests"
else:
    assert not _locking.CHECK, f"{LOCKCHECK_SWITCH}=0 must run the tests on production locks"

# A suite started as a background job of a script inherits SIGINT ignored, and an
# ignored signal stays ignored across exec, so every CLI and agent the tests start
# would ignore the Ctrl-C they send it (the CLI keeps an inherited ignore, as a
# background job must). The tests speak for a foreground terminal: SIGINT interrupts.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

STATEFUL_DIR = Path(__file__).parent / "stateful"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/stateful/ `stateful` (before `-m` selects), and skip
    the `requires_lockcheck` tests when check mode is deliberately off."""
    skip_checker_test = pytest.mark.skip(
        reason=f"asserts the lock checker, and {LOCKCHECK_SWITCH}=0 turned check mode off"
    )
    for item in items:
        if STATEFUL_DIR in item.path.parents:
            item.add_marker(pytest.mark.stateful)
        if not CHECK_WANTED and item.get_closest_marker("requires_lockcheck"):
            item.add_marker(skip_checker_test)


@pytest.fixture(autouse=True)
def _lock_discipline_and_thread_leaks() -> Iterator[None]:
    _locking.take_violations()
    leaks = ThreadLeakCheck()
    yield
    violations = _locking.take_violations()
    leaked = leaks.leaked()
    problems = [f"lock discipline violation: {v!r}" for v in violations]
    problems += [f"leaked thread: {t.name}" for t in leaked]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads as often as it can, so that races between
    two bytecodes show up; the previous interval is restored afterwards."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)
