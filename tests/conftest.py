"""Test harness: lock check mode on, and every test fails on leaked threads or on any
lock-discipline violation, even one raised (and swallowed) in a background thread."""

import os
import sys
from collections.abc import Iterator

os.environ["ALLOCRUNNER_LOCKCHECK"] = "1"

import pytest

from allocrunner import _locking
from allocrunner.testing import ThreadLeakCheck

assert _locking.CHECK, "lock check mode must be on in tests"


@pytest.fixture(autouse=True)
def _lock_discipline_and_thread_leaks():
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
