"""TaskCoordinator and Gate: Nomad's lifecycle coordinator scenarios, gate waits, a
threaded group run in lifecycle order, and a hypothesis property over random task sets
and random sequences of task state changes."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.errors import UnknownTaskError
from allocrunner.runner.lifecycle import (
    COORDINATOR_STATES,
    GATES_BY_STATE,
    STAGES,
    Gate,
    TaskCoordinator,
    task_stage,
)
from allocrunner.structs import TASK_DEAD, TASK_PENDING, TASK_RUNNING, Lifecycle, Task, TaskState
from allocrunner.testing import assert_stays, wait_for

PENDING = TaskState(state=TASK_PENDING)
RUNNING = TaskState(state=TASK_RUNNING)
DEAD = TaskState(state=TASK_DEAD)
FAILED = TaskState(state=TASK_DEAD, failed=True)


def task(name: str, hook: str = "", sidecar: bool = False) -> Task:
    lifecycle = Lifecycle(hook=hook, sidecar=sidecar) if hook else None
    return Task(name=name, driver="mock_driver", lifecycle=lifecycle)


MAIN = task("main")
SIDE = task("side", "prestart", sidecar=True)
INIT = task("init", "prestart")
INIT2 = task("init2", "prestart")
POST = task("post", "poststart")
POST_SIDE = task("post_side", "poststart", sidecar=True)
STOP = task("stop", "poststop")


def allowed(coord: TaskCoordinator, *tasks: Task) -> None:
    for t in tasks:
        assert coord.gate(t.name).is_open(), f"{t.name} should be allowed (state {coord.stage()})"


def blocked(coord: TaskCoordinator, *tasks: Task) -> None:
    for t in tasks:
        assert not coord.gate(t.name).is_open(), (
            f"{t.name} should be blocked (state {coord.stage()})"
        )


# --- Nomad's coordinator scenarios -----------------------------------------------------


def test_only_main_app() -> None:
    coord = TaskCoordinator([MAIN])
    blocked(coord, MAIN)
    coord.task_state_updated({"main": PENDING})
    allowed(coord, MAIN)
    coord.task_state_updated({"main": RUNNING})
    allowed(coord, MAIN)


def test_prestart_runs_before_main() -> None:
    coord = TaskCoordinator([MAIN, SIDE, INIT])
    blocked(coord, INIT, SIDE, MAIN)

    coord.task_state_updated({"init": PENDING, "side": PENDING, "main": PENDING})
    allowed(coord, INIT, SIDE)
    blocked(coord, MAIN)

    coord.task_state_updated({"init": PENDING, "side": RUNNING, "main": PENDING})
    allowed(coord, INIT, SIDE)
    blocked(coord, MAIN)

    coord.task_state_updated({"init": RUNNING, "side": RUNNING, "main": PENDING})
    allowed(coord, INIT, SIDE)
    blocked(coord, MAIN)

    coord.task_state_updated({"init": DEAD, "side": RUNNING, "main": PENDING})
    blocked(coord, INIT)
    allowed(coord, SIDE, MAIN)
    assert coord.stage() == "main"


def test_main_runs_after_many_init_tasks() -> None:
    coord = TaskCoordinator([MAIN, INIT, INIT2])
    blocked(coord, INIT, INIT2, MAIN)
    coord.task_state_updated({"init": PENDING, "init2": PENDING, "main": PENDING})
    allowed(coord, INIT, INIT2)
    blocked(coord, MAIN)
    coord.task_state_updated({"init": DEAD, "init2": RUNNING, "main": PENDING})
    blocked(coord, MAIN)
    coord.task_state_updated({"init": DEAD, "init2": DEAD, "main": PENDING})
    blocked(coord, INIT, INIT2)
    allowed(coord, MAIN)


def test_failed_init_task_keeps_main_blocked() -> None:
    coord = TaskCoordinator([MAIN, INIT, INIT2])
    coord.task_state_updated({"init": PENDING, "init2": PENDING, "main": PENDING})
    coord.task_state_updated({"init": DEAD, "init2": FAILED, "main": PENDING})
    allowed(coord, INIT, INIT2)
    blocked(coord, MAIN)
    assert coord.stage() == "prestart"


def test_sidecar_never_starts_keeps_main_blocked() -> None:
    coord = TaskCoordinator([MAIN, SIDE, INIT])
    coord.task_state_updated({"init": PENDING, "side": PENDING, "main": PENDING})
    coord.task_state_updated({"init": DEAD, "side": PENDING, "main": PENDING})
    allowed(coord, INIT, SIDE)
    blocked(coord, MAIN)
    assert_stays(lambda: blocked(coord, MAIN), 0.05)


def test_poststart_starts_after_main() -> None:
    post = POST
    coord = TaskCoordinator([MAIN, SIDE, post])
    blocked(coord, SIDE, MAIN, post)
    coord.task_state_updated({"side": PENDING, "main": PENDING, "post": PENDING})
    allowed(coord, SIDE)
    blocked(coord, MAIN, post)
    coord.task_state_updated({"side": RUNNING, "main": RUNNING, "post": PENDING})
    allowed(coord, SIDE, MAIN, post)
    assert coord.stage() == "poststart"


def test_poststart_done_moves_to_wait_alloc_then_poststop() -> None:
    coord = TaskCoordinator([MAIN, POST, POST_SIDE, STOP])
    coord.task_state_updated(dict.fromkeys(("main", "post", "post_side", "stop"), PENDING))
    allowed(coord, MAIN)
    blocked(coord, POST, POST_SIDE, STOP)
    coord.task_state_updated(
        {"main": RUNNING, "post": PENDING, "post_side": PENDING, "stop": PENDING}
    )
    allowed(coord, MAIN, POST, POST_SIDE)
    coord.task_state_updated({"main": RUNNING, "post": DEAD, "post_side": RUNNING, "stop": PENDING})
    assert coord.stage() == "wait_alloc"
    allowed(coord, MAIN, POST_SIDE)
    blocked(coord, POST, STOP)
    coord.task_state_updated({"main": DEAD, "post": DEAD, "post_side": RUNNING, "stop": PENDING})
    blocked(coord, STOP)
    coord.task_state_updated({"main": DEAD, "post": DEAD, "post_side": DEAD, "stop": PENDING})
    assert coord.stage() == "poststop"
    allowed(coord, STOP)
    blocked(coord, MAIN, POST, POST_SIDE)


@pytest.mark.parametrize(
    ("tasks", "states", "allowed_tasks", "blocked_tasks", "stage"),
    [
        pytest.param(
            [INIT, SIDE, MAIN],
            {"init": RUNNING, "side": RUNNING, "main": PENDING},
            [INIT, SIDE],
            [MAIN],
            "prestart",
            id="prestart ephemeral running",
        ),
        pytest.param(
            [INIT, SIDE, MAIN],
            {"init": DEAD, "side": RUNNING, "main": PENDING},
            [SIDE, MAIN],
            [INIT],
            "main",
            id="prestart ephemeral complete",
        ),
        pytest.param([MAIN], {"main": RUNNING}, [MAIN], [], "wait_alloc", id="main running"),
        pytest.param(
            [MAIN, POST, POST_SIDE],
            {"main": RUNNING, "post": DEAD, "post_side": RUNNING},
            [MAIN, POST_SIDE],
            [POST],
            "wait_alloc",
            id="poststart with sidecar",
        ),
        pytest.param(
            [MAIN, STOP],
            {"main": DEAD, "stop": RUNNING},
            [STOP],
            [MAIN],
            "poststop",
            id="poststop running",
        ),
        pytest.param(
            [INIT, MAIN, STOP],
            {"init": FAILED, "main": DEAD, "stop": PENDING},
            [STOP],
            [INIT, MAIN],
            "poststop",
            id="failed prestart and dead main go straight to poststop",
        ),
    ],
)
def test_restore_lands_in_the_right_gate_configuration(
    tasks: list[Task],
    states: Mapping[str, TaskState],
    allowed_tasks: list[Task],
    blocked_tasks: list[Task],
    stage: str,
) -> None:
    coord = TaskCoordinator(tasks)
    coord.restore(states)
    allowed(coord, *allowed_tasks)
    blocked(coord, *blocked_tasks)
    assert coord.stage() == stage


# --- more rules ------------------------------------------------------------------------


def test_init_waits_until_every_task_is_pending() -> None:
    coord = TaskCoordinator([INIT, MAIN])
    coord.task_state_updated({"init": RUNNING, "main": PENDING})
    assert coord.stage() == "init"
    blocked(coord, INIT, MAIN)
    coord.task_state_updated({"init": PENDING, "main": PENDING})
    assert coord.stage() == "prestart"


def test_missing_task_state_counts_as_pending() -> None:
    coord = TaskCoordinator([INIT, MAIN])
    coord.task_state_updated({})
    assert coord.stage() == "prestart"
    coord.task_state_updated({"init": DEAD, "other": RUNNING})
    assert coord.stage() == "main"
    allowed(coord, MAIN)


def test_group_of_only_poststop_tasks_runs_them_at_once() -> None:
    coord = TaskCoordinator([STOP])
    blocked(coord, STOP)
    coord.task_state_updated({"stop": PENDING})
    assert coord.stage() == "poststop"
    allowed(coord, STOP)


def test_all_non_poststop_dead_jumps_to_poststop_from_any_state() -> None:
    for setup in (
        {"init": PENDING, "main": PENDING, "stop": PENDING},  # prestart
        {"init": DEAD, "main": PENDING, "stop": PENDING},  # main
    ):
        coord = TaskCoordinator([INIT, MAIN, STOP])
        coord.task_state_updated(setup)
        assert coord.stage() != "poststop"
        coord.task_state_updated({"init": FAILED, "main": DEAD, "stop": PENDING})
        assert coord.stage() == "poststop"
        allowed(coord, STOP)
        blocked(coord, INIT, MAIN)


def test_restart_closes_every_gate_and_runs_prestart_again() -> None:
    coord = TaskCoordinator([INIT, MAIN, STOP])
    coord.task_state_updated(dict.fromkeys(("init", "main", "stop"), PENDING))
    coord.task_state_updated({"init": DEAD, "main": DEAD, "stop": PENDING})
    allowed(coord, STOP)
    coord.restart()
    assert coord.stage() == "init"
    blocked(coord, INIT, MAIN, STOP)
    coord.task_state_updated({"init": DEAD, "main": RUNNING, "stop": PENDING})
    assert coord.stage() == "init", "init is left only once every task is pending again"
    coord.task_state_updated(dict.fromkeys(("init", "main", "stop"), PENDING))
    allowed(coord, INIT)
    blocked(coord, MAIN, STOP)


def test_gate_by_task_name_and_stage_of_each_task() -> None:
    coord = TaskCoordinator([INIT, SIDE, MAIN, POST, POST_SIDE, STOP])
    assert [task_stage(t) for t in (INIT, SIDE, MAIN, POST, POST_SIDE, STOP)] == list(STAGES)
    assert coord.gate("init") is not coord.gate("side")
    assert coord.gate("init") is coord.gate("init")
    assert coord.stage_of("post_side") == "poststart-sidecar"
    assert task_stage(task("x", "", sidecar=False)) == "main"


def test_unknown_task_and_bad_input_are_clear_errors() -> None:
    coord = TaskCoordinator([MAIN])
    with pytest.raises(UnknownTaskError, match="'nope'"):
        coord.gate("nope")
    with pytest.raises(ValueError, match=r"tasks\[1\]\.name 'main' is repeated"):
        TaskCoordinator([MAIN, MAIN])
    with pytest.raises(TypeError, match=r"tasks\[0\] must be a Task"):
        TaskCoordinator(["main"])  # type: ignore[list-item]


# --- gates -----------------------------------------------------------------------------


def test_gate_wait_returns_true_when_opened_from_another_thread() -> None:
    gate = Gate("main")
    cancel = CancelToken()
    results: list[bool] = []
    group = ThreadGroup("gate-test")
    group.spawn("gate-waiter", lambda: results.append(gate.wait_open(cancel, timeout=10)))
    assert_stays(lambda: assert_no_results(results), 0.05)
    gate.open()
    wait_for(lambda: assert_results(results, [True]), 5)
    assert group.join(5)


def assert_no_results(results: list[bool]) -> None:
    assert results == [], f"waiter returned early: {results}"


def assert_results(results: list[bool], expected: list[bool]) -> None:
    assert results == expected, f"waiters returned {results}, expected {expected}"


def test_gate_wait_observes_cancellation_promptly() -> None:
    gate = Gate("main")
    cancel = CancelToken()
    results: list[tuple[bool, float]] = []

    def waiter() -> None:
        ok = gate.wait_open(cancel, timeout=30)
        results.append((ok, time.monotonic()))

    group = ThreadGroup("gate-test")
    group.spawn("gate-waiter", waiter)
    assert_stays(lambda: assert_no_results(results), 0.05)  # type: ignore[arg-type]
    cancelled_at = time.monotonic()
    cancel.cancel("task killed")
    assert group.join(5)
    (ok, returned_at), *_ = results
    assert ok is False
    assert returned_at - cancelled_at < 1.0


def test_gate_wait_times_out_and_cancellation_wins_over_an_open_gate() -> None:
    gate = Gate()
    cancel = CancelToken()
    started = time.monotonic()
    assert gate.wait_open(cancel, timeout=0.05) is False
    assert time.monotonic() - started >= 0.05
    gate.open()
    assert gate.wait_open(cancel) is True
    cancel.cancel()
    assert gate.wait_open(cancel) is False


def test_closed_gate_blocks_new_waiters_and_reopening_wakes_them() -> None:
    gate = Gate()
    cancel = CancelToken()
    gate.open()
    gate.close()
    assert not gate.is_open()
    assert gate.wait_open(cancel, timeout=0.02) is False
    results: list[bool] = []
    group = ThreadGroup("gate-test")
    for i in range(3):
        group.spawn(f"gate-waiter-{i}", lambda: results.append(gate.wait_open(cancel, timeout=10)))
    assert_stays(lambda: assert_no_results(results), 0.05)
    gate.open()
    wait_for(lambda: assert_results(results, [True, True, True]), 5)
    assert group.join(5)


def test_waiter_does_not_slip_through_a_transient_opening() -> None:
    """Restore enters prestart (prestart gates open) and may advance further in the same
    step; a prestart waiter must not pass because of that intermediate state."""
    coord = TaskCoordinator([INIT, MAIN])
    gate = coord.gate("init")
    cancel = CancelToken()
    results: list[bool] = []
    group = ThreadGroup("gate-test")
    group.spawn("gate-waiter", lambda: results.append(gate.wait_open(cancel, timeout=10)))
    for _ in range(200):
        coord.restore({"init": DEAD, "main": RUNNING})
        assert coord.stage() == "wait_alloc"
    assert_stays(lambda: assert_no_results(results), 0.05)
    cancel.cancel()
    assert group.join(5)
    assert results == [False]


def test_main_waiters_wake_when_prestart_completes() -> None:
    coord = TaskCoordinator([INIT, SIDE, MAIN])
    cancel = CancelToken()
    passed: list[str] = []
    group = ThreadGroup("gate-test")
    for i in range(4):
        group.spawn(
            f"main-waiter-{i}",
            lambda: passed.append("main") if coord.gate("main").wait_open(cancel, 10) else None,
        )
    coord.task_state_updated({"init": PENDING, "side": PENDING, "main": PENDING})
    coord.task_state_updated({"init": DEAD, "side": PENDING, "main": PENDING})
    assert_stays(lambda: assert_no_results(passed), 0.05)  # type: ignore[arg-type]
    coord.task_state_updated({"init": DEAD, "side": RUNNING, "main": PENDING})
    wait_for(lambda: assert_results(passed, ["main"] * 4), 5)  # type: ignore[arg-type]
    assert group.join(5)


def test_threaded_group_runs_in_lifecycle_order() -> None:
    """One thread per task waits on its gate, then plays the task (running, then dead)
    and reports states to the coordinator as a state handler would; the order in which
    tasks pass their gates and what the others were doing then is recorded."""
    tasks = [INIT, SIDE, MAIN, POST, STOP]
    coord = TaskCoordinator(tasks)
    states = {t.name: PENDING for t in tasks}
    report_lock = threading.Lock()
    passed: list[tuple[str, dict[str, TaskState]]] = []
    main_dead = threading.Event()
    cancel = CancelToken()

    def report(name: str, state: TaskState) -> None:
        with report_lock:
            states[name] = state
            coord.task_state_updated(dict(states))

    def play(t: Task) -> None:
        if not coord.gate(t.name).wait_open(cancel, timeout=10):
            return
        with report_lock:
            passed.append((t.name, dict(states)))
        report(t.name, RUNNING)
        if t is SIDE:
            main_dead.wait(10)
        report(t.name, DEAD)
        if t is MAIN:
            main_dead.set()

    group = ThreadGroup("lifecycle-test")
    for t in tasks:
        group.spawn(f"task-{t.name}", play, t)
    with report_lock:
        coord.task_state_updated(dict(states))
    try:
        wait_for(lambda: assert_all_passed(passed, len(tasks)), 10)
    finally:
        cancel.cancel()
        assert group.join(10)
    order = [name for name, _ in passed]
    assert set(order[:2]) == {"init", "side"}
    assert order[2:] == ["main", "post", "stop"]
    seen = dict(passed)
    assert seen["main"]["init"].successful() and seen["main"]["side"].is_running()
    assert seen["post"]["main"].state != TASK_PENDING
    assert all(seen["stop"][n].is_dead() for n in ("init", "side", "main", "post"))
    assert coord.stage() == "poststop"


def assert_all_passed(passed: list[tuple[str, dict[str, TaskState]]], count: int) -> None:
    assert len(passed) == count, f"only {[n for n, _ in passed]} passed their gates"


# --- property ---------------------------------------------------------------------------

_KINDS = {
    "prestart-ephemeral": ("prestart", False),
    "prestart-sidecar": ("prestart", True),
    "main": ("", False),
    "poststart-ephemeral": ("poststart", False),
    "poststart-sidecar": ("poststart", True),
    "poststop": ("poststop", False),
}

# Realistic moves of one task: start, restart (back to pending), exit (with or without
# failure), killed before start; dead is final unless the whole group restarts.
_MOVES = {
    TASK_PENDING: (RUNNING, DEAD, FAILED),
    TASK_RUNNING: (PENDING, DEAD, FAILED),
    TASK_DEAD: (),
}

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("move"), st.integers(0, 7), st.integers(0, 2)),
        st.tuples(st.just("restart"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@example(kinds=["prestart-ephemeral", "main"], initial=None, ops=[("move", 0, 2)])
@example(
    kinds=["prestart-ephemeral", "prestart-sidecar", "main", "poststart-ephemeral", "poststop"],
    initial=None,
    ops=[
        ("move", 1, 0),  # sidecar runs
        ("move", 0, 0),  # init runs ...
        ("move", 0, 1),  # ... and completes: main may start
        ("move", 2, 0),  # main runs: poststart may start
        ("move", 3, 0),
        ("move", 3, 1),
        ("move", 2, 1),
        ("move", 1, 1),  # every non-poststop task dead: poststop may start
        ("restart", 0, 0),
        ("move", 0, 2),  # init fails after the restart
    ],
)
@given(
    kinds=st.lists(st.sampled_from(sorted(_KINDS)), min_size=1, max_size=7),
    initial=st.one_of(st.none(), st.lists(st.sampled_from([PENDING, RUNNING, DEAD, FAILED]))),
    ops=_ops,
)
def test_property_gates_follow_task_states(
    kinds: list[str], initial: list[TaskState] | None, ops: list[tuple[str, int, int]]
) -> None:
    tasks = [
        Task(
            name=f"t{i}-{kind}",
            driver="mock_driver",
            lifecycle=Lifecycle(hook=_KINDS[kind][0], sidecar=_KINDS[kind][1])
            if _KINDS[kind][0]
            else None,
        )
        for i, kind in enumerate(kinds)
    ]
    coord = TaskCoordinator(tasks)
    states = {t.name: PENDING for t in tasks}
    if initial is not None:
        for t, s in zip(tasks, initial, strict=False):
            states[t.name] = s
        coord.restore(states)
    else:
        coord.task_state_updated(states)
    check_invariants(coord, tasks, states)
    for op, index, choice in ops:
        if op == "restart":
            coord.restart()
            assert coord.stage() == "init"
            assert coord.open_stages() == frozenset()
            states = {t.name: PENDING for t in tasks}
        else:
            t = tasks[index % len(tasks)]
            moves = _MOVES[states[t.name].state]
            if not moves:
                continue
            states[t.name] = moves[choice % len(moves)]
        coord.task_state_updated(dict(states))
        check_invariants(coord, tasks, states)


def check_invariants(
    coord: TaskCoordinator, tasks: list[Task], states: Mapping[str, TaskState]
) -> None:
    stage = coord.stage()
    assert stage in COORDINATOR_STATES
    present = {task_stage(t) for t in tasks}
    assert coord.open_stages() == GATES_BY_STATE[stage] & present
    for t in tasks:
        assert coord.gate(t.name).is_open() == (task_stage(t) in GATES_BY_STATE[stage])
    ephemeral_prestart = [states[t.name] for t in tasks if task_stage(t) == "prestart-ephemeral"]
    if any(not s.successful() for s in ephemeral_prestart):
        for t in tasks:
            if task_stage(t) == "main":
                assert not coord.gate(t.name).is_open(), (
                    f"main task {t.name} allowed while a prestart task is {ephemeral_prestart}"
                )
    all_dead = all(states[t.name].is_dead() for t in tasks if task_stage(t) != "poststop")
    assert (stage == "poststop") == all_dead
    for t in tasks:
        if task_stage(t) == "poststop":
            assert coord.gate(t.name).is_open() == all_dead


def test_coordinators_of_one_task_tuple_share_its_stage_maps_but_not_their_gates() -> None:
    tasks = (task("init", hook="prestart"), task("web"))
    first, second = TaskCoordinator(tasks), TaskCoordinator(tasks)
    assert first._stage_of is second._stage_of
    assert first._tasks_by_stage is second._tasks_by_stage
    assert first.gate("web") is not second.gate("web")
    copy = TaskCoordinator(list(tasks))  # a list may change: never cached
    assert copy._stage_of == first._stage_of and copy._stage_of is not first._stage_of


def test_a_repeated_name_is_refused_even_after_a_valid_list_was_seen() -> None:
    TaskCoordinator((task("web"),))
    with pytest.raises(ValueError, match="repeated"):
        TaskCoordinator((task("web"), task("web")))
