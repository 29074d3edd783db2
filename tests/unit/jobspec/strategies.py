"""Hypothesis strategies for the value objects the codec carries, and for JSON-like data.

Values are generated the way they can exist: durations are whole nanoseconds (n / 1e9),
datetimes are aware UTC at microsecond precision, and the "unset" encodings (Go's zero
time, Unix time 0) are left out because they decode to None by design.
"""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
from hypothesis import strategies as st

from allocrunner.jobspec._kinds import EPOCH, GO_ZERO_TIME
from allocrunner.jobspec.codec import CLIENT_STATUSES_IN, HEALTH_CHECKS
from allocrunner.jobspec.codec_blocks import CONSTRAINT_OPERANDS
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
    Resources,
    RestartPolicy,
    Task,
    TaskEvent,
    TaskGroup,
    TaskState,
    UpdateStrategy,
)
from allocrunner.structs.job import (
    ARTIFACT_MODES,
    Constraint,
    NetworkResource,
    Port,
    TaskArtifact,
    Template,
)
from allocrunner.structs.status import (
    DESIRED_STATUSES,
    JOB_TYPES,
    LIFECYCLE_HOOKS,
    TASK_STATES,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT = st.integers(0, 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
SMALL = st.integers(0, 10_000)

names = st.text(
    alphabet=st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="-_."),
    min_size=1,
    max_size=12,
)
# A task's name names its directory beside the shared alloc/ one.
task_names = names.filter(lambda n: n not in ("alloc", ".", ".."))
texts = st.text(max_size=24)
durations = st.integers(0, 2**50).map(lambda n: n / 1e9)
str_maps = st.dictionaries(texts, texts, max_size=4)

# TaskEvent.Time is int64 Unix nanoseconds: 1678..2261, never exactly the epoch (0 = unset).
event_times = st.datetimes(
    min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31), timezones=st.just(UTC)
).filter(lambda d: d != EPOCH)
# TaskState times are RFC 3339: any year, never Go's zero time (= unset).
rfc_times = st.datetimes(timezones=st.just(UTC)).filter(lambda d: d != GO_ZERO_TIME)

json_scalars = (
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=8,
)
configs = st.dictionaries(texts, json_values, max_size=4)

restart_policies = st.builds(
    RestartPolicy,
    attempts=SMALL,
    interval=durations,
    delay=durations,
    mode=st.sampled_from(("fail", "delay")),
    render_templates=st.booleans(),
)
lifecycles = st.builds(
    Lifecycle, hook=st.sampled_from(("", *LIFECYCLE_HOOKS)), sidecar=st.booleans()
)
ephemeral_disks = st.builds(
    EphemeralDisk, size_mb=UINT, sticky=st.booleans(), migrate=st.booleans()
)
resources = st.builds(
    Resources, cpu=UINT, memory_mb=UINT, memory_max_mb=UINT, disk_mb=UINT, cores=SMALL
)
constraints = st.builds(
    Constraint, ltarget=texts, rtarget=texts, operand=st.sampled_from(CONSTRAINT_OPERANDS)
)
# Destinations that stay inside the allocation dir.
destinations = st.builds(
    lambda parts, top: "/".join((top, *parts)),
    st.lists(names.filter(lambda n: n not in (".", "..")), min_size=1, max_size=3),
    st.sampled_from(("local", "secrets", "../alloc", "/local")),
)
_signal_templates = st.builds(
    Template,
    embedded_tmpl=st.text(min_size=1, max_size=24),
    dest_path=destinations,
    change_mode=st.just("signal"),
    change_signal=st.sampled_from(("SIGHUP", "SIGUSR1")),
    envvars=st.just(False),
)
_other_templates = st.builds(
    Template,
    source_path=texts,
    dest_path=destinations,
    embedded_tmpl=st.text(min_size=1, max_size=24),
    change_mode=st.sampled_from(("noop", "restart")),
    splay=durations,
    perms=st.integers(0, 0o7777).map(lambda n: f"0{n:o}"),
    left_delim=st.sampled_from(("{{", "[[", "<%")),
    right_delim=st.sampled_from(("}}", "]]", "%>")),
    envvars=st.booleans(),
    err_missing_key=st.booleans(),
)
templates = _signal_templates | _other_templates
artifacts = st.builds(
    TaskArtifact,
    getter_source=st.text(min_size=1, max_size=24),
    getter_options=str_maps,
    getter_headers=str_maps,
    getter_mode=st.sampled_from(ARTIFACT_MODES),
    relative_dest=destinations,
)
ports = st.builds(
    Port,
    label=names,
    value=st.integers(1, 65535),
    to=st.integers(-1, 65535),
    host_network=st.sampled_from(("default", "public")),
)
networks = st.builds(
    NetworkResource,
    mode=st.sampled_from(("host", "bridge", "")),
    reserved_ports=st.lists(ports, max_size=2, unique_by=lambda p: p.label),
    dynamic_ports=st.lists(ports.map(lambda p: attrs.evolve(p, value=0)), max_size=2),
).filter(lambda n: len({p.label for p in n.ports()}) == len(n.ports()))
log_configs = st.builds(LogConfig, max_files=UINT, max_file_size_mb=UINT, disabled=st.booleans())
update_strategies = st.builds(
    UpdateStrategy,
    health_check=st.sampled_from(HEALTH_CHECKS),
    min_healthy_time=durations,
    healthy_deadline=durations,
    max_parallel=SMALL,
    auto_revert=st.booleans(),
    canary=SMALL,
)
migrate_strategies = st.builds(
    MigrateStrategy,
    health_check=st.sampled_from(HEALTH_CHECKS),
    min_healthy_time=durations,
    healthy_deadline=durations,
    max_parallel=SMALL,
)

tasks = st.builds(
    Task,
    name=task_names,
    driver=st.sampled_from(("raw_exec", "mock_driver", "docker")) | names,
    config=configs,
    env=str_maps,
    meta=str_maps,
    user=texts,
    leader=st.booleans(),
    lifecycle=st.none() | lifecycles,
    kill_timeout=durations,
    kill_signal=st.sampled_from(("", "SIGTERM", "SIGINT")),
    shutdown_delay=durations,
    restart_policy=st.none() | restart_policies,
    resources=resources,
    logs=log_configs,
    constraints=st.lists(constraints, max_size=2),
    templates=st.lists(templates, max_size=2),
    artifacts=st.lists(artifacts, max_size=2),
)
task_groups = st.builds(
    TaskGroup,
    name=names,
    tasks=st.lists(tasks, max_size=2, unique_by=lambda t: t.name),
    count=SMALL,
    restart_policy=st.none() | restart_policies,
    ephemeral_disk=ephemeral_disks,
    update=st.none() | update_strategies,
    migrate=st.none() | migrate_strategies,
    meta=str_maps,
    shutdown_delay=durations,
    constraints=st.lists(constraints, max_size=2),
    networks=st.lists(networks, max_size=1),
    max_run_duration=durations,
)
jobs = st.builds(
    Job,
    id=names,
    name=texts,
    namespace=texts,
    type=st.sampled_from(JOB_TYPES),
    region=texts,
    datacenters=st.lists(texts, max_size=3),
    priority=st.integers(0, 100),
    task_groups=st.lists(task_groups, max_size=2, unique_by=lambda g: g.name),
    meta=str_maps,
    update=st.none() | update_strategies,
    version=UINT64,
    stop=st.booleans(),
    create_index=UINT64,
    modify_index=UINT64,
    job_modify_index=UINT64,
    constraints=st.lists(constraints, max_size=2),
)

task_events = st.builds(
    TaskEvent,
    type=st.sampled_from(("Received", "Started", "Terminated", "Restarting")) | texts,
    time=st.none() | event_times,
    message=texts,
    display_message=texts,
    exit_code=INT64,
    signal=INT64,
    fails_task=st.booleans(),
    details=str_maps,
)
task_states = st.builds(
    TaskState,
    state=st.sampled_from(TASK_STATES),
    failed=st.booleans(),
    restarts=UINT64,
    last_restart=st.none() | rfc_times,
    started_at=st.none() | rfc_times,
    finished_at=st.none() | rfc_times,
    events=st.lists(task_events, max_size=3),
)
deployment_statuses = st.builds(
    AllocDeploymentStatus,
    healthy=st.none() | st.booleans(),
    timestamp=st.none() | rfc_times,
    canary=st.booleans(),
    modify_index=UINT64,
)
optional_bools = st.none() | st.booleans()
desired_transitions = st.builds(
    DesiredTransition,
    migrate=optional_bools,
    reschedule=optional_bools,
    force_reschedule=optional_bools,
    no_shutdown_delay=optional_bools,
)
task_state_maps = st.dictionaries(names, task_states, max_size=2)

allocations = st.builds(
    Allocation,
    id=names,
    name=texts,
    namespace=texts,
    node_id=texts,
    eval_id=texts,
    job_id=texts,
    job=st.none() | jobs,
    task_group=texts,
    desired_status=st.sampled_from((*DESIRED_STATUSES, "")),
    desired_description=texts,
    desired_transition=desired_transitions,
    previous_allocation=texts,
    next_allocation=texts,
    deployment_id=texts,
    alloc_modify_index=UINT64,
    create_index=UINT64,
    modify_index=UINT64,
    create_time=INT64,
    modify_time=INT64,
    client_status=st.sampled_from(CLIENT_STATUSES_IN),
    client_description=texts,
    task_states=task_state_maps,
    deployment_status=st.none() | deployment_statuses,
)
alloc_states = st.builds(
    AllocState,
    client_status=st.sampled_from(CLIENT_STATUSES_IN),
    client_description=texts,
    deployment_status=st.none() | deployment_statuses,
    task_states=task_state_maps,
)
