"""TaskHookPhases on its own: hooks bound to their phases once, prestart's env and
recorded progress, a prestart cut short, failures turned into task events, and what
each soft phase is told."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any
from unittest.mock import patch

import attrs
import pytest

from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir
from allocrunner.drivers.base import ExitResult, TaskConfig, TaskHandle
from allocrunner.errors import HookError
from allocrunner.state import HookState, MemDB
from allocrunner.structs import Allocation, Task, TaskEvent, TaskState
from allocrunner.structs.status import DESIRED_STOP
from allocrunner.structs.task_state import EVENT_HOOK_FAILED
from allocrunner.taskrunner import HookEventError, HookRequest, PrestartResult, TaskHook
from allocrunner.taskrunner.hook_phases import TaskHookPhases, _start_suffix
from allocrunner.taskrunner.hooks import DONE, DONE_REDOABLE
from allocrunner.taskrunner.state import TaskStateCell
from allocrunner.testing import mock_task
from tests.unit.taskrunner.conftest import alloc_of


class Recorder(TaskHook):
    """Not thread-safe. Records every phase call with its request; `fail` maps a phase
    to the error to raise there; `prestart_result` is what prestart hands back."""

    def __init__(
        self,
        name: str,
        prestart_result: PrestartResult | None = None,
        fail: dict[str, Exception] | None = None,
    ) -> None:
        self.name = name
        self.prestart_result = prestart_result
        self.fail = fail or {}
        self.calls: list[tuple[str, HookRequest]] = []

    def _call(self, phase: str, req: HookRequest) -> None:
        self.calls.append((phase, req))
        if phase in self.fail:
            raise self.fail[phase]

    def prestart(self, req: HookRequest) -> PrestartResult | None:
        self._call("prestart", req)
        return self.prestart_result

    def poststart(self, req: HookRequest) -> None:
        self._call("poststart", req)

    def pre_kill(self, req: HookRequest) -> None:
        self._call("pre_kill", req)

    def exited(self, req: HookRequest) -> None:
        self._call("exited", req)

    def update(self, req: HookRequest) -> None:
        self._call("update", req)

    def stop(self, req: HookRequest) -> None:
        self._call("stop", req)

    def shutdown(self, req: HookRequest) -> None:
        self._call("shutdown", req)


class StopOnly(TaskHook):
    name = "stop_only"

    def __init__(self) -> None:
        self.stops = 0

    def stop(self, req: HookRequest) -> None:
        self.stops += 1


@attrs.define
class Rig:
    """One TaskHookPhases over a real cell, alloc dir and tokens."""

    phases: TaskHookPhases
    cell: TaskStateCell
    kill: CancelToken
    shutdown: CancelToken
    alloc: list[Allocation]
    db: MemDB
    task_name: str

    def events(self, kind: str) -> list[TaskEvent]:
        return [e for e in self.cell.state().events if e.type == kind]

    def stored_hook(self, name: str) -> HookState | None:
        """What the state DB holds for hook `name` (None: nothing)."""
        local, _state = self.db.task_runner_state(self.alloc[0].id, self.task_name)
        return None if local is None else local.hook(name)


@pytest.fixture
def make_rig(tmp_path: Path):
    def make(*hooks: object, task: Task | None = None) -> Rig:
        task = task or mock_task()
        alloc = alloc_of(task)
        alloc_dir = AllocDir(tmp_path, alloc.id)
        alloc_dir.build()
        db = MemDB()
        cell = TaskStateCell(alloc.id, task.name, db, TaskState(), lambda: None)
        current = [alloc]
        kill, shutdown = CancelToken(), CancelToken()

        def now() -> tuple[Allocation, Task]:
            group = current[0].group()
            assert group is not None
            found = group.task(task.name)
            assert found is not None
            return current[0], found

        phases = TaskHookPhases(
            "<test hooks>",
            hooks,
            cell=cell,
            current=now,
            alloc_dir=alloc_dir,
            task_dir=alloc_dir.new_task_dir(task.name),
            datacenter="dc7",
            kill_token=kill,
            shutdown_token=shutdown,
        )
        return Rig(phases, cell, kill, shutdown, current, db, task.name)

    return make


def handle() -> TaskHandle:
    return TaskHandle(driver="mock_driver", config=TaskConfig(id="t1", alloc_id="a", name="web"))


# --- binding ----------------------------------------------------------------------------


def test_phases_are_bound_once_at_construction(make_rig) -> None:
    hook = StopOnly()
    rig = make_rig(hook)
    hook.exited = lambda req: pytest.fail("a method added later is never bound")  # type: ignore[attr-defined]
    rig.phases.exited(ExitResult(exit_code=0))
    rig.phases.stop()
    assert hook.stops == 1


def test_hooks_run_in_order_and_see_the_task(make_rig) -> None:
    first, second = Recorder("first"), Recorder("second")
    rig = make_rig(first, second)
    rig.phases.poststart()
    assert [h.calls[0][0] for h in (first, second)] == ["poststart", "poststart"]
    req = first.calls[0][1]
    assert req.task.name == "web" and req.datacenter == "dc7"
    assert req.alloc is rig.alloc[0]


# --- prestart ---------------------------------------------------------------------------


def test_prestart_merges_env_in_order_and_the_task_config_gets_it(make_rig) -> None:
    one = Recorder("one", PrestartResult(env={"A": "1", "B": "1"}))
    two = Recorder("two", PrestartResult(env={"B": "2"}))
    rig = make_rig(one, two)
    assert rig.phases.prestart()
    assert dict(two.calls[0][1].env) == {"A": "1", "B": "1"}
    assert dict(rig.phases.env) == {"A": "1", "B": "2"}
    alloc, task = rig.alloc[0], mock_task(config={"run_for": "${B}s"})
    config = rig.phases.task_config(alloc, task)
    assert config.driver_config["run_for"] == "2s"
    assert dict(config.env) == {"A": "1", "B": "2"}


def test_each_start_gets_its_own_driver_task_id(make_rig) -> None:
    """<alloc id>/<task>/<eight hex digits>, as Nomad's, new for every start; drawing
    the digits makes no getrandom system call (it would hand the GIL over)."""
    rig = make_rig()
    alloc, task = rig.alloc[0], mock_task()
    no_syscall = AssertionError("a getrandom system call")
    # `secrets` and `random.SystemRandom` read through random's own binding of urandom
    with (
        patch.object(os, "urandom", side_effect=no_syscall),
        patch.object(random, "_urandom", side_effect=no_syscall),
    ):
        ids = {rig.phases.task_config(alloc, task).id for _ in range(50)}
    assert len(ids) == 50
    for task_id in ids:
        alloc_id, name, suffix = task_id.split("/")
        assert (alloc_id, name) == (alloc.id, task.name)
        assert re.fullmatch("[0-9a-f]{8}", suffix), task_id


def test_a_program_seeding_random_does_not_repeat_driver_task_ids(make_rig) -> None:
    rig = make_rig()
    alloc, task = rig.alloc[0], mock_task()
    state = random.getstate()
    try:
        random.seed(7)
        first = rig.phases.task_config(alloc, task).id
        random.seed(7)
        second = rig.phases.task_config(alloc, task).id
    finally:
        random.setstate(state)
    assert first != second


def test_a_forked_child_draws_other_driver_ids_than_its_parent() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one draw, reported, and out
        try:
            os.write(write_end, _start_suffix().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        child = os.read(read_end, 64).decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert re.fullmatch("[0-9a-f]{8}", child)
    assert child != _start_suffix()


def test_a_done_prestart_hook_is_recorded_then_skipped_with_its_env(make_rig) -> None:
    done = Recorder("done", PrestartResult(env={"D": "x"}, data={"k": "v"}, done=True))
    rig = make_rig(done)
    assert rig.phases.prestart()
    recorded = rig.cell.local().hook("done")
    assert recorded is not None and recorded.prestart_done and dict(recorded.data) == {"k": "v"}
    assert rig.phases.prestart()
    assert len(done.calls) == 1
    assert dict(rig.phases.env) == {"D": "x"}


def test_a_redoable_done_hook_is_written_with_the_tasks_next_write(make_rig) -> None:
    redo, durable = Recorder("redo", DONE_REDOABLE), Recorder("durable", DONE)
    rig = make_rig(redo, durable)
    assert rig.phases.prestart()
    assert rig.cell.local().hook("redo") == HookState(prestart_done=True)
    # Not written by itself: the durable hook's write after it carried it.
    assert rig.stored_hook("redo") == rig.stored_hook("durable") == HookState(prestart_done=True)

    alone = Recorder("alone", DONE_REDOABLE)
    rig = make_rig(alone)
    assert rig.phases.prestart()
    assert rig.cell.local().hook("alone") == HookState(prestart_done=True)
    assert rig.stored_hook("alone") is None  # an agent dying now runs it again on restore
    assert rig.phases.prestart()
    assert len(alone.calls) == 1  # skipped all the same while this agent lives
    rig.cell.publish(handle=handle())  # the start's write, committed before "running"
    assert rig.stored_hook("alone") == HookState(prestart_done=True)
    stored, _state = rig.db.task_runner_state(rig.alloc[0].id, rig.task_name)
    assert stored is not None and stored.task_handle == handle()


class Announcer(TaskHook):
    """Emits one event from its prestart, then hands back `result`."""

    def __init__(self, name: str, result: PrestartResult | None) -> None:
        self.name = name
        self.result = result

    def prestart(self, req: HookRequest) -> PrestartResult | None:
        req.emit_event(TaskEvent("Announced", message=self.name))
        return self.result


def stored_events(rig: Rig) -> list[str]:
    _local, state = rig.db.task_runner_state(rig.alloc[0].id, rig.task_name)
    return [] if state is None else [e.message for e in state.events]


def test_a_prestart_hooks_event_is_written_with_its_record_or_the_next_write(make_rig) -> None:
    rig = make_rig(Announcer("quiet", None), Announcer("redo", DONE_REDOABLE))
    assert rig.phases.prestart()
    assert [e.message for e in rig.events("Announced")] == ["quiet", "redo"]  # seen at once
    assert stored_events(rig) == []  # an agent dying now runs both hooks again
    rig.cell.publish(handle=handle())
    assert stored_events(rig) == ["quiet", "redo"]

    rig = make_rig(Announcer("first", None), Announcer("durable", DONE))
    assert rig.phases.prestart()
    assert stored_events(rig) == ["first", "durable"]  # the durable record carried both
    assert rig.stored_hook("durable") == HookState(prestart_done=True)


def test_a_redoable_result_with_data_is_written_at_once(make_rig) -> None:
    keeps = Recorder("keeps", PrestartResult(data={"k": "v"}, done=True, redoable=True))
    rig = make_rig(keeps)
    assert rig.phases.prestart()
    assert rig.stored_hook("keeps") == HookState(prestart_done=True, data={"k": "v"})


class Updater(TaskHook):
    """Updates the allocation from its prestart (a new version arrives meanwhile)."""

    name = "updater"

    def __init__(self, rig: list[Rig]) -> None:
        self.rig = rig

    def prestart(self, req: HookRequest) -> None:
        current = self.rig[0].alloc
        current[0] = attrs.evolve(current[0], alloc_modify_index=current[0].alloc_modify_index + 1)


def test_each_prestart_hook_is_told_the_latest_allocation(make_rig) -> None:
    holder: list[Rig] = []
    before, after = Recorder("before"), Recorder("after")
    holder.append(make_rig(before, Updater(holder), after))
    rig = holder[0]
    first = rig.alloc[0]
    assert rig.phases.prestart()
    assert before.calls[0][1].alloc is first
    assert after.calls[0][1].alloc is rig.alloc[0]
    assert after.calls[0][1].alloc is not first


def test_a_prestart_request_is_built_again_once_the_env_or_the_progress_differs(
    make_rig,
) -> None:
    one, two = Recorder("one"), Recorder("two", PrestartResult(env={"A": "1"}))
    three, four = Recorder("three"), Recorder("four")
    rig = make_rig(one, two, three, four)
    rig.cell.update_local(lambda local: local.with_hook("four", HookState(data={"k": "v"})))
    assert rig.phases.prestart()
    requests = [hook.calls[0][1] for hook in (one, two, three, four)]
    assert requests[1] is requests[0]  # nothing changed between them
    assert "A" not in requests[1].env and requests[2].env["A"] == "1"
    assert requests[3] is not requests[2]
    assert requests[3].previous == HookState(data={"k": "v"})
    assert requests[2].previous is None


class Killer(TaskHook):
    """Kills the task from its prestart, as a failing health check might."""

    name = "killer"

    def __init__(self, rig: list[Rig]) -> None:
        self.rig = rig

    def prestart(self, req: HookRequest) -> None:
        self.rig[0].kill.cancel("killed")


def test_a_kill_during_prestart_cuts_it_short_without_an_event(make_rig) -> None:
    holder: list[Rig] = []
    done = Recorder("done", PrestartResult(done=True))
    later = Recorder("later")
    holder.append(make_rig(done, Killer(holder), later))
    rig = holder[0]
    assert not rig.phases.prestart()
    assert later.calls == []
    assert rig.events(EVENT_HOOK_FAILED) == []
    recorded = rig.cell.local().hook("done")
    assert recorded is not None and recorded.prestart_done


def test_a_prestart_failure_is_recorded_and_raised(make_rig) -> None:
    broken = Recorder("broken", fail={"prestart": RuntimeError("no disk")})
    later = Recorder("later")
    rig = make_rig(broken, later)
    with pytest.raises(HookError) as info:
        rig.phases.prestart()
    assert info.value.hook == "broken"
    assert later.calls == []
    [event] = rig.events(EVENT_HOOK_FAILED)
    assert event.message == "broken: no disk"


def test_redoable_records_outlive_a_prestart_that_fails_or_is_cut_short(make_rig) -> None:
    """Records a phase keeps back until its end reach the task's state however the
    phase ends, so the next start skips those hooks."""
    redo = Recorder("redo", DONE_REDOABLE)
    broken = Recorder("broken", fail={"prestart": RuntimeError("no disk")})
    rig = make_rig(redo, broken)
    with pytest.raises(HookError):
        rig.phases.prestart()
    assert rig.cell.local().hook("redo") == HookState(prestart_done=True)
    # The failure's event was written, and took the record along.
    assert rig.stored_hook("redo") == HookState(prestart_done=True)

    holder: list[Rig] = []
    early = Recorder("early", DONE_REDOABLE)
    holder.append(make_rig(early, Killer(holder), Recorder("after")))
    assert not holder[0].phases.prestart()
    assert holder[0].cell.local().hook("early") == HookState(prestart_done=True)


def test_a_hook_event_error_records_the_hooks_own_event(make_rig) -> None:
    own = TaskEvent("Failed Artifact Download", message="404")
    broken = Recorder("broken", fail={"prestart": HookEventError("404", own)})
    rig = make_rig(broken)
    with pytest.raises(HookError):
        rig.phases.prestart()
    assert rig.events("Failed Artifact Download") == [own]
    assert rig.events(EVENT_HOOK_FAILED) == []


# --- the soft phases --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "call"),
    [
        ("poststart", lambda p: p.poststart()),
        ("pre_kill", lambda p: p.pre_kill(handle())),
        ("exited", lambda p: p.exited(None)),
        ("update", lambda p: p.update()),
        ("stop", lambda p: p.stop()),
        ("shutdown", lambda p: p.shutdown()),
    ],
)
def test_soft_phase_failures_become_events_and_every_hook_runs(
    make_rig, phase: str, call: Any
) -> None:
    first = Recorder("first", fail={phase: RuntimeError("boom")})
    second = Recorder("second", fail={phase: RuntimeError("bang")})
    rig = make_rig(first, second)
    call(rig.phases)
    assert [c[0] for c in first.calls + second.calls] == [phase, phase]
    assert [e.message for e in rig.events(EVENT_HOOK_FAILED)] == ["first: boom", "second: bang"]


def test_soft_phases_are_told_the_handle_result_and_kill_token(make_rig) -> None:
    hook = Recorder("hook")
    rig = make_rig(hook)
    rig.cell.publish(handle=handle(), notify=False)
    rig.phases.poststart()
    rig.phases.exited(ExitResult(exit_code=3))
    poststart, exited = hook.calls[0][1], hook.calls[1][1]
    assert poststart.handle == handle() and poststart.cancel is rig.kill
    assert exited.result == ExitResult(exit_code=3)


def test_shutdown_hooks_get_a_token_the_kill_does_not_fire(make_rig) -> None:
    hook = Recorder("hook")
    rig = make_rig(hook)
    rig.kill.cancel("killed")
    rig.phases.shutdown()
    assert not hook.calls[0][1].cancel.cancelled()


def test_update_hooks_skip_a_terminal_allocation(make_rig) -> None:
    hook = Recorder("hook")
    rig = make_rig(hook)
    rig.phases.update()
    rig.alloc[0] = attrs.evolve(rig.alloc[0], desired_status=DESIRED_STOP)
    rig.phases.update()
    assert [c[0] for c in hook.calls] == ["update"]


@pytest.mark.parametrize("done", [False, True])
@pytest.mark.parametrize("data", [{}, {"k": "v"}])
@pytest.mark.parametrize("env", [{}, {"E": "1"}])
def test_hook_state_is_what_the_result_records(done, data, env):
    """The shared states `hook_state` hands back for results with nothing to keep equal
    the state built field by field: the env only of a done hook, and the data."""
    result = PrestartResult(env=env, data=data, done=done)
    assert result.hook_state() == HookState(
        prestart_done=done, data=data, env=env if done else {}
    )
