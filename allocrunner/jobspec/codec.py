"""Nomad's HTTP API JSON for jobs, allocations and task states, both directions.

Keys are Nomad's PascalCase API names (`TaskGroups`, `KillTimeout`, `TaskStates`, …);
durations are integer nanoseconds; `TaskState` times are RFC 3339 strings (Go's zero
time means unset); `TaskEvent.Time` is integer Unix nanoseconds; `null` or an absent
key means the field's default; unknown keys are ignored. Anything else raises
`JobSpecError` whose `path` names the field (`Job.TaskGroups[0].Tasks[1].Driver`).

Decoding never applies Nomad's job defaults beyond the value objects' own (see
`canonicalize_job`), so `decode_x(encode_x(v)) == v` for every value object `v`.

No threads, no locks; pure functions over immutable schema tables, called by the
agent's API, the SQLite state DB, `load_job` and users. The module is one concern
(the schema tables of one wire format, both directions), so it stays whole at about
600 lines.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import attrs

from allocrunner.errors import JobSpecError
from allocrunner.jobspec._kinds import (
    INT64_MAX,
    INT64_MIN,
    UINT64_MAX,
    Base64Bytes,
    Bool,
    Duration,
    Field,
    FreeMap,
    Int,
    Kind,
    ListOf,
    MapOf,
    Rfc3339Time,
    Str,
    StrList,
    StrMap,
    Struct,
    UnixNanoTime,
    describe,
)
from allocrunner.jobspec.codec_blocks import (
    ALLOCATED_PORTS,
    CONSTRAINTS,
    NETWORKS,
    TASK_ARTIFACT,
    TEMPLATE,
    check_port_labels,
)
from allocrunner.structs import (
    Allocation,
    AllocDeploymentStatus,
    AllocState,
    DesiredTransition,
    EphemeralDisk,
    Job,
    Lifecycle,
    LogConfig,
    MigrateStrategy,
    ParameterizedJobConfig,
    PeriodicConfig,
    Resources,
    RestartPolicy,
    Task,
    TaskEvent,
    TaskGroup,
    TaskState,
    UpdateStrategy,
)
from allocrunner.structs.cron import load_zone, parse_cron
from allocrunner.structs.job import DISPATCH_PAYLOAD_MODES, PERIODIC_SPEC_CRON
from allocrunner.structs.status import (
    CLIENT_STATUSES,
    DESIRED_STATUSES,
    JOB_BATCH,
    JOB_SYSBATCH,
    JOB_TYPES,
    LIFECYCLE_HOOKS,
    RESTART_MODE_DELAY,
    RESTART_MODE_FAIL,
    TASK_STATES,
)

__all__ = [
    "ALLOCATION",
    "ALLOC_STATE",
    "DISPATCH_PAYLOAD_CONFIG",
    "JOB",
    "PARAMETERIZED_JOB",
    "PERIODIC",
    "TASK_EVENT",
    "TASK_STATE",
    "decode_alloc_state",
    "decode_allocation",
    "decode_job",
    "decode_task_event",
    "decode_task_state",
    "encode_alloc_state",
    "encode_allocation",
    "encode_allocation_with_job",
    "encode_allocation_without_job",
    "encode_job",
    "encode_task_event",
    "encode_task_state",
]

#: Health check modes of update and migrate strategies.
HEALTH_CHECKS = ("checks", "task_states", "manual")
#: Client statuses accepted on input: Nomad's, plus "unknown" (disconnected node) and ""
#: (no status derived yet).
CLIENT_STATUSES_IN = (*CLIENT_STATUSES, "unknown", "")

_STR = Str()
_BOOL = Bool()
_UINT = Int()
_UINT64 = Int(hi=UINT64_MAX)
_INT64 = Int(lo=INT64_MIN, hi=INT64_MAX)
_DURATION = Duration()
_RFC3339 = Rfc3339Time()
_STRMAP = StrMap()


def _unique_names(attr: str, what: str, key: str) -> Any:
    def check(kwargs: dict[str, Any], path: str) -> None:
        seen: set[str] = set()
        for i, item in enumerate(kwargs.get(attr, ())):
            if item.name in seen:
                raise JobSpecError(f"{path}.{key}[{i}].Name", f"duplicate {what} {item.name!r}")
            seen.add(item.name)

    return check


_check_group_names = _unique_names("task_groups", "task group name", "TaskGroups")
_check_unique_tasks = _unique_names("tasks", "task name", "Tasks")

# A task's directory sits beside the allocation's shared `alloc/` directory.
_RESERVED_TASK_NAMES = frozenset({"alloc", ".", ".."})


def _check_group(kwargs: dict[str, Any], path: str) -> None:
    """Unique task names, each usable as the name of the task's directory; unique port
    labels."""
    _check_unique_tasks(kwargs, path)
    check_port_labels(kwargs.get("networks", ()), f"{path}.Networks")
    for i, task in enumerate(kwargs.get("tasks", ())):
        name = task.name
        if name in _RESERVED_TASK_NAMES or "/" in name or "\0" in name:
            raise JobSpecError(
                f"{path}.Tasks[{i}].Name",
                f"task name {name!r} cannot name the task's directory in the alloc dir"
                + (" (it is the shared alloc/ directory)" if name == "alloc" else ""),
            )


def _check_job(kwargs: dict[str, Any], path: str) -> None:
    """Unique group names; periodic and parameterized jobs must be batch or sysbatch."""
    _check_group_names(kwargs, path)
    job_type = kwargs.get("type", attrs.fields(Job).type.default)
    if job_type in (JOB_BATCH, JOB_SYSBATCH):
        return
    periodic = kwargs.get("periodic")
    if periodic is not None and periodic.enabled:
        raise JobSpecError(
            f"{path}.Periodic", f"periodic jobs must be of type batch or sysbatch, not {job_type!r}"
        )
    if kwargs.get("parameterized") is not None and not kwargs.get("dispatched", False):
        raise JobSpecError(
            f"{path}.ParameterizedJob",
            f"parameterized jobs must be of type batch or sysbatch, not {job_type!r}",
        )


RESTART_POLICY = Struct(
    RestartPolicy,
    [
        Field("attempts", "Attempts", _UINT),
        Field("interval", "Interval", _DURATION),
        Field("delay", "Delay", _DURATION),
        Field("mode", "Mode", Str(choices=(RESTART_MODE_FAIL, RESTART_MODE_DELAY))),
        Field("render_templates", "RenderTemplates", _BOOL),
    ],
)

LIFECYCLE = Struct(
    Lifecycle,
    [
        Field("hook", "Hook", Str(choices=("", *LIFECYCLE_HOOKS))),
        Field("sidecar", "Sidecar", _BOOL),
    ],
)

EPHEMERAL_DISK = Struct(
    EphemeralDisk,
    [
        Field("size_mb", "SizeMB", _UINT),
        Field("sticky", "Sticky", _BOOL),
        Field("migrate", "Migrate", _BOOL),
    ],
)

RESOURCES = Struct(
    Resources,
    [
        Field("cpu", "CPU", _UINT),
        Field("memory_mb", "MemoryMB", _UINT),
        Field("memory_max_mb", "MemoryMaxMB", Int(lo=-1)),  # -1: no limit
        Field("disk_mb", "DiskMB", _UINT),
        Field("cores", "Cores", _UINT, omit_empty=True),
    ],
)

LOG_CONFIG = Struct(
    LogConfig,
    [
        Field("max_files", "MaxFiles", _UINT),
        Field("max_file_size_mb", "MaxFileSizeMB", _UINT),
        Field("disabled", "Disabled", _BOOL),
    ],
)

UPDATE_STRATEGY = Struct(
    UpdateStrategy,
    [
        Field("health_check", "HealthCheck", Str(choices=HEALTH_CHECKS)),
        Field("min_healthy_time", "MinHealthyTime", _DURATION),
        Field("healthy_deadline", "HealthyDeadline", _DURATION),
        Field("max_parallel", "MaxParallel", _UINT),
        Field("auto_revert", "AutoRevert", _BOOL),
        Field("canary", "Canary", _UINT),
    ],
)

MIGRATE_STRATEGY = Struct(
    MigrateStrategy,
    [
        Field("max_parallel", "MaxParallel", _UINT),
        Field("health_check", "HealthCheck", Str(choices=HEALTH_CHECKS)),
        Field("min_healthy_time", "MinHealthyTime", _DURATION),
        Field("healthy_deadline", "HealthyDeadline", _DURATION),
    ],
)


class CronSpecText(Str):
    """Immutable. A cron spec in Nomad's syntax (5 to 7 fields, or `@daily` …); ""
    (Nomad's unset `Spec`) unless `nonempty`."""

    __slots__ = ()

    def decode(self, value: Any, path: str) -> str:
        text = super().decode(value, path)
        if not text:
            return text
        try:
            parse_cron(text)
        except ValueError as err:
            raise JobSpecError(path, str(err)) from None
        return text


class TimeZoneName(Str):
    """Immutable. An IANA time zone name ("America/New_York"); "" means UTC."""

    __slots__ = ()

    def decode(self, value: Any, path: str) -> str:
        name = super().decode(value, path)
        try:
            load_zone(name)
        except ValueError as err:
            raise JobSpecError(path, str(err)) from None
        return name


class LocalPath(Str):
    """Immutable. A relative path that stays inside a task's `local/` directory."""

    __slots__ = ()

    def decode(self, value: Any, path: str) -> str:
        text = super().decode(value, path)
        if not text:
            return text
        if "\0" in text:
            raise JobSpecError(path, "path must not contain NUL")
        if posixpath.isabs(text):
            raise JobSpecError(path, f"must be a path relative to local/, got {text!r}")
        norm = posixpath.normpath(text)
        if norm in (".", "..") or norm.startswith("../"):
            raise JobSpecError(path, f"destination {text!r} escapes the task's local/ directory")
        return text


_CRON = CronSpecText()
_CRON_ITEM = CronSpecText(nonempty=True)


def _check_periodic(kwargs: dict[str, Any], path: str) -> None:
    """Fold `Spec` and `Specs` into one tuple; an enabled config needs one of them."""
    spec = kwargs.pop("spec", "")
    specs = kwargs.get("specs", ())
    if spec and specs:
        raise JobSpecError(f"{path}.Specs", "only one of Spec and Specs may be set")
    if spec:
        kwargs["specs"] = (spec,)
    if kwargs.get("enabled", True) and not kwargs.get("specs"):
        raise JobSpecError(f"{path}.Spec", "a periodic job needs a cron spec (Spec or Specs)")


class _PeriodicStruct(Struct):
    """Immutable. PeriodicConfig as JSON: one spec goes in `Spec` (what Nomad 1.6 and
    earlier know), several in `Specs`."""

    __slots__ = ()

    def encode(self, value: Any) -> Any:
        if value is None:
            return None
        specs = value.specs
        return {
            "Enabled": value.enabled,
            "Spec": specs[0] if len(specs) == 1 else "",
            "Specs": list(specs) if len(specs) > 1 else [],
            "SpecType": value.spec_type,
            "ProhibitOverlap": value.prohibit_overlap,
            "TimeZone": value.time_zone,
        }


PERIODIC = _PeriodicStruct(
    PeriodicConfig,
    [
        Field("enabled", "Enabled", _BOOL),
        Field("spec", "Spec", _CRON),
        Field("specs", "Specs", ListOf(_CRON_ITEM)),
        Field("spec_type", "SpecType", Str(choices=(PERIODIC_SPEC_CRON,))),
        Field("prohibit_overlap", "ProhibitOverlap", _BOOL),
        Field("time_zone", "TimeZone", TimeZoneName()),
    ],
    check=_check_periodic,
)


def _check_parameterized(kwargs: dict[str, Any], path: str) -> None:
    both = sorted(set(kwargs.get("meta_required", ())) & set(kwargs.get("meta_optional", ())))
    if both:
        raise JobSpecError(
            f"{path}.MetaOptional",
            f"required and optional meta keys must be disjoint; in both: {', '.join(both)}",
        )


PARAMETERIZED_JOB = Struct(
    ParameterizedJobConfig,
    [
        Field("payload", "Payload", Str(choices=("", *DISPATCH_PAYLOAD_MODES))),
        Field("meta_required", "MetaRequired", StrList()),
        Field("meta_optional", "MetaOptional", StrList()),
    ],
    check=_check_parameterized,
)


@attrs.frozen
class DispatchPayloadConfig:
    """Immutable. Nomad's task `DispatchPayload` block; a Task keeps only its file."""

    file: str = ""


DISPATCH_PAYLOAD_CONFIG = Struct(DispatchPayloadConfig, [Field("file", "File", LocalPath())])


class _DispatchPayload(Kind):
    """Immutable. A task's `DispatchPayload` object to and from `Task.dispatch_payload`
    (the file name; "" when the task takes no payload)."""

    __slots__ = ()

    def decode(self, value: Any, path: str) -> str:
        return DISPATCH_PAYLOAD_CONFIG.decode(value, path).file

    def encode(self, value: str) -> Any:
        return {"File": value} if value else None


TASK = Struct(
    Task,
    [
        Field("name", "Name", Str(nonempty=True), required=True),
        Field("driver", "Driver", Str(nonempty=True), required=True),
        Field("user", "User", _STR),
        Field("lifecycle", "Lifecycle", LIFECYCLE),
        Field("config", "Config", FreeMap()),
        Field("env", "Env", _STRMAP),
        Field("meta", "Meta", _STRMAP),
        Field("leader", "Leader", _BOOL),
        Field("kill_timeout", "KillTimeout", _DURATION),
        Field("kill_signal", "KillSignal", _STR),
        Field("shutdown_delay", "ShutdownDelay", _DURATION),
        Field("restart_policy", "RestartPolicy", RESTART_POLICY),
        Field("resources", "Resources", RESOURCES),
        Field("logs", "LogConfig", LOG_CONFIG),
        Field("dispatch_payload", "DispatchPayload", _DispatchPayload()),
        Field("constraints", "Constraints", CONSTRAINTS),
        Field("templates", "Templates", ListOf(TEMPLATE)),
        Field("artifacts", "Artifacts", ListOf(TASK_ARTIFACT)),
    ],
)

TASK_GROUP = Struct(
    TaskGroup,
    [
        Field("name", "Name", Str(nonempty=True), required=True),
        Field("count", "Count", _UINT),
        Field("restart_policy", "RestartPolicy", RESTART_POLICY),
        Field("ephemeral_disk", "EphemeralDisk", EPHEMERAL_DISK),
        Field("update", "Update", UPDATE_STRATEGY),
        Field("migrate", "Migrate", MIGRATE_STRATEGY),
        Field("meta", "Meta", _STRMAP),
        Field("shutdown_delay", "ShutdownDelay", _DURATION),
        Field("tasks", "Tasks", ListOf(TASK)),
        Field("constraints", "Constraints", CONSTRAINTS),
        Field("networks", "Networks", NETWORKS),
        Field("max_run_duration", "MaxRunDuration", _DURATION),
    ],
    check=_check_group,
)

JOB = Struct(
    Job,
    [
        Field("id", "ID", Str(nonempty=True), required=True),
        Field("name", "Name", _STR),
        Field("namespace", "Namespace", _STR),
        Field("type", "Type", Str(choices=JOB_TYPES)),
        Field("region", "Region", _STR),
        Field("datacenters", "Datacenters", StrList()),
        Field("priority", "Priority", _UINT),
        Field("meta", "Meta", _STRMAP),
        Field("update", "Update", UPDATE_STRATEGY),
        Field("version", "Version", _UINT64),
        Field("stop", "Stop", _BOOL),
        Field("create_index", "CreateIndex", _UINT64),
        Field("modify_index", "ModifyIndex", _UINT64),
        Field("job_modify_index", "JobModifyIndex", _UINT64),
        Field("task_groups", "TaskGroups", ListOf(TASK_GROUP)),
        Field("periodic", "Periodic", PERIODIC),
        Field("parameterized", "ParameterizedJob", PARAMETERIZED_JOB),
        Field("payload", "Payload", Base64Bytes()),
        Field("parent_id", "ParentID", _STR),
        Field("dispatched", "Dispatched", _BOOL),
        Field("submit_time", "SubmitTime", _INT64),
        Field("constraints", "Constraints", CONSTRAINTS),
    ],
    check=_check_job,
)

TASK_EVENT = Struct(
    TaskEvent,
    [
        Field("type", "Type", _STR, required=True),
        Field("time", "Time", UnixNanoTime()),
        Field("message", "Message", _STR),
        Field("display_message", "DisplayMessage", _STR),
        Field("exit_code", "ExitCode", _INT64),
        Field("signal", "Signal", _INT64),
        Field("fails_task", "FailsTask", _BOOL),
        Field("details", "Details", _STRMAP),
    ],
)

TASK_STATE = Struct(
    TaskState,
    [
        Field("state", "State", Str(choices=TASK_STATES)),
        Field("failed", "Failed", _BOOL),
        Field("restarts", "Restarts", _UINT64),
        Field("last_restart", "LastRestart", _RFC3339),
        Field("started_at", "StartedAt", _RFC3339),
        Field("finished_at", "FinishedAt", _RFC3339),
        Field("events", "Events", ListOf(TASK_EVENT)),
    ],
)

DEPLOYMENT_STATUS = Struct(
    AllocDeploymentStatus,
    [
        Field("healthy", "Healthy", _BOOL),
        Field("timestamp", "Timestamp", _RFC3339),
        Field("canary", "Canary", _BOOL),
        Field("modify_index", "ModifyIndex", _UINT64),
    ],
)

DESIRED_TRANSITION = Struct(
    DesiredTransition,
    [
        Field("migrate", "Migrate", _BOOL),
        Field("reschedule", "Reschedule", _BOOL),
        Field("force_reschedule", "ForceReschedule", _BOOL),
        Field("no_shutdown_delay", "NoShutdownDelay", _BOOL),
    ],
)

_TASK_STATES = MapOf(TASK_STATE)
_CLIENT_STATUS = Str(choices=CLIENT_STATUSES_IN)

ALLOCATION = Struct(
    Allocation,
    [
        Field("id", "ID", Str(nonempty=True), required=True),
        Field("name", "Name", _STR),
        Field("namespace", "Namespace", _STR),
        Field("node_id", "NodeID", _STR),
        Field("eval_id", "EvalID", _STR),
        Field("job_id", "JobID", _STR),
        Field("job", "Job", JOB),
        Field("task_group", "TaskGroup", _STR),
        Field("desired_status", "DesiredStatus", Str(choices=(*DESIRED_STATUSES, ""))),
        Field("desired_description", "DesiredDescription", _STR),
        Field("desired_transition", "DesiredTransition", DESIRED_TRANSITION),
        Field("previous_allocation", "PreviousAllocation", _STR),
        Field("next_allocation", "NextAllocation", _STR),
        Field("deployment_id", "DeploymentID", _STR),
        Field("alloc_modify_index", "AllocModifyIndex", _UINT64),
        Field("create_index", "CreateIndex", _UINT64),
        Field("modify_index", "ModifyIndex", _UINT64),
        Field("create_time", "CreateTime", _INT64),
        Field("modify_time", "ModifyTime", _INT64),
        Field("client_status", "ClientStatus", _CLIENT_STATUS),
        Field("client_description", "ClientDescription", _STR),
        Field("task_states", "TaskStates", _TASK_STATES),
        Field("deployment_status", "DeploymentStatus", DEPLOYMENT_STATUS),
        Field("allocated_ports", "AllocatedResources", ALLOCATED_PORTS, omit_empty=True),
    ],
)

ALLOC_STATE = Struct(
    AllocState,
    [
        Field("client_status", "ClientStatus", _CLIENT_STATUS),
        Field("client_description", "ClientDescription", _STR),
        Field("deployment_status", "DeploymentStatus", DEPLOYMENT_STATUS),
        Field("task_states", "TaskStates", _TASK_STATES),
    ],
)


def _decode(kind: Kind, obj: Any, root: str) -> Any:
    if obj is None:
        raise JobSpecError(root, f"expected an object, got {describe(obj)}")
    try:
        return kind.decode(obj, root)
    except RecursionError:
        raise JobSpecError(root, "document nested too deeply") from None


def _encode(kind: Struct, value: Any, what: type) -> dict[str, Any]:
    if not isinstance(value, what):
        raise TypeError(f"expected {what.__name__}, got {type(value).__name__}")
    return kind.encode(value)


def decode_job(obj: Any) -> Job:
    """A Job from Nomad API JSON (parsed). The `{"Job": {...}}` wrapper of job files and
    register requests is accepted too. JobSpecError names any bad field."""
    if isinstance(obj, Mapping) and "ID" not in obj and isinstance(obj.get("Job"), Mapping):
        obj = obj["Job"]
    return _decode(JOB, obj, "Job")


def encode_job(job: Job) -> dict[str, Any]:
    """Nomad API JSON (a dict ready for `json.dumps`) of a Job."""
    return _encode(JOB, job, Job)


def decode_allocation(obj: Any) -> Allocation:
    """An Allocation from Nomad API JSON (`GET /v1/allocation/:id`); its Job may be null."""
    return _decode(ALLOCATION, obj, "Allocation")


def encode_allocation(alloc: Allocation) -> dict[str, Any]:
    """Nomad API JSON of an Allocation, client fields included."""
    return _encode(ALLOCATION, alloc, Allocation)


def encode_allocation_with_job(alloc: Allocation, job: dict[str, Any] | None) -> dict[str, Any]:
    """`encode_allocation(alloc)` whose ``Job`` is `job`, the caller's encoding of
    `alloc.job` (allocations of one job share it: encoding a job is most of the cost of
    encoding an allocation). The result shares `job`: it is for serialising at once."""
    if not isinstance(alloc, Allocation):
        raise TypeError(f"expected Allocation, got {type(alloc).__name__}")
    return ALLOCATION.encode_with(alloc, "job", job)


def encode_allocation_without_job(alloc: Allocation) -> dict[str, Any]:
    """`encode_allocation(alloc)` less its ``Job`` key, for a caller that serialises the
    job once for every allocation that shares it and joins the two texts."""
    if not isinstance(alloc, Allocation):
        raise TypeError(f"expected Allocation, got {type(alloc).__name__}")
    return ALLOCATION.encode_without(alloc, "job")


def decode_alloc_state(obj: Any) -> AllocState:
    """An AllocState from `{"ClientStatus", "ClientDescription", "DeploymentStatus",
    "TaskStates"}`."""
    return _decode(ALLOC_STATE, obj, "AllocState")


def encode_alloc_state(state: AllocState) -> dict[str, Any]:
    """`{"ClientStatus", "ClientDescription", "DeploymentStatus", "TaskStates"}` of an
    AllocState, as Nomad reports them for an allocation."""
    return _encode(ALLOC_STATE, state, AllocState)


def decode_task_state(obj: Any) -> TaskState:
    """A TaskState from Nomad API JSON (`State`, `Failed`, `Restarts`, times, `Events`)."""
    return _decode(TASK_STATE, obj, "TaskState")


def encode_task_state(state: TaskState) -> dict[str, Any]:
    """Nomad API JSON of a TaskState."""
    return _encode(TASK_STATE, state, TaskState)


def decode_task_event(obj: Any) -> TaskEvent:
    """A TaskEvent from Nomad API JSON (`Type`, `Time` in Unix ns, `Details`, …)."""
    return _decode(TASK_EVENT, obj, "TaskEvent")


def encode_task_event(event: TaskEvent) -> dict[str, Any]:
    """Nomad API JSON of a TaskEvent."""
    return _encode(TASK_EVENT, event, TaskEvent)
