"""The agent's job registration and parse over real HTTP: settings this node ignores
come back in `Warnings` as Nomad's multierror text; a job this node would run
differently is refused with 400; `/v1/jobs/parse` takes `Variables`."""

from __future__ import annotations

import pytest

from tests.agent.helpers import api, sleeper_job
from tests.agent.test_api_semantics import agent  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(90)


def _with(job: dict, **group: object) -> dict:
    job["Job"]["TaskGroups"][0].update(group)
    return job


def test_register_returns_warnings_as_nomads_multierror(agent) -> None:  # noqa: F811
    body = _with(
        sleeper_job("warned", seconds=1, kind="batch"),
        Services=[{"Name": "web", "Checks": [{"Type": "tcp"}]}],
        Update={"Canary": 1},
    )
    status, reply, _ = api(agent.address, "PUT", "/v1/jobs", body)
    assert status == 200, reply
    assert reply["Warnings"] == (
        "3 warnings:\n\n"
        "* Job.TaskGroups[0].Services: not honoured on this node"
        " (no Consul or Nomad service discovery); ignored\n"
        "* Job.TaskGroups[0].Services.Checks: not honoured on this node"
        " (no service checks); ignored\n"
        "* Job.TaskGroups[0].Update.Canary: not honoured on this node (no deployments); ignored"
    )
    assert reply["EvalID"]


def test_register_without_ignored_settings_has_empty_warnings(agent) -> None:  # noqa: F811
    status, reply, _ = api(
        agent.address, "POST", "/v1/job/quiet", sleeper_job("quiet", seconds=1, kind="batch")
    )
    assert status == 200, reply
    assert reply["Warnings"] == ""


def test_register_refuses_a_consul_template(agent) -> None:  # noqa: F811
    body = sleeper_job("consul", seconds=1, kind="batch")
    body["Job"]["TaskGroups"][0]["Tasks"][0]["Templates"] = [
        {"EmbeddedTmpl": '{{ key "a" }}', "DestPath": "local/a"}
    ]
    status, reply, _ = api(agent.address, "PUT", "/v1/jobs", body)
    assert status == 400
    assert "Job.TaskGroups[0].Tasks[0].Templates[0].EmbeddedTmpl" in str(reply)
    assert agent.cluster.state().jobs == {} or all(
        j.id != "consul" for j in agent.cluster.state().jobs.values()
    )


JOB_HCL = """
variable "greeting" {
  type = string
}
job "parsed" {
  type = "batch"
  group "g" {
    task "t" {
      driver = "docker"
      config {
        image = "busybox"
        args  = [var.greeting]
      }
      service {
        name = "t"
      }
    }
  }
}
"""


def test_parse_takes_variables_and_reports_warnings(agent) -> None:  # noqa: F811
    body = {"JobHCL": JOB_HCL, "Variables": 'greeting = "hello"\n', "Canonicalize": True}
    status, reply, _ = api(agent.address, "PUT", "/v1/jobs/parse", body)
    assert status == 200, reply
    assert reply["ID"] == "parsed"
    task = reply["TaskGroups"][0]["Tasks"][0]
    assert task["Config"]["args"] == ["hello"]
    assert task["Driver"] == "docker"  # as in Nomad, parsing does not place the job
    assert reply["Warnings"] == (
        "1 warning:\n\n* job.group[g].task[t].service: not honoured on this node"
        " (no Consul or Nomad service discovery); ignored"
    )


def test_parse_errors_are_400_naming_the_field(agent) -> None:  # noqa: F811
    status, reply, _ = api(agent.address, "PUT", "/v1/jobs/parse", {"JobHCL": JOB_HCL})
    assert status == 400
    assert "greeting" in str(reply)
    status, reply, _ = api(agent.address, "PUT", "/v1/jobs/parse", {"JobHCL": ""})
    assert (status, str(reply).strip()) == (400, "Job spec is empty")
    status, _, _ = api(agent.address, "PUT", "/v1/jobs/parse", {"JobHCL": JOB_HCL, "Variables": 3})
    assert status == 400
