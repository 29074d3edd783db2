"""TaskRunner with raw_exec: real processes see the task env and interpolated args,
write logs, are killed as a group (SIGKILL after the kill timeout), record their exit
code, are re-attached after an agent restart, and bad input leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from allocrunner.drivers._process import children_of, pid_alive
from allocrunner.drivers.raw_exec import RawExecDriver
from allocrunner.structs import LogConfig, RestartPolicy, TaskEvent
from allocrunner.structs.task_state import (
    EVENT_DRIVER_FAILURE,
    EVENT_FAILED_VALIDATION,
    EVENT_KILLED,
    EVENT_NOT_RESTARTING,
    EVENT_STARTED,
    EVENT_TERMINATED,
    utcnow,
)
from allocrunner.testing import mock_task, wait_for
from tests.unit.taskrunner.conftest import (
    alloc_of,
    event_types,
    kill_quietly,
    wait_state,
)


def live_children() -> set[int]:
    """Live (non-zombie) child processes of this test process."""
    return {child.pid for child in children_of(os.getpid())}


@pytest.fixture(autouse=True)
def no_leftover_processes(harness) -> Iterator[None]:
    """Fail a test that leaves a child process running (after the runners are killed)."""
    before = live_children()
    yield
    harness.close()
    leftover: set[int] = set()

    def none_left() -> None:
        leftover.clear()
        leftover.update(live_children() - before)
        assert not leftover, f"processes {sorted(leftover)} left running"

    try:
        wait_for(none_left, timeout=5)
    finally:
        for pid in leftover:
            kill_quietly(pid)


def sh(script: str, **fields) -> object:
    return mock_task(
        driver="raw_exec", config={"command": "/bin/sh", "args": ["-c", script]}, **fields
    )


def read_when_present(path: Path, timeout: float = 10.0) -> str:
    def check() -> str:
        assert path.exists(), f"{path} not written yet"
        text = path.read_text()
        assert text.endswith("\n"), f"{path} incomplete: {text!r}"
        return text

    return wait_for(check, timeout)


def test_env_and_interpolation_reach_the_process(harness, monkeypatch) -> None:
    monkeypatch.setenv("ALLOCRUNNER_AGENT_VAR", "from-agent")
    script = (
        'printf "%s\\n" "$NOMAD_TASK_DIR" "$NOMAD_ALLOC_DIR" "$NOMAD_SECRETS_DIR" '
        '"$NOMAD_ALLOC_ID" "$NOMAD_ALLOC_NAME" "$NOMAD_ALLOC_INDEX" "$NOMAD_TASK_NAME" '
        '"$NOMAD_GROUP_NAME" "$NOMAD_JOB_ID" "$NOMAD_JOB_NAME" "$NOMAD_CPU_LIMIT" '
        '"$NOMAD_MEMORY_LIMIT" "$NOMAD_META_owner" "$NOMAD_META_OWNER" "$GREETING" '
        '"$ALLOCRUNNER_AGENT_VAR" "$(pwd)" > "$NOMAD_TASK_DIR/env.out"; '
        "printf '%s\\n' '${NOMAD_TASK_NAME}' '${env.ALLOCRUNNER_AGENT_VAR}' "
        "'${meta.owner}' '${NOMAD_NO_SUCH_VAR}' > '${NOMAD_ALLOC_DIR}/interp.out'"
    )
    task = sh(script, env={"GREETING": "hello ${NOMAD_TASK_NAME}"}, meta={"owner": "ops"})
    alloc = alloc_of(task)
    tr = harness.runner(alloc)
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)
    td = tr.task_dir
    lines = (td.local_dir / "env.out").read_text().splitlines()
    assert lines == [
        str(td.local_dir),
        str(td.shared_alloc_dir),
        str(td.secrets_dir),
        alloc.id,
        alloc.name,
        "0",
        "web",
        alloc.task_group,
        alloc.job.id,
        alloc.job.name,
        "100",
        "300",
        "ops",
        "ops",
        "hello web",
        "from-agent",
        str(td.dir),
    ]
    interp = (td.shared_alloc_dir / "interp.out").read_text().splitlines()
    assert interp == ["web", "from-agent", "ops", "${NOMAD_NO_SUCH_VAR}"]


def test_logs_are_written(harness) -> None:
    tr = harness.runner(alloc_of(sh("echo to-stdout; echo to-stderr >&2")))
    wait_state(tr, "dead")
    logs = tr.task_dir.logs_dir
    assert (logs / "web.stdout.0").read_text() == "to-stdout\n"
    assert (logs / "web.stderr.0").read_text() == "to-stderr\n"


def test_exit_code_is_recorded(harness) -> None:
    tr = harness.runner(alloc_of(sh("exit 3")))
    st = wait_state(tr, "dead")
    terminated = next(e for e in st.events if e.type == EVENT_TERMINATED)
    assert (terminated.exit_code, terminated.signal) == (3, 0)
    assert st.events[-1].type == EVENT_NOT_RESTARTING
    assert st.failed


def test_kill_reaches_grandchildren(harness) -> None:
    tr = harness.runner(
        alloc_of(sh('sleep 60 & echo $! > "$NOMAD_TASK_DIR/child.pid"; wait', kill_timeout=2.0))
    )
    wait_state(tr, "running")
    grandchild = int(read_when_present(tr.task_dir.local_dir / "child.pid"))
    try:
        assert pid_alive(grandchild)
        assert tr.kill(timeout=10)
        wait_for(lambda: _assert_dead(grandchild), timeout=5)
        st = tr.task_state()
        assert event_types(st)[-2:] == [EVENT_TERMINATED, EVENT_KILLED]
        assert st.events[-2].signal == 2  # SIGINT, Nomad's default kill signal
        assert not st.failed
    finally:
        kill_quietly(grandchild)


def _assert_dead(pid: int) -> None:
    assert not pid_alive(pid), f"process {pid} is still alive"


def test_kill_timeout_escalates_to_sigkill(harness) -> None:
    script = "trap '' INT; echo ready > \"$NOMAD_TASK_DIR/ready\"; while :; do sleep 0.05; done"
    tr = harness.runner(alloc_of(sh(script, kill_timeout=0.3)))
    wait_state(tr, "running")
    read_when_present(tr.task_dir.local_dir / "ready")
    asked = utcnow()
    assert tr.kill(timeout=10)
    st = tr.task_state()
    terminated = next(e for e in st.events if e.type == EVENT_TERMINATED)
    assert terminated.signal == 9
    # SIGINT was ignored; SIGKILL came once the kill timeout had passed
    assert terminated.time - asked >= timedelta(seconds=0.3)
    assert st.events[-1].type == EVENT_KILLED
    assert not st.failed


def test_kill_signal_of_the_task_is_used(harness) -> None:
    script = (
        "trap 'exit 42' TERM; echo ready > \"$NOMAD_TASK_DIR/ready\"; while :; do sleep 0.05; done"
    )
    tr = harness.runner(alloc_of(sh(script, kill_signal="SIGTERM", kill_timeout=5.0)))
    wait_state(tr, "running")
    read_when_present(tr.task_dir.local_dir / "ready")
    assert tr.kill(timeout=10)
    terminated = next(e for e in tr.task_state().events if e.type == EVENT_TERMINATED)
    assert terminated.exit_code == 42


def test_restart_starts_a_new_process(harness) -> None:
    policy = RestartPolicy(attempts=1, interval=600.0, delay=10.0, mode="fail")
    tr = harness.runner(
        alloc_of(
            sh('echo $$ >> "$NOMAD_TASK_DIR/pids"; exec sleep 60'),
            job_type="service",
            restart_policy=policy,
        )
    )
    wait_state(tr, "running")
    pids_file = tr.task_dir.local_dir / "pids"
    first = int(read_when_present(pids_file).split()[0])
    tr.restart(TaskEvent("Restart Signaled", message="User requested restart"))
    assert not pid_alive(first)

    def two_pids() -> list[int]:
        pids = [int(p) for p in pids_file.read_text().split()]
        assert len(pids) == 2, f"pids {pids}"
        return pids

    second = wait_for(two_pids)[1]
    assert pid_alive(second) and second != first
    assert tr.task_state().restarts == 1


def test_missing_command_fails_validation(harness) -> None:
    task = mock_task(driver="raw_exec", config={"args": ["hello"]})
    tr = harness.runner(alloc_of(task, restart_policy=RestartPolicy(attempts=3, delay=0.01)))
    st = wait_state(tr, "dead")
    failure = next(e for e in st.events if e.type == EVENT_FAILED_VALIDATION)
    assert "command" in failure.message
    assert st.failed and st.restarts == 0
    assert EVENT_STARTED not in event_types(st)


def test_nonexistent_command_is_a_driver_failure(harness) -> None:
    task = mock_task(driver="raw_exec", config={"command": "/no/such/binary-xyz"})
    tr = harness.runner(alloc_of(task))
    st = wait_state(tr, "dead")
    failure = next(e for e in st.events if e.type == EVENT_DRIVER_FAILURE)
    assert "/no/such/binary-xyz" in failure.message
    assert st.failed
    assert EVENT_STARTED not in event_types(st)


def test_restore_reattaches_to_the_same_process_in_a_new_driver(harness, raw_exec) -> None:
    alloc = alloc_of(sh('echo $$ > "$NOMAD_TASK_DIR/pid"; exec sleep 60'))
    first = harness.runner(alloc)
    wait_state(first, "running")
    pid = int(read_when_present(first.task_dir.local_dir / "pid"))
    wrapper = first.local_state().task_handle.driver_state["pid"]
    assert first.shutdown(timeout=5)
    raw_exec.close()  # the agent goes away; the process keeps running

    restarted = RawExecDriver()
    try:
        second = harness.runner(alloc, start=False, drivers={"raw_exec": restarted})
        second.restore()
        assert second.is_running()
        harness.start(second)
        wait_state(second, "running")
        assert pid_alive(pid)
        assert event_types(second.task_state()).count(EVENT_STARTED) == 1
        assert second.kill(timeout=10)
        wait_for(lambda: _assert_dead(pid), timeout=5)
        terminated = next(e for e in second.task_state().events if e.type == EVENT_TERMINATED)
        assert terminated.signal == 2
    finally:
        restarted.close()
        kill_quietly(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(wrapper, 0)


def test_log_rotation_settings_reach_the_driver(harness) -> None:
    logs = LogConfig(max_files=2, max_file_size_mb=1)
    script = "head -c 3000000 /dev/zero | tr '\\0' x"
    tr = harness.runner(alloc_of(sh(script, logs=logs)))
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)
    files = sorted(tr.task_dir.logs_dir.glob("web.stdout.*"))
    assert 1 < len(files) <= 2, files
    for path in files:
        assert path.stat().st_size <= 1024 * 1024, (path, path.stat().st_size)
