"""The task environment, ${...} interpolation, the phase runner's error policies and the
built-in hooks on their own."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir
from allocrunner.errors import DriverError, HookError, HookErrors
from allocrunner.structs import Job, Resources, TaskEvent, TaskGroup
from allocrunner.structs.job import TaskArtifact, Template
from allocrunner.structs.task_state import EVENT_FAILED_VALIDATION, EVENT_SETUP
from allocrunner.taskrunner import (
    COLLECT_ALL,
    STOP_AT_FIRST,
    EnvHook,
    HookEventError,
    HookRequest,
    LogsHook,
    TaskDirHook,
    ValidateHook,
    default_hooks,
    interpolate,
    interpolate_config,
    nomad_env,
    run_phase,
    task_env,
)
from allocrunner.taskrunner.artifact_hook import ArtifactHook
from allocrunner.taskrunner.dispatch_hook import DispatchPayloadHook
from allocrunner.taskrunner.hooks import DONE, DONE_REDOABLE
from allocrunner.testing import mock_task
from tests.unit.taskrunner.conftest import alloc_of

ENV = {"NOMAD_TASK_NAME": "web", "HOME": "/home/agent", "NOMAD_META_owner": "ops"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${NOMAD_TASK_NAME}", "web"),
        ("run-${NOMAD_TASK_NAME}-x", "run-web-x"),
        ("${env.HOME}/bin", "/home/agent/bin"),
        ('${env["HOME"]}', "/home/agent"),
        ("${env['HOME']}", "/home/agent"),
        ("${meta.owner}", "ops"),
        ("${ NOMAD_TASK_NAME }", "web"),
        ("${NOMAD_UNKNOWN}", "${NOMAD_UNKNOWN}"),
        ("${env.NOPE}", "${env.NOPE}"),
        ("$NOMAD_TASK_NAME", "$NOMAD_TASK_NAME"),
        ("${}", "${}"),
        ("${NOMAD_TASK_NAME}${NOMAD_TASK_NAME}", "webweb"),
        ("no references", "no references"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_interpolate(text: str, expected: str) -> None:
    assert interpolate(text, ENV) == expected


def test_interpolate_config_walks_maps_and_lists_and_leaves_the_rest() -> None:
    config = {
        "command": "${NOMAD_TASK_NAME}",
        "args": ["-n", "${meta.owner}", 3, True],
        "nested": {"${NOMAD_TASK_NAME}": "${env.HOME}"},
        "count": 2,
    }
    assert interpolate_config(config, ENV) == {
        "command": "web",
        "args": ["-n", "ops", 3, True],
        "nested": {"${NOMAD_TASK_NAME}": "/home/agent"},
        "count": 2,
    }


def test_nomad_env_holds_every_variable() -> None:
    task = mock_task(meta={"Owner": "task"}, resources=Resources(cpu=250, memory_mb=64))
    alloc = alloc_of(task)
    group = attrs.evolve(alloc.job.task_groups[0], meta={"tier": "group", "Owner": "group"})
    job = attrs.evolve(alloc.job, task_groups=(group,), meta={"team": "job"}, region="eu")
    alloc = attrs.evolve(alloc, job=job, name="mock-job.web[4]")
    env = nomad_env(
        alloc,
        task,
        alloc_dir="/a/alloc",
        local_dir="/a/web/local",
        secrets_dir="/s",
        datacenter="dc9",
    )
    assert env["NOMAD_ALLOC_DIR"] == "/a/alloc"
    assert env["NOMAD_TASK_DIR"] == "/a/web/local"
    assert env["NOMAD_SECRETS_DIR"] == "/s"
    assert env["NOMAD_ALLOC_ID"] == alloc.id
    assert env["NOMAD_SHORT_ALLOC_ID"] == alloc.id[:8]
    assert env["NOMAD_ALLOC_NAME"] == "mock-job.web[4]"
    assert env["NOMAD_ALLOC_INDEX"] == "4"
    assert env["NOMAD_TASK_NAME"] == "web"
    assert env["NOMAD_GROUP_NAME"] == "web"
    assert env["NOMAD_JOB_ID"] == "mock-job"
    assert env["NOMAD_JOB_NAME"] == "mock-job"
    assert env["NOMAD_NAMESPACE"] == "default"
    assert env["NOMAD_REGION"] == "eu"
    assert env["NOMAD_DC"] == "dc9"
    assert env["NOMAD_CPU_LIMIT"] == "250"
    assert env["NOMAD_MEMORY_LIMIT"] == "64"
    # meta: job < group < task, as given and upper-cased
    assert env["NOMAD_META_team"] == env["NOMAD_META_TEAM"] == "job"
    assert env["NOMAD_META_tier"] == env["NOMAD_META_TIER"] == "group"
    assert env["NOMAD_META_Owner"] == env["NOMAD_META_OWNER"] == "task"


def test_task_env_interpolates_in_order() -> None:
    task = mock_task(env={"A": "${NOMAD_TASK_NAME}", "B": "${A}-b", "C": "${UNKNOWN}"})
    assert task_env(task, {"NOMAD_TASK_NAME": "web"}) == {
        "A": "web",
        "B": "web-b",
        "C": "${UNKNOWN}",
    }


def test_task_env_rejects_non_strings() -> None:
    task = mock_task(env={"A": 1})
    with pytest.raises(ValueError, match=r"env\['A'\]"):
        task_env(task, {})


# --- the phase runner ---------------------------------------------------------------------


class Hook:
    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.error = error
        self.ran = False

    def stop(self, req: object) -> None:
        self.ran = True
        if self.error is not None:
            raise self.error


def call(hook, method) -> None:
    method(None)


def test_stop_at_first_raises_the_first_failure_chained() -> None:
    cause = DriverError("boom", recoverable=True)
    hooks = [Hook("a"), Hook("b", cause), Hook("c")]
    with pytest.raises(HookError) as info:
        run_phase(hooks, "stop", call, policy=STOP_AT_FIRST)
    assert str(info.value) == 'stop hook "b" failed: boom'
    assert info.value.__cause__ is cause
    assert info.value.recoverable
    assert [h.ran for h in hooks] == [True, True, False]


def test_collect_all_runs_every_hook_and_reports_every_failure() -> None:
    hooks = [Hook("a", ValueError("one")), Hook("b"), Hook("c", RuntimeError("two"))]
    with pytest.raises(HookErrors) as info:
        run_phase(hooks, "stop", call, policy=COLLECT_ALL)
    assert all(h.ran for h in hooks)
    errors = info.value.exceptions
    assert [str(e) for e in errors] == ['stop hook "a" failed: one', 'stop hook "c" failed: two']
    assert isinstance(errors[0].__cause__, ValueError)
    assert not errors[0].recoverable


def test_hooks_without_the_phase_are_skipped_and_unknown_phases_refused() -> None:
    run_phase([object.__new__(object)], "exited", call, policy=COLLECT_ALL)
    with pytest.raises(ValueError, match="prerun"):
        run_phase([], "prerun", call, policy=COLLECT_ALL)


# --- built-in hooks --------------------------------------------------------------------


def request(tmp_path: Path, task=None, **fields) -> tuple[HookRequest, list[TaskEvent]]:
    task = task or mock_task()
    alloc = alloc_of(task)
    alloc_dir = AllocDir(tmp_path, alloc.id)
    alloc_dir.build()
    events: list[TaskEvent] = []
    req = HookRequest(
        alloc=alloc,
        task=task,
        alloc_dir=alloc_dir,
        task_dir=alloc_dir.new_task_dir(task.name),
        cancel=CancelToken(),
        emit_event=events.append,
        **fields,
    )
    return req, events


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({}, ["validate", "task_dir", "logs", "env"]),
        (
            {"dispatch_payload": "input.json"},
            ["validate", "task_dir", "logs", "dispatch_payload", "env"],
        ),
        (
            {"artifacts": (TaskArtifact(getter_source="file:///etc/hostname"),)},
            ["validate", "task_dir", "logs", "env", "artifacts"],
        ),
        (
            {"templates": (Template(dest_path="local/x", embedded_tmpl="x"),)},
            ["validate", "task_dir", "logs", "env", "template"],
        ),
    ],
    ids=["plain", "dispatch_payload", "artifacts", "templates"],
)
def test_a_task_gets_only_the_hooks_that_can_act_for_it(fields, names) -> None:
    task = attrs.evolve(mock_task("web"), **fields)
    assert [h.name for h in default_hooks(task=task)] == names
    # Without a task, every built-in hook, in Nomad's order.
    assert [h.name for h in default_hooks()] == [
        "validate",
        "task_dir",
        "logs",
        "dispatch_payload",
        "env",
        "artifacts",
        "template",
    ]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"driver": ""}, "driver"),
        ({"kill_timeout": -1.0}, "kill_timeout"),
        ({"shutdown_delay": -1.0}, "shutdown_delay"),
        ({"kill_signal": "SIGBOGUS"}, "kill_signal"),
        ({"env": {"A=B": "x"}}, "env"),
        ({"env": {"A": 5}}, "env['A']"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, dict) else value,
)
def test_validate_hook_names_the_field(tmp_path, fields, named) -> None:
    req, _ = request(tmp_path, mock_task(**fields))
    with pytest.raises(HookEventError) as info:
        ValidateHook().prestart(req)
    assert named in str(info.value)
    assert info.value.event.type == EVENT_FAILED_VALIDATION
    assert not info.value.recoverable


def test_task_dir_hook_builds_and_reports(tmp_path) -> None:
    req, events = request(tmp_path)
    result = TaskDirHook().prestart(req)
    assert result.done
    assert [e.type for e in events] == [EVENT_SETUP]
    for path in (req.task_dir.local_dir, req.task_dir.secrets_dir, req.task_dir.tmp_dir):
        assert path.is_dir()


def test_a_hook_that_did_something_to_keep_is_not_redoable(tmp_path) -> None:
    """The built-in done hooks are redoable (their record may wait for the task's next
    write) only where a second run repeats nothing: building the task dir again finds it
    built, and with no payload or artifact there is nothing to write or fetch. A written
    payload or a fetched artifact is recorded at once, as Nomad records it."""
    req, _ = request(tmp_path)
    assert TaskDirHook().prestart(req) is DONE_REDOABLE
    assert DispatchPayloadHook().prestart(req) is DONE_REDOABLE
    assert ArtifactHook().prestart(req) is DONE_REDOABLE

    job = attrs.evolve(req.alloc.job, payload=b"payload")
    with_payload = attrs.evolve(
        req,
        alloc=attrs.evolve(req.alloc, job=job),
        task=attrs.evolve(req.task, dispatch_payload="in.txt"),
    )
    assert DispatchPayloadHook().prestart(with_payload) is DONE
    assert (req.task_dir.local_dir / "in.txt").read_bytes() == b"payload"

    source = tmp_path / "settings.txt"
    source.write_text("x")
    artifact = TaskArtifact(str(source), relative_dest="local/conf")
    fetching = attrs.evolve(req, task=attrs.evolve(req.task, artifacts=(artifact,)))
    assert ArtifactHook(allow_local=True).prestart(fetching) is DONE
    assert (req.task_dir.local_dir / "conf" / "settings.txt").read_text() == "x"


def test_logs_hook_checks_rotation_and_makes_the_dir(tmp_path) -> None:
    req, _ = request(tmp_path)
    req.task_dir.logs_dir.rmdir()
    LogsHook().prestart(req)
    assert req.task_dir.logs_dir.is_dir()
    bad, _ = request(tmp_path / "b", mock_task(logs=attrs.evolve(mock_task().logs, max_files=0)))
    with pytest.raises(HookEventError, match=r"logs\.max_files"):
        LogsHook().prestart(bad)


def test_env_hook_builds_nomad_and_task_env(tmp_path) -> None:
    task = mock_task(env={"GREETING": "hi ${NOMAD_TASK_NAME} from ${env.SHELL_HOST}"})
    req, _ = request(tmp_path, task, env={"SHELL_HOST": "agent"}, datacenter="dc2")
    result = EnvHook().prestart(req)
    assert not result.done
    assert result.env["GREETING"] == "hi web from agent"
    assert result.env["NOMAD_TASK_DIR"] == str(req.task_dir.local_dir)
    assert result.env["NOMAD_DC"] == "dc2"
    assert "SHELL_HOST" not in result.env  # the agent's env is added by the runner


def test_job_without_the_task_is_refused_at_construction(tmp_path, harness) -> None:
    alloc = alloc_of(mock_task())
    job = Job(id="j", task_groups=(TaskGroup(name="web", tasks=()),))
    with pytest.raises(KeyError, match="no task 'web'"):
        harness.runner(attrs.evolve(alloc, job=job), "web", start=False)
