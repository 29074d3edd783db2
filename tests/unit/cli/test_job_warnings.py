"""`run` / `job run` print the job's warnings as Nomad's CLI does (a `Job Warnings:`
header, then the multierror text, on stdout) before watching the job; a job this node
would run differently from what it says is bad input (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.cli.helpers import cli_process

pytestmark = pytest.mark.timeout(120)

WARNED_JOB = """
job "warned" {
  type = "batch"
  group "g" {
    service {
      name = "web"
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo done"]
      }
      vault {
        policies = ["app"]
      }
    }
  }
}
"""

CONSUL_TEMPLATE_JOB = """
job "consul" {
  type = "batch"
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
      template {
        data        = "{{ key \\"app/port\\" }}"
        destination = "local/port"
      }
    }
  }
}
"""

EXPECTED = (
    "Job Warnings:\n"
    "2 warnings:\n"
    "\n"
    "* job.group[g].service: not honoured on this node"
    " (no Consul or Nomad service discovery); ignored\n"
    "* job.group[g].task[t].vault: not honoured on this node (no Vault); ignored\n"
    "\n"
)


@pytest.mark.parametrize("command", [("run",), ("job", "run")])
def test_run_prints_job_warnings_then_runs_the_job(
    tmp_path: Path, data_dir: Path, command: tuple[str, ...]
) -> None:
    job = tmp_path / "warned.nomad.hcl"
    job.write_text(WARNED_JOB)
    proc = cli_process(*command, "--data-dir", str(data_dir), str(job))
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, (out, err)
    assert EXPECTED in out
    assert out.index("Job Warnings:") < out.index("Monitoring evaluation")
    assert "Job Warnings" not in err


def test_run_detached_prints_warnings_too(tmp_path: Path, data_dir: Path) -> None:
    job = tmp_path / "warned.nomad.hcl"
    job.write_text(WARNED_JOB)
    proc = cli_process("job", "run", "-detach", "--data-dir", str(data_dir), str(job))
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, (out, err)
    assert out.startswith(EXPECTED) or EXPECTED in out
    assert "Job registration successful" in out


def test_a_job_without_warnings_prints_no_header(tmp_path: Path, data_dir: Path) -> None:
    job = tmp_path / "plain.nomad.hcl"
    job.write_text(
        WARNED_JOB.replace('service {\n      name = "web"\n    }', "").replace(
            'vault {\n        policies = ["app"]\n      }', ""
        )
    )
    proc = cli_process("job", "run", "-detach", "--data-dir", str(data_dir), str(job))
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, (out, err)
    assert "Job Warnings" not in out + err


def test_a_consul_template_is_refused_with_exit_2(tmp_path: Path, data_dir: Path) -> None:
    job = tmp_path / "consul.nomad.hcl"
    job.write_text(CONSUL_TEMPLATE_JOB)
    proc = cli_process("job", "run", "--data-dir", str(data_dir), str(job))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert "job.group[g].task[t].template[0].data" in err
    assert "key" in err and "Consul, Vault or the Nomad API" in err


def test_an_unknown_driver_is_refused_with_exit_2(tmp_path: Path, data_dir: Path) -> None:
    job = tmp_path / "docker.nomad.hcl"
    job.write_text(WARNED_JOB.replace('driver = "raw_exec"', 'driver = "docker"'))
    proc = cli_process("run", "--data-dir", str(data_dir), str(job))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, (out, err)
    assert "job.group[g].task[t].driver" in err and "'docker'" in err


def test_a_setting_the_agent_also_sees_is_warned_about_once(tmp_path: Path, data_dir: Path) -> None:
    job = tmp_path / "canary.nomad.hcl"
    job.write_text(WARNED_JOB.replace('type = "batch"', 'type = "batch"\n  update { canary = 1 }'))
    proc = cli_process("job", "run", "-detach", "--data-dir", str(data_dir), str(job))
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, (out, err)
    assert "3 warnings:" in out
    assert out.count("canary") == 1, out
    assert "* job.update.canary: not honoured on this node (no deployments); ignored" in out
