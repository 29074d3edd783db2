"""Planted source mistakes: the static checks of tests/test_lock_annotations.py run on
real package modules with one mistake put back, and must flag it.

- `AllocPersister._in_flight` untagged (it is changed outside ``__init__``);
- a `threading.Condition`, a `queue.Queue` or a `threading.BoundedSemaphore` built by
  hand in a package module instead of through the toolkit;
- a helper object that tracks state for one thread with no tag (the restart tracker).
"""

from __future__ import annotations

import ast
import inspect

import pytest

from allocrunner import gc
from allocrunner.runner import persistence
from allocrunner.taskrunner import restarts
from tests.test_lock_annotations import raw_lock_problems, undeclared_field_problems

pytestmark = pytest.mark.requires_lockcheck


def planted(module: object, old: str, new: str) -> ast.Module:
    """The module's source with `old` (which must occur once) replaced by `new`."""
    source = inspect.getsource(module)  # type: ignore[arg-type]
    assert source.count(old) == 1, f"{old!r} not found once in {module!r}"
    return ast.parse(source.replace(old, new))


def test_the_real_modules_are_clean() -> None:
    for module in (persistence, restarts, gc):
        tree = ast.parse(inspect.getsource(module))
        assert undeclared_field_problems(tree) == []
        assert raw_lock_problems(tree) == []


def test_an_untagged_count_of_writes_in_flight_is_flagged() -> None:
    tree = planted(persistence, '    _in_flight = guarded("_lock")\n', "")
    problems = " | ".join(undeclared_field_problems(tree))
    assert "AllocPersister._in_flight is assigned in _begin" in problems
    assert "AllocPersister._in_flight is assigned in _end" in problems


def test_an_untagged_restart_tracker_is_flagged() -> None:
    tree = planted(restarts, '    _count = confined("task-run")\n', "")
    problems = undeclared_field_problems(tree)
    assert any("RestartTracker._count is assigned in _decide" in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new", "flagged"),
    [
        ("Waiter()", "threading.BoundedSemaphore(1)", "BoundedSemaphore()"),
        ("WorkQueue()", "queue.Queue()", "Queue()"),
        ("GCQueue()", "threading.Condition(threading.Lock())", "Condition()"),
    ],
)
def test_a_hand_made_synchronisation_object_is_flagged(old: str, new: str, flagged: str) -> None:
    problems = raw_lock_problems(planted(gc, old, new))
    assert any(flagged in p for p in problems), problems
