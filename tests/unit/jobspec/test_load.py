"""Job files: HCL and JSON loading, Nomad's defaults, the examples, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocrunner.errors import JobSpecError
from allocrunner.jobspec import (
    canonicalize_api_job,
    canonicalize_job,
    decode_job,
    encode_job,
    hcl_to_api,
    load_job,
    parse_job,
    parse_job_with_warnings,
)
from allocrunner.jobspec.hcl import _Converter
from allocrunner.structs import (
    BATCH_RESTART_POLICY,
    SERVICE_RESTART_POLICY,
    EphemeralDisk,
    Job,
    Lifecycle,
    LogConfig,
    MigrateStrategy,
    Resources,
    RestartPolicy,
    Task,
    TaskGroup,
    UpdateStrategy,
)
from tests.unit.jobspec import strategies as s

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
DATA = Path(__file__).parent / "data"


def job_hcl(
    *,
    job_body: str = "",
    group_body: str = "",
    task_body: str = "",
    driver: str | None = '"raw_exec"',
    config: str = 'config { command = "/bin/true" }',
) -> str:
    driver_line = f"driver = {driver}" if driver is not None else ""
    return f"""
job "shop" {{
  {job_body}
  group "web" {{
    {group_body}
    task "api" {{
      {driver_line}
      {config}
      {task_body}
    }}
  }}
}}
"""


def hcl(text: str) -> Job:
    return parse_job(text, "hcl", source="test.nomad.hcl")


# --- the examples ---------------------------------------------------------------------


def test_examples_load() -> None:
    batch = load_job(EXAMPLES / "batch.nomad.hcl")
    assert batch.id == batch.name == "hello-batch"
    assert batch.type == "batch"
    assert batch.meta == {"owner": "examples"}
    (greet,) = batch.task_groups
    hello = greet.task("hello")
    assert hello is not None
    assert hello.driver == "raw_exec"
    assert hello.config["command"] == "/bin/sh"
    assert hello.config["args"] == ("-c", "echo hi from $NOMAD_TASK_NAME in $NOMAD_ALLOC_ID")
    assert hello.kill_timeout == 2.0
    assert hello.resources == Resources(cpu=100, memory_mb=64)
    assert hello.logs == LogConfig(max_files=2, max_file_size_mb=1)
    assert greet.restart_policy == RestartPolicy(attempts=1, interval=86400.0, delay=1.0)

    lifecycle = load_job(EXAMPLES / "lifecycle.nomad.hcl")
    (app,) = lifecycle.task_groups
    hooks = {t.name: t.lifecycle for t in app.tasks}
    assert hooks == {
        "setup": Lifecycle(hook="prestart"),
        "proxy": Lifecycle(hook="prestart", sidecar=True),
        "main": None,
        "announce": Lifecycle(hook="poststart"),
        "cleanup": Lifecycle(hook="poststop"),
    }
    assert [t.name for t in app.tasks if t.leader] == ["main"]

    service = load_job(EXAMPLES / "service.json")
    assert service.type == "service"
    (web,) = service.task_groups
    assert web.ephemeral_disk == EphemeralDisk(size_mb=100, sticky=True, migrate=True)
    assert web.update == UpdateStrategy()
    cache = web.task("cache")
    assert cache is not None
    assert cache.restart_policy == RestartPolicy(attempts=0, interval=60.0, delay=1.0, mode="delay")

    for path in EXAMPLES.iterdir():
        job = load_job(path)
        drivers = {t.driver for g in job.task_groups for t in g.tasks}
        assert drivers <= {"raw_exec", "mock_driver"}, path.name


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (EXAMPLES / "batch.nomad.hcl", DATA / "batch.json"),
        (EXAMPLES / "service.json", DATA / "service.nomad.hcl"),
    ],
    ids=["batch", "service"],
)
def test_hcl_and_json_equivalents_give_equal_jobs(one: Path, other: Path) -> None:
    assert load_job(one) == load_job(other)


def test_json_with_and_without_the_job_wrapper(tmp_path: Path) -> None:
    doc = json.loads((DATA / "batch.json").read_text())
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"Job": doc}))
    assert load_job(wrapped) == load_job(DATA / "batch.json")


@pytest.mark.parametrize("name", ["job.hcl", "job.nomad", "job.nomad.hcl", "JOB.NOMAD.HCL"])
def test_hcl_extensions(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(job_hcl())
    assert load_job(path).id == "shop"
    assert load_job(str(path)).id == "shop"


# --- Nomad's defaults -----------------------------------------------------------------


def test_defaults_of_a_minimal_batch_job() -> None:
    job = hcl(job_hcl(job_body='type = "batch"'))
    assert (job.id, job.name, job.namespace, job.region) == ("shop", "shop", "default", "global")
    assert job.priority == 50
    assert job.update is None
    (group,) = job.task_groups
    assert group.count == 1
    assert group.restart_policy == BATCH_RESTART_POLICY == RestartPolicy(3, 86400.0, 15.0, "fail")
    assert group.ephemeral_disk == EphemeralDisk(size_mb=300, sticky=False, migrate=False)
    assert group.update is None and group.migrate is None
    (task,) = group.tasks
    assert task.restart_policy == BATCH_RESTART_POLICY
    assert task.kill_timeout == 5.0
    assert task.logs == LogConfig(max_files=10, max_file_size_mb=10, disabled=False)
    assert task.resources == Resources(cpu=100, memory_mb=300)
    assert task.lifecycle is None and not task.leader


def test_defaults_by_job_type() -> None:
    service = hcl(job_hcl())
    assert service.type == "service"
    (group,) = service.task_groups
    assert group.restart_policy == SERVICE_RESTART_POLICY == RestartPolicy(2, 1800.0, 15.0, "fail")
    assert group.tasks[0].restart_policy == SERVICE_RESTART_POLICY
    assert service.update == group.update == UpdateStrategy()
    assert group.migrate == MigrateStrategy()

    system = hcl(job_hcl(job_body='type = "system"')).task_groups[0]
    assert system.restart_policy == SERVICE_RESTART_POLICY
    assert system.update == UpdateStrategy() and system.migrate is None

    sysbatch = hcl(job_hcl(job_body='type = "sysbatch"')).task_groups[0]
    assert sysbatch.restart_policy == BATCH_RESTART_POLICY
    assert sysbatch.update is None and sysbatch.migrate is None


def test_partial_restart_blocks_merge_over_the_defaults() -> None:
    text = """
job "j" {
  type = "batch"
  group "g" {
    restart { attempts = 7 }
    task "own" {
      driver = "mock_driver"
      restart { delay = "1s" }
    }
    task "inherits" { driver = "mock_driver" }
  }
  group "plain" {
    task "t" {
      driver = "mock_driver"
      restart { mode = "delay" }
    }
  }
}
"""
    job = hcl(text)
    g, plain = job.task_groups
    assert g.restart_policy == RestartPolicy(attempts=7, interval=86400.0, delay=15.0)
    assert g.tasks[0].restart_policy == RestartPolicy(attempts=7, interval=86400.0, delay=1.0)
    assert g.tasks[1].restart_policy == g.restart_policy
    assert plain.restart_policy == BATCH_RESTART_POLICY
    assert plain.tasks[0].restart_policy == attrs.evolve(BATCH_RESTART_POLICY, mode="delay")
    # The same job in API JSON merges the same way.
    assert parse_job(json.dumps(hcl_to_api(text)), "json") == job


def test_update_and_migrate_flow_from_job_to_groups() -> None:
    text = """
job "j" {
  update { min_healthy_time = "5s" }
  migrate { max_parallel = 3 }
  group "a" {
    update { max_parallel = 2 }
    migrate { healthy_deadline = "1m" }
    task "t" { driver = "mock_driver" }
  }
  group "b" {
    task "t" { driver = "mock_driver" }
  }
}
"""
    job = hcl(text)
    assert job.update == UpdateStrategy(min_healthy_time=5.0)
    a, b = job.task_groups
    assert a.update == UpdateStrategy(min_healthy_time=5.0, max_parallel=2)
    assert b.update == UpdateStrategy(min_healthy_time=5.0)
    assert a.migrate == MigrateStrategy(max_parallel=3, healthy_deadline=60.0)
    assert b.migrate == MigrateStrategy(max_parallel=3)


def test_nomad_job_output_with_nulls_gets_defaults() -> None:
    job = load_job(DATA / "nomad-example-short.json", drivers={"docker"}, runtime_check=False)
    assert job.type == "service"
    (group,) = job.task_groups
    assert group.count == 1
    assert group.restart_policy == SERVICE_RESTART_POLICY
    assert group.tasks[0].restart_policy == SERVICE_RESTART_POLICY
    assert group.update == UpdateStrategy()


def test_canonicalize_job_fills_a_job_built_in_code() -> None:
    job = Job(
        id="j",
        name="",
        namespace="",
        region="",
        type="batch",
        task_groups=[
            TaskGroup(
                "g",
                tasks=[
                    Task(name="a", driver="mock_driver"),
                    Task(name="b", driver="mock_driver", restart_policy=RestartPolicy(0)),
                ],
            )
        ],
    )
    done = canonicalize_job(job)
    assert (done.name, done.namespace, done.region) == ("j", "default", "global")
    (group,) = done.task_groups
    assert group.restart_policy == BATCH_RESTART_POLICY
    assert group.tasks[0].restart_policy == BATCH_RESTART_POLICY
    assert group.tasks[1].restart_policy == RestartPolicy(0)
    assert canonicalize_job(done) == done


@settings(max_examples=40, deadline=None)
@given(s.jobs)
def test_canonicalize_is_idempotent_and_keeps_what_is_set(job: Job) -> None:
    once = canonicalize_job(job)
    assert canonicalize_job(once) == once
    for before, after in zip(job.task_groups, once.task_groups, strict=True):
        assert after.restart_policy is not None
        if before.restart_policy is not None:
            assert after.restart_policy == before.restart_policy
        for t_before, t_after in zip(before.tasks, after.tasks, strict=True):
            assert t_after.restart_policy == (t_before.restart_policy or after.restart_policy)
    # Already canonical API JSON stays as it is.
    assert decode_job(canonicalize_api_job(encode_job(once))) == once


def test_canonicalize_api_job_leaves_its_input_alone() -> None:
    doc = hcl_to_api(job_hcl(group_body="restart { attempts = 1 }"))
    before = json.dumps(doc, sort_keys=True)
    canonicalize_api_job(doc)
    assert json.dumps(doc, sort_keys=True) == before


# --- HCL syntax ------------------------------------------------------------------------


def test_hcl_strings_escapes_heredocs_and_interpolation() -> None:
    text = r"""
# a comment
job "strings" {
  // another comment
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = [
          "-c", "echo \"quoted\"\tand ${NOMAD_TASK_DIR}/x", "$${NOMAD_LITERAL}", "caf\u00e9",
        ]
        script  = <<EOT
line one
  line "two"
EOT
        mount {
          source = "a"
        }
        mount {
          source = "b"
        }
        flags = { "a.b" = 1, nested = { deep = [true, null, 2.5] } }
      }
      env = {
        "DOTTED.NAME" = "x"
        PORT          = 8080
        DEBUG         = true
        RATIO         = 0.5
      }
      meta {
        owner = "me"
      }
    }
  }
}
"""
    (task,) = hcl(text).task_groups[0].tasks
    assert task.config["args"] == (
        "-c",
        'echo "quoted"\tand ${NOMAD_TASK_DIR}/x',
        "${NOMAD_LITERAL}",
        "café",
    )
    assert task.config["script"].startswith('line one\n  line "two"')
    assert task.config["mount"] == ({"source": "a"}, {"source": "b"})
    assert task.config["flags"] == {"a.b": 1, "nested": {"deep": (True, None, 2.5)}}
    assert task.env == {"DOTTED.NAME": "x", "PORT": "8080", "DEBUG": "true", "RATIO": "0.5"}
    assert task.meta == {"owner": "me"}


def test_nomad_blocks_a_local_runner_does_not_use_are_ignored_with_a_warning() -> None:
    text = job_hcl(
        job_body='all_at_once = false\nconstraint { attribute = "${attr.kernel.name}" }',
        group_body='network { port "http" {} }\nservice { name = "web" }',
        task_body='service { name = "api" }\nartifact { source = "x" }\n'
        'template {\n data = "y"\n destination = "local/y"\n }',
    )
    job, warnings = parse_job_with_warnings(text, "hcl", runtime_check=False)
    assert job.task_groups[0].tasks[0].driver == "raw_exec"
    assert [w.split(":")[0] for w in warnings] == [
        "job.all_at_once",
        "job.group[web].service",
        "job.group[web].task[api].service",
    ]
    assert len(job.constraints) == 1  # checked by the agent's placement, so no warning


def test_logs_enabled_false_disables_logs() -> None:
    job = hcl(job_hcl(task_body="logs { enabled = false }"))
    assert job.task_groups[0].tasks[0].logs.disabled is True
    both = hcl(job_hcl(task_body="logs {\n enabled = false\n disabled = false\n }"))
    assert both.task_groups[0].tasks[0].logs.disabled is False  # the current spelling wins


def test_python_hcl2_7_output_converts_the_same() -> None:
    """python-hcl2 7 returns plain strings and no block markers."""
    v7 = {
        "job": [
            {
                "shop": {
                    "type": "batch",
                    "meta": [{"owner": "me"}],
                    "group": [
                        {
                            "web": {
                                "restart": [{"attempts": 1, "delay": "2s"}],
                                "task": [
                                    {
                                        "api": {
                                            "driver": "raw_exec",
                                            "config": [{"command": "/bin/true"}],
                                            "env": {"A": "1"},
                                            "kill_timeout": "3s",
                                        }
                                    }
                                ],
                            }
                        }
                    ],
                }
            }
        ]
    }
    converted = _Converter(strict_blocks=False).job(v7)
    expected = hcl_to_api(
        job_hcl(
            job_body='type = "batch"\nmeta { owner = "me" }',
            group_body='restart {\nattempts = 1\ndelay = "2s"\n}',
            task_body='env = { A = "1" }\nkill_timeout = "3s"',
        )
    )
    assert converted == expected


# --- bad HCL: the error names the field ---------------------------------------------

T = "job.group[web].task[api]"
HCL_CASES: list[tuple[str, str, str]] = [
    ("kill-timeout-unit", job_hcl(task_body='kill_timeout = "10x"'), f"{T}.kill_timeout"),
    ("kill-timeout-number", job_hcl(task_body="kill_timeout = 10"), f"{T}.kill_timeout"),
    (
        "kill-timeout-overflow",
        job_hcl(task_body='kill_timeout = "9999999999h"'),
        f"{T}.kill_timeout",
    ),
    ("count-negative", job_hcl(group_body="count = -1"), "job.group[web].count"),
    ("count-string", job_hcl(group_body='count = "two"'), "job.group[web].count"),
    ("count-fraction", job_hcl(group_body="count = 1.5"), "job.group[web].count"),
    ("type-unknown", job_hcl(job_body='type = "daemon"'), "job.type"),
    ("priority-bool", job_hcl(job_body="priority = true"), "job.priority"),
    ("datacenters-string", job_hcl(job_body='datacenters = "dc1"'), "job.datacenters"),
    ("datacenter-number", job_hcl(job_body='datacenters = ["dc1", 2]'), "job.datacenters[1]"),
    (
        "restart-mode",
        job_hcl(group_body='restart { mode = "sometimes" }'),
        "job.group[web].restart.mode",
    ),
    (
        "restart-twice",
        job_hcl(group_body="restart { attempts = 1 }\nrestart { attempts = 2 }"),
        "job.group[web].restart",
    ),
    ("restart-as-map", job_hcl(group_body="restart = { attempts = 1 }"), "job.group[web].restart"),
    (
        "restart-interval",
        job_hcl(task_body='restart { interval = "forever" }'),
        f"{T}.restart.interval",
    ),
    (
        "expression",
        job_hcl(group_body="restart { attempts = var.n }"),
        "job.group[web].restart.attempts",
    ),
    (
        "shutdown-delay-negative",
        job_hcl(group_body='shutdown_delay = "-5s"'),
        "job.group[web].shutdown_delay",
    ),
    (
        "ephemeral-disk-sticky",
        job_hcl(group_body='ephemeral_disk { sticky = "yes" }'),
        "job.group[web].ephemeral_disk.sticky",
    ),
    (
        "update-max-parallel",
        job_hcl(job_body='update { max_parallel = "all" }'),
        "job.update.max_parallel",
    ),
    (
        "migrate-health-check",
        job_hcl(group_body='migrate { health_check = "vibes" }'),
        "job.group[web].migrate.health_check",
    ),
    ("driver-missing", job_hcl(driver=None), f"{T}.driver"),
    ("driver-number", job_hcl(driver="3"), f"{T}.driver"),
    ("driver-empty", job_hcl(driver='""'), f"{T}.driver"),
    ("unknown-setting", job_hcl(task_body='colour = "blue"'), f"{T}.colour"),
    ("lifecycle-no-hook", job_hcl(task_body="lifecycle { sidecar = true }"), f"{T}.lifecycle.hook"),
    (
        "lifecycle-bad-hook",
        job_hcl(task_body='lifecycle { hook = "midstart" }'),
        f"{T}.lifecycle.hook",
    ),
    ("leader-string", job_hcl(task_body='leader = "yes"'), f"{T}.leader"),
    ("env-list", job_hcl(task_body="env { A = [1] }"), f"{T}.env[A]"),
    ("meta-object", job_hcl(task_body="meta { owner = { a = 1 } }"), f"{T}.meta[owner]"),
    ("memory-fraction", job_hcl(task_body="resources { memory = 1.5 }"), f"{T}.resources.memory"),
    ("logs-negative", job_hcl(task_body="logs { max_files = -1 }"), f"{T}.logs.max_files"),
    ("logs-enabled-string", job_hcl(task_body='logs { enabled = "no" }'), f"{T}.logs.enabled"),
    ("config-string", job_hcl(config='config = "x"'), f"{T}.config"),
    ("config-expression", job_hcl(config="config { n = nosuch(1) }"), f"{T}.config[n]"),
    (
        "group-no-label",
        'job "x" {\n group {\n task "t" { driver = "d" }\n }\n}',
        "job.group",
    ),
    (
        "group-duplicate",
        'job "x" {\n group "web" {\n task "t" { driver = "d" }\n }\n'
        ' group "web" {\n task "t" { driver = "d" }\n }\n}',
        "job.group[web]",
    ),
    (
        "task-duplicate",
        'job "x" {\n group "web" {\n task "t" { driver = "d" }\n task "t" { driver = "d" }\n }\n}',
        "job.group[web].task[t]",
    ),
    (
        "two-leaders",
        job_hcl(task_body="leader = true").replace(
            "  }\n}", '  task "b" {\n driver = "d"\n leader = true\n }\n  }\n}'
        ),
        "job.group[web].task",
    ),
    ("no-groups", 'job "x" {\n type = "batch"\n}', "job"),
    ("group-without-tasks", 'job "x" {\n group "web" {\n count = 1\n }\n}', "job.group[web]"),
    ("no-job-label", "job {\n}", "job"),
    ("two-jobs", job_hcl() + job_hcl().replace('"shop"', '"other"'), "job"),
    ("variable-unset", 'variable "n" {\n type = number\n}\n' + job_hcl(), "variable[n]"),
]


@pytest.mark.parametrize(
    ("text", "path"), [c[1:] for c in HCL_CASES], ids=[c[0] for c in HCL_CASES]
)
def test_bad_hcl_names_file_and_field(tmp_path: Path, text: str, path: str) -> None:
    file = tmp_path / "bad.nomad.hcl"
    file.write_text(text)
    with pytest.raises(JobSpecError) as info:
        load_job(file)
    assert info.value.path == path
    assert str(file) in info.value.message


def test_bad_json_file_names_file_and_field(tmp_path: Path) -> None:
    doc = json.loads((DATA / "batch.json").read_text())
    del doc["TaskGroups"][0]["Tasks"][1]["Driver"]
    file = tmp_path / "bad.json"
    file.write_text(json.dumps(doc))
    with pytest.raises(JobSpecError) as info:
        load_job(file)
    assert info.value.path == "Job.TaskGroups[0].Tasks[1].Driver"
    assert str(file) in str(info.value)


def bad_file(tmp_path: Path, name: str, content: bytes | None) -> Path:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("missing.nomad.hcl", None, "no such job file"),
        ("job.yaml", b"job: x", "extension"),
        ("syntax.hcl", b'job "x" {\n  group "g" {\n', "syntax error"),
        ("garbage.hcl", b'job "x" { = = }', "line 1"),
        ("latin1.hcl", b'job "caf\xe9" {}', "UTF-8"),
        ("invalid.json", b'{"ID": "x",', "invalid JSON at line 1"),
        ("nan.json", b'{"ID": "x", "Priority": NaN}', "NaN"),
        ("array.json", b'[{"ID": "x"}]', "expected a JSON object"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_files_name_the_file(
    tmp_path: Path, name: str, content: bytes | None, needle: str
) -> None:
    path = bad_file(tmp_path, name, content)
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert info.value.path == str(path)
    assert needle in info.value.message


def test_a_directory_is_not_a_job_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.nomad.hcl"
    path.mkdir()
    with pytest.raises(JobSpecError) as info:
        load_job(path)
    assert info.value.path == str(path)
    assert "cannot read" in info.value.message


@st.composite
def damaged(draw: st.DrawFn, text: str) -> str:
    """`text` with a few characters deleted, duplicated or replaced."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(chars) - 1))
        action = draw(st.sampled_from(["delete", "insert", "replace"]))
        noise = draw(st.sampled_from([*'{}[]"=,#\\$\n x1.-', "${", "<<EOF\n"]))
        if action == "delete":
            del chars[i]
        elif action == "insert":
            chars.insert(i, noise)
        else:
            chars[i] = noise
    return "".join(chars)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged((EXAMPLES / "batch.nomad.hcl").read_text()))
def test_fuzz_damaged_hcl_raises_only_jobspec_errors(text: str) -> None:
    try:
        parse_job(text, "hcl")
    except JobSpecError as err:
        assert err.message


@settings(max_examples=60, deadline=None)
@given(damaged((DATA / "batch.json").read_text()))
def test_fuzz_damaged_json_raises_only_jobspec_errors(text: str) -> None:
    try:
        parse_job(text, "json")
    except JobSpecError as err:
        assert err.message


def test_parse_job_rejects_unknown_formats() -> None:
    with pytest.raises(ValueError, match="yaml"):
        parse_job("", "yaml")
