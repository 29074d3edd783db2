"""RestartTracker: every rule of Nomad's restart algorithm, with a fake clock.

Each table row is a scenario: a policy, a job type and lifecycle, and a sequence of
steps (advance the clock, report an outcome, expect a decision). Test ids are built
from the row's data, so a test's name always says what it checks.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs
import pytest

from allocrunner.drivers.base import ExitResult
from allocrunner.errors import DriverError, HookError, RecoverableError
from allocrunner.structs import Lifecycle, RestartPolicy
from allocrunner.taskrunner.restarts import (
    JITTER,
    KILLED,
    NO_DECISION,
    NOT_RESTARTING,
    REASON_DELAY,
    REASON_NO_RESTARTS_ALLOWED,
    REASON_SUCCESSFUL_EXIT,
    REASON_UNRECOVERABLE,
    REASON_WITHIN_POLICY,
    RESTARTING,
    TERMINATED,
    RestartTracker,
    restarts_on_success,
)


class FakeClock:
    """Not thread-safe; owned by one test. A monotonic clock moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FixedRandom(random.Random):
    """Not thread-safe. A Random whose `random()` always returns `value`."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def policy(attempts: int = 3, interval: float = 120.0, delay: float = 1.0, mode: str = "fail"):
    # Nomad's testPolicy: 3 attempts in 2 minutes, 1 s delay.
    return RestartPolicy(attempts=attempts, interval=interval, delay=delay, mode=mode)


def exit_code(code: int) -> ExitResult:
    return ExitResult(exit_code=code)


# --- outcomes a step can report -------------------------------------------------------


@attrs.frozen
class Outcome:
    """Immutable. What a step reports to the tracker, and its label for test ids."""

    label: str
    kind: str  # exit | start_error | triggered | killed | none
    value: Any = None

    def apply(self, tracker: RestartTracker) -> None:
        if self.kind == "exit":
            tracker.set_exit_result(self.value)
        elif self.kind == "start_error":
            tracker.set_start_error(self.value)
        elif self.kind == "triggered":
            tracker.set_restart_triggered(self.value)
        elif self.kind == "killed":
            tracker.set_exit_result(exit_code(0))
            tracker.set_killed()
        elif self.kind != "none":
            raise AssertionError(f"unknown outcome kind {self.kind}")


EXIT_0 = Outcome("exit0", "exit", exit_code(0))
EXIT_1 = Outcome("exit1", "exit", exit_code(1))
EXIT_127 = Outcome("exit127", "exit", exit_code(127))
EXIT_SIGNAL = Outcome("signal9", "exit", ExitResult(exit_code=137, signal=9))
EXIT_ERR = Outcome("exit-err", "exit", ExitResult(err="driver lost the task"))
START_ERR_PLAIN = Outcome("start-err-plain", "start_error", RuntimeError("boom"))
START_ERR_UNRECOVERABLE = Outcome(
    "start-err-unrecoverable", "start_error", DriverError("no such binary", recoverable=False)
)
START_ERR_RECOVERABLE = Outcome(
    "start-err-recoverable", "start_error", DriverError("try again", recoverable=True)
)
START_ERR_RECOVERABLE_PLAIN = Outcome(
    "start-err-RecoverableError", "start_error", RecoverableError("artifact fetch failed")
)
HOOK_ERR_RECOVERABLE = Outcome(
    "hook-err-recoverable",
    "start_error",
    HookError("artifacts", "prestart", "fetch failed", recoverable=True),
)
HOOK_ERR_UNRECOVERABLE = Outcome(
    "hook-err-unrecoverable",
    "start_error",
    HookError("validate", "prestart", "bad task", recoverable=False),
)
USER_RESTART = Outcome("user-restart", "triggered", False)
FAILURE_RESTART = Outcome("failure-restart", "triggered", True)
KILL = Outcome("killed", "killed")
NOTHING = Outcome("nothing", "none")


@attrs.frozen
class Step:
    """Immutable. Advance the clock, report `outcome`, expect a decision."""

    outcome: Outcome
    state: str
    delay: tuple[float, float] | float = 0.0  # exact, or a (low, high] range
    reason: str | None = None
    advance: float = 0.0
    count: int | None = None

    def label(self) -> str:
        prefix = f"+{self.advance:g}s:" if self.advance else ""
        return f"{prefix}{self.outcome.label}->{self.state or 'none'}"


@attrs.frozen
class Row:
    """Immutable. One scenario of the table."""

    steps: tuple[Step, ...]
    policy: RestartPolicy = attrs.field(factory=policy)
    job_type: str = "service"
    lifecycle: Lifecycle | None = None
    rng: float = 0.5

    def id(self) -> str:
        p = self.policy
        life = "main"
        if self.lifecycle is not None:
            life = self.lifecycle.hook + ("-sidecar" if self.lifecycle.sidecar else "")
        head = f"{self.job_type}/{life}/{p.attempts}in{p.interval:g}s+{p.delay:g}s/{p.mode}"
        if self.rng != 0.5:
            head += f"/rng={self.rng:g}"
        return f"{head}:" + ",".join(s.label() for s in self.steps)


def repeat(step: Step, n: int) -> tuple[Step, ...]:
    return tuple(step for _ in range(n))


WITHIN = Step(EXIT_127, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY)
FAIL_REASON = 'Exceeded allowed attempts 3 in interval 2m0s and mode is "fail"'

ROWS: Sequence[Row] = (
    # rule 1: killed wins over everything, even a zero-attempt policy
    Row((Step(KILL, KILLED, 0.0, ""),)),
    Row((Step(KILL, KILLED, 0.0, ""),), policy=policy(attempts=0)),
    # rule 2: a user restart is immediate and not counted, even with zero attempts
    Row((Step(USER_RESTART, RESTARTING, 0.0, "", count=0),), policy=policy(attempts=0)),
    Row(
        (*repeat(Step(USER_RESTART, RESTARTING, 0.0, "", count=0), 5), WITHIN),
        policy=policy(attempts=1),
    ),
    # rule 3: zero attempts
    Row((Step(EXIT_0, TERMINATED, 0.0, REASON_NO_RESTARTS_ALLOWED),), policy(0), "batch"),
    Row((Step(EXIT_0, NOT_RESTARTING, 0.0, REASON_NO_RESTARTS_ALLOWED),), policy(0), "service"),
    Row((Step(EXIT_1, NOT_RESTARTING, 0.0, REASON_NO_RESTARTS_ALLOWED),), policy(0), "service"),
    Row((Step(EXIT_1, NOT_RESTARTING, 0.0, REASON_NO_RESTARTS_ALLOWED),), policy(0), "batch"),
    Row(
        (Step(START_ERR_RECOVERABLE, NOT_RESTARTING, 0.0, REASON_NO_RESTARTS_ALLOWED),),
        policy(0),
    ),
    # rule 4: the window resets once the interval has passed (and only then)
    Row(
        (
            Step(EXIT_1, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY, count=1),
            Step(EXIT_1, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY, advance=10, count=1),
        ),
        policy=policy(attempts=1, interval=10.0),
    ),
    Row(
        (
            Step(EXIT_1, RESTARTING, (1.0, 1.25), count=1),
            Step(EXIT_1, NOT_RESTARTING, advance=9.999, count=2),
        ),
        policy=policy(attempts=1, interval=10.0),
    ),
    Row(
        (
            *repeat(WITHIN, 3),
            Step(EXIT_1, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY, advance=121, count=1),
            *repeat(WITHIN, 2),
            Step(EXIT_1, NOT_RESTARTING, 0.0, FAIL_REASON, count=4),
        ),
    ),
    # rule 5: nothing reported is no decision (but is counted)
    Row((Step(NOTHING, NO_DECISION, 0.0, "", count=1),)),
    # rule 6: unrecoverable start errors; successful exits that need no restart
    Row((Step(START_ERR_PLAIN, NOT_RESTARTING, 0.0, REASON_UNRECOVERABLE),)),
    Row((Step(START_ERR_UNRECOVERABLE, NOT_RESTARTING, 0.0, REASON_UNRECOVERABLE),)),
    Row((Step(HOOK_ERR_UNRECOVERABLE, NOT_RESTARTING, 0.0, REASON_UNRECOVERABLE),)),
    Row((Step(EXIT_0, TERMINATED, 0.0, REASON_SUCCESSFUL_EXIT),), job_type="batch"),
    Row((Step(EXIT_0, TERMINATED, 0.0, REASON_SUCCESSFUL_EXIT),), job_type="sysbatch"),
    Row((Step(EXIT_0, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY),), job_type="system"),
    Row((Step(EXIT_SIGNAL, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY),), job_type="batch"),
    Row((Step(EXIT_ERR, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY),), job_type="batch"),
    # rule 7 mode fail (Nomad TestClient_RestartTracker_ModeFail)
    Row((*repeat(WITHIN, 3), Step(EXIT_127, NOT_RESTARTING, 0.0, FAIL_REASON))),
    # rule 7 mode delay: waits out the window, no jitter; then a fresh window
    Row(
        (
            *repeat(WITHIN, 3),
            Step(EXIT_127, RESTARTING, 120.0, REASON_DELAY, count=4),
            Step(EXIT_127, RESTARTING, 100.0, REASON_DELAY, advance=20, count=5),
            Step(EXIT_127, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY, advance=100, count=1),
        ),
        policy=policy(mode="delay"),
    ),
    # recoverable start errors follow the policy (TestClient_RestartTracker_StartError_*)
    Row(
        (
            *repeat(Step(START_ERR_RECOVERABLE, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY), 3),
            Step(START_ERR_RECOVERABLE, NOT_RESTARTING, 0.0, FAIL_REASON),
        ),
    ),
    Row(
        (
            *repeat(Step(START_ERR_RECOVERABLE_PLAIN, RESTARTING, (1.0, 1.25)), 3),
            Step(START_ERR_RECOVERABLE_PLAIN, RESTARTING, 120.0, REASON_DELAY),
        ),
        policy=policy(mode="delay"),
    ),
    Row(
        (
            *repeat(Step(HOOK_ERR_RECOVERABLE, RESTARTING, (1.0, 1.25)), 3),
            Step(HOOK_ERR_RECOVERABLE, NOT_RESTARTING, 0.0, FAIL_REASON),
        ),
    ),
    # a restart triggered by a failure counts (TestClient_RestartTracker_RestartTriggered_Failure)
    Row(
        (
            Step(FAILURE_RESTART, RESTARTING, (1.0, 1.25), REASON_WITHIN_POLICY, count=1),
            Step(
                FAILURE_RESTART,
                NOT_RESTARTING,
                0.0,
                'Exceeded allowed attempts 1 in interval 2m0s and mode is "fail"',
            ),
        ),
        policy=policy(attempts=1),
    ),
    # rule 8: the jitter bounds
    Row((Step(EXIT_1, RESTARTING, 1.0, REASON_WITHIN_POLICY),), rng=0.0),
    Row((Step(EXIT_1, RESTARTING, (1.2499, 1.25), REASON_WITHIN_POLICY),), rng=0.99999),
    Row((Step(EXIT_1, RESTARTING, 0.0, REASON_WITHIN_POLICY),), policy=policy(delay=0.0)),
)


@pytest.mark.parametrize("row", ROWS, ids=[row.id() for row in ROWS])
def test_restart_algorithm(row: Row) -> None:
    clock = FakeClock()
    tracker = RestartTracker(
        row.policy, row.job_type, row.lifecycle, clock=clock, rng=FixedRandom(row.rng)
    )
    for i, step in enumerate(row.steps):
        clock.advance(step.advance)
        step.outcome.apply(tracker)
        state, delay, reason = tracker.get_state()
        where = f"step {i} ({step.label()})"
        assert state == step.state, f"{where}: state {state!r}"
        if isinstance(step.delay, tuple):
            low, high = step.delay
            assert low <= delay < high, f"{where}: delay {delay} not in [{low}, {high})"
        else:
            assert delay == pytest.approx(step.delay), f"{where}: delay {delay}"
        if step.reason is not None:
            assert reason == step.reason, f"{where}: reason {reason!r}"
            assert tracker.reason == step.reason
        if step.count is not None:
            assert tracker.count == step.count, f"{where}: count {tracker.count}"


def test_mode_delay_follow_ups_stay_within_interval() -> None:
    """Nomad TestClient_RestartTracker_ModeDelay: after the attempts, each delay is in
    (Delay, Interval] while the clock moves on."""
    clock = FakeClock()
    p = policy(mode="delay")
    tracker = RestartTracker(p, "service", clock=clock, rng=random.Random(7))
    for _ in range(p.attempts):
        state, delay, _ = tracker.set_exit_result(exit_code(127)).get_state()
        assert state == RESTARTING
        assert p.delay <= delay < p.delay * (1 + JITTER)
        clock.advance(delay)
    for _ in range(3):
        state, delay, reason = tracker.set_exit_result(exit_code(127)).get_state()
        assert state == RESTARTING
        assert reason == REASON_DELAY
        assert p.delay < delay <= p.interval
        clock.advance(1.0)


def test_waiting_out_a_delay_opens_a_new_window() -> None:
    """Restarting exactly when the delay ends starts a fresh window (no zero-delay spin)."""
    clock = FakeClock()
    tracker = RestartTracker(policy(attempts=1, mode="delay"), "service", clock=clock)
    tracker.set_exit_result(exit_code(1)).get_state()
    clock.advance(30.0)
    state, delay, _ = tracker.set_exit_result(exit_code(1)).get_state()
    assert (state, delay) == (RESTARTING, pytest.approx(90.0))
    clock.advance(delay)
    state, delay, reason = tracker.set_exit_result(exit_code(1)).get_state()
    assert (state, reason, tracker.count) == (RESTARTING, REASON_WITHIN_POLICY, 1)
    assert 1.0 <= delay < 1.25


def test_flags_are_cleared_by_get_state() -> None:
    tracker = RestartTracker(policy(), "service", clock=FakeClock())
    tracker.set_killed()
    assert tracker.get_state().state == KILLED
    tracker.set_restart_triggered(False)
    assert tracker.get_state().state == RESTARTING
    assert tracker.get_state().state == NO_DECISION


def test_jitter_is_uniform_over_its_range() -> None:
    tracker = RestartTracker(
        policy(attempts=10_000, delay=2.0), "service", clock=FakeClock(), rng=random.Random(1)
    )
    delays = [tracker.set_exit_result(exit_code(1)).get_state().delay for _ in range(2000)]
    assert min(delays) >= 2.0
    assert max(delays) < 2.5
    # both halves of the range are used
    assert any(d < 2.1 for d in delays)
    assert any(d > 2.4 for d in delays)


def test_set_policy_applies_to_the_next_decision() -> None:
    clock = FakeClock()
    tracker = RestartTracker(policy(attempts=5), "service", clock=clock)
    tracker.set_exit_result(exit_code(1)).get_state()
    tracker.set_policy(policy(attempts=1))
    assert tracker.set_exit_result(exit_code(1)).get_state().state == NOT_RESTARTING


LIFECYCLE_CASES = [
    (job_type, hook, sidecar)
    for job_type in ("service", "batch", "sysbatch", "system")
    for hook, sidecar in (
        ("", False),
        ("prestart", False),
        ("prestart", True),
        ("poststart", False),
        ("poststart", True),
        ("poststop", False),
    )
]


def _expected_on_success(job_type: str, hook: str, sidecar: bool) -> bool:
    if hook in ("prestart", "poststart"):
        return sidecar
    if hook == "poststop":
        return False
    return job_type in ("service", "system")


@pytest.mark.parametrize(
    ("job_type", "hook", "sidecar"),
    LIFECYCLE_CASES,
    ids=[f"{j}-{h or 'main'}{'-sidecar' if s else ''}" for j, h, s in LIFECYCLE_CASES],
)
def test_lifecycle_restart_on_success(job_type: str, hook: str, sidecar: bool) -> None:
    """Nomad TestClient_RestartTracker_Lifecycle: exit 0 restarts only tasks that
    restart on success; a failure always restarts within policy."""
    lifecycle = Lifecycle(hook=hook, sidecar=sidecar) if hook else None
    expected = _expected_on_success(job_type, hook, sidecar)
    assert restarts_on_success(job_type, lifecycle) is expected
    tracker = RestartTracker(policy(), job_type, lifecycle, clock=FakeClock())
    state, _, _ = tracker.set_exit_result(exit_code(0)).get_state()
    assert state == (RESTARTING if expected else TERMINATED)
    state, _, _ = tracker.set_exit_result(exit_code(127)).get_state()
    assert state == RESTARTING


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (RestartPolicy(attempts=-1), "attempts"),
        (RestartPolicy(interval=-1.0), "interval"),
        (RestartPolicy(delay=-0.5), "delay"),
        (RestartPolicy(mode="sometimes"), "mode"),
    ],
    ids=["attempts", "interval", "delay", "mode"],
)
def test_bad_policy_names_the_field(bad: RestartPolicy, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RestartTracker(bad, "service")
    with pytest.raises(TypeError, match="RestartPolicy"):
        RestartTracker({"attempts": 1}, "service")  # type: ignore[arg-type]
