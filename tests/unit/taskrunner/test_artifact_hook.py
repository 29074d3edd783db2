"""The artifact hook through real TaskRunners and raw_exec, with artifacts served by a
real HTTP server on 127.0.0.1: the task reads what was fetched (a file, an unpacked
tar.gz), a good checksum passes, a bad one fails the task with "Failed Artifact
Download" before it starts, and a local file is refused by default."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator

import pytest

from allocrunner.structs.job import TaskArtifact
from allocrunner.structs.task_state import (
    EVENT_ARTIFACT_DOWNLOAD_FAILED,
    EVENT_DOWNLOADING_ARTIFACTS,
    EVENT_STARTED,
)
from allocrunner.testing import mock_alloc, mock_job, mock_task
from tests.unit.taskrunner.conftest import NO_RESTARTS, event_types, wait_state

PLAIN = b"plain artifact\n"


def _tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"from the archive\n"
        info = tarfile.TarInfo("bundle/inner.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TARBALL = _tarball()
FILES = {"/plain.txt": PLAIN, "/bundle.tar.gz": TARBALL}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = FILES.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, name="artifact-http")
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def sh_task(script: str, *artifacts: TaskArtifact):
    return mock_task(
        driver="raw_exec",
        config={"command": "/bin/sh", "args": ["-c", script]},
        artifacts=artifacts,
    )


def batch(*tasks):
    return mock_job(*tasks, job_type="batch", restart_policy=NO_RESTARTS)


def stdout_of(tr) -> bytes:
    return (tr.task_dir.logs_dir / f"{tr.name}.stdout.0").read_bytes()


def test_the_task_reads_a_fetched_file_and_an_unpacked_archive(harness, server) -> None:
    sha = hashlib.sha256(PLAIN).hexdigest()
    plain = TaskArtifact(
        getter_source=f"{server}/plain.txt",
        getter_options={"checksum": f"sha256:{sha}"},
    )
    bundle = TaskArtifact(getter_source=f"{server}/bundle.tar.gz", relative_dest="local/b")
    task = sh_task("cat local/plain.txt local/b/bundle/inner.txt", plain, bundle)
    tr = harness.runner(mock_alloc(job=batch(task)))
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)
    assert stdout_of(tr) == PLAIN + b"from the archive\n"
    types = event_types(st)
    assert types.index(EVENT_DOWNLOADING_ARTIFACTS) < types.index(EVENT_STARTED)


def test_a_bad_checksum_fails_the_task_before_it_starts(harness, server) -> None:
    bad = TaskArtifact(
        getter_source=f"{server}/plain.txt", getter_options={"checksum": "sha256:" + "0" * 64}
    )
    tr = harness.runner(mock_alloc(job=batch(sh_task("true", bad))))
    st = wait_state(tr, "dead")
    assert st.failed
    types = event_types(st)
    assert EVENT_ARTIFACT_DOWNLOAD_FAILED in types and EVENT_STARTED not in types, types
    event = next(e for e in st.events if e.type == EVENT_ARTIFACT_DOWNLOAD_FAILED)
    assert event.display_message.startswith(f'failed to download artifact "{server}/plain.txt"')
    assert not (tr.task_dir.local_dir / "plain.txt").exists()


def test_a_missing_artifact_fails_the_task(harness, server) -> None:
    missing = TaskArtifact(getter_source=f"{server}/nothing-here")
    tr = harness.runner(mock_alloc(job=batch(sh_task("true", missing))))
    st = wait_state(tr, "dead")
    assert st.failed and EVENT_ARTIFACT_DOWNLOAD_FAILED in event_types(st)


def test_a_local_file_is_refused_by_default(harness, tmp_path) -> None:
    source = tmp_path / "local.txt"
    source.write_bytes(b"x")
    tr = harness.runner(mock_alloc(job=batch(sh_task("true", TaskArtifact(str(source))))))
    st = wait_state(tr, "dead")
    assert st.failed
    event = next(e for e in st.events if e.type == EVENT_ARTIFACT_DOWNLOAD_FAILED)
    assert str(source) in event.display_message
