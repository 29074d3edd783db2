"""Nothing dropped without a word: every valid Nomad block this node does not act on
gives exactly one warning naming its path; a block that would change what a task sees
or does, and cannot be honoured, is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocrunner import load_job_with_warnings, parse_job_with_warnings
from allocrunner.errors import JobSpecError
from allocrunner.jobspec import format_warnings, json_warnings
from allocrunner.jobspec.runnable import ANY_DRIVER, getter_of
from tests.unit.jobspec.test_errors import fuzz_docs

G = "job.group[web]"
T = "job.group[web].task[api]"


def hcl_job(*, job: str = "", group: str = "", task: str = "", driver: str = "raw_exec") -> str:
    return f"""
job "shop" {{
  {job}
  group "web" {{
    {group}
    task "api" {{
      driver = "{driver}"
      config {{ command = "/bin/true" }}
      {task}
    }}
  }}
}}
"""


def warnings_of(**bodies: str) -> list[str]:
    """The warnings of a job file with these blocks, the job model alone checked (the
    runtime checks, such as the driver's settings, are left out)."""
    return parse_job_with_warnings(hcl_job(**bodies), "hcl", runtime_check=False)[1]


UNHONOURED_CASES = [
    ("task", 'service {\nname = "api"\n}', f"{T}.service", "Consul"),
    ("group", 'service {\nname = "web"\n}', f"{G}.service", "Consul"),
    ("task", 'consul {\nnamespace = "x"\n}', f"{T}.consul", "Consul"),
    ("group", 'consul {\nnamespace = "x"\n}', f"{G}.consul", "Consul"),
    ("job", 'vault {\npolicies = ["p"]\n}', "job.vault", "Vault"),
    ("task", 'vault {\npolicies = ["p"]\n}', f"{T}.vault", "Vault"),
    ("task", "identity {\nenv = true\n}", f"{T}.identity", "identit"),
    ("group", 'volume "data" {\ntype = "csi"\nsource = "d"\n}', f"{G}.volume", "volume"),
    ("task", 'volume_mount {\nvolume = "v"\ndestination = "/d"\n}', f"{T}.volume_mount", "vol"),
    ("task", 'csi_plugin {\nid = "p"\ntype = "node"\n}', f"{T}.csi_plugin", "CSI"),
    ("group", "scaling {\nmin = 1\nmax = 3\n}", f"{G}.scaling", "autoscaler"),
    ("job", "update {\ncanary = 1\n}", "job.update.canary", "deployments"),
    ("group", "update {\nauto_promote = true\n}", f"{G}.update.auto_promote", "deployments"),
    ("group", 'update {\nprogress_deadline = "5m"\n}', f"{G}.update.progress_deadline", "deploy"),
    ("job", 'spread {\nattribute = "${node.datacenter}"\n}', "job.spread", "one node"),
    ("group", 'affinity {\nattribute = "${meta.x}"\nvalue = "y"\n}', f"{G}.affinity", "one node"),
    ("task", 'affinity {\nattribute = "${meta.x}"\nvalue = "y"\n}', f"{T}.affinity", "one node"),
    ("group", "reschedule {\nattempts = 3\n}", f"{G}.reschedule", "rescheduled"),
    ("job", "reschedule {\nattempts = 3\n}", "job.reschedule", "rescheduled"),
    ("job", 'multiregion {\nregion "east" {\ncount = 1\n}\n}', "job.multiregion", "region"),
    ("job", "all_at_once = true", "job.all_at_once", "partial"),
    ("job", 'node_pool = "gpu"', "job.node_pool", "pool"),
    ("group", 'max_client_disconnect = "1h"', f"{G}.max_client_disconnect", "disconnect"),
    ("group", 'stop_after_client_disconnect = "1h"', f"{G}.stop_after_client_disconnect", "disc"),
    ("task", 'kind = "connect-proxy:web"', f"{T}.kind", "Connect"),
    ("group", 'network {\nhostname = "h"\n}', f"{G}.network[0].hostname", "host networking"),
    ("task", 'resources {\ndevice "nvidia/gpu" {}\n}', f"{T}.resources.device", "device"),
    (
        "task",
        'template {\ndata = "x"\ndestination = "local/x"\nuid = 1000\n}',
        f"{T}.template[0].uid",
        "user",
    ),
    (
        "task",
        'template {\ndata = "x"\ndestination = "local/x"\nwait {\nmin = "1s"\n}\n}',
        f"{T}.template[0].wait",
        "wait",
    ),
]


@pytest.mark.parametrize(("level", "body", "path", "reason"), UNHONOURED_CASES)
def test_each_unhonoured_block_gives_one_warning_naming_it(
    level: str, body: str, path: str, reason: str
) -> None:
    (warning,) = warnings_of(**{level: body})
    assert warning.startswith(f"{path}: not honoured on this node (")
    assert warning.endswith("; ignored")
    assert reason in warning


def test_a_service_with_checks_warns_for_the_checks_too() -> None:
    body = 'service {\nname = "api"\ncheck {\ntype = "http"\npath = "/"\n}\n}'
    assert [w.split(": ")[0] for w in warnings_of(task=body)] == [
        f"{T}.service",
        f"{T}.service.check",
    ]


def test_honoured_blocks_give_no_warning() -> None:
    """Constraints, ports, max_run_duration, templates, artifacts and disabled logs
    are all acted on here, so none of them is warned about."""
    assert (
        warnings_of(
            job='constraint {\nattribute = "${attr.kernel.name}"\nvalue = "linux"\n}',
            group="restart {\nattempts = 1\n}\nmigrate {\nmax_parallel = 1\n}\n"
            'update {\nhealth_check = "task_states"\nmax_parallel = 2\n}\n'
            'network {\nport "http" {}\n}\nmax_run_duration = "1h"',
            task='template {\ndata = "x"\ndestination = "local/x"\n}\n'
            'artifact {\nsource = "https://example.com/a"\n}\n'
            "resources {\ncores = 1\nmemory_max = 600\n}\nlogs {\ndisabled = true\n}",
        )
        == []
    )


def test_warnings_come_from_job_files_too(tmp_path: Path) -> None:
    path = tmp_path / "job.nomad.hcl"
    path.write_text(hcl_job(task='vault {\npolicies = ["p"]\n}'))
    job, warnings = load_job_with_warnings(path)
    assert job.id == "shop"
    assert warnings == [f"{T}.vault: not honoured on this node (no Vault); ignored"]


# --- API JSON ------------------------------------------------------------------------


def api_job(**group: object) -> dict[str, object]:
    task = {"Name": "t", "Driver": "raw_exec", "Config": {"command": "/bin/true"}}
    return {"ID": "j", "TaskGroups": [{"Name": "g", "Tasks": [task], **group}]}


def test_json_jobs_warn_with_json_paths(tmp_path: Path) -> None:
    doc = api_job(
        Services=[{"Name": "web", "Checks": [{"Type": "http"}]}],
        Update={"Canary": 2},
        Affinities=[{"LTarget": "a"}],
    )
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"Job": doc}))
    _, warnings = load_job_with_warnings(path)
    assert [w.split(": ")[0] for w in warnings] == [
        "Job.TaskGroups[0].Affinities",
        "Job.TaskGroups[0].Services",
        "Job.TaskGroups[0].Services.Checks",
        "Job.TaskGroups[0].Update.Canary",
    ]


def test_nomads_canonical_json_is_quiet() -> None:
    """`nomad job run -output` holds defaults for things the file never asked for."""
    data = Path(__file__).parent / "data" / "nomad-example-short.json"
    assert json_warnings(json.loads(data.read_text())) == []
    canonical = api_job(
        ReschedulePolicy={
            "Attempts": 0,
            "Interval": 0,
            "Delay": 30_000_000_000,
            "DelayFunction": "exponential",
            "MaxDelay": 3_600_000_000_000,
            "Unlimited": True,
        },
        Update={"Canary": 0, "AutoRevert": False, "ProgressDeadline": 600_000_000_000},
        Services=None,
        Affinities=[],
    )
    assert json_warnings(canonical) == []


def test_warnings_join_as_nomads_multierror() -> None:
    assert format_warnings([]) == ""
    assert format_warnings(["a"]) == "1 warning:\n\n* a"
    assert format_warnings(["a", "b "]) == "2 warnings:\n\n* a\n* b"


# --- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        '{{ key \\"service/web/port\\" }}',
        '{{ with secret \\"kv/data/app\\" }}{{ .Data.data.pw }}{{ end }}',
        '{{ range nomadService \\"db\\" }}{{ .Address }}{{ end }}',
        '{{ range service \\"db\\" }}{{ .Address }}{{ end }}',
    ],
)
def test_a_template_needing_consul_vault_or_nomad_is_refused(data: str) -> None:
    body = f'template {{\ndata = "{data}"\ndestination = "local/x"\n}}'
    with pytest.raises(JobSpecError, match="Consul, Vault or the Nomad API") as info:
        warnings_of(task=body)
    assert info.value.path == f"{T}.template[0].data"


def test_consul_functions_are_found_with_custom_delimiters() -> None:
    body = 'template {\ndata = "[[ key \\"a\\" ]]"\ndestination = "local/x"\n'
    body += 'left_delimiter = "[["\nright_delimiter = "]]"\n}'
    with pytest.raises(JobSpecError, match="key"):
        warnings_of(task=body)


def test_a_template_that_does_not_parse_is_refused() -> None:
    body = 'template {\ndata = "{{ if }}"\ndestination = "local/x"\n}'
    with pytest.raises(JobSpecError, match="does not parse") as info:
        warnings_of(task=body)
    assert info.value.path == f"{T}.template[0].data"


def test_a_plain_template_is_accepted() -> None:
    body = 'template {\ndata = "{{ env \\"NOMAD_TASK_NAME\\" | toUpper }}"\ndestination = "a"\n}'
    assert warnings_of(task=body) == []


def test_an_unknown_driver_is_refused_unless_the_caller_has_it() -> None:
    with pytest.raises(JobSpecError, match="driver 'docker' is not available") as info:
        warnings_of(driver="docker")
    assert info.value.path == f"{T}.driver"
    for drivers in ({"docker"}, ANY_DRIVER):
        job, _ = parse_job_with_warnings(hcl_job(driver="docker"), "hcl", drivers=drivers)
        assert job.task_groups[0].tasks[0].driver == "docker"
    assert warnings_of(driver="mock_driver") == []


def test_json_jobs_are_refused_with_json_paths() -> None:
    doc = api_job()
    doc["TaskGroups"][0]["Tasks"][0]["Driver"] = "java"  # type: ignore[index]
    with pytest.raises(JobSpecError) as info:
        parse_job_with_warnings(json.dumps(doc), "json")
    assert info.value.path == "Job.TaskGroups[0].Tasks[0].Driver"


@pytest.mark.parametrize(
    "source",
    [
        "s3::https://s3.amazonaws.com/bucket/key",
        "bucket.s3.amazonaws.com/key",
        "gcs::https://www.googleapis.com/storage/v1/b/o",
        "hg::http://example.com/repo",
        "ftp://example.com/file",
    ],
)
def test_artifact_getters_other_than_http_git_and_files_are_refused(source: str) -> None:
    body = f'artifact {{\nsource = "{source}"\n}}'
    with pytest.raises(JobSpecError, match="getter") as info:
        warnings_of(task=body)
    assert info.value.path == f"{T}.artifact[0].source"


@pytest.mark.parametrize(
    ("source", "getter"),
    [
        ("https://example.com/a.tgz", "https"),
        ("http://example.com/a", "http"),
        ("/srv/files/a.tgz", "file"),
        ("local/a.tgz", "file"),
        ("file:///srv/a", "file"),
        ("git::https://github.com/org/repo", "git"),
        ("github.com/org/repo", "git"),
        ("git@github.com:org/repo.git", "git"),
    ],
)
def test_http_git_and_local_artifacts_are_accepted(source: str, getter: str) -> None:
    assert getter_of(source) == getter
    assert warnings_of(task=f'artifact {{\nsource = "{source}"\n}}') == []


def test_a_network_mode_other_than_host_is_refused() -> None:
    with pytest.raises(JobSpecError, match="bridge") as info:
        warnings_of(group='network {\nmode = "bridge"\n}')
    assert info.value.path == f"{G}.network[0].mode"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ("oom_score_adj = -5", "oom_score_adj"),
        ('oom_score_adj = "high"', "oom_score_adj"),
        ("cgroup_v2_override = 3", "cgroup_v2_override"),
        ('cgroup_v1_override = ["a"]', "cgroup_v1_override"),
    ],
)
def test_raw_exec_settings_are_type_checked(config: str, key: str) -> None:
    text = hcl_job().replace(
        'config { command = "/bin/true" }', f'config {{\ncommand = "/bin/true"\n{config}\n}}'
    )
    with pytest.raises(JobSpecError) as info:
        parse_job_with_warnings(text, "hcl")
    assert info.value.path == f"{T}.config.{key}"


def test_a_template_calling_a_refused_function_is_refused() -> None:
    body = 'template {\ndata = "{{ plugin \\"x\\" }}"\ndestination = "local/x"\n}'
    with pytest.raises(JobSpecError, match="plugin") as info:
        warnings_of(task=body)
    assert info.value.path == f"{T}.template[0].data"


def test_constraint_operators_are_the_ones_placement_evaluates() -> None:
    from allocrunner.jobspec.codec_blocks import CONSTRAINT_OPERANDS
    from allocrunner.placement.constraints import OPERANDS

    assert frozenset(CONSTRAINT_OPERANDS) == OPERANDS


def test_parsed_constraints_are_what_placement_checks() -> None:
    from allocrunner.placement.constraints import check_constraints

    job, _ = parse_job_with_warnings(
        hcl_job(job='constraint {\nattribute = "${attr.kernel.name}"\nvalue = "linux"\n}'), "hcl"
    )
    assert check_constraints(job.constraints, {"attr.kernel.name": "linux"}) is None
    failure = check_constraints(job.constraints, {"attr.kernel.name": "darwin"})
    assert failure is not None and failure.reason == "${attr.kernel.name} = linux"


@settings(max_examples=60, deadline=None)
@given(fuzz_docs)
def test_json_warnings_never_fail_on_any_json(doc: object) -> None:
    for item in json_warnings(doc) + json_warnings({"TaskGroups": [doc, {"Tasks": [doc]}]}):
        assert ": not honoured on this node (" in item


@settings(max_examples=60, deadline=None)
@given(
    dest=st.sampled_from(("local/x", "../alloc/x", "../../x", "", "/local/x", "a/../../..")),
    perms=st.sampled_from(("", "644", "0755", "999", "-1", "7777", "17777")),
    mode=st.sampled_from(("noop", "restart", "signal", "script", "bounce")),
)
def test_template_errors_always_name_the_template_block(dest: str, perms: str, mode: str) -> None:
    lines = ['data = "x"', f'change_mode = "{mode}"']
    lines += [f'destination = "{dest}"'] if dest else []
    lines += [f'perms = "{perms}"'] if perms else []
    body = "template {\n" + "\n".join(lines) + "\n}"
    try:
        (template,) = (
            parse_job_with_warnings(hcl_job(task=body), "hcl")[0].task_groups[0].tasks[0].templates
        )
    except JobSpecError as err:
        assert err.path.startswith(f"{T}.template[0]"), err
    else:
        assert template.change_mode == mode and template.dest_path == dest


# --- what the runtime acts on ---------------------------------------------------------


@pytest.mark.parametrize(
    ("blocks", "check"),
    [
        ({"group": 'network {\nport "http" {}\n}'}, "ports"),
        ({"group": 'network {\nport "db" {\nstatic = 5432\n}\n}'}, "ports"),
        ({"job": 'type = "batch"', "group": 'max_run_duration = "5s"'}, "max_run_duration"),
    ],
)
def test_ports_and_max_run_duration_load_without_a_word(blocks: dict[str, str], check: str) -> None:
    """The agent reserves the ports at placement and the alloc runner enforces the
    deadline, so neither is refused nor warned about any more."""
    job, warnings = parse_job_with_warnings(hcl_job(**blocks), "hcl")
    assert warnings == []
    group = job.task_groups[0]
    if check == "ports":
        assert group.networks and group.networks[0].ports
    else:
        assert group.max_run_duration == 5.0


def test_constraints_at_every_level_load_without_a_warning() -> None:
    """The agent checks them when it places the allocation."""
    constraint = 'constraint {\nattribute = "${attr.kernel.name}"\nvalue = "linux"\n}'
    job, warnings = parse_job_with_warnings(
        hcl_job(job=constraint, group=constraint, task=constraint), "hcl"
    )
    assert warnings == []
    assert len(job.constraints) == 1
    assert len(job.task_groups[0].constraints) == 1
    assert len(job.task_groups[0].tasks[0].constraints) == 1


@pytest.mark.parametrize(
    "extra",
    [
        "logs {\ndisabled = true\n}",
        'config {\ncommand = "/bin/true"\noom_score_adj = 0\n}',
    ],
)
def test_task_settings_the_driver_applies_are_not_warned_about(extra: str) -> None:
    text = hcl_job(task=extra)
    if extra.startswith("config"):
        text = text.replace('config { command = "/bin/true" }', "")
    _, warnings = parse_job_with_warnings(text, "hcl")
    assert warnings == []


def test_a_template_is_accepted_and_its_change_mode_is_not_warned_about() -> None:
    job, warnings = parse_job_with_warnings(
        hcl_job(task='template {\ndata = "x"\ndestination = "local/x"\n}'), "hcl"
    )
    assert job.task_groups[0].tasks[0].templates[0].dest_path == "local/x"
    assert warnings == []
    _, warnings = parse_job_with_warnings(
        hcl_job(task='template {\nsource = "in.tpl"\ndestination = "local/x"\n}'), "hcl"
    )
    assert warnings == []
    _, warnings = parse_job_with_warnings(
        hcl_job(
            task='template {\nsource = "in.tpl"\ndestination = "local/x"\nchange_mode = "noop"\n}'
        ),
        "hcl",
    )
    assert warnings == []
