"""mock_driver: every config key, bad input, recovery and waiting."""

from __future__ import annotations

import threading
import time

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import MockDriver, TaskConfig, TaskHandle, default_drivers
from allocrunner.drivers.base import TASK_STATE_EXITED, TASK_STATE_RUNNING, ExitResult
from allocrunner.drivers.mock import parse_mock_config
from allocrunner.errors import DriverError
from allocrunner.structs.frozen import FrozenDict
from allocrunner.testing import assert_stays, wait_for


@pytest.fixture
def driver():
    d = MockDriver()
    yield d
    d.close()


_ids = iter(range(1_000_000))


def cfg(logs_dir: str = "", **driver_config) -> TaskConfig:
    return TaskConfig(
        id=f"task-{next(_ids)}",
        alloc_id="alloc-1",
        name="web",
        driver_config=driver_config,
        logs_dir=logs_dir,
    )


def running(driver: MockDriver, task_id: str):
    def check():
        assert driver.inspect(task_id).state == TASK_STATE_RUNNING

    return check


def test_run_for_zero_exits_at_once(driver):
    h = driver.start(cfg())
    assert driver.wait(h.task_id, CancelToken()) == ExitResult()
    status = driver.inspect(h.task_id)
    assert status.state == TASK_STATE_EXITED
    assert status.completed_at is not None and status.completed_at >= status.started_at


def test_run_for_keeps_task_running_then_exits(driver):
    t0 = time.monotonic()
    h = driver.start(cfg(run_for="150ms"))
    assert_stays(running(driver, h.task_id), 0.08)
    result = driver.wait(h.task_id, CancelToken())
    assert time.monotonic() - t0 >= 0.15
    assert result is not None and result.successful()


def test_exit_code_signal_and_err_msg(driver):
    h = driver.start(cfg(exit_code=3, exit_signal=9, exit_err_msg="boom"))
    assert driver.wait(h.task_id, CancelToken()) == ExitResult(exit_code=3, signal=9, err="boom")


def test_exit_code_accepts_integral_float(driver):
    h = driver.start(cfg(exit_code=2.0))
    assert driver.wait(h.task_id, CancelToken()).exit_code == 2


@pytest.mark.parametrize("recoverable", [True, False])
def test_start_error(driver, recoverable):
    with pytest.raises(DriverError, match="nope") as info:
        driver.start(cfg(start_error="nope", start_error_recoverable=recoverable))
    assert info.value.recoverable is recoverable


def test_start_block_for_blocks_start(driver):
    t0 = time.monotonic()
    driver.start(cfg(start_block_for="100ms"))
    assert time.monotonic() - t0 >= 0.1


def test_start_block_for_comes_before_start_error(driver):
    t0 = time.monotonic()
    with pytest.raises(DriverError, match="late"):
        driver.start(cfg(start_block_for="60ms", start_error="late"))
    assert time.monotonic() - t0 >= 0.06


def test_close_interrupts_start_block_for():
    d = MockDriver()
    errors = []

    def start():
        try:
            d.start(cfg(start_block_for="30s"))
        except DriverError as err:
            errors.append(err)

    t = threading.Thread(target=start, name="blocked-start")
    t.start()
    d.close()
    t.join(5)
    assert not t.is_alive()
    assert errors and "closed" in str(errors[0])


def test_stop_without_kill_after_is_immediate(driver):
    h = driver.start(cfg(run_for="10s", exit_code=4))
    t0 = time.monotonic()
    driver.stop(h.task_id, timeout=5.0)
    assert time.monotonic() - t0 < 1.0
    # As in Nomad, a stopped mock task reports its configured result.
    assert driver.inspect(h.task_id).exit_result == ExitResult(exit_code=4)


def test_kill_after_delays_exit_after_stop(driver):
    h = driver.start(cfg(run_for="10s", kill_after="120ms"))
    t0 = time.monotonic()
    driver.stop(h.task_id, timeout=5.0)
    assert time.monotonic() - t0 >= 0.12
    assert driver.inspect(h.task_id).state == TASK_STATE_EXITED


def test_stop_timeout_caps_kill_after(driver):
    h = driver.start(cfg(run_for="10s", kill_after="10s"))
    t0 = time.monotonic()
    driver.stop(h.task_id, timeout=0.05)
    assert 0.05 <= time.monotonic() - t0 < 2.0


def test_stop_of_exited_task_returns(driver):
    h = driver.start(cfg())
    driver.wait(h.task_id, CancelToken())
    driver.stop(h.task_id, timeout=1.0)


def test_stop_rejects_unknown_signal(driver):
    h = driver.start(cfg(run_for="10s"))
    with pytest.raises(DriverError, match="SIGNOPE"):
        driver.stop(h.task_id, timeout=1.0, signal="SIGNOPE")
    driver.stop(h.task_id, timeout=1.0, signal="SIGTERM")


def test_signal_error(driver):
    h = driver.start(cfg(run_for="10s", signal_error="cannot signal"))
    with pytest.raises(DriverError, match="cannot signal"):
        driver.signal(h.task_id, "SIGHUP")


def test_signal_ok_and_after_exit(driver):
    h = driver.start(cfg(run_for="10s"))
    driver.signal(h.task_id, "SIGHUP")
    driver.stop(h.task_id, 1.0)
    with pytest.raises(DriverError, match="not running"):
        driver.signal(h.task_id, "SIGHUP")


def log_text(tmp_path, stream="stdout") -> str:
    path = tmp_path / f"web.{stream}.0"
    return path.read_text() if path.exists() else ""


def test_stdout_string_written_to_log(driver, tmp_path):
    h = driver.start(cfg(str(tmp_path), stdout_string="hello\n", stderr_string="oops\n"))
    driver.wait(h.task_id, CancelToken())
    assert log_text(tmp_path) == "hello\n"
    assert log_text(tmp_path, "stderr") == "oops\n"


def test_stdout_repeat_writes_n_more_copies_and_delays_exit(driver, tmp_path):
    t0 = time.monotonic()
    h = driver.start(
        cfg(str(tmp_path), stdout_string="x", stdout_repeat=4, stdout_repeat_duration="20ms")
    )
    result = driver.wait(h.task_id, CancelToken())
    assert result is not None and result.successful()
    assert time.monotonic() - t0 >= 0.08
    assert log_text(tmp_path) == "xxxxx"


def test_stop_cancels_repeated_output(driver, tmp_path):
    h = driver.start(
        cfg(str(tmp_path), stdout_string="y", stdout_repeat=1000, stdout_repeat_duration="10ms")
    )
    wait_for(lambda: _assert_len(log_text(tmp_path), 3), timeout=5)
    driver.stop(h.task_id, timeout=1.0)
    written = log_text(tmp_path)
    assert_stays(lambda: _assert_eq(log_text(tmp_path), written), 0.06)
    assert len(written) < 1000


def _assert_len(text: str, at_least: int) -> None:
    assert len(text) >= at_least, f"only {len(text)} writes so far"


def _assert_eq(a: str, b: str) -> None:
    assert a == b, f"output changed after stop: {len(a)} != {len(b)}"


def test_output_write_failure_exits_with_error(driver, tmp_path):
    missing = str(tmp_path / "no-such-dir")
    h = driver.start(cfg(missing, stdout_string="x", run_for="10s"))
    result = driver.wait(h.task_id, CancelToken())
    assert result is not None and result.err and "stdout" in result.err


@pytest.mark.parametrize(
    "key", ["run_for", "start_block_for", "kill_after", "stdout_repeat_duration"]
)
def test_bad_duration_names_key(driver, key):
    bad = cfg(**{key: "ten seconds"})
    with pytest.raises(DriverError, match=key):
        driver.validate_config(bad)
    with pytest.raises(DriverError, match=key):
        driver.start(bad)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("exit_code", "1"),
        ("exit_code", True),
        ("exit_signal", 1.5),
        ("exit_err_msg", 3),
        ("start_error", ["x"]),
        ("start_error_recoverable", "yes"),
        ("signal_error", 1),
        ("stdout_string", 1),
        ("stdout_repeat", "3"),
        ("stdout_repeat", -1),
        ("run_for", True),
        ("run_for", ["1s"]),
    ],
)
def test_wrong_type_names_key(driver, key, value):
    with pytest.raises(DriverError, match=key):
        driver.validate_config(cfg(**{key: value}))


def test_a_config_is_parsed_once_and_equal_values_of_other_types_stay_apart():
    """Specs are kept per config value: an equal config (another allocation of the job,
    or `start` after `validate_config`) gets the same immutable spec; a value that
    Python finds equal but that has another type (True == 1, 1.0 == 1) is parsed on
    its own, so a bad one is refused even after a good one was kept."""
    first = parse_mock_config(FrozenDict(run_for="24h", exit_code=1))
    assert parse_mock_config(FrozenDict(exit_code=1, run_for="24h")) is first
    assert parse_mock_config({"run_for": "24h", "exit_code": 1}) is first
    assert parse_mock_config(FrozenDict(run_for="24h", exit_code=1.0)) == first
    with pytest.raises(DriverError, match="exit_code"):
        parse_mock_config(FrozenDict(run_for="24h", exit_code=True))
    assert parse_mock_config(FrozenDict(start_error_recoverable=True)).start_error_recoverable
    with pytest.raises(DriverError, match="start_error_recoverable"):
        parse_mock_config(FrozenDict(start_error_recoverable=1))
    with pytest.raises(DriverError, match="run_for"):  # unhashable: parsed afresh
        parse_mock_config({"run_for": ["1s"]})


def test_unknown_key_is_rejected_by_name(driver):
    with pytest.raises(DriverError, match="run_fro"):
        driver.validate_config(cfg(run_fro="1s"))
    driver.validate_config(cfg(driver_ip="10.0.0.1"))


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.wait("nope", CancelToken()),
        lambda d: d.stop("nope", 1.0),
        lambda d: d.destroy("nope"),
        lambda d: d.inspect("nope"),
        lambda d: d.signal("nope", "SIGHUP"),
        lambda d: d.stats("nope"),
    ],
)
def test_unknown_task_id(driver, call):
    with pytest.raises(DriverError, match="nope"):
        call(driver)


def test_wait_cancel_returns_none(driver):
    h = driver.start(cfg(run_for="10s"))
    cancel = CancelToken()
    timer = threading.Timer(0.05, cancel.cancel)
    timer.start()
    t0 = time.monotonic()
    assert driver.wait(h.task_id, cancel) is None
    assert time.monotonic() - t0 < 5
    timer.join()
    assert driver.inspect(h.task_id).state == TASK_STATE_RUNNING


def test_many_waiters_see_the_same_result(driver):
    h = driver.start(cfg(run_for="50ms", exit_code=7))
    results = []
    lock = threading.Lock()

    def waiter():
        r = driver.wait(h.task_id, CancelToken())
        with lock:
            results.append(r)

    threads = [threading.Thread(target=waiter, name=f"waiter-{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == [ExitResult(exit_code=7)] * 8


def test_stop_wakes_a_waiter_early(driver):
    h = driver.start(cfg(run_for="30s"))
    out = []
    t = threading.Thread(
        target=lambda: out.append(driver.wait(h.task_id, CancelToken())), name="waiter"
    )
    t.start()
    driver.stop(h.task_id, 1.0)
    t.join(5)
    assert out == [ExitResult()]


def test_close_wakes_waiters_with_error():
    d = MockDriver()
    h = d.start(cfg(run_for="30s"))
    errors = []

    def waiter():
        try:
            d.wait(h.task_id, CancelToken())
        except DriverError as err:
            errors.append(err)

    t = threading.Thread(target=waiter, name="waiter")
    t.start()
    d.close()
    d.close()  # idempotent
    t.join(5)
    assert errors and "closed" in str(errors[0])
    with pytest.raises(DriverError, match="closed"):
        d.start(cfg())


def test_destroy_running_needs_force(driver):
    h = driver.start(cfg(run_for="10s"))
    with pytest.raises(DriverError, match="running"):
        driver.destroy(h.task_id)
    driver.destroy(h.task_id, force=True)
    with pytest.raises(DriverError):
        driver.inspect(h.task_id)


def test_restart_with_same_id_replaces_exited_task_only(driver):
    c = cfg(run_for="10s")
    driver.start(c)
    with pytest.raises(DriverError, match="already running"):
        driver.start(c)
    driver.stop(c.id, 1.0)
    driver.start(c)
    assert driver.inspect(c.id).state == TASK_STATE_RUNNING


def test_recover_in_same_instance(driver):
    h = driver.start(cfg(run_for="10s", exit_code=5))
    restored = TaskHandle.from_json(h.to_json())
    driver.recover(restored)
    driver.stop(restored.task_id, 1.0)
    assert driver.wait(restored.task_id, CancelToken()) == ExitResult(exit_code=5)


def test_recover_unknown_task_fails(driver):
    with MockDriver() as other:
        h = other.start(cfg(run_for="10s"))
        with pytest.raises(DriverError, match="unknown"):
            driver.recover(h)


def test_recover_destroyed_task_fails(driver):
    h = driver.start(cfg())
    driver.wait(h.task_id, CancelToken())
    driver.destroy(h.task_id)
    with pytest.raises(DriverError):
        driver.recover(h)


def test_recover_from_state_in_new_instance_keeps_remaining_run_for():
    with MockDriver() as first:
        h = first.start(cfg(run_for="300ms", exit_code=6))
    payload = h.to_json()
    with MockDriver(recover_from_state=True) as second:
        t0 = time.monotonic()
        second.recover(TaskHandle.from_json(payload))
        assert second.wait(h.task_id, CancelToken()) == ExitResult(exit_code=6)
        assert time.monotonic() - t0 < 0.3 + 0.2


def test_recover_wrong_driver(driver):
    h = driver.start(cfg())
    with pytest.raises(DriverError, match="raw_exec"):
        driver.recover(TaskHandle(driver="raw_exec", config=h.config))


def test_default_drivers_include_mock():
    drivers = default_drivers()
    try:
        assert isinstance(drivers["mock_driver"], MockDriver)
    finally:
        for d in drivers.values():
            d.close()


def test_no_thread_without_repeated_output(driver):
    before = threading.active_count()
    h = driver.start(cfg(run_for="10ms"))
    driver.wait(h.task_id, CancelToken())
    assert threading.active_count() == before
