"""A hypothesis model of the AllocRunner lifecycle, driven while background threads
read alloc_state(), listen and wait for run() to return: random updates (run, stop,
stale), restarts, signals, persists, destroy and shutdown, alone or several at once
from their own threads. Invariants: nothing deadlocks (every wait is bounded), the
client status always agrees with the task states, listeners never go back in time,
the final state is published before wait() returns, destroy completes exactly once,
no write reaches the state DB after destroy deleted the allocation's state, and no
thread is left behind. A stress variant plays 200 examples, in four parts."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from allocrunner._checkpoints import CHECKPOINTS, Stall, armed, mark
from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver
from allocrunner.errors import AllocRunnerError, BroadcasterClosed, TaskNotRunningError
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.state import LocalState, MemDB
from allocrunner.structs import (
    CLIENT_TERMINAL,
    EVENT_RESTART_SIGNAL,
    Allocation,
    AllocDeploymentStatus,
    AllocState,
    TaskEvent,
    TaskState,
    client_status_from_task_states,
    new_allocation,
)
from allocrunner.testing import lifecycle, mock_job, mock_task

BOUND = 20.0
STALL = 0.002


def consistent(state) -> None:
    status, _ = client_status_from_task_states(state.task_states)
    assert state.client_status == (status or "pending"), (state.client_status, status)


class RecordingDB(MemDB):
    """A MemDB that records every write and delete it is asked for, in order, so the
    model can tell what reached it after the allocation's state was deleted."""

    def __init__(self) -> None:
        super().__init__()
        self._calls_lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def _note(self, what: str, alloc_id: str) -> None:
        with self._calls_lock:
            self.calls.append((what, alloc_id))

    def put_allocation(self, alloc: Allocation) -> None:
        self._note("put_allocation", alloc.id)
        super().put_allocation(alloc)

    def put_task_state(self, alloc_id: str, task: str, state: TaskState) -> None:
        self._note("put_task_state", alloc_id)
        super().put_task_state(alloc_id, task, state)

    def put_task_local_state(self, alloc_id: str, task: str, local: LocalState) -> None:
        self._note("put_task_local_state", alloc_id)
        super().put_task_local_state(alloc_id, task, local)

    def put_deployment_status(self, alloc_id: str, status: AllocDeploymentStatus | None) -> None:
        self._note("put_deployment_status", alloc_id)
        super().put_deployment_status(alloc_id, status)

    def delete_allocation(self, alloc_id: str) -> None:
        self._note("delete_allocation", alloc_id)
        super().delete_allocation(alloc_id)

    def recorded(self) -> list[str]:
        with self._calls_lock:
            return [what for what, _ in self.calls]


class Observer:
    """Background readers: alloc_state() in a loop and one listener, checking as they go."""

    def __init__(self, ar: AllocRunner) -> None:
        self.ar = ar
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.listener = ar.listen()
        self.at_wait: tuple[AllocState, dict[str, TaskState]] | None = None
        self.threads = [
            threading.Thread(target=self._read, name="model-reader"),
            threading.Thread(target=self._listen, name="model-listener"),
            threading.Thread(target=self._wait, name="model-waiter"),
        ]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        try:
            while not self.stop.is_set():
                consistent(self.ar.alloc_state())
        except BaseException as err:  # reported by the model
            self.errors.append(err)

    def _wait(self) -> None:
        """What a caller of wait() sees the moment it returns: the published state, and
        then the task runners' own states."""
        try:
            while not self.stop.is_set():
                if self.ar.wait(0.05):
                    published = self.ar.alloc_state()
                    tasks = {n: self.ar.task_runner(n).task_state() for n in self.ar.task_names()}
                    self.at_wait = (published, tasks)
                    return
        except BaseException as err:
            self.errors.append(err)

    def _listen(self) -> None:
        last_index = -1
        terminal_seen = False
        try:
            while not self.stop.is_set():
                try:
                    view = self.listener.get(timeout=0.05)
                except TimeoutError:
                    continue
                except BroadcasterClosed:
                    return
                assert view.alloc_modify_index >= last_index, "listener went back in time"
                last_index = view.alloc_modify_index
                if view.server_terminal() and view.client_status in CLIENT_TERMINAL:
                    terminal_seen = True
                elif terminal_seen and view.server_terminal():
                    raise AssertionError(f"terminal then {view.client_status}")
        except BaseException as err:
            self.errors.append(err)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        for t in self.threads:
            t.join(BOUND)
            assert not t.is_alive(), f"{t.name} did not stop"
        if self.errors:
            raise self.errors[0]


OPS = ("update", "stop", "stale", "restart", "signal", "read", "listen", "persist", "destroy")


class AllocRunnerModel(RuleBasedStateMachine):
    switch_interval: float | None = None

    def __init__(self) -> None:
        super().__init__()
        self.previous_switch = sys.getswitchinterval()
        if self.switch_interval is not None:
            sys.setswitchinterval(self.switch_interval)
        self.tmp = tempfile.TemporaryDirectory(prefix="ar-model-")
        self.driver = MockDriver()
        config = ClientConfig.for_data_dir(
            self.tmp.name, max_kill_timeout=1.0, kill_retry_base=0.01
        )
        job = mock_job(
            mock_task("main", config={"run_for": "30s"}),
            mock_task("quick", config={"run_for": "5ms"}),
            mock_task("side", config={"run_for": "30s"}, lifecycle=lifecycle("prestart", True)),
        )
        self.alloc = new_allocation(job, "web")
        self.index = self.alloc.alloc_modify_index
        self.db = RecordingDB()
        self.ar = AllocRunner(
            self.alloc, config, state_db=self.db, drivers={"mock_driver": self.driver}
        )
        self.observer = Observer(self.ar)
        self.started = False
        self.shutdown_asked = False
        # The mark says whether run() really ran (the state handler got to its last
        # pass) or returned at once (destroyed first); `arm` arms it, teardown disarms.
        self.final_pass = mark("state.final_pass")
        self.harness = contextlib.ExitStack()

    @initialize(stalled=st.sets(st.sampled_from(CHECKPOINTS), max_size=3))
    def arm(self, stalled: set[str]) -> None:
        """Widen a few race windows: threads wait a little at the chosen checkpoints."""
        stalls = [Stall(name, STALL) for name in sorted(stalled)]
        self.harness.enter_context(armed(self.final_pass, *stalls))

    @rule()
    def start(self) -> None:
        if not self.started:
            self.started = True
            self.ar.start()

    @rule(stop=st.booleans(), bump=st.integers(min_value=-2, max_value=3))
    def update(self, stop: bool, bump: int) -> None:
        self.index = max(1, self.index + bump)
        alloc = attrs.evolve(
            self.alloc, alloc_modify_index=self.index, desired_status="stop" if stop else "run"
        )
        self.ar.update(alloc)

    @rule(task=st.sampled_from(["main", "quick", "side"]))
    def restart_task(self, task: str) -> None:
        with contextlib.suppress(TaskNotRunningError, AllocRunnerError):
            self.ar.restart_task(task, TaskEvent(EVENT_RESTART_SIGNAL, message="model"))

    @rule(task=st.sampled_from(["main", "quick", ""]))
    def signal_task(self, task: str) -> None:
        with contextlib.suppress(TaskNotRunningError, AllocRunnerError):
            self.ar.signal_task(task, "SIGHUP")

    @rule(
        ops=st.lists(st.sampled_from(OPS), min_size=2, max_size=5),
        ending=st.sampled_from(["", "", "destroy", "shutdown", "both"]),
    )
    def burst(self, ops: list[str], ending: str) -> None:
        """Several operations at once, each from its own thread, with destroy and/or
        shutdown among them; all must finish."""
        self.index += 1
        index = self.index
        errors: list[BaseException] = []
        if ending:
            ops = [*ops, *(("destroy", "shutdown") if ending == "both" else (ending,))]
        if "shutdown" in ops:
            self.shutdown_asked = True

        def one(op: str) -> None:
            try:
                self._one(op, index)
            except BaseException as err:
                errors.append(err)

        threads = [threading.Thread(target=one, args=(op,), name=f"model-{op}") for op in ops]
        for t in threads:
            t.start()
        for t in threads:
            t.join(BOUND)
            assert not t.is_alive(), f"{t.name} did not finish: deadlock?"
        if errors:
            raise errors[0]

    def _one(self, op: str, index: int) -> None:
        if op in ("update", "stop", "stale"):
            bumped = index - 3 if op == "stale" else index
            desired = "stop" if op == "stop" else "run"
            self.ar.update(
                attrs.evolve(self.alloc, alloc_modify_index=max(1, bumped), desired_status=desired)
            )
        elif op == "restart":
            with contextlib.suppress(TaskNotRunningError, AllocRunnerError):
                self.ar.restart_task("main", TaskEvent(EVENT_RESTART_SIGNAL, message="x"))
        elif op == "signal":
            with contextlib.suppress(TaskNotRunningError, AllocRunnerError):
                self.ar.signal_task("", "SIGHUP")
        elif op == "read":
            consistent(self.ar.alloc_state())
        elif op == "persist":
            self.ar.persist_state()
        elif op == "destroy":
            self.ar.destroy()
        elif op == "shutdown":
            self.ar.shutdown()
        else:
            with self.ar.listen() as listener, contextlib.suppress(TimeoutError, BroadcasterClosed):
                listener.get(timeout=0.01)

    @rule()
    def destroy(self) -> None:
        self.ar.destroy()

    @rule()
    def shutdown(self) -> None:
        self.shutdown_asked = True
        self.ar.shutdown()

    @invariant()
    def state_is_consistent(self) -> None:
        consistent(self.ar.alloc_state())

    def teardown(self) -> None:
        try:
            self.ar.destroy()
            assert self.ar.wait_destroyed(BOUND), "destroy did not complete"
            assert self.ar.wait(BOUND), "run did not return"
            assert self.ar.close(BOUND), "runner threads left behind"
            consistent(self.ar.alloc_state())
            self.observer.close()
            self._check_final_state_was_published()
            self._check_destroyed_once_and_for_good()
        finally:
            self.harness.close()
            sys.setswitchinterval(self.previous_switch)
            self.driver.close()
            self.tmp.cleanup()

    def _check_final_state_was_published(self) -> None:
        """When run() really ran (it did not return at once because destroy came
        first) and no shutdown left the tasks running for a later destroy to kill, the
        state a caller reads as soon as wait() returns is the tasks' final state."""
        if not self.final_pass.passed() or self.shutdown_asked:
            return
        assert self.observer.at_wait is not None, "the waiter never saw run() return"
        published, tasks = self.observer.at_wait
        assert dict(published.task_states) == tasks, "wait() returned before the final state"

    def _check_destroyed_once_and_for_good(self) -> None:
        calls = self.db.recorded()
        deletes = calls.count("delete_allocation")
        assert deletes == 1, f"the allocation's state was deleted {deletes} times"
        # The runner's own writes are fenced by destroy; a task runner's write that
        # comes late is dropped by the state DB (its contract), so none of them lands.
        late = calls[calls.index("delete_allocation") + 1 :]
        fenced = [c for c in late if c in ("put_allocation", "put_deployment_status")]
        assert not fenced, f"written after destroy: {fenced}"
        assert self.db.all_allocations() == []
        for name in self.ar.task_names():
            assert self.db.task_runner_state(self.alloc.id, name) == (None, None), name
        assert self.db.deployment_status(self.alloc.id) is None


AllocRunnerModel.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAllocRunnerModel = AllocRunnerModel.TestCase


class StressAllocRunnerModel(AllocRunnerModel):
    """The same model with the interpreter switching threads often."""

    switch_interval = 1e-5


STRESS_PARTS = 4
STRESS_SETTINGS = settings(
    max_examples=200 // STRESS_PARTS,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.stress
@pytest.mark.timeout(240)
@pytest.mark.parametrize("part", range(STRESS_PARTS))
def test_alloc_runner_model_under_stress(part: int) -> None:
    """200 examples in all, in parts that each stay well inside the per-test time
    limits on a loaded machine."""
    run_state_machine_as_test(StressAllocRunnerModel, settings=STRESS_SETTINGS)
