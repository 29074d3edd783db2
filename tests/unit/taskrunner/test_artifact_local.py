"""Local-file artifacts through a real TaskRunner and raw_exec: fetched when the task
runner is told the client allows them (`artifact_allow_local`), refused otherwise."""

from __future__ import annotations

from allocrunner.structs.job import TaskArtifact
from allocrunner.structs.task_state import EVENT_ARTIFACT_DOWNLOAD_FAILED
from allocrunner.testing import mock_alloc, mock_job, mock_task
from tests.unit.taskrunner.conftest import NO_RESTARTS, event_types, wait_state


def job_reading(path: str, artifact: TaskArtifact):
    task = mock_task(
        driver="raw_exec",
        config={"command": "/bin/cat", "args": [path]},
        artifacts=(artifact,),
    )
    return mock_job(task, job_type="batch", restart_policy=NO_RESTARTS)


def test_a_local_file_is_fetched_where_the_client_allows_it(harness, tmp_path) -> None:
    source = tmp_path / "settings.txt"
    source.write_text("from the node\n")
    artifact = TaskArtifact(str(source), relative_dest="local/conf")
    alloc = mock_alloc(job=job_reading("local/conf/settings.txt", artifact))
    tr = harness.runner(alloc, artifact_allow_local=True)
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)
    stdout = tr.task_dir.logs_dir / f"{tr.name}.stdout.0"
    assert stdout.read_text() == "from the node\n"


def test_a_local_directory_is_copied_where_the_client_allows_it(harness, tmp_path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "inner.txt").write_text("inner\n")
    artifact = TaskArtifact(str(tree), relative_dest="local/tree")
    alloc = mock_alloc(job=job_reading("local/tree/sub/inner.txt", artifact))
    tr = harness.runner(alloc, artifact_allow_local=True)
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)


def test_a_local_file_is_refused_unless_allowed(harness, tmp_path) -> None:
    source = tmp_path / "settings.txt"
    source.write_text("x")
    alloc = mock_alloc(job=job_reading("local/settings.txt", TaskArtifact(str(source))))
    tr = harness.runner(alloc)
    st = wait_state(tr, "dead")
    assert st.failed
    event = next(e for e in st.events if e.type == EVENT_ARTIFACT_DOWNLOAD_FAILED)
    assert "not allowed" in event.display_message
