"""The blocks the runtime acts on, read from HCL and API JSON: constraint, network and
port, template, artifact, resources cores, max_run_duration; Nomad's defaults and
field-path errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocrunner.errors import JobSpecError
from allocrunner.jobspec import decode_job, parse_job
from allocrunner.jobspec.codec_blocks import CONSTRAINT, NETWORK_RESOURCE, TASK_ARTIFACT, TEMPLATE
from allocrunner.structs.job import Constraint, NetworkResource, Port, TaskArtifact, Template
from tests.unit.jobspec import strategies as s

T = "job.group[web].task[api]"


def hcl_job(
    *,
    job: str = "",
    group: str = "",
    task: str = "",
    config: str = 'config { command = "/bin/true" }',
) -> str:
    return f"""
job "shop" {{
  {job}
  group "web" {{
    {group}
    task "api" {{
      driver = "raw_exec"
      {config}
      {task}
    }}
  }}
}}
"""


def parse(**bodies: str) -> Any:
    return parse_job(hcl_job(**bodies), "hcl", runtime_check=False)


def api_job(**task: Any) -> dict[str, Any]:
    return {
        "ID": "j",
        "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "raw_exec", **task}]}],
    }


# --- round trips ---------------------------------------------------------------------


@given(s.constraints)
def test_constraint_round_trip(value: Constraint) -> None:
    assert CONSTRAINT.decode(CONSTRAINT.encode(value), "C") == value


@given(s.templates)
def test_template_round_trip(value: Template) -> None:
    assert TEMPLATE.decode(TEMPLATE.encode(value), "T") == value


@given(s.artifacts)
def test_artifact_round_trip(value: TaskArtifact) -> None:
    assert TASK_ARTIFACT.decode(TASK_ARTIFACT.encode(value), "A") == value


@given(s.networks)
def test_network_round_trip(value: NetworkResource) -> None:
    assert NETWORK_RESOURCE.decode(NETWORK_RESOURCE.encode(value), "N") == value


@given(s.task_groups)
def test_group_round_trip_keeps_networks_and_max_run_duration(group: Any) -> None:
    job = decode_job({"ID": "j", "TaskGroups": [encode_job_group(group)]})
    assert job.task_groups[0] == group


def encode_job_group(group: Any) -> dict[str, Any]:
    from allocrunner.jobspec.codec import TASK_GROUP

    return TASK_GROUP.encode(group)


def test_json_uses_nomads_field_names() -> None:
    template = Template(embedded_tmpl="x", dest_path="local/x", change_mode="signal")
    doc = TEMPLATE.encode(template)
    assert set(doc) >= {
        "SourcePath",
        "DestPath",
        "EmbeddedTmpl",
        "ChangeMode",
        "ChangeSignal",
        "Splay",
        "Perms",
        "LeftDelim",
        "RightDelim",
        "Envvars",
        "ErrMissingKey",
    }
    assert doc["Splay"] == 5_000_000_000
    artifact = TASK_ARTIFACT.encode(TaskArtifact("https://x/y"))
    assert set(artifact) == {
        "GetterSource",
        "GetterOptions",
        "GetterHeaders",
        "GetterMode",
        "RelativeDest",
    }
    network = NETWORK_RESOURCE.encode(NetworkResource(reserved_ports=[Port("http", 80)]))
    assert network["ReservedPorts"] == [
        {"Label": "http", "Value": 80, "To": 0, "HostNetwork": "default"}
    ]
    assert network["DynamicPorts"] == []


def test_json_defaults_are_nomads() -> None:
    job = decode_job(
        api_job(
            Templates=[{"EmbeddedTmpl": "x", "DestPath": "local/x"}],
            Artifacts=[{"GetterSource": "https://e.com/bin/tool", "GetterMode": "file"}],
            Constraints=[{"LTarget": "${attr.kernel.name}", "RTarget": "linux"}],
            Resources={"Cores": 2, "MemoryMaxMB": 512},
        )
    )
    task = job.task_groups[0].tasks[0]
    (template,) = task.templates
    assert (template.change_mode, template.perms, template.splay) == ("restart", "0644", 5.0)
    assert (template.left_delim, template.right_delim) == ("{{", "}}")
    assert task.artifacts[0].relative_dest == "local/tool"
    assert task.constraints == (Constraint("${attr.kernel.name}", "linux", "="),)
    assert (task.resources.cores, task.resources.memory_max_mb) == (2, 512)


def test_signal_mode_gets_sighup_and_upper_cases() -> None:
    template = TEMPLATE.decode({"EmbeddedTmpl": "x", "DestPath": "a", "ChangeMode": "signal"}, "T")
    assert template.change_signal == "SIGHUP"
    lower = {"EmbeddedTmpl": "x", "DestPath": "a", "ChangeMode": "signal", "ChangeSignal": "usr1"}
    assert TEMPLATE.decode(lower, "T").change_signal == "USR1"


@pytest.mark.parametrize(
    ("template", "path", "message"),
    [
        ({"DestPath": "local/x"}, "T", "source path or embedded"),
        ({"EmbeddedTmpl": "x"}, "T.DestPath", "needs a destination"),
        ({"EmbeddedTmpl": "x", "DestPath": "../../etc/x"}, "T.DestPath", "escapes"),
        ({"EmbeddedTmpl": "x", "DestPath": "a", "ChangeMode": "bounce"}, "T.ChangeMode", "one"),
        ({"EmbeddedTmpl": "x", "DestPath": "a", "ChangeMode": "script"}, "T.ChangeMode", "script"),
        (
            {"EmbeddedTmpl": "x", "DestPath": "a", "ChangeMode": "signal", "Envvars": True},
            "T.ChangeMode",
            "env var",
        ),
        ({"EmbeddedTmpl": "x", "DestPath": "a", "Perms": "0999"}, "T.Perms", "octal"),
        ({"EmbeddedTmpl": "x", "DestPath": "a", "Perms": "17777"}, "T.Perms", "octal"),
        ({"EmbeddedTmpl": "x", "DestPath": "a", "Splay": -1}, "T.Splay", "negative"),
    ],
)
def test_bad_templates_name_the_field(template: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(JobSpecError, match=message) as info:
        TEMPLATE.decode(template, "T")
    assert info.value.path == path


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"GetterSource": ""}, "A.GetterSource"),
        ({"GetterSource": "x", "GetterMode": "tree"}, "A.GetterMode"),
        ({"GetterSource": "x", "RelativeDest": "../../up"}, "A.RelativeDest"),
        ({"GetterSource": "x", "GetterOptions": {"a": 1}}, "A.GetterOptions[a]"),
    ],
)
def test_bad_artifacts_name_the_field(doc: dict[str, Any], path: str) -> None:
    with pytest.raises(JobSpecError) as info:
        TASK_ARTIFACT.decode(doc, "A")
    assert info.value.path == path


def test_bad_constraints_and_ports_name_the_field() -> None:
    with pytest.raises(JobSpecError) as info:
        decode_job(api_job(Constraints=[{"LTarget": "a", "Operand": "~"}]))
    assert info.value.path == "Job.TaskGroups[0].Tasks[0].Constraints[0].Operand"
    group = {
        "Name": "g",
        "Networks": [{"DynamicPorts": [{"Label": "a"}, {"Label": "a"}]}],
        "Tasks": [{"Name": "t", "Driver": "raw_exec"}],
    }
    with pytest.raises(JobSpecError, match="port label 'a'") as info:
        decode_job({"ID": "j", "TaskGroups": [group]})
    assert info.value.path == "Job.TaskGroups[0].Networks[0]"
    group["Networks"] = [{"ReservedPorts": [{"Label": "a", "Value": 70000}]}]
    with pytest.raises(JobSpecError) as info:
        decode_job({"ID": "j", "TaskGroups": [group]})
    assert info.value.path == "Job.TaskGroups[0].Networks[0].ReservedPorts[0].Value"


# --- HCL ------------------------------------------------------------------------------


def test_hcl_template_block() -> None:
    job = parse(
        task="""template {
          data = "port={{ env \\"NOMAD_PORT_http\\" }}"
          destination = "local/app.env"
          env = true
          change_mode = "noop"
          splay = "1s"
          perms = "600"
          left_delimiter = "[["
          right_delimiter = "]]"
          error_on_missing_key = true
        }"""
    )
    (template,) = job.task_groups[0].tasks[0].templates
    assert template == Template(
        embedded_tmpl='port={{ env "NOMAD_PORT_http" }}',
        dest_path="local/app.env",
        envvars=True,
        change_mode="noop",
        splay=1.0,
        perms="600",
        left_delim="[[",
        right_delim="]]",
        err_missing_key=True,
    )


def test_hcl_artifact_block() -> None:
    job = parse(
        task="""artifact {
          source = "https://example.com/tool"
          mode = "file"
          options { checksum = "sha256:abcd" }
          headers { X-Token = "t" }
        }"""
    )
    (artifact,) = job.task_groups[0].tasks[0].artifacts
    assert artifact == TaskArtifact(
        "https://example.com/tool",
        getter_options={"checksum": "sha256:abcd"},
        getter_headers={"X-Token": "t"},
        getter_mode="file",
        relative_dest="local/tool",
    )


A, V, M = "${attr.a}", "${attr.v}", "${meta.s}"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f'attribute = "{A}"\nvalue = "linux"', Constraint(A, "linux")),
        (f'attribute = "{A}"\noperator = ">="\nvalue = 3', Constraint(A, "3", ">=")),
        (f'attribute = "{V}"\nversion = ">= 1.2"', Constraint(V, ">= 1.2", "version")),
        (f'attribute = "{V}"\nsemver = "^1"', Constraint(V, "^1", "semver")),
        (f'attribute = "{V}"\nregexp = "^a"', Constraint(V, "^a", "regexp")),
        (f'attribute = "{M}"\nset_contains = "a,b"', Constraint(M, "a,b", "set_contains")),
        ("distinct_hosts = true", Constraint("", "true", "distinct_hosts")),
        ('distinct_property = "${meta.rack}"', Constraint("${meta.rack}", "", "distinct_property")),
    ],
)
def test_hcl_constraint_shortcuts_read_as_jobspec2(body: str, expected: Constraint) -> None:
    job = parse(job=f"constraint {{\n{body}\n}}", group=f"constraint {{\n{body}\n}}")
    assert job.constraints == (expected,)
    assert job.task_groups[0].constraints == (expected,)


def test_hcl_constraints_at_every_level_keep_their_order() -> None:
    job = parse(
        task='constraint {\nattribute = "a"\nvalue = "1"\n}\nconstraint {\nattribute = "b"\n}'
    )
    assert [c.ltarget for c in job.task_groups[0].tasks[0].constraints] == ["a", "b"]


def test_hcl_bad_constraint_names_the_block() -> None:
    with pytest.raises(JobSpecError) as info:
        parse(task='constraint {\nattribute = "a"\noperator = "~"\n}')
    assert info.value.path == f"{T}.constraint[0].operator"
    with pytest.raises(JobSpecError) as info:
        parse(task='constraint {\nattribute = "a"\nis_set = "x"\n}')
    assert info.value.path == f"{T}.constraint[0].is_set"
    with pytest.raises(JobSpecError) as info:
        parse(task="constraint {\nweight = 3\n}")
    assert info.value.path == f"{T}.constraint[0].weight"


def test_hcl_network_ports_split_into_static_and_dynamic() -> None:
    job = parse(
        group="""network {
          mode = "host"
          port "http" { static = 8080 }
          port "db" { to = 5432 }
          port "admin" {
            host_network = "default"
          }
        }"""
    )
    (network,) = job.task_groups[0].networks
    assert network.reserved_ports == (Port("http", 8080),)
    assert network.dynamic_ports == (Port("db", to=5432), Port("admin"))


def test_hcl_duplicate_port_labels_are_refused() -> None:
    with pytest.raises(JobSpecError, match="duplicate port"):
        parse(group='network {\nport "a" {}\nport "a" {}\n}')


def test_hcl_cores_memory_max_and_max_run_duration() -> None:
    resources = "resources {\ncores = 2\nmemory_max = 512\n}"
    job = parse(group='max_run_duration = "90m"', task=resources)
    group = job.task_groups[0]
    assert group.max_run_duration == 5400.0
    asked = group.tasks[0].resources
    assert (asked.cores, asked.memory_max_mb, asked.cpu) == (2, 512, 0)
    assert parse().task_groups[0].tasks[0].resources.cpu == 100


def test_hcl_template_errors_name_the_hcl_block() -> None:
    with pytest.raises(JobSpecError) as info:
        parse(task='template {\ndata = "x"\ndestination = "local/x"\nsplay = "soon"\n}')
    assert info.value.path == f"{T}.template[0].splay"
    with pytest.raises(JobSpecError, match="needs a destination") as info:
        parse(task='template {\ndata = "x"\n}')
    assert info.value.path == f"{T}.template[0].destination"
    with pytest.raises(JobSpecError, match="escapes") as info:
        parse(task='template {\ndata = "x"\ndestination = "../../x"\n}')
    assert info.value.path == f"{T}.template[0].destination"
    with pytest.raises(JobSpecError, match="source path or embedded") as info:
        parse(task='template {\ndestination = "local/x"\n}')
    assert info.value.path == f"{T}.template[0]"


def test_logs_disabled_and_raw_exec_settings_are_kept() -> None:
    job = parse(
        task="logs { disabled = true }",
        config="""config {
          command = "/bin/true"
          oom_score_adj = 500
          cgroup_v2_override = "custom.slice/app.scope"
          cgroup_v1_override = { "pids" = "/sys/fs/cgroup/pids/app" }
        }""",
    )
    task = job.task_groups[0].tasks[0]
    assert task.logs.disabled is True
    assert task.config["oom_score_adj"] == 500
    assert task.config["cgroup_v2_override"] == "custom.slice/app.scope"


@given(st.sampled_from(("noop", "restart", "signal")))
def test_every_change_mode_reads_from_hcl(mode: str) -> None:
    body = f'template {{\ndata = "x"\ndestination = "local/x"\nchange_mode = "{mode}"\n}}'
    (template,) = parse(task=body).task_groups[0].tasks[0].templates
    assert template.change_mode == mode
    assert template.change_signal == ("SIGHUP" if mode == "signal" else "")


def test_hcl_port_errors_name_the_port_block() -> None:
    with pytest.raises(JobSpecError) as info:
        parse(group='network {\nport "http" {\nstatic = 70000\n}\n}')
    assert info.value.path == "job.group[web].network[0].port[http].static"
    with pytest.raises(JobSpecError, match="used twice") as info:
        parse(group='network {\nport "a" {}\n}\nnetwork {\nport "a" {}\n}')
    assert info.value.path == "job.group[web].network[1]"
