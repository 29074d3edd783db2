"""Nomad e2e scenarios on one node, each asserted as the Go test of its suite asserts it:

- e2e/isolation (pids_test.go testRawExecNoNamespacePID): raw_exec.hcl's template
  renders local/pid.sh and the task runs it; its stdout says "my pid is N", N not 1;
- e2e/jobsubmissions (testRunCLIVarFlags, testVarFiles): xyz.hcl run with `-var` flags
  twice, then with three `-var-file`s; the task echoes the values it was given;
- e2e/example (testEnv): env.hcl's `env` output holds NOMAD_JOB_ID of the job (run as
  the agent's user: raw_exec here has no `user`);
- an artifact served on 127.0.0.1: with the right checksum the task reads it; with a
  wrong one the task gets "Failed Artifact Download" and fails, as Nomad's client does.

Every job goes through the command line (`job run`), every result through python-nomad;
the `node` fixture fails the test if a task process is left behind.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import stat
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from allocrunner.testing import wait_for
from tests.nomad_e2e.helpers import Node, e2e_file, event_types

pytestmark = pytest.mark.timeout(60)

JOBSUBMISSIONS = "jobsubmissions/input"


def test_isolation_raw_exec_runs_its_rendered_script_outside_a_pid_namespace(node: Node) -> None:
    node.run(e2e_file("isolation/input/raw_exec.hcl"), detach=False)
    alloc = node.finished("raw_exec", "complete")
    script = node.n.client.stat.stat_file(alloc["ID"], "bash/local/pid.sh")
    assert stat.S_IMODE(_mode_bits(script["FileMode"])) == 0o755, script["FileMode"]
    rendered = node.n.client.cat.read_file(alloc["ID"], "bash/local/pid.sh")
    assert rendered == "#!/usr/bin/env bash\necho my pid is $BASHPID\n"
    found = re.search(r"my pid is (\d+)", node.stdout(alloc["ID"], "bash"))
    assert found is not None
    assert found.group(1) != "1"


def _mode_bits(file_mode: str) -> int:
    """Permission bits of Go's FileMode text (`-rwxr-xr-x`)."""
    bits = 0
    for char, bit in zip(file_mode[-9:], range(8, -1, -1), strict=True):
        if char != "-":
            bits |= 1 << bit
    return bits


def test_jobsubmissions_var_flags_reach_the_task(node: Node) -> None:
    job = e2e_file(f"{JOBSUBMISSIONS}/xyz.hcl")
    node.run(job, "-var=X=foo", "-var=Y=42", "-var=Z=true", detach=False)
    first = node.finished("xyz", "complete")
    assert node.stdout(first["ID"], "task") == "X foo, Y 42, Z true\n"

    node.run(job, "-var", "X=bar", "-var", "Y=99", "-var", "Z=false", detach=False)

    def replaced() -> dict:
        allocs = node.n.job.get_allocations("xyz")
        latest = [a for a in allocs if a["ID"] != first["ID"]]
        assert len(latest) == 1 and latest[0]["ClientStatus"] == "complete", allocs
        return latest[0]

    second = wait_for(replaced, 20)
    assert node.stdout(second["ID"], "task") == "X bar, Y 99, Z false\n"
    assert node.n.job.get_job("xyz")["Version"] == 1


def test_jobsubmissions_var_files_reach_the_task(node: Node) -> None:
    files = [f"-var-file={e2e_file(f'{JOBSUBMISSIONS}/{n}.hcl')}" for n in "xyz"]
    node.run(e2e_file(f"{JOBSUBMISSIONS}/xyz.hcl"), *files, detach=False)
    alloc = node.finished("xyz", "complete")
    assert node.stdout(alloc["ID"], "task") == "X my var file x value, Y 700, Z true\n"


def test_jobsubmissions_a_missing_variable_is_named_and_nothing_registers(node: Node) -> None:
    code, _, err = node.cli("job", "run", "-var=X=foo", str(e2e_file(f"{JOBSUBMISSIONS}/xyz.hcl")))
    assert code == 2
    assert 'Unset variable "Y"' in err
    assert node.n.jobs.get_jobs() == []


def test_example_env_shows_the_job_id(node: Node, tmp_path: Path) -> None:
    # env.hcl runs its task as `nobody`; raw_exec here runs tasks as the agent's user
    # only, so the same job runs without that line.
    text = e2e_file("example/input/env.hcl").read_text()
    assert text.count('user   = "nobody"\n') == 1
    job = tmp_path / "env.hcl"
    job.write_text(text.replace('user   = "nobody"\n', ""))
    node.run(job, detach=False)
    alloc = node.finished("env", "complete")
    assert "NOMAD_JOB_ID=env" in node.stdout(alloc["ID"], "task").splitlines()


# --- an artifact from a local HTTP server ----------------------------------------------

PAYLOAD = b"artifact served on loopback\n"

ARTIFACT_JOB = """
job "fetch" {
  type = "batch"
  group "group" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "task" {
      driver = "raw_exec"
      artifact {
        source      = "http://127.0.0.1:%(port)d/payload.txt"
        destination = "local/"
        options {
          checksum = "sha256:%(sum)s"
        }
      }
      config {
        command = "/bin/cat"
        args    = ["${NOMAD_TASK_DIR}/payload.txt"]
      }
    }
  }
}
"""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[int]:
    """An HTTP server on 127.0.0.1 serving PAYLOAD as /payload.txt; its port."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "payload.txt").write_bytes(PAYLOAD)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_QuietHandler, directory=str(root))
    )
    server.daemon_threads = False
    thread = threading.Thread(target=server.serve_forever, name="artifact-http", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _artifact_job(tmp_path: Path, port: int, digest: str) -> Path:
    path = tmp_path / "fetch.nomad.hcl"
    path.write_text(ARTIFACT_JOB % {"port": port, "sum": digest})
    return path


def test_artifact_with_its_checksum_is_fetched_before_the_task_starts(
    node: Node, served: int, tmp_path: Path
) -> None:
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    node.run(_artifact_job(tmp_path, served, digest), detach=False)
    alloc = node.finished("fetch", "complete")
    assert node.stdout(alloc["ID"], "task") == PAYLOAD.decode()
    events = event_types(alloc["TaskStates"]["task"])
    assert events[:4] == ["Received", "Task Setup", "Downloading Artifacts", "Started"]


def test_artifact_with_a_wrong_checksum_fails_the_task(
    node: Node, served: int, tmp_path: Path
) -> None:
    code, _, _ = node.cli("job", "run", str(_artifact_job(tmp_path, served, "0" * 64)))
    assert code == 1
    alloc = node.finished("fetch", "failed")
    state = alloc["TaskStates"]["task"]
    assert state["Failed"] is True
    assert "Started" not in event_types(state)
    failed = [e for e in state["Events"] if e["Type"] == "Failed Artifact Download"]
    assert failed, event_types(state)
    assert "checksum" in failed[0]["DisplayMessage"], failed[0]
