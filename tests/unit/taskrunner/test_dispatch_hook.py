"""The dispatch payload hook through real TaskRunners and raw_exec: a task `cat`s the
payload file the hook wrote under its `local/` dir, and a bad destination fails the
task before it starts."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime

import attrs
import pytest

from allocrunner.agent.dispatch import dispatch_job
from allocrunner.structs import Job, ParameterizedJobConfig
from allocrunner.structs.task_state import EVENT_STARTED
from allocrunner.taskrunner.dispatch_hook import DispatchPayloadError, write_dispatch_payload
from allocrunner.testing import mock_alloc, mock_job, mock_task
from tests.unit.taskrunner.conftest import NO_RESTARTS, event_types, wait_state


def cat_task(file: str, **fields: object):
    return mock_task(
        driver="raw_exec",
        config={"command": "/bin/cat", "args": [f"${{NOMAD_TASK_DIR}}/{file}"]},
        dispatch_payload=file,
        **fields,
    )


def dispatched(*tasks, payload: bytes) -> Job:
    parent = attrs.evolve(
        mock_job(*tasks, job_type="batch", restart_policy=NO_RESTARTS),
        parameterized=ParameterizedJobConfig(),
    )
    return dispatch_job(parent, meta={}, payload=payload, now=datetime.now(UTC))


def stdout_of(tr) -> bytes:
    return (tr.task_dir.logs_dir / f"{tr.name}.stdout.0").read_bytes()


def test_task_reads_the_payload_from_local(harness) -> None:
    payload = b"line one\nbinary \x00\xff tail"
    tr = harness.runner(mock_alloc(job=dispatched(cat_task("input.bin"), payload=payload)))
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)
    assert stdout_of(tr) == payload
    written = tr.task_dir.local_dir / "input.bin"
    assert written.read_bytes() == payload
    assert stat.S_IMODE(written.stat().st_mode) == 0o777 & ~_umask()


def test_payload_file_in_a_new_subdirectory(harness) -> None:
    job = dispatched(cat_task("in/nested/data.txt"), payload=b"nested")
    tr = harness.runner(mock_alloc(job=job))
    assert wait_state(tr, "dead").successful()
    assert stdout_of(tr) == b"nested"


def test_no_file_without_a_payload_or_a_dispatch_payload_block(harness) -> None:
    job = dispatched(
        mock_task(
            driver="raw_exec",
            config={"command": "/bin/sh", "args": ["-c", "ls -A ${NOMAD_TASK_DIR}"]},
            dispatch_payload="input.txt",
        ),
        payload=b"",
    )
    tr = harness.runner(mock_alloc(job=job))
    assert wait_state(tr, "dead").successful()
    assert not (tr.task_dir.local_dir / "input.txt").exists()

    plain = mock_task(
        driver="raw_exec", config={"command": "/bin/sh", "args": ["-c", "ls -A ${NOMAD_TASK_DIR}"]}
    )
    tr2 = harness.runner(mock_alloc(job=dispatched(plain, payload=b"ignored")))
    assert wait_state(tr2, "dead").successful()
    assert list(tr2.task_dir.local_dir.iterdir()) == []


def test_symlink_out_of_local_fails_the_task_before_it_starts(harness, tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    job = dispatched(cat_task("link/x.txt"), payload=b"escape")
    alloc = mock_alloc(job=job)
    alloc_dir = harness.alloc_dir(alloc)
    task_dir = alloc_dir.new_task_dir("web")
    task_dir.build()
    os.symlink(outside, task_dir.local_dir / "link")
    tr = harness.runner(alloc, alloc_dir=alloc_dir)
    st = wait_state(tr, "dead")
    assert st.failed
    assert EVENT_STARTED not in event_types(st)
    assert any("escapes" in e.message or "escapes" in e.display_message for e in st.events), [
        (e.type, e.message) for e in st.events
    ]
    assert list(outside.iterdir()) == []


def test_write_refuses_escapes(tmp_path) -> None:
    local = tmp_path / "local"
    local.mkdir()
    with pytest.raises(DispatchPayloadError):
        write_dispatch_payload(local, "../x", b"data")
    with pytest.raises(DispatchPayloadError):
        write_dispatch_payload(local, ".", b"data")
    assert write_dispatch_payload(local, "./ok.txt", b"data") == local.resolve() / "ok.txt"


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, process-wide)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise AssertionError("no Umask line in /proc/self/status")
