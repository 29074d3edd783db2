"""Placement on one node, with Nomad's e2e job files:

- a constraint the node fails (metrics/input/factorial_windows.nomad asks for Windows):
  nothing is placed; the evaluation names the constraint that filtered the node in
  ``FailedTGAllocs`` and a blocked evaluation waits for the rest, the job summary
  counts the allocation queued, and `job run` exits 2 as Nomad's does;
- a constraint on `${node.unique.id}` given by `-var` (as Nomad's e2eutil jobs pin a
  node) naming another node places nothing;
- group network ports (servicediscovery/input/checks_happy.nomad): the task serves HTTP
  on the dynamic port the allocation was given, through ``${NOMAD_PORT_http}``, where
  Nomad's http check finds it.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest

from allocrunner.testing import wait_for
from tests.nomad_e2e.helpers import Node, e2e_file

pytestmark = pytest.mark.timeout(60)


def test_a_failed_constraint_places_nothing_and_names_the_constraint(node: Node) -> None:
    code, _, _ = node.cli("job", "run", str(e2e_file("metrics/input/factorial_windows.nomad")))
    assert code == 2
    assert node.n.job.get_allocations("factorial_windows") == []
    evals = {e["Status"]: e for e in node.n.job.get_evaluations("factorial_windows")}
    assert set(evals) == {"complete", "blocked"}
    register = evals["complete"]
    assert register["BlockedEval"] == evals["blocked"]["ID"]
    failed = register["FailedTGAllocs"]["test"]
    assert failed["ConstraintFiltered"] == {"${attr.kernel.name} = windows": 1}
    assert (failed["NodesEvaluated"], failed["NodesFiltered"]) == (1, 1)
    summary = node.n.job.get_summary("factorial_windows")["Summary"]["test"]
    assert (summary["Queued"], summary["Running"]) == (1, 0)


def _allocated_port(alloc: dict[str, Any], label: str) -> int:
    ports = alloc["AllocatedResources"]["Shared"]["Ports"] or []
    [value] = [p["Value"] for p in ports if p["Label"] == label]
    return value


def test_the_task_serves_on_the_dynamic_port_it_was_given(node: Node) -> None:
    node.run(e2e_file("servicediscovery/input/checks_happy.nomad"))

    def running(alloc: dict[str, Any]) -> None:
        state = (alloc["TaskStates"] or {}).get("python-http")
        assert state is not None and state["State"] == "running", alloc["TaskStates"]

    alloc = node.alloc_when("checks_happy", running)
    port = _allocated_port(alloc, "http")
    assert port > 0

    def serves() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as reply:
                return reply.status
        except OSError as err:
            raise AssertionError(f"nothing serves port {port} yet: {err}") from None

    assert wait_for(serves, 20) == 200


NODE_JOB = """
variable "nodeID" {
  type = string
}

job "where" {
  type = "batch"
  group "group" {
    constraint {
      attribute = "${node.unique.id}"
      value     = "${var.nodeID}"
    }
    task "task" {
      driver = "raw_exec"
      config {
        command = "/bin/echo"
        args    = ["${node.unique.id}", "${node.datacenter}", "${attr.kernel.name}"]
      }
    }
  }
}
"""


def test_a_job_pinned_to_another_node_is_not_placed(node: Node, tmp_path: Path) -> None:
    job = tmp_path / "where.nomad.hcl"
    job.write_text(NODE_JOB)
    code, _, _ = node.cli("job", "run", "-var=nodeID=elsewhere", str(job))
    assert code == 2
    [register] = [e for e in node.n.job.get_evaluations("where") if e["Status"] == "complete"]
    failed = register["FailedTGAllocs"]["group"]
    assert failed["ConstraintFiltered"] == {"${node.unique.id} = elsewhere": 1}
