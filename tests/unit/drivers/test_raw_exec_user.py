"""raw_exec's task ``user``: with the agent running as root the task runs as that user,
its primary group and its supplementary groups (Nomad's executor does the same), and
a user it may not run as is a DriverError naming it. Asserted through /proc."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import ExitResult, RawExecDriver, _process
from allocrunner.drivers.logs import read_logs
from allocrunner.errors import DriverError
from tests.unit.drivers.raw_exec_support import assert_spawner_retires
from tests.unit.drivers.support import sh, task_config

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def open_root() -> Iterator[Path]:
    """Task dirs another user can reach (pytest's tmp dirs are private to root)."""
    root = Path(tempfile.mkdtemp(prefix="ar-user-"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def raw(no_leftover_processes, open_root: Path) -> Iterator[RawExecDriver]:
    driver = RawExecDriver(state_dir=str(open_root / "spawner"))
    try:
        yield driver
    finally:
        driver.close()
        assert_spawner_retires(open_root / "spawner")


def status_ids(pid: int, key: str) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return [int(v) for v in line.split()[1:]]
    raise AssertionError(f"no {key} in /proc/{pid}/status")


@needs_root
def test_a_task_runs_as_its_user(raw: RawExecDriver, open_root: Path) -> None:
    config = task_config(open_root, sh("id -u; id -g; echo $$ >&2"), user="nobody")
    raw.start(config)
    assert raw.wait(config.id, CancelToken()) == ExitResult()
    out = read_logs(config.logs_dir, config.name, "stdout").decode().split()
    assert out == [str(NOBODY.pw_uid), str(NOBODY.pw_gid)]


@needs_root
def test_a_running_task_holds_only_its_users_ids(raw: RawExecDriver, open_root: Path) -> None:
    config = task_config(open_root, sh("exec sleep 30"), name="sleeper", user="nobody")
    pid = int(raw.start(config).driver_state["pid"])
    try:
        assert status_ids(pid, "Uid") == [NOBODY.pw_uid] * 4
        assert status_ids(pid, "Gid") == [NOBODY.pw_gid] * 4
        expected_groups = sorted(set(os.getgrouplist("nobody", NOBODY.pw_gid)))
        assert sorted(set(status_ids(pid, "Groups"))) == expected_groups
        assert os.getpgid(pid) == pid  # its own process group, as every task
    finally:
        raw.stop(config.id, 5.0, "SIGKILL")
        raw.destroy(config.id)


@needs_root
def test_a_command_the_user_may_not_run_fails_the_start(
    raw: RawExecDriver, open_root: Path
) -> None:
    script = open_root / "private.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(script, 0o700)  # root's only
    config = task_config(open_root, {"command": str(script)}, user="nobody")
    with pytest.raises(DriverError, match="ermission denied"):
        raw.start(config)


def test_a_user_that_does_not_exist_is_named(raw: RawExecDriver, open_root: Path) -> None:
    config = task_config(open_root, sh("exit 0"), user="no-such-user-xyz")
    with pytest.raises(DriverError, match="no-such-user-xyz"):
        raw.start(config)


def test_another_user_needs_a_root_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_process.os, "geteuid", lambda: 1000)
    with pytest.raises(DriverError, match="needs the agent to run as root"):
        _process.check_task_user("nobody")
