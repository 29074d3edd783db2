"""The API JSON codec: exact round trips, Nomad's key names and time/duration encodings,
and real documents from Nomad's repository and HTTP API documentation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings

from allocrunner.jobspec import (
    decode_alloc_state,
    decode_allocation,
    decode_job,
    decode_task_event,
    decode_task_state,
    encode_alloc_state,
    encode_allocation,
    encode_job,
    encode_task_event,
    encode_task_state,
)
from allocrunner.structs import (
    Allocation,
    AllocDeploymentStatus,
    AllocState,
    Job,
    Lifecycle,
    RestartPolicy,
    Task,
    TaskEvent,
    TaskGroup,
    TaskState,
)
from tests.unit.jobspec import strategies as s

DATA = Path(__file__).parent / "data"
ROUND_TRIP = settings(max_examples=80, deadline=None)


def via_json(obj: object) -> object:
    """What a peer gets after the document crossed the wire."""
    return json.loads(json.dumps(obj))


def load_data(name: str) -> object:
    return json.loads((DATA / name).read_text())


# --- exact round trips ----------------------------------------------------------------


@ROUND_TRIP
@given(s.jobs)
def test_job_round_trip(job: Job) -> None:
    assert decode_job(encode_job(job)) == job
    assert decode_job(via_json(encode_job(job))) == job


@ROUND_TRIP
@given(s.allocations)
def test_allocation_round_trip(alloc: Allocation) -> None:
    assert decode_allocation(encode_allocation(alloc)) == alloc
    assert decode_allocation(via_json(encode_allocation(alloc))) == alloc


@ROUND_TRIP
@given(s.alloc_states)
def test_alloc_state_round_trip(state: AllocState) -> None:
    assert decode_alloc_state(via_json(encode_alloc_state(state))) == state


@ROUND_TRIP
@given(s.task_states)
def test_task_state_round_trip(state: TaskState) -> None:
    assert decode_task_state(via_json(encode_task_state(state))) == state


@ROUND_TRIP
@given(s.task_events)
def test_task_event_round_trip(event: TaskEvent) -> None:
    assert decode_task_event(via_json(encode_task_event(event))) == event


def test_decoded_values_are_deeply_frozen() -> None:
    job = decode_job(
        {
            "ID": "j",
            "TaskGroups": [
                {
                    "Name": "g",
                    "Tasks": [
                        {"Name": "t", "Driver": "raw_exec", "Config": {"args": ["a", {"b": [1]}]}}
                    ],
                }
            ],
        }
    )
    config = job.task_groups[0].tasks[0].config
    assert config["args"] == ("a", {"b": (1,)})
    hash(job)  # every part is immutable, so the whole job hashes
    with pytest.raises(TypeError):
        config["args"][1]["b"] = 2  # type: ignore[index]


# --- Nomad's names and encodings ------------------------------------------------------


def sample_job() -> Job:
    task = Task(
        name="api",
        driver="raw_exec",
        config={"command": "/bin/sh", "args": ["-c", "echo hi"]},
        env={"A": "1"},
        leader=True,
        lifecycle=Lifecycle(hook="prestart", sidecar=True),
        kill_timeout=10.0,
        kill_signal="SIGINT",
        restart_policy=RestartPolicy(attempts=1, interval=60.0, delay=0.25, mode="delay"),
    )
    return Job(id="web", type="batch", task_groups=[TaskGroup(name="g", tasks=[task])])


def test_encode_job_uses_nomads_keys_and_nanoseconds() -> None:
    doc = encode_job(sample_job())
    assert doc["ID"] == "web"
    assert doc["Type"] == "batch"
    assert doc["Datacenters"] == ["*"]  # Nomad 1.6's default: every datacenter
    group = doc["TaskGroups"][0]
    assert set(group) >= {"Name", "Count", "RestartPolicy", "EphemeralDisk", "Update", "Tasks"}
    assert group["EphemeralDisk"] == {"SizeMB": 300, "Sticky": False, "Migrate": False}
    task = group["Tasks"][0]
    assert task["Driver"] == "raw_exec"
    assert task["Config"] == {"command": "/bin/sh", "args": ["-c", "echo hi"]}
    assert task["Lifecycle"] == {"Hook": "prestart", "Sidecar": True}
    assert task["KillTimeout"] == 10_000_000_000
    assert task["KillSignal"] == "SIGINT"
    assert task["RestartPolicy"] == {
        "Attempts": 1,
        "Interval": 60_000_000_000,
        "Delay": 250_000_000,
        "Mode": "delay",
        "RenderTemplates": False,
    }
    assert task["Resources"] == {"CPU": 100, "MemoryMB": 300, "MemoryMaxMB": 0, "DiskMB": 0}
    assert task["LogConfig"] == {"MaxFiles": 10, "MaxFileSizeMB": 10, "Disabled": False}
    json.dumps(doc)  # plain JSON data


def test_task_state_times_are_rfc3339_with_go_zero_time_for_unset() -> None:
    started = datetime(2017, 7, 25, 23, 36, 26, 106431, tzinfo=UTC)
    doc = encode_task_state(TaskState(state="running", started_at=started))
    assert doc["StartedAt"] == "2017-07-25T23:36:26.106431Z"
    assert doc["FinishedAt"] == "0001-01-01T00:00:00Z"
    assert doc["LastRestart"] == "0001-01-01T00:00:00Z"
    whole = encode_task_state(TaskState(started_at=datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)))
    assert whole["StartedAt"] == "2020-01-02T03:04:05Z"
    # Go writes up to 9 fractional digits; Python keeps microseconds.
    state = decode_task_state(
        {"State": "dead", "StartedAt": "2017-07-25T23:36:26.106431265Z", "FinishedAt": None}
    )
    assert state.started_at == started
    assert state.finished_at is None
    # An offset is converted to UTC.
    offset = decode_task_state({"StartedAt": "2021-11-04T10:14:22.054814+01:00"})
    assert offset.started_at == datetime(2021, 11, 4, 9, 14, 22, 54814, tzinfo=UTC)
    assert offset.started_at.tzinfo is UTC


def test_task_event_time_is_unix_nanoseconds() -> None:
    when = datetime(2021, 11, 4, 9, 14, 9, 803624, tzinfo=UTC)
    event = TaskEvent(
        type="Terminated", time=when, exit_code=-1, signal=9, details={"exit_code": "-1"}
    )
    doc = encode_task_event(event)
    assert doc == {
        "Type": "Terminated",
        "Time": 1636017249803624000,
        "Message": "",
        "DisplayMessage": "",
        "ExitCode": -1,
        "Signal": 9,
        "FailsTask": False,
        "Details": {"exit_code": "-1"},
    }
    assert decode_task_event({"Type": "Started", "Time": 1636017249803624999}).time == when
    assert decode_task_event({"Type": "Started", "Time": 0}).time is None
    assert decode_task_event({"Type": "Started", "Time": None}).time is None
    assert encode_task_event(attrs.evolve(event, time=None))["Time"] == 0


def test_alloc_state_has_exactly_the_client_fields() -> None:
    state = AllocState(
        client_status="running",
        client_description="Tasks are running",
        deployment_status=AllocDeploymentStatus(healthy=True, canary=True, modify_index=3),
        task_states={"web": TaskState(state="running")},
    )
    doc = encode_alloc_state(state)
    assert set(doc) == {"ClientStatus", "ClientDescription", "DeploymentStatus", "TaskStates"}
    assert doc["DeploymentStatus"] == {
        "Healthy": True,
        "Timestamp": "0001-01-01T00:00:00Z",
        "Canary": True,
        "ModifyIndex": 3,
    }
    assert doc["TaskStates"]["web"]["State"] == "running"


def test_encode_allocation_carries_server_and_client_fields() -> None:
    alloc = Allocation(
        id="a1",
        name="web.g[0]",
        job=sample_job(),
        task_group="g",
        desired_status="stop",
        previous_allocation="a0",
        alloc_modify_index=7,
        client_status="complete",
        task_states={"api": TaskState(state="dead")},
    )
    doc = encode_allocation(alloc)
    assert doc["ID"] == "a1"
    assert doc["Job"]["TaskGroups"][0]["Tasks"][0]["Driver"] == "raw_exec"
    assert doc["DesiredStatus"] == "stop"
    assert doc["DesiredTransition"] == {
        "Migrate": None,
        "Reschedule": None,
        "ForceReschedule": None,
        "NoShutdownDelay": None,
    }
    assert doc["PreviousAllocation"] == "a0"
    assert doc["AllocModifyIndex"] == 7
    assert doc["ClientStatus"] == "complete"
    assert doc["TaskStates"]["api"]["State"] == "dead"
    assert doc["DeploymentStatus"] is None


def test_null_and_absent_mean_the_default() -> None:
    minimal = {"ID": "j", "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "d"}]}]}
    nulls = {
        "ID": "j",
        "Name": None,
        "Type": None,
        "Priority": None,
        "Meta": None,
        "Update": None,
        "Datacenters": None,
        "TaskGroups": [
            {
                "Name": "g",
                "Count": None,
                "EphemeralDisk": None,
                "RestartPolicy": None,
                "Tasks": [
                    {
                        "Name": "t",
                        "Driver": "d",
                        "Config": None,
                        "Env": None,
                        "Lifecycle": None,
                        "KillTimeout": None,
                        "Resources": {"CPU": None, "MemoryMB": None},
                        "LogConfig": None,
                    }
                ],
            }
        ],
    }
    assert decode_job(nulls) == decode_job(minimal)
    default = Job(id="j", task_groups=[TaskGroup("g", tasks=[Task(name="t", driver="d")])])
    assert decode_job(minimal) == default


def test_unknown_keys_are_ignored_and_the_job_wrapper_accepted() -> None:
    doc = encode_job(sample_job())
    noisy = {**doc, "Affinities": [{"LTarget": "x"}], "Periodic": None, "Whatever": 1}
    assert decode_job(noisy) == sample_job()
    assert decode_job({"Job": doc}) == sample_job()


# --- Nomad's own documents -----------------------------------------------------------


def test_nomad_job_with_many_nulls_decodes() -> None:
    """`nomad job run -output` of Nomad's example job (command/testdata/example-short.json)."""
    job = decode_job(load_data("nomad-example-short.json"))
    assert job.id == "example"
    assert job.type == "service"
    assert job.namespace == "default"
    assert job.region == "global"
    (group,) = job.task_groups
    assert group.name == "cache"
    assert group.count == 1
    assert group.restart_policy is None
    (task,) = group.tasks
    assert task.driver == "docker"
    assert task.config == {"auth_soft_fail": True, "image": "redis:7", "ports": ("db",)}
    assert task.resources.cpu == 500
    assert task.resources.memory_mb == 256
    assert task.kill_timeout == 5.0
    assert task.lifecycle is None
    assert decode_job(encode_job(job)) == job


def test_nomad_api_read_allocation_sample_decodes() -> None:
    alloc = decode_allocation(load_data("nomad-api-allocation.json"))
    assert alloc.id == "a8198d79-cfdb-6593-a999-1e9adabcba2e"
    assert alloc.name == "example.cache[0]"
    assert alloc.index() == 0
    assert alloc.next_allocation == "cd13d9b9-4f97-7184-c88b-7b451981616b"
    assert alloc.desired_status == "run"
    assert alloc.client_status == "running"
    assert (alloc.create_index, alloc.modify_index, alloc.alloc_modify_index) == (54, 57, 54)
    assert alloc.create_time == 1495747371794276400
    group = alloc.group()
    assert group is not None and group.name == "cache"
    assert group.restart_policy == RestartPolicy(
        attempts=10, interval=300.0, delay=25.0, mode="delay"
    )
    assert alloc.job is not None and alloc.job.update is not None
    assert alloc.job.update.max_parallel == 0
    redis = alloc.task_states["redis"]
    assert redis.state == "running"
    assert redis.finished_at is None and redis.last_restart is None
    assert redis.started_at == datetime(2017, 7, 25, 23, 36, 26, 106431, tzinfo=UTC)
    assert [e.type for e in redis.events] == ["Received", "Driver", "Started"]
    assert redis.events[0].time == datetime(2017, 5, 25, 21, 22, 51, 795703, tzinfo=UTC)
    assert decode_allocation(encode_allocation(alloc)) == alloc


def test_nomad_api_allocation_list_sample_decodes() -> None:
    (stub,) = load_data("nomad-api-allocations-list.json")
    alloc = decode_allocation(stub)
    assert alloc.job is None
    assert alloc.deployment_status == AllocDeploymentStatus(
        healthy=True,
        timestamp=datetime(2021, 11, 4, 9, 14, 22, 54814, tzinfo=UTC),
        canary=False,
        modify_index=15,
    )
    assert alloc.desired_transition.migrate is None
    redis = alloc.task_states["redis"]
    assert redis.finished_at is None
    assert redis.started_at == datetime(2021, 11, 4, 9, 14, 12, 49960, tzinfo=UTC)
    assert redis.events[1].details == {"message": "Building Task Directory"}
    assert redis.events[1].display_message == "Building Task Directory"
    assert decode_allocation(encode_allocation(alloc)) == alloc
