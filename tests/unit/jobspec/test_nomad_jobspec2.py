"""Nomad v1.6.0's jobspec2 fixtures (tests/fixtures/nomad/jobspec2, MPL-2.0), with the
fields Nomad's jobspec2/parse_test.go asserts for each.

Nomad's fixtures may hold a job without groups, which a local runner refuses, so those
are checked on the API JSON (`hcl_to_api`) rather than on a loaded Job.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from allocrunner.errors import JobSpecError
from allocrunner.jobspec import hcl_to_api, load_job, parse_job
from allocrunner.jobspec.hcl import EvalOptions
from allocrunner.jobspec.hcl_vars import ValueSources

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nomad" / "jobspec2"
CASES = FIXTURES / "parse_test"


def api(
    name: str,
    *,
    cli: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    var_files: tuple[str, ...] = (),
    base_dir: str | None = None,
) -> dict[str, Any]:
    sources = ValueSources(env=env or {}, var_files=var_files, cli=tuple((cli or {}).items()))
    return hcl_to_api((CASES / name).read_text(), options=EvalOptions(sources, base_dir))


def test_every_fixture_carries_the_license_header() -> None:
    files = sorted(FIXTURES.rglob("*.hcl"))
    assert len(files) >= 14
    for path in files:
        head = path.read_text().splitlines()[:2]
        assert head == [
            "# Copyright (c) HashiCorp, Inc.",
            "# SPDX-License-Identifier: MPL-2.0",
        ], path


def test_vars_and_functions() -> None:
    job = api("vars-and-functions.hcl", cli={"region_var": "aug"})
    assert job["Datacenters"] == ["DC1", "DC2"]
    assert job["Region"] == "aug"


def test_variables_defaults_and_set(tmp_path: Path) -> None:
    name = "variables-defaults-and-set.hcl"
    job = api(name)
    assert (job["Datacenters"], job["Region"]) == (["default_dc"], "default_region")
    job = api(name, cli={"dc_var": "set_dc", "region_var": "set_region"})
    assert (job["Datacenters"], job["Region"]) == (["set_dc"], "set_region")
    job = api(name, env={"NOMAD_VAR_dc_var": "set_dc", "NOMAD_VAR_region_var": "set_region"})
    assert (job["Datacenters"], job["Region"]) == (["set_dc"], "set_region")
    var_file = tmp_path / "vars.hcl"
    var_file.write_text('dc_var = "set_dc"\n\tregion_var = "set_region"')
    job = api(name, var_files=(str(var_file),))
    assert (job["Datacenters"], job["Region"]) == (["set_dc"], "set_region")
    with pytest.raises(JobSpecError):
        api(name, var_files=("does-not-exist.hcl",))


def test_invalid_var_file_is_an_error(tmp_path: Path) -> None:
    var_file = tmp_path / "vars.hcl"
    var_file.write_text("invalid{hcl")
    with pytest.raises(JobSpecError):
        api("vars-and-functions.hcl", var_files=(str(var_file),))


def test_unknown_variables_are_left_intact() -> None:
    job = api("unknown-variables.hcl", cli={"region_var": "aug"})
    assert job["Meta"] == {"known_var": "aug", "unknown_var": "${UNKNOWN}"}


def test_unset_variables_are_an_error() -> None:
    with pytest.raises(JobSpecError, match="Unset variable"):
        api("unset-variables.hcl")


def test_locals() -> None:
    job = api("locals.hcl")
    assert (job["Datacenters"], job["Region"]) == (["local_dc"], "default_region.example")
    job = api("locals.hcl", cli={"region_var": "set_region"})
    assert (job["Datacenters"], job["Region"]) == (["local_dc"], "set_region.example")


def test_file_operators(tmp_path: Path) -> None:
    (tmp_path / "parse_test.go").write_text("package jobspec2\n")
    job = api("file-operators.hcl", base_dir=str(tmp_path))
    assert job["Region"] == "package jobspec2\n"
    with pytest.raises(JobSpecError, match="filesystem function disabled"):
        api("file-operators.hcl")


def test_dynamic_groups() -> None:
    job = parse_job((CASES / "dynamic.hcl").read_text(), "hcl")
    assert [g.name for g in job.task_groups] == ["groupA", "groupB", "groupC"]
    assert [g.count for g in job.task_groups] == [1, 2, 3]
    first, second, third = (g.tasks[0] for g in job.task_groups)
    assert first.resources.cpu == 1
    assert first.config["command"] == "groupA"
    assert first.meta["VERSION"] == "1"
    assert first.env["ID"] == "id:1"
    assert second.env["ID"] == "id:2"
    assert third.meta["VERSION"] == "3"


@pytest.mark.parametrize(
    ("env", "dcs", "count"),
    [("prod", ("prod-dc1", "prod-dc2"), 20), ("staging", ("dc1",), 3), ("unknown", (), 0)],
)
def test_job_with_functions_and_lookups(env: str, dcs: tuple[str, ...], count: int) -> None:
    text = (CASES / "job-with-functions-and-lookups.hcl").read_text()
    job = parse_job(text, "hcl", source="example.hcl", variables=[f"env={env}"], drivers={"docker"})
    assert job.id == job.name == "job-webserver"
    assert job.datacenters == dcs
    (group,) = job.task_groups
    assert (group.name, group.count) == ("group-webserver", count)
    (task,) = group.tasks
    assert (task.name, task.driver) == ("server", "docker")
    assert task.config == {"image": "hashicorp/http-echo", "args": ("-text", f"Hello from {env}")}


def test_task_envs() -> None:
    job = parse_job((CASES / "task-envs.hcl").read_text(), "hcl", drivers={"docker"})
    envs = {g.name: dict(g.tasks[0].env) for g in job.task_groups}
    assert envs == {
        "block": {"key": "value"},
        "attribute": {"key.dot": "val1", "key_unquoted_without_dot": "val2"},
        "attribute_colons": {"key.dot": "val1", "key_unquoted_without_dot": "val2"},
        "attribute_empty": {},
        "attribute_expression": {"a": "val-a", "b": "val-b"},
    }


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("task-envs-multiple.hcl", "env"),
        ("task-envs-invalid-local.hcl", 'does not have an attribute named "undefined_local"'),
        ("task-envs-invalid-list.hcl", "env"),
    ],
)
def test_invalid_task_envs(name: str, message: str) -> None:
    with pytest.raises(JobSpecError, match=message) as info:
        parse_job((CASES / name).read_text(), "hcl")
    assert info.value.path.startswith("job.group[group].task[task].env")


def test_meta_as_block_or_attribute() -> None:
    text = (CASES / "meta-alternatives.hcl").read_text()
    as_block = parse_job(text, "hcl", drivers={"config"})
    as_attr_text = text.replace("meta {", "meta = {")
    assert as_attr_text.count("meta = {") == 3
    assert parse_job(as_attr_text, "hcl", drivers={"config"}) == as_block
    assert as_block.meta == {"source": "job"}
    assert as_block.task_groups[0].meta == {"source": "group"}
    assert as_block.task_groups[0].tasks[0].meta == {"source": "task"}


@pytest.mark.parametrize(
    "region",
    [
        "plain",
        "foo-${BAR}",
        "foo-${attr.network.dev-us-east1-relay-vpc.external-ip.0}",
        '${env["BLAH"]}',
        '${mixed-indexing.0[3]["FOO"].5}',
        'with spaces ${   root.  field[  "FOO"].5  }',
    ],
)
def test_undefined_variables_stay_as_written(region: str) -> None:
    text = 'job "example" {\n  region = "' + region + '"\n}\n'
    assert hcl_to_api(text)["Region"] == region


def test_undefined_variable_unquoted() -> None:
    assert hcl_to_api('job "example" {\n  region = meta.mytest\n}\n')["Region"] == "${meta.mytest}"


def test_connect_example(tmp_path: Path) -> None:
    path = tmp_path / "connect-example.nomad.hcl"
    shutil.copy(FIXTURES / "test-fixtures" / "connect-example.hcl", path)
    with pytest.raises(JobSpecError, match="network mode 'bridge'") as info:
        load_job(path, drivers={"docker"})  # Connect needs a bridge network
    assert info.value.path == "job.group[web].network[0].mode"
    job = hcl_to_api(path.read_text())
    (task,) = job["TaskGroups"][0]["Tasks"]
    assert task["Env"] == {"COUNTING_SERVICE_URL": "http://${NOMAD_UPSTREAM_ADDR_database}"}
    assert task["Config"] == {"image": "hashicorp/website:v1", "auth_soft_fail": True}
