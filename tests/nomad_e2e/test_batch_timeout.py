"""A group's `max_run_duration` on one node, with the outcomes Nomad's e2e batch_timeout
suite asserts (the job files here are written for this suite, with a one-second
deadline): a batch or sysbatch allocation that runs past the deadline is stopped and
ends `complete` with the description "allocation exceeded max_run_duration"; one whose
tasks finish first completes without it; when the deadline stops an allocation, its
poststop task never starts (dead, no StartedAt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nomad_e2e.helpers import Node

pytestmark = pytest.mark.timeout(60)

TIMED_OUT = "allocation exceeded max_run_duration"

JOB = """
job "%(id)s" {
  type = "%(type)s"
  group "group" {
    max_run_duration = "%(limit)s"
    restart {
      attempts = 0
      mode     = "fail"
    }
    task "main" {
      driver       = "raw_exec"
      kill_timeout = "1s"
      config {
        command = "/bin/sleep"
        args    = ["%(sleep)s"]
      }
    }
%(extra)s
  }
}
"""

POSTSTOP = """
    task "poststop" {
      driver = "raw_exec"
      lifecycle {
        hook = "poststop"
      }
      config {
        command = "/bin/sleep"
        args    = ["10"]
      }
    }
"""


def _job(
    tmp_path: Path,
    job_id: str,
    *,
    kind: str = "batch",
    limit: str = "1s",
    sleep: str = "300",
    extra: str = "",
) -> Path:
    path = tmp_path / f"{job_id}.nomad.hcl"
    values = {"id": job_id, "type": kind, "limit": limit, "sleep": sleep, "extra": extra}
    path.write_text(JOB % values)
    return path


@pytest.mark.parametrize("kind", ["batch", "sysbatch"])
def test_a_job_past_its_max_run_duration_is_stopped_complete(
    node: Node, tmp_path: Path, kind: str
) -> None:
    node.run(_job(tmp_path, "timeout", kind=kind))
    alloc = node.finished("timeout", "complete")
    assert alloc["ClientDescription"] == TIMED_OUT
    main = alloc["TaskStates"]["main"]
    assert main["State"] == "dead" and not main["Failed"], main


def test_a_job_that_ends_first_completes_without_the_timeout(node: Node, tmp_path: Path) -> None:
    node.run(_job(tmp_path, "quick", limit="30s", sleep="0"))
    alloc = node.finished("quick", "complete")
    assert alloc["ClientDescription"] != TIMED_OUT


def test_a_timed_out_allocation_never_starts_its_poststop_task(node: Node, tmp_path: Path) -> None:
    node.run(_job(tmp_path, "post", extra=POSTSTOP))
    alloc = node.finished("post", "complete")
    assert alloc["ClientDescription"] == TIMED_OUT
    poststop = alloc["TaskStates"]["poststop"]
    assert poststop["State"] == "dead", poststop
    assert poststop["StartedAt"] in (None, "0001-01-01T00:00:00Z"), poststop
