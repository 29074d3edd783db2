"""The lock-discipline checker (DESIGN.md §4) catches each planted violation.

Every planted violation must raise in the thread that commits it, and must also be
recorded, so that a test notices it when a background thread swallows the exception.
Tests that plant violations consume the record with `_locking.take_violations()`
(the harness fails a test that leaves violations behind).
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from allocrunner import _locking
from allocrunner._locking import (
    LOCK_ORDER,
    CheckedLock,
    CheckedRWLock,
    ConfinedFieldError,
    MutableFieldValueError,
    acquire_many,
    calls_out,
    confined,
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
from allocrunner.structs.frozen import FrozenDict

# Every test here asserts what the checker catches or records, or which lock types check
# mode hands out; the ones that need check mode off start a child process of their own.
pytestmark = pytest.mark.requires_lockcheck

REPO_ROOT = Path(__file__).resolve().parents[2]
# The one nesting of declared locks the package does (NESTED_LOCKS).
OUTER, INNER = "Cluster._lock", "AllocBroadcaster._lock"


# --- tiny classes that model real ones --------------------------------------------------


class StateHolder:
    """Thread-safe. Models Nomad's 2018 AllocRunner: task states behind an RWLock."""

    _state_lock = immutable()
    _task_states = guarded("_state_lock")

    def __init__(self) -> None:
        self._state_lock = make_rwlock("AllocRunner._state_lock")
        self._task_states: FrozenDict[str, str] = FrozenDict(web="pending")

    def alloc_state(self) -> FrozenDict[str, str]:
        with self._state_lock.read():
            return self._task_states

    def set_state(self, task: str, state: str) -> None:
        with self._state_lock.write():
            self._task_states = self._task_states.set(task, state)

    def peek_unlocked(self) -> FrozenDict[str, str]:
        return self._task_states

    @requires("_state_lock", write=True)
    def _bump_locked(self) -> None:
        self._task_states = self._task_states.set("bumped", "yes")

    def bump(self) -> None:
        with self._state_lock.write():
            self._bump_locked()

    def bump_under_read(self) -> None:
        with self._state_lock.read():
            self._bump_locked()


class AllocRunner2018(StateHolder):
    """Thread-safe. Models Nomad's 2018 AllocState() bug: it refreshed the task states
    from the task runners while holding only the read side of the state lock."""

    def alloc_state(self) -> FrozenDict[str, str]:
        with self._state_lock.read():
            self._task_states = self._task_states.set("web", "running")
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
    holder._task_states = FrozenDict()


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


def plant_unlisted_nesting() -> None:
    outer = make_rwlock("AllocRunner._state_lock")  # in rank order, but not a listed edge
    inner = make_lock("AllocRunner._alloc_lock")
    with outer.read(), inner:
        pass


class Registry:
    """Thread-safe. A map of names behind a lock, as the Client keeps its runners."""

    _lock = immutable()
    _names = guarded("_lock")

    def __init__(self) -> None:
        self._lock = make_lock("Client._allocs_lock")
        self._names: FrozenDict[str, int] = FrozenDict()

    def add(self, name: str) -> None:
        with self._lock:
            self._names = self._names.set(name, len(self._names))


def plant_mutable_guarded_value() -> None:
    registry = Registry()
    with registry._lock:
        registry._names = {"web": 1}  # type: ignore[assignment]  # the planted mistake


class Drivers:
    """Thread-safe. Its drivers are bound once; a dict could still change under readers."""

    _drivers = immutable()

    def __init__(self) -> None:
        self._drivers = {"mock": object()}


def plant_mutable_immutable_value() -> None:
    Drivers()


class Tracker:
    """Not thread-safe; owned by one run thread, as a task's restart tracker is."""

    _count = confined("task-run")

    def __init__(self) -> None:
        self._count = 0
        self._reset()  # construction may touch its own fields, from any helper

    def _reset(self) -> None:
        self._count = 0

    def bump(self) -> None:
        self._count += 1


def plant_confined_from_another_thread() -> None:
    tracker = Tracker()
    touched, release = threading.Event(), threading.Event()

    def run() -> None:
        tracker.bump()
        touched.set()
        release.wait(10)

    owner = threading.Thread(target=run, name="task-run-owner")
    owner.start()
    try:
        touched.wait(10)
        tracker.bump()  # the owner is running: this thread may not touch it
    finally:
        release.set()
        owner.join(10)


def plant_sleep_under_lock() -> None:
    with make_lock("AllocBroadcaster._lock"):
        time.sleep(0.001)


def plant_event_wait_under_read_lock() -> None:
    done = threading.Event()
    with make_rwlock("AllocDir._lock").read():
        done.wait(0.001)


def plant_join_under_lock() -> None:
    worker = threading.Thread(target=lambda: None, name="joined-worker")
    worker.start()
    with make_lock("GCQueue._lock"):
        worker.join()


def plant_condition_wait_under_another_lock() -> None:
    outer = make_lock("Cluster._lock")
    cond = make_condition(make_lock("AllocBroadcaster._lock"))
    with outer, cond:  # a listed edge: the nesting is fine, the wait is not
        cond.wait(0.001)


def plant_queue_get_under_lock() -> None:
    box: queue.Queue[int] = queue.Queue()
    with make_lock("StatsSampler._lock"), contextlib.suppress(queue.Empty):
        box.get(timeout=0.001)


def plant_process_wait_under_lock() -> None:
    proc = subprocess.Popen(["true"])
    try:
        with make_lock("Driver._lock"):
            proc.wait()
    finally:
        proc.wait()


def plant_select_under_lock() -> None:
    read, write = os.pipe()
    try:
        with make_lock("LogPump._lock"):
            select.select([read], [], [], 0.001)
    finally:
        os.close(read)
        os.close(write)


def plant_epoll_under_lock() -> None:
    with select.epoll() as poller, make_lock("LogPump._lock"):
        poller.poll(0.001)


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
    "unlisted-nesting": (
        plant_unlisted_nesting,
        LockOrderError,
        ("never nested", "AllocRunner._state_lock -> AllocRunner._alloc_lock"),
    ),
    "mutable-guarded-value": (
        plant_mutable_guarded_value,
        MutableFieldValueError,
        ("Registry._names", "dict"),
    ),
    "mutable-immutable-value": (
        plant_mutable_immutable_value,
        MutableFieldValueError,
        ("Drivers._drivers", "dict"),
    ),
    "confined-foreign-thread": (
        plant_confined_from_another_thread,
        ConfinedFieldError,
        ("Tracker._count", "task-run-owner"),
    ),
    "sleep-under-lock": (plant_sleep_under_lock, CalloutUnderLockError, ("time.sleep",)),
    "event-wait-under-read-lock": (
        plant_event_wait_under_read_lock,
        CalloutUnderLockError,
        ("Event.wait", "AllocDir._lock(read)"),
    ),
    "join-under-lock": (plant_join_under_lock, CalloutUnderLockError, ("Thread.join",)),
    "condition-wait-under-another-lock": (
        plant_condition_wait_under_another_lock,
        CalloutUnderLockError,
        ("Condition.wait", "Cluster._lock"),
    ),
    "queue-get-under-lock": (plant_queue_get_under_lock, CalloutUnderLockError, ("Queue.get",)),
    "process-wait-under-lock": (
        plant_process_wait_under_lock,
        CalloutUnderLockError,
        ("Popen.wait", "Driver._lock"),
    ),
    "select-under-lock": (plant_select_under_lock, CalloutUnderLockError, ("select.select",)),
    "epoll-under-lock": (plant_epoll_under_lock, CalloutUnderLockError, ("epoll.poll",)),
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


def test_a_listed_nesting_in_rank_order_is_fine() -> None:
    assert (OUTER, INNER) in _locking.NESTED_LOCKS
    outer = make_lock(OUTER)
    inner = make_lock(INNER)
    with outer, inner:
        assert held_locks() == [f"{OUTER}(write)", f"{INNER}(write)"]
    assert (OUTER, INNER) in _locking.observed_nestings()
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
    # built by hand, so that this thread may wait for the other while holding it
    lock = CheckedLock("GCQueue._lock")
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


def test_condition_wait_re_acquires_in_order_under_a_hand_built_outer_lock() -> None:
    outer = CheckedLock(OUTER)  # built by hand: order-checked, not wait-checked
    cond = make_condition(make_lock(INNER))
    with outer, cond:
        assert not cond.wait(0.01)
        assert held_locks() == [f"{OUTER}(write)", f"{INNER}(write)"]


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

    for name in ("RWLock", "LockSide", "_ReadSide", "_take_contended"):
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
    h._x = {"a": 1}               # a mutable value: not checked
    L.hand_over(h)                # nothing to hand over
    import select, subprocess, sys, time
    from allocrunner import _guarded

    assert type(_guarded.guarded_dict(lock)) is dict
    assert type(_guarded.guarded_list(rw)) is list
    # nothing is wrapped: the blocking calls are the standard library's own
    assert "allocrunner._blocking" not in sys.modules
    assert "allocrunner._shareable" not in sys.modules
    assert type(time.sleep).__name__ == "builtin_function_or_method"
    assert threading.Event.wait.__module__ == "threading"
    assert threading.Condition.wait.__module__ == "threading"
    assert subprocess.Popen.wait.__module__ == "subprocess"
    assert type(select.select).__name__ == "builtin_function_or_method"
    assert type(select.epoll) is type
    with lock:
        time.sleep(0.001)         # a wait under a lock: not checked
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


# --- what a tagged field may hold ----------------------------------------------------------


class Plain:
    """A package-less class: its objects are the caller's to vouch for."""


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        "text",
        b"bytes",
        (1, ("nested", frozenset({2}))),
        FrozenDict(a=(1, 2)),
        LOCK_ORDER,
        make_lock("GCQueue._lock"),
        make_rwlock("AllocDir._lock"),
        threading.Event(),
        print,
        Plain(),
        Registry(),  # declares its protection: it tags its fields
        Tracker(),
    ],
    ids=repr,
)
def test_immutable_and_declared_values_are_accepted(value: object) -> None:
    from allocrunner._shareable import why_mutable

    assert why_mutable(value) is None


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({}, "dict"),
        ([], "list"),
        (set(), "set"),
        (bytearray(), "bytearray"),
        ((1, [2]), "list|inside a tuple"),
        (FrozenDict(a=[1]), "list|inside a FrozenDict"),
        (FrozenDict(a=FrozenDict(b=bytearray())), "bytearray"),
    ],
    ids=repr,
)
def test_mutable_values_are_refused(value: object, words: str) -> None:
    from allocrunner._shareable import why_mutable

    reason = why_mutable(value)
    assert reason is not None
    for word in words.split("|"):
        assert word in reason


def test_a_package_class_must_declare_its_protection() -> None:
    from allocrunner._shareable import why_mutable
    from allocrunner.agent.http import Router

    assert "Router neither is immutable nor declares" in (why_mutable(Router()) or "")
    assert why_mutable(Router().table()) is None  # a frozen attrs value


# --- checked containers ---------------------------------------------------------------------


def test_guarded_dict_checks_its_lock_on_every_access() -> None:
    from allocrunner._guarded import GuardedDict, guarded_dict

    lock = make_rwlock("AllocDir._lock")
    entries = guarded_dict(lock)
    assert isinstance(entries, GuardedDict)
    with lock.write():
        entries["a"] = 1
        entries.update(b=2)
    with lock.read():
        assert dict(entries) == {"a": 1, "b": 2} and len(entries) == 2 and "a" in entries
        with pytest.raises(LockNotHeldError, match=r"write side of AllocDir\._lock"):
            entries["c"] = 3  # the 2018 bug, in place: a write under the read side
    with pytest.raises(LockNotHeldError, match="reading a GuardedDict"):
        entries.get("a")
    with pytest.raises(LockNotHeldError, match=r"changing a GuardedDict \(pop\)"):
        entries.pop("a")
    assert len(_locking.take_violations()) == 3


def test_guarded_list_checks_its_lock_on_every_access() -> None:
    from allocrunner._guarded import guarded_list

    lock = make_lock("GCQueue._lock")
    items = guarded_list(lock)
    with lock:
        items.append(1)
        items += [2]
        assert list(items) == [1, 2] and items[0] == 1
    for change in (lambda: items.append(3), lambda: items.sort(), lambda: items[0]):
        with pytest.raises(LockNotHeldError):
            change()
    assert len(_locking.take_violations()) == 3


def test_a_tagged_field_accepts_a_checked_container() -> None:
    from allocrunner._guarded import guarded_dict

    class Table:
        """Thread-safe. A map changed in place under its lock."""

        _lock = immutable()
        _rows = immutable()

        def __init__(self) -> None:
            self._lock = make_lock("StateDB._lock")
            self._rows: dict[str, int] = guarded_dict(self._lock)

    table = Table()
    with table._lock:
        table._rows["x"] = 1
        assert table._rows == {"x": 1}


# --- confined fields ------------------------------------------------------------------------


def test_a_confined_field_belongs_to_the_first_thread_other_than_its_builder() -> None:
    tracker = Tracker()  # built here, and touched here as it is prepared: free
    tracker.bump()
    touched, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        tracker.bump()
        touched.set()
        release.wait(10)

    def second() -> None:
        try:
            tracker.bump()
        except ConfinedFieldError as err:
            errors.append(err)

    owner = threading.Thread(target=first, name="first-user")
    owner.start()
    try:
        assert touched.wait(10)
        other = threading.Thread(target=second, name="second-user")
        other.start()
        other.join(10)
        with pytest.raises(ConfinedFieldError):  # the builder is locked out now too
            tracker.bump()
    finally:
        release.set()
        owner.join(10)
    assert len(errors) == 1 and "'first-user' owns it" in str(errors[0])
    assert len(_locking.take_violations()) == 2


def test_a_confined_field_with_a_prefix_admits_every_thread_so_named() -> None:
    class Pipe:
        """Not thread-safe; owned by the main thread."""

        _count = confined("main", prefix="Main")

        def __init__(self) -> None:
            self._count = 0

    pipe = Pipe()
    pipe._count += 1
    errors: list[BaseException] = []

    def touch() -> None:
        try:
            pipe._count += 1
        except ConfinedFieldError as err:
            errors.append(err)

    thread = threading.Thread(target=touch, name="worker")
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and "named Main" in str(errors[0])
    assert len(_locking.take_violations()) == 1


def test_a_thread_acting_as_a_name_with_the_prefix_may_touch_the_field_in_the_block() -> None:
    """`acting_as`: a service that runs one of its threads' turns on the thread that
    asked for it lets that thread touch what those threads share, inside the block only;
    an inner block's name counts alone until it ends."""

    class Pipe:
        """Not thread-safe; owned by the pool's threads."""

        _count = confined("pool", prefix="pool-")

        def __init__(self) -> None:
            self._count = 0

    pipe = Pipe()
    errors: list[BaseException] = []
    counts: list[int] = []

    def attempt() -> None:
        try:
            pipe._count += 1
            counts.append(pipe._count)
        except ConfinedFieldError as err:
            errors.append(err)

    def touch() -> None:
        with _locking.acting_as("pool-inline"):
            attempt()
            with _locking.acting_as("other"):
                attempt()
            attempt()
        attempt()

    thread = threading.Thread(target=touch, name="builder")
    thread.start()
    thread.join(10)
    assert counts == [1, 2]
    assert len(errors) == 2 and all("named pool-" in str(err) for err in errors)
    assert len(_locking.take_violations()) == 2


def test_hand_over_passes_confined_fields_to_the_next_thread() -> None:
    tracker = Tracker()
    done = threading.Event()

    def run() -> None:
        tracker.bump()
        _locking.hand_over(tracker)  # as a run thread does just before it reports done
        done.set()

    thread = threading.Thread(target=run, name="run-thread")
    thread.start()
    assert done.wait(10)
    thread.join(10)
    tracker.bump()  # the shutdown caller takes over
    assert tracker._count == 2


def test_a_builder_prepares_hands_to_a_worker_and_takes_back_after_it_ended() -> None:
    tracker = Tracker()
    tracker.bump()
    started, release = threading.Event(), threading.Event()

    def work() -> None:
        tracker.bump()
        started.set()
        release.wait(10)

    worker = threading.Thread(target=work, name="only-worker")
    worker.start()
    assert started.wait(10)
    with pytest.raises(ConfinedFieldError, match="'only-worker' owns it"):
        tracker.bump()  # the worker is alive: it could be touching it right now
    release.set()
    worker.join(10)
    tracker.bump()  # it has ended: nobody can race this thread any more
    assert tracker._count == 3
    assert len(_locking.take_violations()) == 1


# --- blocking waits -------------------------------------------------------------------------


def test_calls_that_cannot_block_are_not_waits() -> None:
    event = threading.Event()
    box: queue.Queue[int] = queue.Queue()
    with make_lock("AllocBroadcaster._lock"):
        time.sleep(0)
        assert not event.wait(0)
        with contextlib.suppress(queue.Empty):
            box.get(block=False)
        box.put(1, block=False)
        select.select([], [], [], 0)


def test_a_condition_waits_with_its_own_lock_held() -> None:
    cond = make_condition(make_lock("HealthHook._lock"))
    with cond:
        assert not cond.wait(0.001)  # wait releases this very lock


def test_the_primitives_private_conditions_are_exempt() -> None:
    from allocrunner._rwlock import PrivateCondition

    private = PrivateCondition(threading.Lock())  # how an RWLock or a Kick blocks
    plain = threading.Condition(threading.Lock())
    with make_lock("GCQueue._lock"):
        with private:
            assert not private.wait(0.001)
        with plain, pytest.raises(CalloutUnderLockError, match=r"Condition\.wait"):
            plain.wait(0.001)
    assert len(_locking.take_violations()) == 1


def test_hand_built_locks_and_marked_tests_may_wait() -> None:
    with CheckedLock("GCQueue._lock"):
        time.sleep(0.001)
    with make_lock("GCQueue._lock"), _locking.waits_allowed_here():
        time.sleep(0.001)
    with make_lock("GCQueue._lock"), pytest.raises(CalloutUnderLockError):
        time.sleep(0.001)
    assert len(_locking.take_violations()) == 1


def test_nestings_are_recorded_even_when_refused() -> None:
    with contextlib.suppress(LockOrderError):
        plant_unlisted_nesting()
    assert len(_locking.take_violations()) == 1
    assert ("AllocRunner._state_lock", "AllocRunner._alloc_lock") in _locking.observed_nestings()
