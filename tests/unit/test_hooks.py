"""The one hook-phase runner (allocrunner._hooks) and the two hook sets built on it:
the alloc runner's `AllocHooks` and the task runner's `run_phase`."""

from __future__ import annotations

import pytest

from allocrunner._hooks import NamedHook, Policy, run_phase
from allocrunner._sync import CancelToken
from allocrunner.errors import DriverError, HookError, HookErrors
from allocrunner.runner import hooks as alloc_hooks
from allocrunner.runner.hooks import AllocHooks
from allocrunner.taskrunner import hooks as task_hooks
from allocrunner.testing import mock_alloc, mock_task


class Named:
    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.error = error
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def _record(self, phase: str, *args: object) -> None:
        self.calls.append((phase, args))
        if self.error is not None:
            raise self.error


# --- the shared runner ---------------------------------------------------------------------


def test_stop_at_first_raises_the_first_failure_and_keeps_recoverability() -> None:
    cause = DriverError("boom", recoverable=True)
    hooks = [Named("a"), Named("b", cause), Named("c")]
    with pytest.raises(HookError) as info:
        run_phase(hooks, "pre-run", lambda h: h._record("x"), policy=Policy.STOP_AT_FIRST)
    assert str(info.value) == 'pre-run hook "b" failed: boom'
    assert info.value.__cause__ is cause
    assert info.value.recoverable
    assert [len(h.calls) for h in hooks] == [1, 1, 0]


def test_collect_all_runs_every_hook_and_groups_every_failure() -> None:
    hooks = [Named("a", ValueError("one")), Named("b"), Named("c", RuntimeError())]
    with pytest.raises(HookErrors) as info:
        run_phase(hooks, "post-run", lambda h: h._record("x"), policy=Policy.COLLECT_ALL)
    assert all(h.calls for h in hooks)
    assert str(info.value).startswith("post-run hooks failed")
    errors = info.value.exceptions
    assert [str(e) for e in errors] == [
        'post-run hook "a" failed: one',
        'post-run hook "c" failed: RuntimeError',
    ]
    assert isinstance(errors[0].__cause__, ValueError)
    assert all(isinstance(e, HookError) and not e.recoverable for e in errors)


def test_a_phase_without_failures_raises_nothing() -> None:
    for policy in Policy:
        run_phase([Named("a"), Named("b")], "update", lambda h: h._record("x"), policy=policy)


def test_both_runners_share_the_policy_enum() -> None:
    assert task_hooks.STOP_AT_FIRST is Policy.STOP_AT_FIRST
    assert task_hooks.COLLECT_ALL is Policy.COLLECT_ALL
    assert task_hooks.Policy is Policy
    assert isinstance(Named("a"), NamedHook)


# --- alloc hooks ---------------------------------------------------------------------------


class PrerunOnly(Named):
    def prerun(self, cancel: CancelToken) -> None:
        self._record("prerun", cancel)


class Everything(Named):
    def prerun(self, cancel: CancelToken) -> None:
        self._record("prerun", cancel)

    def update(self, alloc: object) -> None:
        self._record("update", alloc)

    def pre_kill(self) -> None:
        self._record("pre_kill")

    def postrun(self) -> None:
        self._record("postrun")

    def destroy(self) -> None:
        self._record("destroy")

    def shutdown(self) -> None:
        self._record("shutdown")


def test_alloc_hooks_are_sorted_by_phase_once_in_order() -> None:
    first, second, third = Everything("first"), PrerunOnly("second"), Everything("third")
    hooks = AllocHooks.of([first, second, third])
    assert hooks.prerun_hooks == (first, second, third)
    assert hooks.postrun_hooks == (first, third)
    assert hooks.update_hooks == hooks.destroy_hooks == hooks.shutdown_hooks == (first, third)
    cancel = CancelToken()
    hooks.prerun(cancel)
    alloc = mock_alloc(mock_task("web"))
    hooks.update(alloc)
    hooks.pre_kill()
    hooks.postrun()
    hooks.destroy()
    hooks.shutdown()
    assert [phase for phase, _ in first.calls] == [
        "prerun",
        "update",
        "pre_kill",
        "postrun",
        "destroy",
        "shutdown",
    ]
    assert first.calls[0][1] == (cancel,) and first.calls[1][1] == (alloc,)
    assert second.calls == [("prerun", (cancel,))]


def test_alloc_hooks_refuse_a_hook_without_any_phase() -> None:
    for _ in range(2):  # a refused sequence of classes is never remembered as sorted
        with pytest.raises(TypeError, match="implements no phase"):
            AllocHooks.of([Named("idle")])


def test_alloc_hooks_of_the_same_classes_sort_each_list_its_own_instances() -> None:
    """The sorting is remembered per sequence of hook classes: another list of the same
    classes gets its own instances in each phase, and another order its own sorting."""
    a1, b1, c1 = Everything("a1"), PrerunOnly("b1"), Everything("c1")
    a2, b2, c2 = Everything("a2"), PrerunOnly("b2"), Everything("c2")
    first = AllocHooks.of([a1, b1, c1])
    second = AllocHooks.of([a2, b2, c2])
    assert first.prerun_hooks == (a1, b1, c1) and first.postrun_hooks == (a1, c1)
    assert second.prerun_hooks == (a2, b2, c2) and second.postrun_hooks == (a2, c2)
    reordered = AllocHooks.of([b1, a1])
    assert reordered.prerun_hooks == (b1, a1)
    assert reordered.postrun_hooks == reordered.destroy_hooks == (a1,)


def test_alloc_prerun_stops_at_first_failure_and_other_phases_collect() -> None:
    failing, after = Everything("bad", ValueError("nope")), Everything("after")
    hooks = AllocHooks.of([failing, after])
    with pytest.raises(HookError, match='pre-run hook "bad" failed: nope'):
        hooks.prerun(CancelToken())
    assert after.calls == []
    with pytest.raises(HookErrors) as info:
        hooks.pre_kill()
    assert [str(e) for e in info.value.exceptions] == ['pre-kill hook "bad" failed: nope']
    assert [phase for phase, _ in after.calls] == ["pre_kill"]


def test_alloc_run_phase_sorts_then_runs_one_phase() -> None:
    hook = Everything("a")
    alloc_hooks.run_phase([hook, PrerunOnly("b")], "postrun")
    assert hook.calls == [("postrun", ())]
    with pytest.raises(ValueError, match="unknown alloc hook phase"):
        alloc_hooks.run_phase([hook], "prestart")


# --- task hooks ----------------------------------------------------------------------------


class TaskStopHook(Named):
    def stop(self, req: object) -> None:
        self._record("stop", req)


def test_task_bind_phase_picks_the_hooks_of_one_phase() -> None:
    stop, other = TaskStopHook("s"), Named("n")
    bound = task_hooks.bind_phase([stop, other], "stop")
    assert [b.hook for b in bound] == [stop]
    assert bound[0].name == "s"
    assert task_hooks.bind_phase([stop, other], "exited") == []
    with pytest.raises(ValueError, match="unknown task hook phase"):
        task_hooks.bind_phase([stop], "prerun")


def test_task_run_phase_calls_through_the_given_call() -> None:
    stop = TaskStopHook("s", DriverError("x", recoverable=True))
    seen: list[str] = []

    def call(hook: object, method) -> None:
        seen.append(getattr(hook, "name", "?"))
        method("request")

    with pytest.raises(HookErrors) as info:
        task_hooks.run_phase([stop], "stop", call, policy=task_hooks.COLLECT_ALL)
    assert seen == ["s"]
    assert stop.calls == [("stop", ("request",))]
    assert info.value.exceptions[0].recoverable
