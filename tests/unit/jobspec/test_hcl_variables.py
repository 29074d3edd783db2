"""Job files with HCL2 variables, locals, var files, -var and NOMAD_VAR_ values, dynamic
blocks, job-level tasks and typed fields, through `load_job` / `parse_job`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from allocrunner.errors import JobSpecError
from allocrunner.jobspec import load_job, load_job_with_warnings, parse_job, parse_job_with_warnings
from tests.unit.jobspec.hcl_helpers import job_file

TYPED = """
variable "count" {
  type    = number
  default = 1
}
variable "dcs" {
  type    = list(string)
  default = ["dc1"]
}
variable "image" {
  type        = string
  description = "the image"
}
variable "labels" {
  type    = map(string)
  default = {}
}
variable "debug" {
  type    = bool
  default = false
}
"""
TYPED_JOB = job_file(
    top=TYPED,
    job="datacenters = var.dcs",
    group="count = var.count",
    task="env = merge(var.labels, { IMAGE = var.image, DEBUG = var.debug })",
)


def write(tmp_path: Path, text: str, name: str = "job.nomad.hcl") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_env_var_files_and_cli_in_nomads_precedence(tmp_path: Path) -> None:
    job_path = write(tmp_path, TYPED_JOB)
    hcl_vars = write(tmp_path, 'count = "4"\nimage = "from-file"\n', "a.hcl")
    json_vars = write(tmp_path, json.dumps({"count": 5, "labels": {"x": 1}}), "b.json")
    env = {"NOMAD_VAR_count": "3", "NOMAD_VAR_image": "from-env", "NOMAD_VAR_dcs": '["e1"]'}

    job = load_job(job_path, env=env)
    assert job.task_groups[0].count == 3
    assert job.datacenters == ("e1",)
    assert job.task_groups[0].tasks[0].env["IMAGE"] == "from-env"

    job = load_job(job_path, var_files=[hcl_vars, json_vars], env=env)
    assert job.task_groups[0].count == 5
    assert job.task_groups[0].tasks[0].env == {"IMAGE": "from-file", "DEBUG": "false", "x": "1"}

    job = load_job(
        job_path,
        ["count=7", "count=8", "debug=true", 'dcs=["c1", "c2"]'],
        [hcl_vars],
        env=env,
    )
    assert job.task_groups[0].count == 8
    assert job.datacenters == ("c1", "c2")
    assert job.task_groups[0].tasks[0].env["DEBUG"] == "true"

    job = load_job(job_path, {"image": "py", "count": 2, "labels": {"k": "v"}})
    assert job.task_groups[0].count == 2
    assert job.task_groups[0].tasks[0].env == {"IMAGE": "py", "DEBUG": "false", "k": "v"}


def test_load_job_reads_nomad_var_from_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOMAD_VAR_image", "process-env")
    job = load_job(write(tmp_path, TYPED_JOB))
    assert job.task_groups[0].tasks[0].env["IMAGE"] == "process-env"


@pytest.mark.parametrize(
    ("kwargs", "path", "message"),
    [
        ({}, "variable[image]", 'Unset variable "image"'),
        ({"variables": {"image": "x", "colour": "red"}}, "variable[colour]", "undefined variable"),
        ({"variables": {"image": "x", "count": "many"}}, "variable[count]", "number"),
        ({"variables": ["image=x", "debug=maybe"]}, "variable[debug]", "maybe"),
        ({"variables": ["image=x", "debug=2"]}, "variable[debug]", "bool"),
        ({"variables": ["image=x", "dcs=[1, [2]]"]}, "variable[dcs]", "list(string)"),
        ({"variables": ["image"]}, "-var", "NAME=VALUE"),
        ({"var_files": ["missing.hcl"]}, "missing.hcl", "cannot read var file"),
    ],
)
def test_bad_variable_values_name_the_variable_and_file(
    tmp_path: Path, kwargs: dict, path: str, message: str
) -> None:
    job_path = write(tmp_path, TYPED_JOB)
    with pytest.raises(JobSpecError) as info:
        load_job(job_path, env={}, **kwargs)
    assert info.value.path.endswith(path)
    assert message in info.value.message
    assert str(job_path) in str(info.value)


def test_var_file_errors(tmp_path: Path) -> None:
    job_path = write(tmp_path, TYPED_JOB)
    undeclared = write(tmp_path, 'image = "x"\nnope = 1\n', "u.hcl")
    with pytest.raises(JobSpecError, match="undefined variable") as info:
        load_job(job_path, var_files=[undeclared], env={})
    assert "u.hcl" in str(info.value)
    block = write(tmp_path, 'variable "image" {}\n', "v.hcl")
    with pytest.raises(JobSpecError, match="block is not allowed"):
        load_job(job_path, var_files=[block], env={})
    syntax = write(tmp_path, "invalid{hcl", "s.hcl")
    with pytest.raises(JobSpecError, match="syntax"):
        load_job(job_path, var_files=[syntax], env={})
    function = write(tmp_path, 'image = upper("x")\n', "f.hcl")
    with pytest.raises(JobSpecError, match="literal"):
        load_job(job_path, var_files=[function], env={})


def test_types_convert_as_hcl_does(tmp_path: Path) -> None:
    top = """
variable "obj" {
  type = object({ name = string, port = number, tags = optional(list(string)) })
}
variable "pair" {
  type = tuple([string, number])
}
variable "set" {
  type = set(string)
}
variable "anything" {
  type = any
}
"""
    text = job_file(
        top=top, task="meta = { o = jsonencode([var.obj, var.pair, var.set, var.anything]) }"
    )
    values = {
        "obj": '{ name = "a", port = "80", extra = 1 }',
        "pair": '[1, "2"]',
        "set": '["b", "a", "b"]',
    }
    job = parse_job(text, "hcl", variables={**values, "anything": '"x"'})
    encoded = job.task_groups[0].tasks[0].meta["o"]
    assert json.loads(encoded) == [
        {"name": "a", "port": 80, "tags": None},
        ["1", 2],
        ["a", "b"],
        "x",
    ]
    with pytest.raises(JobSpecError, match="port"):
        parse_job(
            text, "hcl", variables={**values, "obj": '{ name = "a", port = "x" }', "anything": 1}
        )
    with pytest.raises(JobSpecError, match="required"):
        parse_job(text, "hcl", variables={**values, "obj": '{ name = "a" }', "anything": 1})


def test_validation_blocks(tmp_path: Path) -> None:
    top = """
variable "port" {
  type = number
  validation {
    condition     = var.port > 1024 && var.port < 65536
    error_message = "The port must be above 1024."
  }
}
"""
    text = job_file(top=top, task="meta = { port = var.port }")
    assert parse_job(text, "hcl", variables=["port=8080"]).task_groups[0].tasks[0].meta == {
        "port": "8080"
    }
    with pytest.raises(JobSpecError, match="The port must be above 1024") as info:
        parse_job(text, "hcl", variables=["port=80"])
    assert info.value.path == "variable[port]"
    assert "-var" in info.value.message
    bad_message = top.replace("The port must be above 1024.", "port too low")
    with pytest.raises(JobSpecError, match="sentence"):
        parse_job(job_file(top=bad_message), "hcl", variables=["port=8080"])
    other_ref = top.replace("var.port > 1024 &&", "var.other > 1 &&")
    with pytest.raises(JobSpecError, match="only refer to the variable itself"):
        parse_job(job_file(top=other_ref), "hcl", variables=["port=8080"])


def test_locals_in_any_order_and_cycles() -> None:
    top = """
locals {
  full = "${local.base}-${var.suffix}"
}
variable "suffix" {
  default = "x"
}
locals {
  base  = upper(local.root)
  root  = "app"
  ports = [for i in range(3) : 8000 + i]
}
"""
    job = parse_job(
        job_file(top=top, job='meta = { name = local.full, ports = join(",", local.ports) }'), "hcl"
    )
    assert job.meta == {"name": "APP-x", "ports": "8000,8001,8002"}
    cycle = "locals {\n a = local.b\n b = local.c\n c = local.a\n}\n"
    with pytest.raises(JobSpecError, match="cycle") as info:
        parse_job(job_file(top=cycle), "hcl")
    assert info.value.path.startswith("locals.")
    duplicate = "locals {\n a = 1\n}\nlocals {\n a = 2\n}\n"
    with pytest.raises(JobSpecError, match="duplicate"):
        parse_job(job_file(top=duplicate), "hcl")
    with pytest.raises(JobSpecError, match="nope") as info:
        parse_job(job_file(top="locals {\n a = local.nope\n}\n"), "hcl")
    assert info.value.path.startswith("locals.a")


def test_unknown_function_names_function_and_field() -> None:
    with pytest.raises(JobSpecError) as info:
        parse_job(job_file(group="count = frobnicate(2)"), "hcl")
    assert info.value.path == "job.group[web].count"
    assert "frobnicate" in info.value.message


def test_job_level_task_becomes_a_group_of_that_name() -> None:
    text = """
job "solo" {
  type = "batch"
  task "only" {
    driver = "raw_exec"
    config { command = "/bin/true" }
  }
}
"""
    job = parse_job(text, "hcl")
    assert [g.name for g in job.task_groups] == ["only"]
    assert [t.name for t in job.task_groups[0].tasks] == ["only"]
    assert job.task_groups[0].count == 1


def test_typed_fields_take_strings_and_memory_max_may_be_unlimited() -> None:
    text = job_file(
        group='count = "2"',
        task='leader = "true"\nresources {\n cpu = "500"\n memory = 256\n memory_max = -1\n}',
    )
    job = parse_job(text, "hcl")
    task = job.task_groups[0].tasks[0]
    assert job.task_groups[0].count == 2
    assert task.leader is True
    assert (task.resources.cpu, task.resources.memory_mb, task.resources.memory_max_mb) == (
        500,
        256,
        -1,
    )
    with pytest.raises(JobSpecError) as info:
        parse_job(job_file(task='resources {\n cpu = "lots"\n}'), "hcl")
    assert info.value.path == "job.group[web].task[api].resources.cpu"


def test_dynamic_blocks_expand() -> None:
    text = """
variable "tasks" {
  default = { a = "/bin/true", b = "/bin/false" }
}
job "dyn" {
  group "g" {
    dynamic "task" {
      for_each = var.tasks
      iterator = t
      labels   = [t.key]
      content {
        driver = "raw_exec"
        config { command = t.value }
      }
    }
  }
}
"""
    job = parse_job(text, "hcl")
    tasks = job.task_groups[0].tasks
    assert [(t.name, t.config["command"]) for t in tasks] == [
        ("a", "/bin/true"),
        ("b", "/bin/false"),
    ]


def test_client_references_stay_for_the_client() -> None:
    text = job_file(
        task='env {\n DIR = "${NOMAD_TASK_DIR}/x"\n HOST = "${attr.unique.hostname}"\n'
        " DC = node.datacenter\n}"
    )
    env = parse_job(text, "hcl").task_groups[0].tasks[0].env
    assert env == {
        "DIR": "${NOMAD_TASK_DIR}/x",
        "HOST": "${attr.unique.hostname}",
        "DC": "${node.datacenter}",
    }


def test_file_functions_read_next_to_the_job_file(tmp_path: Path) -> None:
    (tmp_path / "cmd.txt").write_text("/bin/echo\n")
    path = write(tmp_path, job_file(task='meta = { cmd = chomp(file("cmd.txt")) }'))
    assert load_job(path).task_groups[0].tasks[0].meta == {"cmd": "/bin/echo"}
    with pytest.raises(JobSpecError, match="filesystem function disabled"):
        parse_job(path.read_text(), "hcl")
    job = parse_job(path.read_text(), "hcl", base_dir=tmp_path)
    assert job.task_groups[0].tasks[0].meta == {"cmd": "/bin/echo"}


def test_warnings_are_readable_and_start_with_the_field_path(tmp_path: Path) -> None:
    top = 'variable "token" {\n  type = string\n  sensitive = true\n  default = "s"\n}\n'
    path = write(tmp_path, job_file(top=top))
    job, warnings = load_job_with_warnings(path)
    assert job == load_job(path)
    assert warnings and all(w.startswith("variable[token].sensitive: ") for w in warnings)
    _, warnings = parse_job_with_warnings(job_file(), "hcl")
    assert warnings == []


def test_json_jobs_ignore_variables(tmp_path: Path) -> None:
    text = json.dumps(
        {"ID": "j", "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "raw_exec"}]}]}
    )
    job, warnings = parse_job_with_warnings(text, "json", variables={"x": "1"})
    assert job.id == "j" and warnings == []


def test_var_content_sits_between_var_files_and_cli_values(tmp_path: Path) -> None:
    var_file = write(tmp_path, 'image = "file"\ncount = 2\n', "v.hcl")
    content = 'image = "content"\ncount = 3\n'
    job = parse_job(TYPED_JOB, "hcl", var_files=[var_file], var_content=content)
    assert job.task_groups[0].count == 3
    assert job.task_groups[0].tasks[0].env["IMAGE"] == "content"
    job = parse_job(TYPED_JOB, "hcl", var_content=content, variables=["count=4"])
    assert job.task_groups[0].count == 4
    with pytest.raises(JobSpecError, match="undefined variable"):
        parse_job(TYPED_JOB, "hcl", var_content='image = "x"\nother = 1\n')
