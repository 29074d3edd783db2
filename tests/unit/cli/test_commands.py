"""Nomad's command shapes (`job …`, `alloc …`, `node status`) against an agent running in
its own process, with real raw_exec tasks."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from allocrunner.testing import wait_for
from tests.unit.cli.helpers import EXAMPLES, cli_env, run_cli, run_process

# A service whose task prints a numbered line every 50 ms, says when it gets SIGHUP,
# and writes a file into its local dir.
TICKER = """
job "ticker" {
  type = "service"
  group "g" {
    restart {
      attempts = 3
      delay    = "100ms"
      mode     = "fail"
    }
    task "tick" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args = ["-c", <<EOS
echo note > $NOMAD_TASK_DIR/note.txt
trap 'echo got HUP' HUP
i=0
while true; do i=$((i+1)); echo line $i; sleep 0.05 & wait $!; done
EOS
        ]
      }
      kill_timeout = "2s"
    }
  }
}
"""

BATCH_FAIL = """
job "fails" {
  type = "batch"
  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "oops" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "exit 3"]
      }
    }
  }
}
"""


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def alloc_json(address: str, alloc_id: str) -> dict:
    code, out, err = run_cli("alloc", "status", "-json", "-address", address, alloc_id)
    assert code == 0, err
    return json.loads(out)


def task_event_types(address: str, alloc_id: str, task: str) -> list[str]:
    alloc = alloc_json(address, alloc_id)
    return [e["Type"] for e in alloc["TaskStates"][task]["Events"]]


def test_job_and_alloc_commands_against_an_agent(tmp_path, agent):
    addr = agent.address
    job = write(tmp_path, "ticker.nomad.hcl", TICKER)
    code, out, err = run_cli("job", "run", "-detach", "-address", addr, job)
    assert code == 0, err
    assert out.startswith("Job registration successful\nEvaluation ID: ")

    code, out, _ = run_cli("job", "status", "--address", addr)
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "Type", "Priority", "Status", "Submit", "Date"]
    assert row.split()[:2] == ["ticker", "service"]

    def placed() -> str:
        code, out, _ = run_cli("job", "status", "-address", addr, "ticker")
        assert code == 0 and "\nAllocations\n" in out, out
        return out.split("\nAllocations\n")[1].splitlines()[1].split()[0]

    short = wait_for(placed, timeout=20)
    full_id = alloc_json(addr, short)["ID"]

    def running() -> None:
        code, out, _ = run_cli("alloc", "status", "-address", addr, short)
        assert code == 0
        assert f"ID                  = {full_id}" in out
        assert 'Task "tick" is "running"' in out, out
        assert "Recent Events:\nTime" in out and "Task started by client" in out

    wait_for(running, timeout=20)

    def logged() -> None:
        code, out, _ = run_cli("alloc", "logs", "-address", addr, short)  # the only task
        assert code == 0 and out.startswith("line 1\nline 2\nline 3\n"), out

    wait_for(logged, timeout=20)
    code, out, _ = run_cli("alloc", "logs", "-address", addr, "-tail", "-n", "2", short, "tick")
    assert code == 0 and len(out.splitlines()) == 2 and out.startswith("line ")

    code, out, _ = run_cli("alloc", "fs", "-address", addr, short)
    assert code == 0 and out.splitlines()[0].split() == ["Mode", "Size", "Modified", "Time", "Name"]
    assert {"alloc/", "tick/"} <= {line.split()[-1] for line in out.splitlines()[1:]}
    code, out, _ = run_cli("alloc", "fs", "-address", addr, short, "tick/local/note.txt")
    assert (code, out) == (0, "note\n")
    code, _, err = run_cli("alloc", "fs", "-address", addr, short, "tick/nothing")
    assert code == 2 and err.startswith("allocrunner: ")

    code, _, err = run_cli("alloc", "signal", "-s", "SIGHUP", "-address", addr, short, "tick")
    assert code == 0, err
    wait_for(lambda: _in_log(addr, short, "got HUP"), timeout=20)
    assert "Signaling" in task_event_types(addr, short, "tick")

    code, _, err = run_cli("alloc", "restart", "-address", addr, short)
    assert code == 0, err

    def restarted() -> None:
        types = task_event_types(addr, short, "tick")
        assert "Restart Signaled" in types and types[-1] == "Started", types

    wait_for(restarted, timeout=20)

    code, out, err = run_cli("alloc", "stop", "-address", addr, short)
    assert code == 0, err
    assert alloc_json(addr, full_id)["DesiredStatus"] == "stop"
    assert "Killed" in task_event_types(addr, full_id, "tick")

    code, out, err = run_cli("job", "stop", "-purge", "-address", addr, "ticker")
    assert code == 0 and 'Job "ticker" stopped' in out, err
    code, _, err = run_cli("job", "status", "-address", addr, "ticker")
    assert code == 2 and "ticker" in err

    code, out, _ = run_cli("node", "status", "-address", addr)
    assert code == 0 and out.splitlines()[1].split()[-1] == "ready"


def _in_log(address: str, alloc: str, text: str) -> None:
    code, out, _ = run_cli("alloc", "logs", "-address", address, alloc, "tick")
    assert code == 0 and text in out, out[-200:]


def test_job_run_exit_codes_and_the_data_dir_route(tmp_path, agent):
    data = str(agent.data_dir)
    demo = str(EXAMPLES / "batch.nomad.hcl")
    code, out, err = run_process("job", "run", "--data-dir", data, demo)
    assert code == 0, err
    assert "==> hello-batch.greet[0]: complete (hello=dead, count=dead)" in out
    assert "Monitoring evaluation" in out.splitlines()[0]

    failing = write(tmp_path, "fails.nomad.hcl", BATCH_FAIL)
    code, out, err = run_process("job", "run", "--data-dir", data, failing)
    assert code == 1, (out, err)
    assert "oops: Terminated - Exit Code: 3" in out
    assert "==> fails.g[0]: failed (oops=failed)" in out

    code, _, err = run_process("alloc", "status", "--data-dir", data, "ffffffff")
    assert code == 2
    assert err == "allocrunner: No allocation(s) with prefix or id 'ffffffff' found\n"
    code, _, err = run_process("alloc", "status", "--data-dir", data, "f")
    assert code == 2 and "two characters" in err

    many = BATCH_FAIL.replace('group "g" {', 'group "g" {\n    count = 6000', 1)
    too_many = write(tmp_path, "many.nomad.hcl", many)
    code, out, err = run_process("job", "run", "--data-dir", data, too_many)
    assert code == 2 and err.startswith("allocrunner: Error submitting job: "), (out, err)


def test_closed_stdout_ends_quietly(tmp_path, agent):
    job = write(
        tmp_path,
        "chatty.nomad.hcl",
        BATCH_FAIL.replace('"exit 3"', '"seq 1 200000"').replace('"fails"', '"chatty"'),
    )
    code, _, err = run_process("job", "run", "-address", agent.address, job)
    assert code == 0, err
    code, out, _ = run_cli("job", "status", "-address", agent.address, "chatty")
    alloc = out.split("\nAllocations\n")[1].splitlines()[1].split()[0]
    for argv in (["alloc", "logs"], ["logs"]):
        pipeline = (
            f"{_quoted_python()} -m allocrunner {' '.join(argv)} --address {agent.address} "
            f"{alloc} oops | head -1"
        )
        proc = subprocess.run(
            ["/bin/sh", "-c", pipeline],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.stdout == "1\n"
        assert proc.stderr == "", proc.stderr


def _quoted_python() -> str:
    return shlex.quote(sys.executable)


PARAMETERIZED = """
job "param" {
  type = "batch"
  parameterized {
    payload       = "optional"
    meta_optional = ["greeting"]
  }
  group "g" {
    task "show" {
      driver = "raw_exec"
      dispatch_payload {
        file = "input.txt"
      }
      config {
        command = "/bin/sh"
        args    = ["-c", "echo \\"$NOMAD_META_greeting\\"; cat $NOMAD_TASK_DIR/input.txt"]
      }
    }
  }
}
"""


def test_dispatch_runs_a_parameterized_job(tmp_path, agent):
    addr = agent.address
    job = write(tmp_path, "param.nomad.hcl", PARAMETERIZED)
    code, out, err = run_cli("job", "run", "-address", addr, job)
    assert (code, out) == (0, "Job registration successful\n"), err
    payload = write(tmp_path, "input.txt", "from a file\n")
    code, out, err = run_cli(
        "job", "dispatch", "-meta", "greeting=hey", "-address", addr, "param", payload
    )
    assert code == 0, err
    assert out.startswith("Dispatched Job ID = param/dispatch-")
    assert "show: Terminated - Exit Code: 0" in out
    assert out.endswith("--- show stdout ---\nhey\nfrom a file\n")
    code, out, err = run_cli("job", "dispatch", "-detach", "-address", addr, "nothing")
    assert code == 2 and err.startswith("allocrunner: Failed to dispatch job: ")
