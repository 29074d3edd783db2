"""A hypothesis model of the AllocRunner lifecycle, driven while background threads
read alloc_state() and listen: random updates (run, stop, stale), restarts, signals,
destroy and shutdown. Invariants: nothing deadlocks (every wait is bounded), the client
status always agrees with the task states, listeners never go back in time, destroy
always completes and no thread is left behind."""

from __future__ import annotations

import contextlib
import tempfile
import threading

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver
from allocrunner.errors import AllocRunnerError, BroadcasterClosed, TaskNotRunningError
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.state import MemDB
from allocrunner.structs import (
    CLIENT_TERMINAL,
    EVENT_RESTART_SIGNAL,
    TaskEvent,
    client_status_from_task_states,
    new_allocation,
)
from allocrunner.testing import lifecycle, mock_job, mock_task

BOUND = 20.0


def consistent(state) -> None:
    status, _ = client_status_from_task_states(state.task_states)
    assert state.client_status == (status or "pending"), (state.client_status, status)


class Observer:
    """Background readers: alloc_state() in a loop and one listener, checking as they go."""

    def __init__(self, ar: AllocRunner) -> None:
        self.ar = ar
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.listener = ar.listen()
        self.threads = [
            threading.Thread(target=self._read, name="model-reader"),
            threading.Thread(target=self._listen, name="model-listener"),
        ]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        try:
            while not self.stop.is_set():
                consistent(self.ar.alloc_state())
        except BaseException as err:  # reported by the model
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


class AllocRunnerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
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
        self.ar = AllocRunner(
            self.alloc, config, state_db=MemDB(), drivers={"mock_driver": self.driver}
        )
        self.observer = Observer(self.ar)
        self.started = False
        self.ended = False

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
        ops=st.lists(
            st.sampled_from(["update", "stop", "stale", "restart", "signal", "read", "listen"]),
            min_size=2,
            max_size=5,
        )
    )
    def burst(self, ops: list[str]) -> None:
        """Several operations at once, each from its own thread; all must finish."""
        self.index += 1
        index = self.index
        errors: list[BaseException] = []

        def one(op: str) -> None:
            try:
                if op in ("update", "stop", "stale"):
                    bumped = index - 3 if op == "stale" else index
                    desired = "stop" if op == "stop" else "run"
                    self.ar.update(
                        attrs.evolve(
                            self.alloc, alloc_modify_index=max(1, bumped), desired_status=desired
                        )
                    )
                elif op == "restart":
                    with contextlib.suppress(TaskNotRunningError, AllocRunnerError):
                        self.ar.restart_task("main", TaskEvent(EVENT_RESTART_SIGNAL, message="x"))
                elif op == "signal":
                    with contextlib.suppress(TaskNotRunningError, AllocRunnerError):
                        self.ar.signal_task("", "SIGHUP")
                elif op == "read":
                    consistent(self.ar.alloc_state())
                else:
                    with (
                        self.ar.listen() as listener,
                        contextlib.suppress(TimeoutError, BroadcasterClosed),
                    ):
                        listener.get(timeout=0.01)
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

    @rule()
    def destroy(self) -> None:
        self.ar.destroy()
        self.ended = True

    @rule()
    def shutdown(self) -> None:
        self.ar.shutdown()
        self.ended = True

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
        finally:
            self.driver.close()
            self.tmp.cleanup()


AllocRunnerModel.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAllocRunnerModel = AllocRunnerModel.TestCase
