"""raw_exec with real processes: a task's oom_score_adj, its cgroup and disabled logs,
asserted through /proc."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import MockDriver, RawExecDriver
from allocrunner.drivers._cgroups import host_mode
from allocrunner.drivers.base import TaskConfig
from allocrunner.drivers.logs import read_logs
from allocrunner.drivers.raw_exec import parse_raw_exec_config
from allocrunner.errors import DriverError
from allocrunner.testing import wait_for
from tests.unit.drivers.raw_exec_support import assert_spawner_retires, spawner_pid
from tests.unit.drivers.support import proc_state, sh, task_config

V1_ROOT = "/sys/fs/cgroup"
V2_ROOT = "/sys/fs/cgroup/unified"
_LOGGER = "allocrunner.drivers.raw_exec"

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "spawner"


@contextlib.contextmanager
def driver_in(tmp_path: Path, **kwargs: object) -> Iterator[RawExecDriver]:
    driver = RawExecDriver(state_dir=str(state_dir(tmp_path)), **kwargs)  # type: ignore[arg-type]
    try:
        yield driver
    finally:
        driver.close()
        assert_spawner_retires(state_dir(tmp_path))


@pytest.fixture
def raw(no_leftover_processes: None, tmp_path: Path) -> Iterator[RawExecDriver]:
    with driver_in(tmp_path) as driver:
        yield driver


def read_oom(pid: int | str) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


@contextlib.contextmanager
def own_oom_score_adj(value: int) -> Iterator[None]:
    """This process (the agent, and so the spawner it launches) runs with `value`
    (skipped where it may not: a value below the current one needs CAP_SYS_RESOURCE).
    Going back is always permitted: a value a process had is never below its minimum."""
    before = read_oom("self")
    try:
        Path("/proc/self/oom_score_adj").write_text(str(value))
    except PermissionError:
        pytest.skip(f"this process may not set its oom_score_adj to {value}")
    try:
        yield
    finally:
        Path("/proc/self/oom_score_adj").write_text(str(before))


def run(driver: RawExecDriver, config: TaskConfig) -> str:
    """Run the task to its end; its stdout."""
    driver.start(config)
    result = driver.wait(config.id, CancelToken())
    driver.destroy(config.id)
    assert result is not None and result.exit_code == 0, result
    return read_logs(config.logs_dir, config.name, "stdout").decode()


def task_pid(driver: RawExecDriver, config: TaskConfig) -> int:
    return int(driver.start(config).driver_state["pid"])


def stop(driver: RawExecDriver, config: TaskConfig) -> None:
    driver.stop(config.id, 5.0, "SIGKILL")
    driver.destroy(config.id)


def cgroup_of(pid: int, key: str) -> str:
    """The cgroup of process `pid` for controller `key` ("" for the unified one)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if key in controllers.split(","):
            return path
    raise AssertionError(f"no {key!r} cgroup for {pid}")


# --- oom_score_adj -----------------------------------------------------------------------


CAT_OOM = {"command": "cat", "args": ["/proc/self/oom_score_adj"]}


@pytest.mark.parametrize("agent_value", [1000, 500])
def test_task_starts_with_oom_score_adj_0_whatever_the_agent_has(
    no_leftover_processes: None, tmp_path: Path, agent_value: int
) -> None:
    with own_oom_score_adj(agent_value), driver_in(tmp_path) as driver:
        assert run(driver, task_config(tmp_path, CAT_OOM)) == "0\n"
        config = task_config(tmp_path, sh("exec sleep 30"), name="sleeper")
        pid = task_pid(driver, config)
        try:
            assert read_oom(pid) == 0
            spawner = spawner_pid(state_dir(tmp_path))
            assert spawner is not None and read_oom(spawner) == agent_value
        finally:
            stop(driver, config)


@pytest.mark.parametrize("agent_value", [1000, 200])
def test_task_starts_with_its_configured_oom_score_adj(
    no_leftover_processes: None, tmp_path: Path, agent_value: int
) -> None:
    with own_oom_score_adj(agent_value), driver_in(tmp_path) as driver:
        config = task_config(tmp_path, {**CAT_OOM, "oom_score_adj": 500})
        assert run(driver, config) == "500\n"
        sleeper = task_config(
            tmp_path, {**sh("exec sleep 30"), "oom_score_adj": 1000}, name="sleeper"
        )
        pid = task_pid(driver, sleeper)
        try:
            assert read_oom(pid) == 1000
            spawner = spawner_pid(state_dir(tmp_path))
            assert spawner is not None and read_oom(spawner) == agent_value
        finally:
            stop(driver, sleeper)


@pytest.mark.parametrize("bad", [-1, 1001, True, "5", 1.5])
def test_bad_oom_score_adj_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(DriverError, match="oom_score_adj"):
        parse_raw_exec_config({"command": "x", "oom_score_adj": bad})


def test_both_cgroup_overrides_are_refused() -> None:
    with pytest.raises(DriverError, match="only one of cgroup_v1_override and cgroup_v2"):
        parse_raw_exec_config(
            {"command": "x", "cgroup_v1_override": {"pids": "/a"}, "cgroup_v2_override": "b"}
        )


@pytest.mark.parametrize(
    "bad", [{"pids": 3}, {"pids": ""}, "pids", ["x"]], ids=["int", "empty", "str", "list"]
)
def test_bad_cgroup_v1_override_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(DriverError, match="cgroup_v1_override"):
        parse_raw_exec_config({"command": "x", "cgroup_v1_override": bad})


# --- cgroups -------------------------------------------------------------------------------


@contextlib.contextmanager
def made_cgroup(mount: str) -> Iterator[str]:
    """A fresh cgroup below `mount` (its name), removed afterwards."""
    name = f"allocrunner-test-{secrets.token_hex(4)}"
    path = os.path.join(mount, name)
    os.mkdir(path)
    try:
        yield name
    finally:
        wait_for(lambda: _removed(path), timeout=5)


def _removed(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise AssertionError(f"cannot remove {path}: {err}") from err


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == _LOGGER]


needs_v1 = pytest.mark.skipif(
    os.geteuid() != 0 or host_mode(V1_ROOT) != "v1", reason="needs root on a cgroup v1 host"
)
needs_v2 = pytest.mark.skipif(
    os.geteuid() != 0 or host_mode(V2_ROOT) != "v2", reason=f"needs root and cgroup v2 at {V2_ROOT}"
)


@needs_v1
@pytest.mark.parametrize("absolute", [True, False])
def test_cgroup_v1_override_is_joined_by_the_task_alone(
    raw: RawExecDriver, tmp_path: Path, absolute: bool
) -> None:
    with made_cgroup(os.path.join(V1_ROOT, "pids")) as name:
        path = f"/{name}" if absolute else name
        config = task_config(
            tmp_path, {**sh("exec sleep 30"), "cgroup_v1_override": {"pids": path}}
        )
        pid = task_pid(raw, config)
        try:
            assert cgroup_of(pid, "pids") == f"/{name}"
            spawner = spawner_pid(state_dir(tmp_path))
            assert spawner is not None and cgroup_of(spawner, "pids") == cgroup_of(
                os.getpid(), "pids"
            )
        finally:
            stop(raw, config)
        assert os.path.isdir(os.path.join(V1_ROOT, "pids", name)), "an override is never removed"


@needs_v1
def test_missing_cgroup_v1_override_gives_one_warning_and_the_task_runs(
    raw: RawExecDriver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    config = task_config(
        tmp_path, {**sh("exec sleep 30"), "cgroup_v1_override": {"pids": "/no-such-group"}}
    )
    pid = task_pid(raw, config)
    try:
        assert cgroup_of(pid, "pids") == cgroup_of(os.getpid(), "pids")
    finally:
        stop(raw, config)
    (warning,) = warnings_of(caplog)
    assert "cgroup_v1_override not applied" in warning and "/no-such-group" in warning


def test_cgroup_v2_override_on_a_host_without_v2_gives_one_warning(
    raw: RawExecDriver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if host_mode(V1_ROOT) == "v2":
        pytest.skip("the host has cgroup v2")
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    config = task_config(tmp_path, {**sh("exit 0"), "cgroup_v2_override": "custom.slice"})
    run(raw, config)
    (warning,) = warnings_of(caplog)
    assert "cgroup_v2_override 'custom.slice' not applied" in warning


def test_no_own_cgroup_is_warned_about_once_per_driver(
    raw: RawExecDriver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if host_mode(V1_ROOT) == "v2":
        pytest.skip("the host has cgroup v2")
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    for name in ("a", "b", "c"):
        run(raw, task_config(tmp_path, sh("exit 0"), name=name))
    (warning,) = warnings_of(caplog)
    assert "no cgroup of their own" in warning


@needs_v2
def test_task_gets_a_cgroup_of_its_own_removed_after_it_exits(
    no_leftover_processes: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=_LOGGER)
    slice_dir = Path(V2_ROOT, "nomad.slice")
    alloc_id = f"alloc-{secrets.token_hex(4)}"
    scope = slice_dir / f"{alloc_id}.web.scope"
    try:
        with driver_in(tmp_path, cgroup_root=V2_ROOT) as driver:
            config = task_config(tmp_path, sh("exec sleep 30"))
            config = TaskConfig.from_json({**config.to_json(), "alloc_id": alloc_id})
            pid = task_pid(driver, config)
            try:
                assert cgroup_of(pid, "") == f"/nomad.slice/{scope.name}"
                assert scope.is_dir()
                spawner = spawner_pid(state_dir(tmp_path))
                assert spawner is not None and cgroup_of(spawner, "") == cgroup_of(os.getpid(), "")
            finally:
                stop(driver, config)

            def removed() -> None:
                assert not scope.exists()

            wait_for(removed, timeout=5)
    finally:
        with contextlib.suppress(OSError):
            slice_dir.rmdir()
    if not (slice_dir / "memory.max").exists():
        assert any("memory limit not applied" in w for w in warnings_of(caplog))


@needs_v2
def test_leftovers_in_a_tasks_cgroup_are_killed_and_the_cgroup_removed(
    no_leftover_processes: None, tmp_path: Path
) -> None:
    slice_dir = Path(V2_ROOT, "nomad.slice")
    alloc_id = f"alloc-{secrets.token_hex(4)}"
    scope = slice_dir / f"{alloc_id}.web.scope"
    pid_file = tmp_path / "leftover.pid"
    script = f"setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {pid_file}; exit 0"
    try:
        scope.parent.mkdir(exist_ok=True)
        scope.mkdir()  # left by a spawner killed during a start: reused
        with driver_in(tmp_path, cgroup_root=V2_ROOT) as driver:
            config = task_config(tmp_path, sh(script))
            config = TaskConfig.from_json({**config.to_json(), "alloc_id": alloc_id})
            run(driver, config)
            leftover = int(pid_file.read_text())

            def cleaned_up() -> None:
                assert proc_state(leftover) in (None, "Z"), "the leftover still runs"
                assert not scope.exists()

            wait_for(cleaned_up, timeout=5)
    finally:
        with contextlib.suppress(OSError):
            slice_dir.rmdir()


@needs_v2
def test_cgroup_v2_override_is_joined_and_kept(no_leftover_processes: None, tmp_path: Path) -> None:
    with made_cgroup(V2_ROOT) as name, driver_in(tmp_path, cgroup_root=V2_ROOT) as driver:
        config = task_config(tmp_path, {**sh("exec sleep 30"), "cgroup_v2_override": name})
        pid = task_pid(driver, config)
        try:
            assert cgroup_of(pid, "") == f"/{name}"
        finally:
            stop(driver, config)
        assert os.path.isdir(os.path.join(V2_ROOT, name))


# --- logs disabled ------------------------------------------------------------------------


def test_disabled_logs_go_to_dev_null_and_no_file_is_written(
    raw: RawExecDriver, tmp_path: Path
) -> None:
    config = task_config(tmp_path, sh("echo out; echo err >&2"), logs_disabled=True)
    raw.start(config)
    result = raw.wait(config.id, CancelToken())
    raw.destroy(config.id)
    assert result is not None and result.exit_code == 0
    assert os.listdir(config.logs_dir) == []


def test_task_with_disabled_logs_has_dev_null_outputs_and_is_recovered(
    raw: RawExecDriver, tmp_path: Path
) -> None:
    config = task_config(tmp_path, sh("exec sleep 30"), logs_disabled=True)
    handle = raw.start(config)
    pid = int(handle.driver_state["pid"])
    assert os.readlink(f"/proc/{pid}/fd/1") == os.devnull
    assert os.readlink(f"/proc/{pid}/fd/2") == os.devnull
    raw.close()
    with driver_in(tmp_path) as agent:
        agent.recover(handle)
        agent.stop(config.id, 5.0, "SIGTERM")
        result = agent.wait(config.id, CancelToken())
        agent.destroy(config.id)
    assert result is not None and result.signal == 15
    assert os.listdir(config.logs_dir) == []


def test_mock_driver_writes_no_output_when_logs_are_disabled(tmp_path: Path) -> None:
    config = task_config(tmp_path, {"run_for": "1ms", "stdout_string": "hello"}, logs_disabled=True)
    with MockDriver() as driver:
        driver.start(config)
        result = driver.wait(config.id, CancelToken())
    assert result is not None and result.exit_code == 0
    assert os.listdir(config.logs_dir) == []


def test_a_handle_saved_before_logs_could_be_disabled_loads_with_logs_on(tmp_path: Path) -> None:
    data = task_config(tmp_path, sh("exit 0")).to_json()
    del data["logs_disabled"]
    assert TaskConfig.from_json(data).logs_disabled is False
