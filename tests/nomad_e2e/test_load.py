"""Every raw_exec job file of Nomad's e2e suites loads here, or is refused for a reason
named by its field path.

The fixtures are the e2e job files (`*.hcl`, `*.nomad`) with a `raw_exec` task at Nomad
v1.6.10, the newest v1.6.x tag: 82 files, under tests/fixtures/nomad/e2e/ at their
path in Nomad's tree (plus the three var files of e2e/jobsubmissions). Nomad's newest
tree (main, 2026-08-21) has 98 such e2e files; it is not copied (BUSL).

Of the 82, with Nomad's HCL2 evaluation:

- job model (`runtime_check=False`, any driver): 70 load; 4 need a variable that has no
  default (JobSpecError naming `variable[NAME]`; each then loads once given); 8 ask for
  what this node never does (bridge networking, a template reading Consul or the Nomad
  API) and are refused naming that block;
- as this node would run them (the default check, drivers mock_driver and raw_exec):
  the 70 less the 4 using a driver it lacks (exec, docker): 66, the 7 with group
  network ports and the git artifacts among them.

Every warning starts with the field path it is about.
"""

from __future__ import annotations

import re

import pytest

from allocrunner.errors import JobSpecError
from allocrunner.jobspec import load_job_with_warnings, parse_job_with_warnings
from allocrunner.jobspec.runnable import ANY_DRIVER
from allocrunner.structs import Job
from tests.nomad_e2e.helpers import E2E

VAR_FILES = {
    "jobsubmissions/input/x.hcl",
    "jobsubmissions/input/y.hcl",
    "jobsubmissions/input/z.hcl",
}
JOB_FILES = sorted(
    str(p.relative_to(E2E))
    for p in E2E.rglob("*")
    if p.is_file() and str(p.relative_to(E2E)) not in VAR_FILES
)
V16_COUNT = 82
MPL_HEADER = "# Copyright (c) HashiCorp, Inc.\n# SPDX-License-Identifier: MPL-2.0\n"
NEWEST_COUNT = 98

#: Files whose variables have no default: the variable named, and values that load.
NEEDS_VARIABLE = {
    "e2eutil/input/disconnect-node.nomad": ("nodeID", ["nodeID=abc"]),
    "e2eutil/input/restart-node.nomad": ("nodeID", ["nodeID=abc"]),
    "jobsubmissions/input/xyz.hcl": ("X", ["X=x", "Y=1", "Z=true"]),
    "servicediscovery/input/checks_task_restart_helper.nomad": (
        "nodeID",
        ["nodeID=abc", "cmd=touch", "delay=1"],
    ),
}

_BRIDGE = "network mode 'bridge' is not supported"
_CONSUL = "template calls functions that need Consul, Vault or the Nomad API"

#: What this node never does: the file, the field path refused and the reason.
NEVER_RUNS = {
    "consul/input/checks_group.nomad": ("job.group[group_check].network[0].mode", _BRIDGE),
    "consul/input/checks_group_restart.nomad": (
        "job.group[group_check_restart].network[0].mode",
        _BRIDGE,
    ),
    "consul/input/checks_group_update.nomad": ("job.group[group_check].network[0].mode", _BRIDGE),
    "consul/input/namespaces/script_checks_group.nomad": (
        "job.group[group-a].network[0].mode",
        _BRIDGE,
    ),
    "servicediscovery/input/simple_lb_replicas.nomad": (
        "job.group[db_replica_1].network[0].mode",
        _BRIDGE,
    ),
    "consul/input/namespaces/template_kv.nomad": (
        "job.group[group-b].task[task-b].template[0].data",
        _CONSUL,
    ),
    "consultemplate/input/nomad_provider_service_lookup.nomad": (
        "job.group[nomad_provider_service_lookup].task[test].template[0].data",
        _CONSUL,
    ),
    "servicediscovery/input/simple_lb_clients.nomad": (
        "job.group[client_1].task[cat].template[0].data",
        _CONSUL,
    ),
}

#: Drivers this node does not have: the file and the task's driver path.
OTHER_DRIVER = {
    "artifact/input/artifact_linux.nomad": "job.group[exec].task[exec_file_default].driver",
    "consultemplate/input/template_shared_alloc.nomad": (
        "job.group[template-paths].task[docker].driver"
    ),
    "isolation/input/chroot_dl_exec.nomad": "job.group[group].task[run-script].driver",
    "oversubscription/testdata/exec.nomad": "job.group[group].task[task].driver",
}

RUNS_HERE = sorted(set(JOB_FILES) - set(NEEDS_VARIABLE) - set(NEVER_RUNS) - set(OTHER_DRIVER))

# A field path as the job file spells it: job, then .name or .name[label] steps.
WARNING = re.compile(r"^job(\.[a-z_]+(\[[^\]]+\])?)*: \S")


def _model(relative: str, variables: list[str] | None = None) -> tuple[Job, list[str]]:
    return load_job_with_warnings(
        E2E / relative, variables, env={}, drivers=ANY_DRIVER, runtime_check=False
    )


def _assert_paths(warnings: list[str]) -> None:
    for warning in warnings:
        assert WARNING.match(warning), f"warning does not start with a field path: {warning!r}"


def test_the_fixture_set_is_nomads_v1_6_raw_exec_e2e_files() -> None:
    assert len(JOB_FILES) == V16_COUNT
    for relative in JOB_FILES:
        text = (E2E / relative).read_text()
        assert text.startswith(
            "# Copyright (c) HashiCorp, Inc.\n# SPDX-License-Identifier: MPL-2.0"
        )
        assert re.search(r'driver\s*=\s*"raw_exec"', text), relative
    assert len(RUNS_HERE) == 66
    assert NEWEST_COUNT - V16_COUNT == 16  # e2e files added after v1.6 (not copied)


def test_fixtures_stay_under_one_mebibyte() -> None:
    total = sum(p.stat().st_size for p in E2E.parent.rglob("*") if p.is_file())
    assert total < 1024 * 1024, total


@pytest.mark.parametrize("relative", JOB_FILES)
def test_job_model_loads_or_names_what_is_missing(relative: str) -> None:
    if relative in NEEDS_VARIABLE:
        name, values = NEEDS_VARIABLE[relative]
        with pytest.raises(JobSpecError) as caught:
            _model(relative)
        assert caught.value.path == f"variable[{name}]"
        assert caught.value.message.startswith(f'Unset variable "{name}": ')
        job, warnings = _model(relative, values)
    elif relative in NEVER_RUNS:
        path, reason = NEVER_RUNS[relative]
        with pytest.raises(JobSpecError) as caught:
            _model(relative)
        assert (caught.value.path, caught.value.message.startswith(reason)) == (path, True)
        assert caught.value.message.endswith(f"(in {E2E / relative})")
        return
    else:
        job, warnings = _model(relative)
    assert job.task_groups and all(g.tasks for g in job.task_groups)
    assert any(t.driver == "raw_exec" for g in job.task_groups for t in g.tasks)
    _assert_paths(warnings)


@pytest.mark.parametrize("relative", RUNS_HERE)
def test_runnable_files_load_as_this_node_runs_them(relative: str) -> None:
    job, warnings = load_job_with_warnings(E2E / relative, env={})
    assert job.id
    _assert_paths(warnings)


@pytest.mark.parametrize("relative", sorted(OTHER_DRIVER))
def test_a_driver_this_node_lacks_is_refused_by_path(relative: str) -> None:
    with pytest.raises(JobSpecError) as caught:
        load_job_with_warnings(E2E / relative, env={}, runtime_check=False)
    assert caught.value.path == OTHER_DRIVER[relative]
    assert "is not available on this node" in caught.value.message


def test_a_needed_variable_is_named_even_when_others_are_given() -> None:
    with pytest.raises(JobSpecError) as caught:
        load_job_with_warnings(E2E / "jobsubmissions/input/xyz.hcl", ["X=x", "Z=true"], env={})
    assert caught.value.path == "variable[Y]"


def test_var_files_fill_every_variable() -> None:
    here = E2E / "jobsubmissions/input"
    job, warnings = load_job_with_warnings(
        here / "xyz.hcl", var_files=[here / "x.hcl", here / "y.hcl", here / "z.hcl"], env={}
    )
    assert job.task_groups[0].tasks[0].config["args"] == ("X my var file x value, Y 700, Z true",)
    _assert_paths(warnings)


def test_an_error_in_a_repeated_block_names_its_index() -> None:
    text = (E2E / "isolation/input/raw_exec.hcl").read_text()
    second = 'template {\n  data = "${1 + "a"}"\n  destination = "local/b"\n}\n'
    text = text.replace("      resources {", second + "      resources {", 1)
    with pytest.raises(JobSpecError) as caught:
        parse_job_with_warnings(text, "hcl")
    assert caught.value.path == "job.group[group].task[bash].template[1].data"
