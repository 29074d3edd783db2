"""A stateful model of mock_driver: any sequence of start / stop / signal / destroy /
inspect / wait keeps the driver's view equal to a simple model of running and exited
tasks, and every call on an unknown task is a DriverError."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from allocrunner._sync import CancelToken
from allocrunner.drivers import ExitResult, MockDriver, TaskConfig
from allocrunner.drivers.base import TASK_STATE_EXITED, TASK_STATE_RUNNING
from allocrunner.errors import DriverError


def _task_number(task_id: str) -> int:
    return int(task_id.removeprefix("t"))


class MockDriverModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.driver = MockDriver()
        # task id -> expected result once exited (None while running)
        self.model: dict[str, ExitResult | None] = {}
        self.codes: dict[str, int] = {}
        self.refuses_signals: set[str] = set()
        # Ids are numbered per example, so a replay of an example sees the same ids.
        self.started = 0

    def teardown(self) -> None:
        self.driver.close()

    def known(self) -> bool:
        return bool(self.model)

    def running(self) -> bool:
        return any(r is None for r in self.model.values())

    def known_ids(self) -> list[str]:
        """The known tasks in start order (by number, not as text: t9 before t10)."""
        return sorted(self.model, key=_task_number)

    def pick(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(self.known_ids()))

    @rule(code=st.integers(0, 3), long=st.booleans(), signal_error=st.booleans())
    def start(self, code: int, long: bool, signal_error: bool) -> None:
        task_id = f"t{self.started}"
        self.started += 1
        config: dict = {"exit_code": code, "run_for": "30s" if long else "0s"}
        if signal_error:
            config["signal_error"] = "no signals"
        handle = self.driver.start(
            TaskConfig(id=task_id, alloc_id="a", name="t", driver_config=config)
        )
        assert handle.task_id == task_id
        self.codes[task_id] = code
        if signal_error:
            self.refuses_signals.add(task_id)
        self.model[task_id] = None if long else ExitResult(exit_code=code)

    @precondition(known)
    @rule(data=st.data())
    def stop(self, data: st.DataObject) -> None:
        task_id = self.pick(data)
        self.driver.stop(task_id, 1.0)
        self.model[task_id] = ExitResult(exit_code=self.codes[task_id])

    @precondition(known)
    @rule(data=st.data())
    def signal(self, data: st.DataObject) -> None:
        task_id = self.pick(data)
        try:
            self.driver.signal(task_id, "SIGHUP")
            ok = True
        except DriverError:
            ok = False
        expect_ok = self.model[task_id] is None and task_id not in self.refuses_signals
        assert ok == expect_ok, f"signal of {task_id}: ok={ok}, expected {expect_ok}"

    @precondition(known)
    @rule(data=st.data(), force=st.booleans())
    def destroy(self, data: st.DataObject, force: bool) -> None:
        task_id = self.pick(data)
        if self.model[task_id] is None and not force:
            try:
                self.driver.destroy(task_id)
            except DriverError:
                return
            raise AssertionError("destroying a running task without force must fail")
        self.driver.destroy(task_id, force=force)
        del self.model[task_id]

    @precondition(known)
    @rule(data=st.data())
    def wait_cancelled(self, data: st.DataObject) -> None:
        task_id = self.pick(data)
        cancel = CancelToken()
        cancel.cancel()
        assert self.driver.wait(task_id, cancel) == self.model[task_id]

    @rule()
    def unknown(self) -> None:
        try:
            self.driver.inspect("never-started")
        except DriverError:
            return
        raise AssertionError("unknown task must be a DriverError")

    @invariant()
    def driver_agrees(self) -> None:
        for task_id, expected in self.model.items():
            status = self.driver.inspect(task_id)
            if expected is None:
                assert status.state == TASK_STATE_RUNNING, task_id
                assert status.exit_result is None
            else:
                assert status.state == TASK_STATE_EXITED, task_id
                assert status.exit_result == expected


TestMockDriverModel = MockDriverModel.TestCase
TestMockDriverModel.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)


def test_every_example_numbers_its_tasks_from_zero_in_start_order():
    """A replayed example must draw the same tasks: ids may not depend on earlier
    examples, and their order may not change once they pass t9 or t99."""
    for _ in range(2):
        model = MockDriverModel()
        try:
            for _ in range(12):
                model.start(code=0, long=False, signal_error=False)
            assert model.known_ids() == [f"t{i}" for i in range(12)]
        finally:
            model.teardown()
