"""The lock-discipline checker (DESIGN.md §4) catches each planted violation.

Every planted violation must raise in the thread that commits it, and must also be
recorded, so that a test notices it when a background thread swallows the exception.
Tests that plant violations consume the record with `_locking.take_violations()`
(the harness fails a test that leaves violations behind).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from allocrunner import _locking
from allocrunner._locking import (
    LOCK_ORDER,
    CheckedLock,
    CheckedRWLock,
    acquire_many,
    calls_out,
    field_tags,
    guarded,
    held_locks,
    immutable,
    make_condition,
    make_lock,
    make_rwlock,
    requires,
)
from allocrunner.errors import (
    CalloutUnderLockError,
    LockDisciplineError,
    LockNotHeldError,
    LockOrderError,
)

# Every test here asserts what the checker catches or records, or which lock types check
# mode hands out; the ones that need check mode off start a child process of their own.
pytestmark = pytest.mark.requires_lockcheck

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- tiny classes that model real ones --------------------------------------------------


class StateHolder:
    """Thread-safe. Models Nomad's 2018 AllocRunner: task states behind an RWLock."""

    _state_lock = immutable()
    _task_states = guarded("_state_lock")

    def __init__(self) -> None:
        self._state_lock = make_rwlock("AllocRunner._state_lock")
        self._task_states: dict[str, str] = {"web": "pending"}

    def alloc_state(self) -> dict[str, str]:
        with self._state_lock.read():
            return self._task_states

    def set_state(self, task: str, state: str) -> None:
        with self._state_lock.write():
            self._task_states = {**self._task_states, task: state}

    def peek_unlocked(self) -> dict[str, str]:
        return self._task_states

    @requires("_state_lock", write=True)
    def _bump_locked(self) -> None:
        self._task_states = {**self._task_states, "bumped": "yes"}

    def bump(self) -> None:
        with self._state_lock.write():
            self._bump_locked()

    def bump_under_read(self) -> None:
        with self._state_lock.read():
            self._bump_locked()


class AllocRunner2018(StateHolder):
    """Thread-safe. Models Nomad's 2018 AllocState() bug: it refreshed the task states
    from the task runners while holding only the read side of the state lock."""

    def alloc_state(self) -> dict[str, str]:
        with self._state_lock.read():
            self._task_states = {**self._task_states, "web": "running"}
            return self._task_states


class Counter:
    """Thread-safe. A plain-lock counter with a `_locked` helper and a callout."""

    _lock = immutable()
    _n = guarded("_lock")

    def __init__(self) -> None:
        self._lock = make_lock("AllocBroadcaster._lock")
        self._n = 0

    @requires("_lock")
    def _incr_locked(self) -> None:
        self._n += 1

    def incr(self) -> None:
        with self._lock:
            self._incr_locked()

    def value(self) -> int:
        with self._lock:
            return self._n


@calls_out
def slow_callout() -> str:
    return "called out"


# --- the planted violations --------------------------------------------------------------


def plant_inverted_order() -> None:
    outer = make_lock("AllocRunner._alloc_lock")  # rank above the state lock
    inner = make_rwlock("AllocRunner._state_lock")
    with outer, inner.read():
        pass


def plant_write_under_read_lock() -> None:
    AllocRunner2018().alloc_state()


def plant_read_without_lock() -> None:
    StateHolder().peek_unlocked()


def plant_write_without_lock() -> None:
    holder = StateHolder()
    holder._task_states = {}


def plant_callout_under_lock() -> None:
    lock = make_lock("AllocBroadcaster._lock")
    with lock:
        slow_callout()


def plant_reentered_lock() -> None:
    lock = make_lock("AllocBroadcaster._lock")
    with lock, lock:
        pass


def plant_reentered_read_side() -> None:
    rw = make_rwlock("AllocDir._lock")
    with rw.read(), rw.read():
        pass


def plant_requires_without_lock() -> None:
    Counter()._incr_locked()


def plant_requires_write_under_read() -> None:
    StateHolder().bump_under_read()


def plant_rebind_immutable() -> None:
    counter = Counter()
    counter._lock = make_lock("AllocBroadcaster._lock")


def plant_same_class_nesting() -> None:
    a = make_lock("AllocDir._lock")
    b = make_lock("AllocDir._lock")
    with a, b:
        pass


PLANTED: dict[str, tuple[Callable[[], None], type[LockDisciplineError], tuple[str, ...]]] = {
    "inverted-order": (
        plant_inverted_order,
        LockOrderError,
        ("AllocRunner._state_lock", "AllocRunner._alloc_lock"),
    ),
    "write-under-read-lock": (
        plant_write_under_read_lock,
        LockNotHeldError,
        ("_task_states", "read side", "_state_lock"),
    ),
    "read-without-lock": (
        plant_read_without_lock,
        LockNotHeldError,
        ("reading", "_task_states"),
    ),
    "write-without-lock": (
        plant_write_without_lock,
        LockNotHeldError,
        ("writing", "_task_states", "without holding"),
    ),
    "callout-under-lock": (
        plant_callout_under_lock,
        CalloutUnderLockError,
        ("slow_callout", "AllocBroadcaster._lock"),
    ),
    "reentered-lock": (plant_reentered_lock, LockOrderError, ("re-entering", "AllocBroadcaster")),
    "reentered-read-side": (
        plant_reentered_read_side,
        LockOrderError,
        ("re-entering", "AllocDir._lock"),
    ),
    "requires-without-lock": (plant_requires_without_lock, LockNotHeldError, ("_incr_locked",)),
    "requires-write-under-read": (
        plant_requires_write_under_read,
        LockNotHeldError,
        ("_bump_locked", "write side"),
    ),
    "rebind-immutable": (plant_rebind_immutable, LockNotHeldError, ("immutable", "_lock")),
    "same-class-nesting": (plant_same_class_nesting, LockOrderError, ("acquire_many",)),
}


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_violation_raises_in_the_offending_thread(kind: str) -> None:
    plant, error, words = PLANTED[kind]
    with pytest.raises(error) as caught:
        plant()
    for word in words:
        assert word in str(caught.value)
    assert _locking.take_violations() == [caught.value]
    assert held_locks() == [], "a failed acquire must not leave locks recorded as held"


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_violation_raises_in_a_background_thread(kind: str) -> None:
    plant, error, _ = PLANTED[kind]
    seen: list[BaseException] = []

    def run() -> None:
        try:
            plant()
        except BaseException as err:
            seen.append(err)

    thread = threading.Thread(target=run, name=f"plant-{kind}")
    thread.start()
    thread.join(10)
    assert len(seen) == 1 and isinstance(seen[0], error)
    assert _locking.take_violations() == seen


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_swallowed_violation_is_still_recorded(kind: str) -> None:
    plant, error, _ = PLANTED[kind]

    def run_and_swallow() -> None:
        # the bug being modelled: a background loop that drops the error and carries on
        with contextlib.suppress(Exception):
            plant()

    thread = threading.Thread(target=run_and_swallow, name=f"swallow-{kind}")
    thread.start()
    thread.join(10)
    recorded = _locking.take_violations()
    assert len(recorded) == 1 and isinstance(recorded[0], error), recorded


# --- what is allowed ---------------------------------------------------------------------


def test_guarded_fields_under_their_lock_are_fine() -> None:
    holder = StateHolder()
    assert holder.alloc_state() == {"web": "pending"}
    holder.set_state("web", "running")
    holder.bump()
    assert holder.alloc_state() == {"web": "running", "bumped": "yes"}
    counter = Counter()
    counter.incr()
    assert counter.value() == 1


def test_lock_order_in_rank_order_is_fine() -> None:
    outer = make_rwlock("AllocRunner._state_lock")
    inner = make_lock("AllocRunner._alloc_lock")
    with outer.read(), inner:
        assert held_locks() == ["AllocRunner._state_lock(read)", "AllocRunner._alloc_lock(write)"]
    assert held_locks() == []


def test_callout_without_locks_is_fine() -> None:
    assert slow_callout() == "called out"


def test_field_tags_describe_the_class() -> None:
    tags = field_tags(StateHolder)
    assert {name: tag.kind for name, tag in tags.items()} == {
        "_state_lock": "immutable",
        "_task_states": "guarded",
    }
    assert tags["_task_states"].lock == "_state_lock"
    assert repr(tags["_task_states"]) == "guarded('_state_lock')"


def test_release_by_a_thread_that_does_not_hold_the_lock() -> None:
    lock = make_lock("GCQueue._lock")
    errors: list[BaseException] = []
    with lock:

        def release_foreign() -> None:
            try:
                lock.release()
            except LockNotHeldError as err:
                errors.append(err)

        thread = threading.Thread(target=release_foreign, name="foreign-release")
        thread.start()
        thread.join(10)
    assert len(errors) == 1 and "does not hold" in str(errors[0])
    assert _locking.take_violations() == errors
    assert not lock.locked()


# --- same-class locks --------------------------------------------------------------------


def test_acquire_many_orders_two_locks_of_one_class() -> None:
    a = make_lock("AllocDir._lock")
    b = make_lock("AllocDir._lock")
    with acquire_many(b, a):
        assert a.locked() and b.locked()
        first, second = sorted((a, b), key=id)
        assert held_locks() == ["AllocDir._lock(write)"] * 2
        assert [lock for lock, _ in _locking._held.stack] == [first, second]
    assert not a.locked() and not b.locked()
    # outside the helper nesting is refused again
    with pytest.raises(LockOrderError):
        plant_same_class_nesting()
    assert len(_locking.take_violations()) == 1


def test_acquire_many_from_opposite_sides_never_deadlocks() -> None:
    a = make_lock("AllocDir._lock")
    b = make_lock("AllocDir._lock")
    done = [0, 0]

    def worker(index: int, pair: tuple[object, object]) -> None:
        for _ in range(2000):
            with acquire_many(*pair):
                done[index] += 1

    threads = [
        threading.Thread(target=worker, args=(0, (a, b)), name="many-ab"),
        threading.Thread(target=worker, args=(1, (b, a)), name="many-ba"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert done == [2000, 2000]


def test_same_class_lock_held_outside_the_helper_is_not_a_peer() -> None:
    a = make_lock("AllocDir._lock")
    b = make_lock("AllocDir._lock")
    c = make_lock("AllocDir._lock")
    low, mid, high = sorted((a, b, c), key=id)
    with low, pytest.raises(LockOrderError), acquire_many(mid, high):
        pass
    assert not mid.locked() and not high.locked()
    assert len(_locking.take_violations()) == 1


# --- conditions and names ------------------------------------------------------------------


def test_condition_over_a_checked_lock() -> None:
    lock = make_lock("AllocBroadcaster._lock")
    assert isinstance(lock, CheckedLock)
    cond = make_condition(lock)
    box: list[int] = []
    inside_wait = threading.Event()
    result: list[object] = []

    def consumer() -> None:
        with cond:
            inside_wait.set()
            ok = cond.wait_for(lambda: bool(box), timeout=10)
            # after the wait the lock is held again, and recorded as held
            result.append((ok, list(box), held_locks()))

    thread = threading.Thread(target=consumer, name="cond-consumer")
    thread.start()
    assert inside_wait.wait(10)
    # the waiter released the lock: the producer can take it
    with cond:
        box.append(7)
        cond.notify()
    thread.join(10)
    assert result == [(True, [7], ["AllocBroadcaster._lock(write)"])]
    assert held_locks() == []
    with pytest.raises(RuntimeError):  # notify without holding the lock
        cond.notify()


def test_condition_wait_under_an_outer_lock_keeps_order_checks() -> None:
    outer = make_lock("AllocDir._lock")
    inner = make_lock("AllocBroadcaster._lock")
    cond = make_condition(inner)
    with outer, cond:
        assert not cond.wait(0.01)
        assert held_locks() == ["AllocDir._lock(write)", "AllocBroadcaster._lock(write)"]


@pytest.mark.parametrize("factory", [make_lock, make_rwlock, CheckedLock, CheckedRWLock])
def test_undeclared_lock_name_is_rejected(factory: Callable[[str], object]) -> None:
    with pytest.raises(ValueError, match=r"Nope\._lock"):
        factory("Nope._lock")


def test_lock_order_names_are_unique_and_class_qualified() -> None:
    assert len(set(LOCK_ORDER)) == len(LOCK_ORDER)
    for name in LOCK_ORDER:
        owner, _, attr = name.partition(".")
        assert owner and attr.startswith("_"), name


def test_checked_locks_in_check_mode() -> None:
    assert _locking.CHECK
    assert isinstance(make_lock("GCQueue._lock"), CheckedLock)
    assert isinstance(make_rwlock("AllocDir._lock"), CheckedRWLock)


def test_the_rwlock_module_is_reexported_by_the_toolkit() -> None:
    from allocrunner import _rwlock

    for name in ("RWLock", "LockSide", "_ReadSide", "_WriteSide", "_take_contended"):
        assert getattr(_locking, name) is getattr(_rwlock, name), name
    assert issubclass(CheckedRWLock, _rwlock.RWLock)


# --- check mode off ------------------------------------------------------------------------

CHECK_OFF_PROGRAM = textwrap.dedent(
    """
    import threading
    from allocrunner import _locking as L

    assert L.CHECK is False
    lock = L.make_lock("AllocBroadcaster._lock")
    assert type(lock) is type(threading.Lock()), type(lock)
    rw = L.make_rwlock("AllocDir._lock")
    assert type(rw) is L.RWLock, type(rw)
    try:
        L.make_lock("Nope._lock")
    except ValueError:
        pass
    else:
        raise AssertionError("undeclared name accepted with the check off")

    def helper(self):
        return "ran"

    assert L.calls_out(helper) is helper
    assert L.requires("_lock")(helper) is helper
    assert L.requires("_lock", write=True)(helper) is helper

    class Holder:
        _lock = L.immutable()
        _x = L.guarded("_lock")
        _t = L.confined("task-run")

        def __init__(self):
            self._lock = L.make_lock("AllocBroadcaster._lock")
            self._x = 1

    for tag in L.field_tags(Holder).values():
        assert not hasattr(type(tag), "__get__") and not hasattr(type(tag), "__set__")
    h = Holder()
    h._x = 2                      # no lock: inert
    assert h._x == 2
    h._lock = threading.Lock()    # rebinding an immutable field: inert
    same_a, same_b = L.make_lock("AllocDir._lock"), L.make_lock("AllocDir._lock")
    with same_a, same_b:          # same-class nesting: not checked
        pass
    with rw.read():
        L.calls_out(helper)(h)    # callout under a lock: not checked
    cond = L.make_condition(lock)
    with cond:
        assert not cond.wait(0.001)
    print("check-off ok")
    """
)


def test_check_mode_off_costs_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ALLOCRUNNER_LOCKCHECK"}
    proc = subprocess.run(
        [sys.executable, "-c", CHECK_OFF_PROGRAM],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "check-off ok"


def test_check_mode_zero_means_off() -> None:
    env = {**os.environ, "ALLOCRUNNER_LOCKCHECK": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", "from allocrunner import _locking as L; print(L.CHECK)"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_violation_record_is_thread_safe() -> None:
    counter = Counter()
    barrier = threading.Barrier(4)

    def plant_many() -> None:
        barrier.wait(10)
        for _ in range(50):
            with contextlib.suppress(LockNotHeldError):
                counter._incr_locked()

    threads = [threading.Thread(target=plant_many, name=f"many-{i}") for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert len(_locking.take_violations()) == 200
    assert counter.value() == 0
