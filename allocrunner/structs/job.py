"""Immutable job value objects: Job → TaskGroup → Task, with Nomad's defaults.

Durations are seconds as floats (nanoseconds only in JSON). Free-form maps (driver
config, env, meta) are deep-frozen, so nothing reachable from a Job can change. Field
names are Nomad's API names in snake_case (`Template.dest_path` is `DestPath`).

Beside the scheduling fields, a job carries the blocks the runtime acts on:
`Constraint` (job, group, task), a group's `NetworkResource` with its `Port`s, a
task's `Template`s and `TaskArtifact`s, and a group's `max_run_duration` (not in Nomad
1.6: this project's extension, under the name later Nomad versions use).

No threads, no locks; immutable values and pure functions, built by the codec and
`load_job` (or in code, then `canonicalize_job`), read by the runners, the agent and
the command line.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from allocrunner.structs.frozen import EMPTY, FrozenDict, frozen_map, frozen_tuple
from allocrunner.structs.status import (
    JOB_BATCH,
    JOB_SERVICE,
    JOB_SYSBATCH,
    LIFECYCLE_POSTSTOP,
    RESTART_MODE_FAIL,
)

DEFAULT_KILL_TIMEOUT = 5.0
DEFAULT_EPHEMERAL_DISK_MB = 300
DEFAULT_CPU = 100
DEFAULT_MEMORY_MB = 300
DEFAULT_LOG_MAX_FILES = 10
DEFAULT_LOG_MAX_FILE_SIZE_MB = 10
DEFAULT_MIN_HEALTHY_TIME = 10.0
DEFAULT_HEALTHY_DEADLINE = 300.0
DEFAULT_TEMPLATE_SPLAY = 5.0
DEFAULT_TEMPLATE_PERMS = "0644"
DEFAULT_TEMPLATE_CHANGE_MODE = "restart"
DEFAULT_TEMPLATE_SIGNAL = "SIGHUP"
TEMPLATE_CHANGE_MODES = ("noop", "restart", "signal", "script")
ARTIFACT_MODES = ("any", "file", "dir")
DEFAULT_ARTIFACT_MODE = "any"
NETWORK_MODE_HOST = "host"
DEFAULT_HOST_NETWORK = "default"

PERIODIC_SPEC_CRON = "cron"
DISPATCH_PAYLOAD_OPTIONAL = "optional"
DISPATCH_PAYLOAD_REQUIRED = "required"
DISPATCH_PAYLOAD_FORBIDDEN = "forbidden"
DISPATCH_PAYLOAD_MODES = (
    DISPATCH_PAYLOAD_OPTIONAL,
    DISPATCH_PAYLOAD_REQUIRED,
    DISPATCH_PAYLOAD_FORBIDDEN,
)
#: Child job ids: `<parent>/periodic-<unix>` and `<parent>/dispatch-<unix>-<8 hex>`.
PERIODIC_LAUNCH_SUFFIX = "/periodic-"
DISPATCH_LAUNCH_SUFFIX = "/dispatch-"


@attrs.frozen
class RestartPolicy:
    """Immutable. How often a failing task is restarted (Nomad's RestartPolicy)."""

    attempts: int = 2
    interval: float = 1800.0
    delay: float = 15.0
    mode: str = RESTART_MODE_FAIL
    render_templates: bool = False


SERVICE_RESTART_POLICY = RestartPolicy(attempts=2, interval=1800.0, delay=15.0, mode="fail")
BATCH_RESTART_POLICY = RestartPolicy(attempts=3, interval=86400.0, delay=15.0, mode="fail")


def default_restart_policy(job_type: str) -> RestartPolicy:
    """Nomad's default restart policy for a job type."""
    if job_type in (JOB_BATCH, JOB_SYSBATCH):
        return BATCH_RESTART_POLICY
    return SERVICE_RESTART_POLICY


@attrs.frozen
class Lifecycle:
    """Immutable. When a task runs relative to the main tasks (prestart, poststart, poststop)."""

    hook: str = ""
    sidecar: bool = False


@attrs.frozen
class EphemeralDisk:
    """Immutable. The alloc's scratch disk: size, and whether a replacement inherits it."""

    size_mb: int = DEFAULT_EPHEMERAL_DISK_MB
    sticky: bool = False
    migrate: bool = False

    def carries_data(self) -> bool:
        """Migrate implies sticky (Nomad PR #16826)."""
        return self.sticky or self.migrate


@attrs.frozen
class Resources:
    """Immutable. What a task asks for (only what a local runner can use)."""

    cpu: int = DEFAULT_CPU
    memory_mb: int = DEFAULT_MEMORY_MB
    memory_max_mb: int = 0  # -1: no limit
    disk_mb: int = 0
    cores: int = 0


@attrs.frozen
class LogConfig:
    """Immutable. Log rotation: how many files of what size per stream."""

    max_files: int = DEFAULT_LOG_MAX_FILES
    max_file_size_mb: int = DEFAULT_LOG_MAX_FILE_SIZE_MB
    disabled: bool = False


@attrs.frozen
class UpdateStrategy:
    """Immutable. Deployment health parameters used by the health watcher."""

    health_check: str = "checks"
    min_healthy_time: float = DEFAULT_MIN_HEALTHY_TIME
    healthy_deadline: float = DEFAULT_HEALTHY_DEADLINE
    max_parallel: int = 1
    auto_revert: bool = False
    canary: int = 0


@attrs.frozen
class MigrateStrategy:
    """Immutable. Health parameters used when an alloc is not part of a deployment."""

    health_check: str = "checks"
    min_healthy_time: float = DEFAULT_MIN_HEALTHY_TIME
    healthy_deadline: float = DEFAULT_HEALTHY_DEADLINE
    max_parallel: int = 1


@attrs.frozen
class Constraint:
    """Immutable. One `constraint` block: `<ltarget> <operand> <rtarget>` must hold on
    the node (Nomad's Constraint; `attribute`, `operator`, `value` in HCL)."""

    ltarget: str = ""
    rtarget: str = ""
    operand: str = "="

    def __str__(self) -> str:
        return f"{self.ltarget} {self.operand} {self.rtarget}"


@attrs.frozen
class Port:
    """Immutable. One port of a group network: static when `value` > 0; `to` is the
    port inside the task's network (-1: the same as the host port)."""

    label: str
    value: int = 0
    to: int = 0
    host_network: str = DEFAULT_HOST_NETWORK


@attrs.frozen
class NetworkResource:
    """Immutable. A group's `network` block: its mode and the ports it asks for
    (`reserved_ports` static, `dynamic_ports` picked by the node)."""

    mode: str = NETWORK_MODE_HOST
    reserved_ports: tuple[Port, ...] = attrs.field(default=(), converter=frozen_tuple)
    dynamic_ports: tuple[Port, ...] = attrs.field(default=(), converter=frozen_tuple)

    def ports(self) -> tuple[Port, ...]:
        """Every port asked for: the static ones, then the dynamic ones."""
        return self.reserved_ports + self.dynamic_ports


@attrs.frozen
class Template:
    """Immutable. One `template` block of a task (Nomad's Template): the text
    (`embedded_tmpl`, HCL `data`) or a file (`source_path`) rendered to `dest_path`
    (relative to the task dir), and what happens when the rendering changes."""

    source_path: str = ""
    dest_path: str = ""
    embedded_tmpl: str = ""
    change_mode: str = DEFAULT_TEMPLATE_CHANGE_MODE
    change_signal: str = ""
    splay: float = DEFAULT_TEMPLATE_SPLAY
    perms: str = DEFAULT_TEMPLATE_PERMS
    left_delim: str = "{{"
    right_delim: str = "}}"
    envvars: bool = False
    err_missing_key: bool = False

    @property
    def data(self) -> str:
        """The HCL name of `embedded_tmpl`."""
        return self.embedded_tmpl

    @property
    def destination(self) -> str:
        """The HCL name of `dest_path`."""
        return self.dest_path

    def mode_bits(self) -> int:
        """`perms` as permission bits (0o644)."""
        return int(self.perms or DEFAULT_TEMPLATE_PERMS, 8)


@attrs.frozen
class TaskArtifact:
    """Immutable. One `artifact` block of a task (Nomad's TaskArtifact): what to fetch
    (`getter_source`) and where to put it (`relative_dest`, relative to the task dir)."""

    getter_source: str
    getter_options: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    getter_headers: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    getter_mode: str = DEFAULT_ARTIFACT_MODE
    relative_dest: str = "local/"


def default_artifact_dest(source: str, mode: str) -> str:
    """The destination Nomad gives an artifact that names none: `local/`, or
    `local/<base name of the source>` in file mode."""
    if mode == "file":
        return "local/" + source.rstrip("/").rsplit("/", 1)[-1]
    return "local/"


def _specs(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """attrs converter: one spec string or any iterable of them to a tuple."""
    if isinstance(value, str):
        return (value,)
    return frozen_tuple(value)


@attrs.frozen
class PeriodicConfig:
    """Immutable. When a periodic job launches children (Nomad's PeriodicConfig).

    `specs` holds Nomad's `Spec` (one) or `Specs` (several): the job launches at the
    earliest next time of any of them, evaluated in `time_zone` ("" means UTC).
    """

    enabled: bool = True
    spec_type: str = PERIODIC_SPEC_CRON
    specs: tuple[str, ...] = attrs.field(default=(), converter=_specs)
    prohibit_overlap: bool = False
    time_zone: str = "UTC"


@attrs.frozen
class ParameterizedJobConfig:
    """Immutable. What a dispatch of a parameterized job must or may pass."""

    payload: str = DISPATCH_PAYLOAD_OPTIONAL
    meta_required: tuple[str, ...] = attrs.field(default=(), converter=frozen_tuple)
    meta_optional: tuple[str, ...] = attrs.field(default=(), converter=frozen_tuple)


@attrs.frozen
class Task:
    """Immutable. One task of a group: its driver, config and policies."""

    name: str
    driver: str
    config: FrozenDict[str, object] = attrs.field(default=EMPTY, converter=frozen_map)
    env: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    meta: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    user: str = ""
    leader: bool = False
    lifecycle: Lifecycle | None = None
    kill_timeout: float = DEFAULT_KILL_TIMEOUT
    kill_signal: str = ""
    shutdown_delay: float = 0.0
    restart_policy: RestartPolicy | None = None
    resources: Resources = attrs.field(factory=Resources)
    logs: LogConfig = attrs.field(factory=LogConfig)
    dispatch_payload: str = ""  # file under the task's local/ that gets the payload
    constraints: tuple[Constraint, ...] = attrs.field(default=(), converter=frozen_tuple)
    templates: tuple[Template, ...] = attrs.field(default=(), converter=frozen_tuple)
    artifacts: tuple[TaskArtifact, ...] = attrs.field(default=(), converter=frozen_tuple)

    def is_prestart(self) -> bool:
        return self.lifecycle is not None and self.lifecycle.hook == "prestart"

    def is_poststart(self) -> bool:
        return self.lifecycle is not None and self.lifecycle.hook == "poststart"

    def is_poststop(self) -> bool:
        return self.lifecycle is not None and self.lifecycle.hook == LIFECYCLE_POSTSTOP

    def is_sidecar(self) -> bool:
        return self.lifecycle is not None and self.lifecycle.sidecar

    def is_main(self) -> bool:
        return self.lifecycle is None or self.lifecycle.hook == ""


@attrs.frozen
class TaskGroup:
    """Immutable. A set of tasks placed together as one allocation."""

    name: str
    tasks: tuple[Task, ...] = attrs.field(default=(), converter=frozen_tuple)
    count: int = 1
    restart_policy: RestartPolicy | None = None
    ephemeral_disk: EphemeralDisk = attrs.field(factory=EphemeralDisk)
    update: UpdateStrategy | None = None
    migrate: MigrateStrategy | None = None
    meta: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    shutdown_delay: float = 0.0
    constraints: tuple[Constraint, ...] = attrs.field(default=(), converter=frozen_tuple)
    networks: tuple[NetworkResource, ...] = attrs.field(default=(), converter=frozen_tuple)
    max_run_duration: float = 0.0  # 0: no limit

    def task(self, name: str) -> Task | None:
        """The task called `name`, or None."""
        for task in self.tasks:
            if task.name == name:
                return task
        return None


@attrs.frozen
class Job:
    """Immutable. A job as the server sends it (only the fields a client uses)."""

    id: str
    name: str = ""
    namespace: str = "default"
    type: str = JOB_SERVICE
    region: str = "global"
    datacenters: tuple[str, ...] = attrs.field(default=("*",), converter=frozen_tuple)
    priority: int = 50
    task_groups: tuple[TaskGroup, ...] = attrs.field(default=(), converter=frozen_tuple)
    meta: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    update: UpdateStrategy | None = None
    version: int = 0
    stop: bool = False
    create_index: int = 0
    modify_index: int = 0
    job_modify_index: int = 0
    periodic: PeriodicConfig | None = None
    parameterized: ParameterizedJobConfig | None = None
    payload: bytes = b""
    parent_id: str = ""
    dispatched: bool = False
    submit_time: int = 0  # Unix nanoseconds
    constraints: tuple[Constraint, ...] = attrs.field(default=(), converter=frozen_tuple)

    def is_periodic(self) -> bool:
        """The job has a periodic block (enabled or not)."""
        return self.periodic is not None

    def is_parameterized(self) -> bool:
        """The job is a parameterized template (not a dispatched child of one)."""
        return self.parameterized is not None and not self.dispatched

    def is_periodic_active(self) -> bool:
        """The job launches periodic children: periodic, enabled, running and not
        parameterized (Nomad's IsPeriodicActive)."""
        return (
            self.periodic is not None
            and self.periodic.enabled
            and not self.stop
            and not self.is_parameterized()
        )

    def lookup_task_group(self, name: str) -> TaskGroup | None:
        """The task group called `name`, or None."""
        for group in self.task_groups:
            if group.name == name:
                return group
        return None


def effective_restart_policy(job: Job, group: TaskGroup, task: Task) -> RestartPolicy:
    """The task's policy, else the group's, else the job type's default (Nomad's order)."""
    return task.restart_policy or group.restart_policy or default_restart_policy(job.type)
