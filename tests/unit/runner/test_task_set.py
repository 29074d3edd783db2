"""TaskSet: per-task actions keep every failure (an exception group), skip tasks that
are not running, and keep the task order."""

from __future__ import annotations

import threading

import pytest

from allocrunner.errors import AllocRunnerError, DriverError, TaskNotRunningError
from allocrunner.runner.task_set import TaskErrors, TaskSet
from allocrunner.testing import mock_alloc, mock_task, wait_for


class FakeRunner:
    """Stands in for a TaskRunner: only `name` and the action are used."""

    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.error = error
        self.acted_on = threading.Event()

    def act(self) -> None:
        self.acted_on.set()
        if self.error is not None:
            raise self.error


def task_set(*runners: FakeRunner) -> TaskSet:
    return TaskSet("0123456789", list(runners), max_kill_timeout=1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("concurrently", [False, True])
def test_every_failure_is_raised_together_in_task_order(concurrently: bool) -> None:
    runners = [
        FakeRunner("a", DriverError("a broke")),
        FakeRunner("b", TaskNotRunningError("b not running")),
        FakeRunner("c"),
        FakeRunner("d", DriverError("d broke")),
    ]
    tasks = task_set(*runners)
    each = tasks.each_concurrently if concurrently else tasks.each
    with pytest.raises(TaskErrors) as info:
        each("restart", lambda tr: tr.act())
    assert all(r.acted_on.is_set() for r in runners), "a failure stopped the others"
    errors = info.value.exceptions
    assert [str(e) for e in errors] == ["a broke", "d broke"]
    assert [e.__notes__ for e in errors] == [["task 'a'"], ["task 'd'"]]
    assert "restart failed for 2 task(s)" in str(info.value)
    assert isinstance(info.value, AllocRunnerError)


def test_a_single_failure_is_still_caught_as_a_library_error() -> None:
    tasks = task_set(FakeRunner("a", DriverError("only one")), FakeRunner("b"))
    with pytest.raises(AllocRunnerError, match="only one") as info:
        tasks.each_concurrently("signal", lambda tr: tr.act())
    assert isinstance(info.value, ExceptionGroup)
    assert len(info.value.exceptions) == 1


def test_an_unexpected_error_is_not_passed_off_as_a_library_error() -> None:
    tasks = task_set(FakeRunner("a", RuntimeError("bug")), FakeRunner("b", DriverError("x")))
    with pytest.raises(ExceptionGroup) as info:
        tasks.each_concurrently("restart", lambda tr: tr.act())
    assert not isinstance(info.value, AllocRunnerError)
    assert [type(e) for e in info.value.exceptions] == [RuntimeError, DriverError]


def test_tasks_not_running_are_skipped_silently() -> None:
    tasks = task_set(FakeRunner("a", TaskNotRunningError("no")), FakeRunner("b"))
    tasks.each_concurrently("restart", lambda tr: tr.act())
    tasks.each("signal", lambda tr: tr.act())


def test_signal_to_every_task_reports_each_failure(make_runner) -> None:
    alloc = mock_alloc(
        mock_task("web", config={"run_for": "30s", "signal_error": "web refused"}),
        mock_task("db", config={"run_for": "30s", "signal_error": "db refused"}),
    )
    ar = make_runner(alloc)
    ar.start()

    def running() -> None:
        states = ar.alloc_state().task_states
        assert all(s.state == "running" for s in states.values()), states

    wait_for(running)
    with pytest.raises(TaskErrors) as info:
        ar.signal_task("", "SIGHUP")
    assert sorted(str(e) for e in info.value.exceptions) == ["db refused", "web refused"]
