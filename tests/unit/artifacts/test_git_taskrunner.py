"""A git artifact through a real TaskRunner and raw_exec: cloned before the task
starts; a bad ref is the "Failed Artifact Download" event naming the source."""

from __future__ import annotations

import subprocess
from pathlib import Path

from allocrunner.structs import Job
from allocrunner.structs.job import TaskArtifact
from allocrunner.structs.task_state import EVENT_ARTIFACT_DOWNLOAD_FAILED
from allocrunner.testing import mock_alloc, mock_job, mock_task
from tests.unit.taskrunner import conftest as taskrunner_fixtures
from tests.unit.taskrunner.conftest import NO_RESTARTS, Harness, event_types, wait_state

# The task runner tests' fixtures, requested here by name.
db = taskrunner_fixtures.db
mock_driver = taskrunner_fixtures.mock_driver
raw_exec = taskrunner_fixtures.raw_exec
harness = taskrunner_fixtures.harness


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (
        ["init", "-q", "-b", "main"],
        ["config", "user.email", "test@example.com"],
        ["config", "user.name", "test"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    (repo / "go.mod").write_text("module example.com/x\n")
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", "one"], check=True)
    return repo


def _job(artifact: TaskArtifact) -> Job:
    task = mock_task(
        driver="raw_exec",
        config={"command": "/bin/cat", "args": ["local/repository/go.mod"]},
        artifacts=(artifact,),
    )
    return mock_job(task, job_type="batch", restart_policy=NO_RESTARTS)


def test_a_git_artifact_is_cloned_before_the_task_starts(harness: Harness, tmp_path: Path) -> None:
    source = f"git::file://{_repo(tmp_path)}"
    artifact = TaskArtifact(source, relative_dest="local/repository")
    tr = harness.runner(mock_alloc(job=_job(artifact)), artifact_allow_local=True)
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)
    stdout = tr.task_dir.logs_dir / f"{tr.name}.stdout.0"
    assert stdout.read_text() == "module example.com/x\n"


def test_a_bad_ref_is_a_failed_artifact_download(harness: Harness, tmp_path: Path) -> None:
    source = f"git::file://{_repo(tmp_path)}"
    artifact = TaskArtifact(
        source, relative_dest="local/repository", getter_options={"ref": "nope"}
    )
    tr = harness.runner(mock_alloc(job=_job(artifact)), artifact_allow_local=True)
    st = wait_state(tr, "dead")
    assert st.failed
    event = next(e for e in st.events if e.type == EVENT_ARTIFACT_DOWNLOAD_FAILED)
    assert event.display_message.startswith(f'failed to download artifact "{source}"')
    assert "nope" in event.display_message
