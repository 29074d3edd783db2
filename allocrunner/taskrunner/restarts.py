"""RestartTracker: the restart policy of one task, as a pure decision procedure.

After each start failure or exit the task runner tells the tracker what happened
(`set_start_error`, `set_exit_result`, `set_restart_triggered`, `set_killed`) and asks
`get_state()` what to do next. The answer is a `RestartDecision`: one of Nomad's
states (`RESTARTING`, `NOT_RESTARTING`, `TERMINATED`, `KILLED`, or `NO_DECISION`), the
delay before the next start, and the human-readable reason.

The algorithm is Nomad's (``client/allocrunner/taskrunner/restarts``):

1. killed → KILLED.
2. a restart asked for by a user (not a failure) → RESTARTING at once, not counted.
3. a policy of zero attempts → TERMINATED for a successful exit of a task that does
   not restart on success, else NOT_RESTARTING ("Policy allows no restarts").
4. the attempt window: once `interval` has passed since it opened, the count resets
   and a new window opens now; then the attempt is counted. (Nomad's first version
   counted before resetting, so the first restart of a new window was charged to the
   old one.) A window is half-open: at exactly ``start + interval`` it has ended.
5. nothing to report → NO_DECISION.
6. an unrecoverable start error → NOT_RESTARTING; a successful exit of a task that
   does not restart on success → TERMINATED.
7. over the allowed attempts → NOT_RESTARTING in mode "fail"; in mode "delay",
   RESTARTING once the window ends (delay = what is left of it, no jitter).
8. otherwise RESTARTING after `delay` plus up to 25 % jitter: uniformly in
   ``[delay, 1.25 * delay)``.

Whether a successful exit is restarted: service and system tasks yes, batch and
sysbatch tasks no; a prestart or poststart task only if it is a sidecar; a poststop
task never.

Time comes from an injected monotonic `clock` and jitter from an injected `rng`, so
the whole procedure is deterministic under test.

No locks and no threads of its own: a tracker is owned by its task runner and used only
on that runner's run thread.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import NamedTuple

from allocrunner._locking import confined, immutable
from allocrunner.drivers.base import ExitResult
from allocrunner.durations import format_duration
from allocrunner.errors import is_recoverable
from allocrunner.structs.job import Lifecycle, RestartPolicy
from allocrunner.structs.status import (
    JOB_BATCH,
    JOB_SYSBATCH,
    LIFECYCLE_POSTSTART,
    LIFECYCLE_POSTSTOP,
    LIFECYCLE_PRESTART,
    RESTART_MODE_DELAY,
    RESTART_MODE_FAIL,
)
from allocrunner.structs.task_state import (
    EVENT_KILLED,
    EVENT_NOT_RESTARTING,
    EVENT_RESTARTING,
    EVENT_TERMINATED,
)

__all__ = [
    "JITTER",
    "KILLED",
    "NOT_RESTARTING",
    "NO_DECISION",
    "REASON_DELAY",
    "REASON_NO_RESTARTS_ALLOWED",
    "REASON_SUCCESSFUL_EXIT",
    "REASON_UNRECOVERABLE",
    "REASON_WITHIN_POLICY",
    "RESTARTING",
    "TERMINATED",
    "RestartDecision",
    "RestartTracker",
    "restarts_on_success",
]

# Decision states: Nomad's task event type strings.
RESTARTING = EVENT_RESTARTING
NOT_RESTARTING = EVENT_NOT_RESTARTING
TERMINATED = EVENT_TERMINATED
KILLED = EVENT_KILLED
NO_DECISION = ""

REASON_NO_RESTARTS_ALLOWED = "Policy allows no restarts"
REASON_UNRECOVERABLE = "Error was unrecoverable"
REASON_WITHIN_POLICY = "Restart within policy"
REASON_DELAY = "Exceeded allowed attempts, applying a delay"
REASON_SUCCESSFUL_EXIT = "Restart unnecessary as task terminated successfully"

JITTER = 0.25
"""The largest extra fraction of the delay added to a restart within policy."""
# The jitter's source when the caller gives none: one for every tracker, as a
# Mersenne Twister's state is 2.5 KB (its draws are atomic under the GIL).
_JITTER_RNG = random.Random()


class RestartDecision(NamedTuple):
    """Immutable. What the tracker decided: state, delay in seconds, reason."""

    state: str
    delay: float
    reason: str


def restarts_on_success(job_type: str, lifecycle: Lifecycle | None) -> bool:
    """Whether a task that exited successfully is restarted (Nomad's onSuccess)."""
    on_success = job_type not in (JOB_BATCH, JOB_SYSBATCH)
    if lifecycle is not None:
        if lifecycle.hook in (LIFECYCLE_PRESTART, LIFECYCLE_POSTSTART):
            on_success = lifecycle.sidecar
        elif lifecycle.hook == LIFECYCLE_POSTSTOP:
            on_success = False
    return on_success


def _check_policy(policy: RestartPolicy) -> RestartPolicy:
    if not isinstance(policy, RestartPolicy):
        raise TypeError(f"restart policy: expected RestartPolicy, got {type(policy).__name__}")
    if policy.attempts < 0:
        raise ValueError(f"restart policy: attempts must not be negative, got {policy.attempts}")
    if policy.interval < 0:
        raise ValueError(f"restart policy: interval must not be negative, got {policy.interval}")
    if policy.delay < 0:
        raise ValueError(f"restart policy: delay must not be negative, got {policy.delay}")
    if policy.mode not in (RESTART_MODE_FAIL, RESTART_MODE_DELAY):
        raise ValueError(
            f"restart policy: mode must be {RESTART_MODE_FAIL!r} or {RESTART_MODE_DELAY!r}, "
            f"got {policy.mode!r}"
        )
    return policy


class RestartTracker:
    """Not thread-safe; owned by the task's run thread.

    Holds the attempt window (its start and count) and the outcome of the latest
    run; `get_state()` consumes that outcome. The window starts when the tracker is
    made and is not persisted: an agent restart opens a new one, as in Nomad.
    """

    _on_success = immutable()
    _clock = immutable()
    _rng = immutable()
    # the run thread's alone (the owner's RUN_THREAD)
    _policy = confined("task-run")
    _start_time = confined("task-run")
    _count = confined("task-run")
    _reason = confined("task-run")
    _start_err = confined("task-run")
    _exit_result = confined("task-run")
    _killed = confined("task-run")
    _restart_triggered = confined("task-run")
    _failure = confined("task-run")

    def __init__(
        self,
        policy: RestartPolicy,
        job_type: str,
        lifecycle: Lifecycle | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = _check_policy(policy)
        self._on_success = restarts_on_success(job_type, lifecycle)
        self._clock = clock
        self._rng = rng if rng is not None else _JITTER_RNG
        self._start_time = clock()
        self._count = 0
        self._reason = ""
        self._start_err: BaseException | None = None
        self._exit_result: ExitResult | None = None
        self._killed = False
        self._restart_triggered = False
        self._failure = False

    # --- inputs ----------------------------------------------------------------------

    @property
    def policy(self) -> RestartPolicy:
        return self._policy

    def set_policy(self, policy: RestartPolicy) -> None:
        """Use `policy` from the next decision on (an updated job); keeps the window."""
        self._policy = _check_policy(policy)

    def set_start_error(self, err: BaseException) -> RestartTracker:
        """The task failed to start with `err` (its `recoverable` flag matters)."""
        self._start_err = err
        self._failure = True
        return self

    def set_exit_result(self, result: ExitResult) -> RestartTracker:
        """The task ran and exited with `result`."""
        self._exit_result = result
        self._failure = True
        return self

    def set_restart_triggered(self, failure: bool) -> RestartTracker:
        """Someone asked for a restart: a user (`failure` False: not counted, no delay)
        or a failure detector such as a health check (`failure` True: counted)."""
        if failure:
            self._failure = True
        else:
            self._restart_triggered = True
        return self

    def set_killed(self) -> RestartTracker:
        """The task was killed on purpose: it must not be restarted."""
        self._killed = True
        return self

    # --- outputs ---------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Attempts counted in the current window."""
        return self._count

    @property
    def reason(self) -> str:
        """The reason given with the latest decision."""
        return self._reason

    @property
    def on_success(self) -> bool:
        """Whether a successful exit is restarted."""
        return self._on_success

    def get_state(self) -> RestartDecision:
        """Decide what happens next and forget the reported outcome."""
        try:
            return self._decide()
        finally:
            self._start_err = None
            self._exit_result = None
            self._failure = False
            self._restart_triggered = False
            self._killed = False

    def _decide(self) -> RestartDecision:
        if self._killed:
            return self._answer(KILLED, 0.0, "")
        if self._restart_triggered:
            return self._answer(RESTARTING, 0.0, "")
        policy = self._policy
        if policy.attempts == 0:
            if not self._on_success and self._exited_successfully():
                return self._answer(TERMINATED, 0.0, REASON_NO_RESTARTS_ALLOWED)
            return self._answer(NOT_RESTARTING, 0.0, REASON_NO_RESTARTS_ALLOWED)

        now = self._clock()
        if now >= self._start_time + policy.interval:
            self._count = 0
            self._start_time = now
        self._count += 1

        if not self._failure:
            return self._answer(NO_DECISION, 0.0, "")
        if self._start_err is not None and not is_recoverable(self._start_err):
            return self._answer(NOT_RESTARTING, 0.0, REASON_UNRECOVERABLE)
        if self._start_err is None and self._exited_successfully() and not self._on_success:
            return self._answer(TERMINATED, 0.0, REASON_SUCCESSFUL_EXIT)

        if self._count > policy.attempts:
            if policy.mode == RESTART_MODE_FAIL:
                reason = (
                    f"Exceeded allowed attempts {policy.attempts} in interval "
                    f'{format_duration(policy.interval)} and mode is "fail"'
                )
                return self._answer(NOT_RESTARTING, 0.0, reason)
            return self._answer(RESTARTING, self._start_time + policy.interval - now, REASON_DELAY)
        return self._answer(RESTARTING, self._jitter(), REASON_WITHIN_POLICY)

    def _exited_successfully(self) -> bool:
        return self._exit_result is not None and self._exit_result.successful()

    def _jitter(self) -> float:
        delay = self._policy.delay
        return delay + self._rng.random() * delay * JITTER

    def _answer(self, state: str, delay: float, reason: str) -> RestartDecision:
        self._reason = reason
        return RestartDecision(state, delay, reason)

    def __repr__(self) -> str:
        return (
            f"<RestartTracker count={self._count} policy={self._policy.attempts}/"
            f"{format_duration(self._policy.interval)}/{self._policy.mode}>"
        )
