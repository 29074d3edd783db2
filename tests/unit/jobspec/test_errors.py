"""Malformed API JSON: each bad document raises JobSpecError naming the exact field, and
no input whatsoever makes a decoder raise anything else."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocrunner.errors import JobSpecError
from allocrunner.jobspec import (
    codec,
    decode_alloc_state,
    decode_allocation,
    decode_job,
    decode_task_event,
    decode_task_state,
    encode_allocation,
    encode_job,
)
from allocrunner.structs import Allocation, Job, Task, TaskGroup, TaskState
from tests.unit.jobspec import strategies as s


def valid_job_doc() -> dict[str, Any]:
    tasks = [
        Task(name="api", driver="raw_exec", config={"command": "/bin/true"}),
        Task(name="side", driver="mock_driver"),
    ]
    return encode_job(Job(id="web", task_groups=[TaskGroup(name="g", tasks=tasks)]))


def valid_alloc_doc() -> dict[str, Any]:
    job = decode_job(valid_job_doc())
    alloc = Allocation(
        id="a1", job=job, task_group="g", task_states={"api": TaskState(state="running")}
    )
    doc = encode_allocation(alloc)
    doc["TaskStates"]["api"]["Events"] = [{"Type": "Started", "Time": 1, "Details": {}}]
    return doc


def setter(*path: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return mutate


def deleter(*path: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return mutate


G = ("TaskGroups", 0)
T0 = (*G, "Tasks", 0)
T1 = (*G, "Tasks", 1)

# (id, mutation of a valid job document, the path the error must name)
JOB_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("id-missing", deleter("ID"), "Job.ID"),
    ("id-null", setter("ID", value=None), "Job.ID"),
    ("id-empty", setter("ID", value=""), "Job.ID"),
    ("id-number", setter("ID", value=5), "Job.ID"),
    ("type-unknown", setter("Type", value="daemon"), "Job.Type"),
    ("priority-bool", setter("Priority", value=True), "Job.Priority"),
    ("priority-negative", setter("Priority", value=-1), "Job.Priority"),
    ("datacenters-string", setter("Datacenters", value="dc1"), "Job.Datacenters"),
    ("datacenter-number", setter("Datacenters", value=["dc1", 3]), "Job.Datacenters[1]"),
    ("meta-number", setter("Meta", value={"owner": 1}), "Job.Meta[owner]"),
    ("meta-list", setter("Meta", value=["a"]), "Job.Meta"),
    ("version-negative", setter("Version", value=-3), "Job.Version"),
    ("groups-object", setter("TaskGroups", value={"g": {}}), "Job.TaskGroups"),
    ("group-null", setter("TaskGroups", value=[None]), "Job.TaskGroups[0]"),
    ("group-string", setter("TaskGroups", value=["g"]), "Job.TaskGroups[0]"),
    ("group-name-missing", deleter(*G, "Name"), "Job.TaskGroups[0].Name"),
    ("count-float", setter(*G, "Count", value=1.5), "Job.TaskGroups[0].Count"),
    ("count-integral-float", setter(*G, "Count", value=2.0), "Job.TaskGroups[0].Count"),
    ("count-negative", setter(*G, "Count", value=-1), "Job.TaskGroups[0].Count"),
    (
        "restart-go-duration-string",
        setter(*G, "RestartPolicy", value={"Interval": "30m"}),
        "Job.TaskGroups[0].RestartPolicy.Interval",
    ),
    (
        "restart-negative-delay",
        setter(*G, "RestartPolicy", value={"Delay": -5}),
        "Job.TaskGroups[0].RestartPolicy.Delay",
    ),
    (
        "restart-mode-unknown",
        setter(*G, "RestartPolicy", value={"Mode": "explode"}),
        "Job.TaskGroups[0].RestartPolicy.Mode",
    ),
    (
        "restart-attempts-bool",
        setter(*G, "RestartPolicy", value={"Attempts": False}),
        "Job.TaskGroups[0].RestartPolicy.Attempts",
    ),
    (
        "ephemeral-disk-size-string",
        setter(*G, "EphemeralDisk", value={"SizeMB": "big"}),
        "Job.TaskGroups[0].EphemeralDisk.SizeMB",
    ),
    (
        "update-duration-float",
        setter(*G, "Update", value={"MinHealthyTime": 1.5}),
        "Job.TaskGroups[0].Update.MinHealthyTime",
    ),
    (
        "update-health-check-unknown",
        setter(*G, "Update", value={"HealthCheck": "vibes"}),
        "Job.TaskGroups[0].Update.HealthCheck",
    ),
    ("migrate-string", setter(*G, "Migrate", value="yes"), "Job.TaskGroups[0].Migrate"),
    ("tasks-null-entry", setter(*G, "Tasks", value=[None]), "Job.TaskGroups[0].Tasks[0]"),
    ("task-name-missing", deleter(*T1, "Name"), "Job.TaskGroups[0].Tasks[1].Name"),
    ("task-driver-missing", deleter(*T1, "Driver"), "Job.TaskGroups[0].Tasks[1].Driver"),
    ("task-driver-number", setter(*T1, "Driver", value=7), "Job.TaskGroups[0].Tasks[1].Driver"),
    ("task-driver-empty", setter(*T1, "Driver", value=""), "Job.TaskGroups[0].Tasks[1].Driver"),
    ("config-string", setter(*T0, "Config", value="x"), "Job.TaskGroups[0].Tasks[0].Config"),
    (
        "config-nan",
        setter(*T0, "Config", value={"a": math.nan}),
        "Job.TaskGroups[0].Tasks[0].Config[a]",
    ),
    (
        "config-nested-inf",
        setter(*T0, "Config", value={"a": [1, {"b": math.inf}]}),
        "Job.TaskGroups[0].Tasks[0].Config[a][1][b]",
    ),
    (
        "config-non-string-key",
        setter(*T0, "Config", value={"a": {3: "x"}}),
        "Job.TaskGroups[0].Tasks[0].Config[a]",
    ),
    (
        "config-not-json",
        setter(*T0, "Config", value={"a": {1, 2}}),
        "Job.TaskGroups[0].Tasks[0].Config[a]",
    ),
    ("env-null-value", setter(*T0, "Env", value={"A": None}), "Job.TaskGroups[0].Tasks[0].Env[A]"),
    ("env-number", setter(*T0, "Env", value={"PORT": 80}), "Job.TaskGroups[0].Tasks[0].Env[PORT]"),
    (
        "kill-timeout-nan",
        setter(*T0, "KillTimeout", value=math.nan),
        "Job.TaskGroups[0].Tasks[0].KillTimeout",
    ),
    (
        "kill-timeout-inf",
        setter(*T0, "KillTimeout", value=math.inf),
        "Job.TaskGroups[0].Tasks[0].KillTimeout",
    ),
    (
        "kill-timeout-bool",
        setter(*T0, "KillTimeout", value=True),
        "Job.TaskGroups[0].Tasks[0].KillTimeout",
    ),
    (
        "kill-timeout-negative",
        setter(*T0, "KillTimeout", value=-1),
        "Job.TaskGroups[0].Tasks[0].KillTimeout",
    ),
    (
        "kill-timeout-overflow",
        setter(*T0, "KillTimeout", value=2**63),
        "Job.TaskGroups[0].Tasks[0].KillTimeout",
    ),
    (
        "lifecycle-hook-unknown",
        setter(*T0, "Lifecycle", value={"Hook": "midstart"}),
        "Job.TaskGroups[0].Tasks[0].Lifecycle.Hook",
    ),
    (
        "lifecycle-sidecar-string",
        setter(*T0, "Lifecycle", value={"Hook": "prestart", "Sidecar": "true"}),
        "Job.TaskGroups[0].Tasks[0].Lifecycle.Sidecar",
    ),
    ("leader-string", setter(*T0, "Leader", value="true"), "Job.TaskGroups[0].Tasks[0].Leader"),
    (
        "memory-negative",
        setter(*T0, "Resources", value={"MemoryMB": -1}),
        "Job.TaskGroups[0].Tasks[0].Resources.MemoryMB",
    ),
    ("logs-string", setter(*T0, "LogConfig", value="x"), "Job.TaskGroups[0].Tasks[0].LogConfig"),
    ("duplicate-task", setter(*T1, "Name", value="api"), "Job.TaskGroups[0].Tasks[1].Name"),
]


@pytest.mark.parametrize(
    ("mutate", "path"), [c[1:] for c in JOB_CASES], ids=[c[0] for c in JOB_CASES]
)
def test_malformed_job_names_the_field(mutate: Callable[[dict], None], path: str) -> None:
    doc = valid_job_doc()
    decode_job(doc)  # the unmutated document is fine
    mutate(doc)
    with pytest.raises(JobSpecError) as info:
        decode_job(doc)
    assert info.value.path == path
    assert str(info.value).startswith(path + ": ")


def test_duplicate_group_names_are_rejected() -> None:
    doc = valid_job_doc()
    doc["TaskGroups"].append(copy.deepcopy(doc["TaskGroups"][0]))
    with pytest.raises(JobSpecError) as info:
        decode_job(doc)
    assert info.value.path == "Job.TaskGroups[1].Name"
    assert "duplicate" in info.value.message


@pytest.mark.parametrize("doc", [None, "job", 3, [], ["ID"], True], ids=repr)
def test_a_job_must_be_an_object(doc: Any) -> None:
    with pytest.raises(JobSpecError) as info:
        decode_job(doc)
    assert info.value.path == "Job"


TS = ("TaskStates", "api")
EV = (*TS, "Events", 0)
JT = ("Job", "TaskGroups", 0, "Tasks", 0)

ALLOC_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("id-missing", deleter("ID"), "Allocation.ID"),
    ("id-empty", setter("ID", value=""), "Allocation.ID"),
    ("job-string", setter("Job", value="web"), "Allocation.Job"),
    ("job-driver-missing", deleter(*JT, "Driver"), "Allocation.Job.TaskGroups[0].Tasks[0].Driver"),
    ("desired-status-unknown", setter("DesiredStatus", value="go"), "Allocation.DesiredStatus"),
    (
        "desired-transition-int",
        setter("DesiredTransition", value={"Migrate": 1}),
        "Allocation.DesiredTransition.Migrate",
    ),
    ("client-status-unknown", setter("ClientStatus", value="exploded"), "Allocation.ClientStatus"),
    ("create-index-negative", setter("CreateIndex", value=-1), "Allocation.CreateIndex"),
    ("modify-index-overflow", setter("ModifyIndex", value=2**64), "Allocation.ModifyIndex"),
    ("create-time-string", setter("CreateTime", value="now"), "Allocation.CreateTime"),
    ("task-states-list", setter("TaskStates", value=[]), "Allocation.TaskStates"),
    ("task-state-null", setter("TaskStates", value={"api": None}), "Allocation.TaskStates[api]"),
    (
        "task-state-unknown",
        setter(*TS, "State", value="asleep"),
        "Allocation.TaskStates[api].State",
    ),
    ("restarts-negative", setter(*TS, "Restarts", value=-1), "Allocation.TaskStates[api].Restarts"),
    (
        "started-at-prose",
        setter(*TS, "StartedAt", value="yesterday"),
        "Allocation.TaskStates[api].StartedAt",
    ),
    (
        "started-at-month-13",
        setter(*TS, "StartedAt", value="2021-13-01T00:00:00Z"),
        "Allocation.TaskStates[api].StartedAt",
    ),
    (
        "finished-at-unix-ns",
        setter(*TS, "FinishedAt", value=1636017249803624000),
        "Allocation.TaskStates[api].FinishedAt",
    ),
    (
        "last-restart-no-zone",
        setter(*TS, "LastRestart", value="2021-11-04T10:14:22"),
        "Allocation.TaskStates[api].LastRestart",
    ),
    ("events-object", setter(*TS, "Events", value={}), "Allocation.TaskStates[api].Events"),
    (
        "event-type-missing",
        deleter(*EV, "Type"),
        "Allocation.TaskStates[api].Events[0].Type",
    ),
    (
        "event-time-string",
        setter(*EV, "Time", value="2021-11-04T10:14:22Z"),
        "Allocation.TaskStates[api].Events[0].Time",
    ),
    (
        "event-time-overflow",
        setter(*EV, "Time", value=2**70),
        "Allocation.TaskStates[api].Events[0].Time",
    ),
    (
        "event-exit-code-float",
        setter(*EV, "ExitCode", value=1.0),
        "Allocation.TaskStates[api].Events[0].ExitCode",
    ),
    (
        "event-details-number",
        setter(*EV, "Details", value={"exit_code": 1}),
        "Allocation.TaskStates[api].Events[0].Details[exit_code]",
    ),
    (
        "deployment-healthy-string",
        setter("DeploymentStatus", value={"Healthy": "yes"}),
        "Allocation.DeploymentStatus.Healthy",
    ),
    (
        "deployment-timestamp-number",
        setter("DeploymentStatus", value={"Timestamp": 5}),
        "Allocation.DeploymentStatus.Timestamp",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path"), [c[1:] for c in ALLOC_CASES], ids=[c[0] for c in ALLOC_CASES]
)
def test_malformed_allocation_names_the_field(mutate: Callable[[dict], None], path: str) -> None:
    doc = valid_alloc_doc()
    decode_allocation(doc)
    mutate(doc)
    with pytest.raises(JobSpecError) as info:
        decode_allocation(doc)
    assert info.value.path == path


def test_other_decoders_name_their_root() -> None:
    with pytest.raises(JobSpecError) as info:
        decode_alloc_state({"TaskStates": {"t": {"Failed": 1}}})
    assert info.value.path == "AllocState.TaskStates[t].Failed"
    with pytest.raises(JobSpecError) as info:
        decode_task_state({"Events": [{"Type": 1}]})
    assert info.value.path == "TaskState.Events[0].Type"
    with pytest.raises(JobSpecError) as info:
        decode_task_event([])
    assert info.value.path == "TaskEvent"


def test_deeply_nested_config_is_an_error_not_a_crash() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    doc = valid_job_doc()
    doc["TaskGroups"][0]["Tasks"][0]["Config"] = {"deep": deep}
    with pytest.raises(JobSpecError) as info:
        decode_job(doc)
    assert info.value.path.startswith("Job.TaskGroups[0].Tasks[0].Config[deep]")
    assert "nested" in info.value.message


# --- fuzz: nothing but JobSpecError escapes -----------------------------------------

KNOWN_KEYS = sorted(
    {f.key for kind in vars(codec).values() if isinstance(kind, codec.Struct) for f in kind.fields}
)
fuzz_keys = st.sampled_from(KNOWN_KEYS) | s.texts
fuzz_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | s.texts
    | st.sampled_from(
        ["0001-01-01T00:00:00Z", "2021-11-04T10:14:22.054814+01:00", "9999-12-31T23:59:59-23:59"]
    )
)
fuzz_docs = st.recursive(
    fuzz_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(fuzz_keys, inner, max_size=6),
    max_leaves=30,
)
FUZZ = settings(max_examples=120, deadline=None)
MUTATIONS = settings(max_examples=60, deadline=None)


def only_jobspec_errors(decode: Callable[[Any], Any], doc: Any) -> None:
    try:
        decode(doc)
    except JobSpecError as err:
        assert isinstance(err.path, str) and err.message


@FUZZ
@given(fuzz_docs)
def test_fuzz_decode_job(doc: Any) -> None:
    only_jobspec_errors(decode_job, doc)


@FUZZ
@given(fuzz_docs)
def test_fuzz_decode_allocation(doc: Any) -> None:
    only_jobspec_errors(decode_allocation, doc)
    only_jobspec_errors(decode_alloc_state, doc)
    only_jobspec_errors(decode_task_state, doc)


def paths_of(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON document (the root excluded)."""
    out: list[tuple[Any, ...]] = []
    items = (
        doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    )
    for key, value in items:
        out.append((*prefix, key))
        out.extend(paths_of(value, (*prefix, key)))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid document with a few of its values replaced, deleted or wrapped."""
    doc = copy.deepcopy(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_of(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "null", "delete", "wrap"]))
        if action == "replace":
            parent[key] = draw(fuzz_docs)
        elif action == "null":
            parent[key] = None
        elif action == "delete":
            del parent[key]
        else:
            parent[key] = [parent[key]]
    return doc


@MUTATIONS
@given(mutated(s.jobs.map(encode_job)))
def test_fuzz_mutated_job(doc: dict[str, Any]) -> None:
    only_jobspec_errors(decode_job, doc)


@MUTATIONS
@given(mutated(s.allocations.map(encode_allocation)))
def test_fuzz_mutated_allocation(doc: dict[str, Any]) -> None:
    only_jobspec_errors(decode_allocation, doc)


@pytest.mark.parametrize("name", ["alloc", "..", ".", "a/b", "../x"])
def test_task_names_that_cannot_name_a_directory_are_refused(name):
    doc = {
        "ID": "j",
        "TaskGroups": [{"Name": "g", "Tasks": [{"Name": name, "Driver": "raw_exec"}]}],
    }
    with pytest.raises(JobSpecError) as err:
        decode_job(doc)
    assert err.value.path == "Job.TaskGroups[0].Tasks[0].Name"
