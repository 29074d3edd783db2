"""Nomad's job defaults ("canonicalize"), on parsed API JSON and on Job value objects.

Nomad fills a submitted job's gaps by job type: a group's restart policy is the type's
default (service and system: 2 attempts in 30m, 15s delay, mode fail; batch and
sysbatch: 3 in 24h) with whatever the group sets merged over it, and a task's is its
group's with the task's own settings merged over that. Service and system jobs get a
default update strategy that their groups inherit; service groups get a default
migrate strategy. The remaining defaults (count 1, kill_timeout 5s, 300 MB ephemeral
disk, 10 log files of 10 MB, 100 MHz / 300 MB resources, namespace "default", region
"global") are the value objects' own defaults, so `decode_job` already applies them.

Merging needs to know which settings a file left out, so it happens on the parsed JSON
(`canonicalize_api_job`) before decoding; `canonicalize_job` fills what is still unset
on a Job built in code.

No threads, no locks; pure functions, called by `load_job` / `parse_job`, the
agent's job registration and users.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from allocrunner.jobspec.codec import MIGRATE_STRATEGY, RESTART_POLICY, UPDATE_STRATEGY
from allocrunner.structs import (
    DISPATCH_PAYLOAD_OPTIONAL,
    Job,
    MigrateStrategy,
    ParameterizedJobConfig,
    PeriodicConfig,
    TaskGroup,
    UpdateStrategy,
    default_restart_policy,
)
from allocrunner.structs.status import JOB_SERVICE, JOB_SYSTEM, JOB_TYPES

__all__ = ["canonicalize_api_job", "canonicalize_job"]

DEFAULT_NAMESPACE = "default"
DEFAULT_REGION = "global"
DEFAULT_TIME_ZONE = "UTC"

_DEFAULT_UPDATE_JSON: dict[str, Any] = UPDATE_STRATEGY.encode(UpdateStrategy())
_DEFAULT_MIGRATE_JSON: dict[str, Any] = MIGRATE_STRATEGY.encode(MigrateStrategy())


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with every non-null entry of `over` laid over it (Nomad's Merge)."""
    out = dict(base)
    out.update((k, v) for k, v in over.items() if v is not None)
    return out


def _gets_default_update(job_type: str) -> bool:
    return job_type in (JOB_SERVICE, JOB_SYSTEM)


def canonicalize_api_job(obj: Any) -> Any:
    """Nomad's defaults applied to a parsed API JSON job (a new dict; input untouched).

    Merges partial restart, update and migrate settings over their defaults and down
    from job to group to task. A value of the wrong shape is left in place for
    `decode_job` to report with its path; only the job-level `Migrate`, which no Job
    field holds, is checked here (JobSpecError at `Job.Migrate`).
    """
    if not isinstance(obj, Mapping):
        return obj
    job = dict(obj)
    if job.get("Name") is None and isinstance(job.get("ID"), str):
        job["Name"] = job["ID"]
    job_type = job.get("Type")
    if job_type is None:
        job_type = job["Type"] = JOB_SERVICE
    if job_type not in JOB_TYPES:
        return job
    update = job.get("Update")
    if isinstance(update, Mapping):
        update = job["Update"] = _merged(_DEFAULT_UPDATE_JSON, update)
    elif update is None and _gets_default_update(job_type):
        update = job["Update"] = dict(_DEFAULT_UPDATE_JSON)
    migrate = job.get("Migrate")
    if migrate is not None:
        # Job-level migrate only flows into groups; the Job value has no field for it.
        MIGRATE_STRATEGY.decode(migrate, "Job.Migrate")
    groups = job.get("TaskGroups")
    if isinstance(groups, list | tuple):
        job["TaskGroups"] = [_canonicalize_group(g, job_type, update, migrate) for g in groups]
    return job


def _canonicalize_group(group: Any, job_type: str, job_update: Any, job_migrate: Any) -> Any:
    if not isinstance(group, Mapping):
        return group
    g = dict(group)

    own_update = g.get("Update")
    if isinstance(own_update, Mapping):
        base = job_update if isinstance(job_update, Mapping) else _DEFAULT_UPDATE_JSON
        g["Update"] = _merged(base, own_update)
    elif own_update is None and isinstance(job_update, Mapping):
        g["Update"] = dict(job_update)

    own_migrate = g.get("Migrate")
    base_migrate = _DEFAULT_MIGRATE_JSON
    if isinstance(job_migrate, Mapping):
        base_migrate = _merged(base_migrate, job_migrate)
    if isinstance(own_migrate, Mapping):
        g["Migrate"] = _merged(base_migrate, own_migrate)
    elif own_migrate is None and (isinstance(job_migrate, Mapping) or job_type == JOB_SERVICE):
        g["Migrate"] = dict(base_migrate)

    restart = g.get("RestartPolicy")
    default_restart = RESTART_POLICY.encode(default_restart_policy(job_type))
    if restart is None:
        restart = default_restart
    elif isinstance(restart, Mapping):
        restart = _merged(default_restart, restart)
    g["RestartPolicy"] = restart

    tasks = g.get("Tasks")
    if isinstance(tasks, list | tuple):
        g["Tasks"] = [_canonicalize_task(t, restart) for t in tasks]
    return g


def _canonicalize_task(task: Any, group_restart: Any) -> Any:
    if not isinstance(task, Mapping):
        return task
    t = dict(task)
    resources = t.get("Resources")
    if isinstance(resources, Mapping) and resources.get("Cores") and resources.get("CPU") is None:
        t["Resources"] = {**resources, "CPU": 0}  # reserved cores replace the CPU share
    restart = t.get("RestartPolicy")
    if restart is None:
        t["RestartPolicy"] = group_restart
    elif isinstance(restart, Mapping) and isinstance(group_restart, Mapping):
        t["RestartPolicy"] = _merged(group_restart, restart)
    return t


def canonicalize_job(job: Job) -> Job:
    """`job` with Nomad's defaults filled where still unset (idempotent).

    Name defaults to the id, namespace to "default", region to "global"; a group
    without a restart policy gets its job type's default and a task without one gets
    its group's; service and system jobs get the default update strategy, which groups
    without their own inherit; service groups get the default migrate strategy. A
    periodic block without a time zone gets UTC, a parameterized block without a
    payload rule gets "optional".
    """
    update = job.update
    if update is None and _gets_default_update(job.type):
        update = UpdateStrategy()
    groups = tuple(_canonical_group(job, g, update) for g in job.task_groups)
    return attrs.evolve(
        job,
        name=job.name or job.id,
        namespace=job.namespace or DEFAULT_NAMESPACE,
        region=job.region or DEFAULT_REGION,
        update=update,
        task_groups=groups,
        periodic=_canonical_periodic(job.periodic),
        parameterized=_canonical_parameterized(job.parameterized),
    )


def _canonical_periodic(periodic: PeriodicConfig | None) -> PeriodicConfig | None:
    if periodic is None or periodic.time_zone:
        return periodic
    return attrs.evolve(periodic, time_zone=DEFAULT_TIME_ZONE)


def _canonical_parameterized(
    config: ParameterizedJobConfig | None,
) -> ParameterizedJobConfig | None:
    if config is None or config.payload:
        return config
    return attrs.evolve(config, payload=DISPATCH_PAYLOAD_OPTIONAL)


def _canonical_group(job: Job, group: TaskGroup, job_update: UpdateStrategy | None) -> TaskGroup:
    restart = group.restart_policy or default_restart_policy(job.type)
    migrate = group.migrate
    if migrate is None and job.type == JOB_SERVICE:
        migrate = MigrateStrategy()
    tasks = tuple(
        t if t.restart_policy is not None else attrs.evolve(t, restart_policy=restart)
        for t in group.tasks
    )
    return attrs.evolve(
        group,
        restart_policy=restart,
        update=group.update if group.update is not None else job_update,
        migrate=migrate,
        tasks=tasks,
    )
