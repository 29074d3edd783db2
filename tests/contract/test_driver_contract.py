"""One contract suite over every driver: start, wait, stop, destroy, inspect, signal,
stats and recover behave the same for mock_driver and raw_exec."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import (
    Driver,
    ExitResult,
    MockDriver,
    RawExecDriver,
    TaskConfig,
    TaskHandle,
)
from allocrunner.drivers.base import TASK_STATE_EXITED, TASK_STATE_RUNNING
from allocrunner.drivers.logs import read_logs
from allocrunner.errors import DriverError
from allocrunner.testing import wait_for
from tests.unit.drivers.support import kill_leftovers, live_children, sh, task_config

# Driver configs per driver for the behaviours the contract needs.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "mock_driver": {
        "ok": {},
        "exit3": {"exit_code": 3},
        "long": {"run_for": "30s"},
        "stubborn": {"run_for": "30s", "kill_after": "30s"},
        "short": {"run_for": "150ms", "exit_code": 2},
    },
    "raw_exec": {
        "ok": sh("exit 0"),
        "exit3": sh("exit 3"),
        "long": {"command": "sleep", "args": ["30"]},
        "stubborn": sh("trap '' INT; echo ready; exec sleep 30"),
        "short": sh("sleep 0.15; exit 2"),
    },
}


@dataclass
class Kit:
    """One driver plus task configs that make it behave as the contract needs."""

    driver: Any
    root: Path

    def config(self, kind: str, name: str = "web") -> TaskConfig:
        return task_config(self.root, CONFIGS[self.driver.name][kind], name=name)

    def start(self, kind: str, name: str = "web") -> TaskHandle:
        config = self.config(kind, name)
        handle = self.driver.start(config)
        if kind == "stubborn" and self.driver.name == "raw_exec":
            # The task must have made itself deaf to SIGINT before it is stopped.
            def ready() -> None:
                out = read_logs(config.logs_dir, config.name, "stdout")
                assert b"ready" in out, "stubborn task not ready"

            wait_for(ready, timeout=10)
        return handle


def _make(name: str) -> Any:
    return MockDriver() if name == "mock_driver" else RawExecDriver()


@pytest.fixture(params=["mock_driver", "raw_exec"])
def kit(request, tmp_path) -> Iterator[Kit]:
    before = live_children()
    driver = _make(request.param)
    yield Kit(driver, tmp_path)
    driver.close()
    leftovers = kill_leftovers(before)
    assert not leftovers, leftovers


def wait_result(kit: Kit, task_id: str) -> ExitResult:
    result = kit.driver.wait(task_id, CancelToken())
    assert result is not None
    return result


def test_implements_the_protocol(kit):
    assert isinstance(kit.driver, Driver)
    assert kit.driver.name in ("mock_driver", "raw_exec")


def test_start_returns_a_persistable_handle(kit):
    handle = kit.start("long")
    assert handle.driver == kit.driver.name
    assert handle.task_id == handle.config.id
    assert TaskHandle.from_json(handle.to_json()) == handle
    status = kit.driver.inspect(handle.task_id)
    assert status.state == TASK_STATE_RUNNING
    assert status.id == handle.task_id and status.name == "web"
    assert status.started_at is not None and status.exit_result is None
    kit.driver.stop(handle.task_id, 5.0)


def test_wait_returns_exit_result(kit):
    handle = kit.start("exit3")
    result = wait_result(kit, handle.task_id)
    assert result.exit_code == 3 and result.signal == 0 and not result.successful()
    assert wait_result(kit, handle.task_id) == result
    status = kit.driver.inspect(handle.task_id)
    assert status.state == TASK_STATE_EXITED
    assert status.exit_result == result
    assert status.completed_at >= status.started_at


def test_successful_exit(kit):
    handle = kit.start("ok")
    assert wait_result(kit, handle.task_id).successful()


def test_task_runs_until_it_exits_on_its_own(kit):
    handle = kit.start("short")
    assert kit.driver.inspect(handle.task_id).state == TASK_STATE_RUNNING
    assert wait_result(kit, handle.task_id).exit_code == 2


def test_wait_is_cancellable(kit):
    handle = kit.start("long")
    cancel = CancelToken()
    timer = threading.Timer(0.05, cancel.cancel)
    timer.start()
    try:
        assert kit.driver.wait(handle.task_id, cancel) is None
    finally:
        timer.join()
    assert kit.driver.inspect(handle.task_id).state == TASK_STATE_RUNNING
    cancelled = CancelToken()
    cancelled.cancel()
    assert kit.driver.wait(handle.task_id, cancelled) is None
    kit.driver.stop(handle.task_id, 5.0)


def test_many_waiters_get_the_same_result(kit):
    handle = kit.start("long")
    results: list[ExitResult | None] = []
    lock = threading.Lock()

    def waiter() -> None:
        r = kit.driver.wait(handle.task_id, CancelToken())
        with lock:
            results.append(r)

    threads = [threading.Thread(target=waiter, name=f"waiter-{i}") for i in range(8)]
    for t in threads:
        t.start()
    kit.driver.stop(handle.task_id, 5.0)
    for t in threads:
        t.join(10)
    assert len(results) == 8 and results[0] is not None
    assert all(r == results[0] for r in results)


def test_stop_returns_once_exited(kit):
    handle = kit.start("long")
    t0 = time.monotonic()
    kit.driver.stop(handle.task_id, 5.0)
    assert time.monotonic() - t0 < 4.0
    assert kit.driver.inspect(handle.task_id).state == TASK_STATE_EXITED
    kit.driver.stop(handle.task_id, 5.0)  # a no-op on an exited task
    assert wait_result(kit, handle.task_id) == kit.driver.inspect(handle.task_id).exit_result


def test_stop_force_kills_after_timeout(kit):
    handle = kit.start("stubborn")
    t0 = time.monotonic()
    kit.driver.stop(handle.task_id, 0.2)
    took = time.monotonic() - t0
    assert 0.2 <= took < 5.0
    assert kit.driver.inspect(handle.task_id).state == TASK_STATE_EXITED


def test_stop_rejects_unknown_signal(kit):
    handle = kit.start("long")
    with pytest.raises(DriverError, match="SIGBOGUS"):
        kit.driver.stop(handle.task_id, 1.0, "SIGBOGUS")
    kit.driver.stop(handle.task_id, 5.0, "SIGTERM")


def test_destroy(kit):
    handle = kit.start("long")
    with pytest.raises(DriverError):
        kit.driver.destroy(handle.task_id)
    assert kit.driver.inspect(handle.task_id).state == TASK_STATE_RUNNING
    kit.driver.destroy(handle.task_id, force=True)
    with pytest.raises(DriverError):
        kit.driver.inspect(handle.task_id)
    done = kit.start("ok", name="batch")
    wait_result(kit, done.task_id)
    kit.driver.destroy(done.task_id)
    with pytest.raises(DriverError):
        kit.driver.wait(done.task_id, CancelToken())


def test_signal(kit):
    handle = kit.start("long")
    kit.driver.signal(handle.task_id, "SIGWINCH")  # ignored by default: task runs on
    assert kit.driver.inspect(handle.task_id).state == TASK_STATE_RUNNING
    with pytest.raises(DriverError, match="SIGNOPE"):
        kit.driver.signal(handle.task_id, "SIGNOPE")
    kit.driver.stop(handle.task_id, 5.0)
    with pytest.raises(DriverError, match="not running"):
        kit.driver.signal(handle.task_id, "SIGHUP")


def test_stats(kit):
    handle = kit.start("long")
    stats = kit.driver.stats(handle.task_id)
    assert isinstance(stats, dict)
    assert all(isinstance(v, float) for v in stats.values())
    kit.driver.stop(handle.task_id, 5.0)


CALLS: dict[str, Callable[[Any, str], Any]] = {
    "wait": lambda d, t: d.wait(t, CancelToken()),
    "stop": lambda d, t: d.stop(t, 1.0),
    "destroy": lambda d, t: d.destroy(t, force=True),
    "inspect": lambda d, t: d.inspect(t),
    "signal": lambda d, t: d.signal(t, "SIGHUP"),
    "stats": lambda d, t: d.stats(t),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_unknown_task_is_a_driver_error(kit, call):
    with pytest.raises(DriverError, match="no-such-task"):
        CALLS[call](kit.driver, "no-such-task")


def test_recover_known_task_is_idempotent(kit):
    handle = kit.start("long")
    kit.driver.recover(TaskHandle.from_json(handle.to_json()))
    assert kit.driver.inspect(handle.task_id).state == TASK_STATE_RUNNING
    kit.driver.stop(handle.task_id, 5.0)
    assert kit.driver.wait(handle.task_id, CancelToken()) is not None


def test_recover_other_drivers_handle_fails(kit):
    config = kit.config("long")
    other = "raw_exec" if kit.driver.name == "mock_driver" else "mock_driver"
    with pytest.raises(DriverError, match=other):
        kit.driver.recover(TaskHandle(driver=other, config=config))


def test_recover_destroyed_task_fails(kit):
    handle = kit.start("long")
    kit.driver.destroy(handle.task_id, force=True)
    with pytest.raises(DriverError):
        kit.driver.recover(handle)


def test_restart_with_the_same_id(kit):
    config = kit.config("exit3")
    kit.driver.start(config)
    assert wait_result(kit, config.id).exit_code == 3
    kit.driver.start(config)
    assert wait_result(kit, config.id).exit_code == 3


def test_validate_config_names_unknown_key(kit):
    config = task_config(kit.root, {**CONFIGS[kit.driver.name]["ok"], "bogus_key": 1})
    with pytest.raises(DriverError, match="bogus_key"):
        kit.driver.validate_config(config)
    with pytest.raises(DriverError, match="bogus_key"):
        kit.driver.start(config)


def test_closed_driver_refuses_work(kit):
    handle = kit.start("ok")
    wait_result(kit, handle.task_id)
    kit.driver.close()
    kit.driver.close()
    with pytest.raises(DriverError, match="closed"):
        kit.driver.start(kit.config("ok"))
    with pytest.raises(DriverError, match="closed"):
        kit.driver.inspect(handle.task_id)


def _wait_into(driver: Any, task_id: str, cancel: CancelToken, out: list) -> None:
    out.append(driver.wait(task_id, cancel))


@pytest.mark.stress
def test_concurrent_start_stop_signal_wait(kit):
    """Many threads start, signal, inspect, wait on and stop many tasks at once: every
    task ends, every waiter returns, nothing is left running."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    errors: list[BaseException] = []
    results: dict[str, ExitResult | None] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + 3.0

    def worker(n: int) -> None:
        try:
            i = 0
            while time.monotonic() < deadline and i < 6:
                handle = kit.start("long", name=f"t{n}-{i}")
                task_id = handle.task_id
                cancel = CancelToken()
                waiter_out: list[ExitResult | None] = []
                waiter = threading.Thread(
                    target=_wait_into,
                    args=(kit.driver, task_id, cancel, waiter_out),
                    name=f"stress-wait-{n}",
                )
                waiter.start()
                kit.driver.signal(task_id, "SIGWINCH")
                kit.driver.inspect(task_id)
                kit.driver.stats(task_id)
                if i % 3 == 0:
                    cancel.cancel()
                kit.driver.stop(task_id, 5.0)
                waiter.join(10)
                assert not waiter.is_alive(), "waiter hung"
                if i % 3 != 0:
                    assert waiter_out and waiter_out[0] is not None
                with lock:
                    results[task_id] = kit.driver.inspect(task_id).exit_result
                kit.driver.destroy(task_id)
                i += 1
        except BaseException as err:  # reported below
            with lock:
                errors.append(err)

    try:
        threads = [threading.Thread(target=worker, args=(n,), name=f"stress-{n}") for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors
    assert results and all(r is not None for r in results.values())
