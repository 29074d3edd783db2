"""Job → TaskGroup → Task value objects: defaults, derived properties, deep freezing."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given

from allocrunner.structs import (
    BATCH_RESTART_POLICY,
    SERVICE_RESTART_POLICY,
    EphemeralDisk,
    FrozenDict,
    Job,
    Lifecycle,
    ParameterizedJobConfig,
    PeriodicConfig,
    RestartPolicy,
    Task,
    TaskGroup,
    default_restart_policy,
    effective_restart_policy,
)
from allocrunner.testing import mock_job
from tests.unit.jobspec import strategies as s


def test_nomads_defaults() -> None:
    job = Job(id="web")
    assert (job.name, job.namespace, job.type, job.region) == ("", "default", "service", "global")
    assert (job.datacenters, job.priority, job.task_groups) == (("*",), 50, ())
    task = Task(name="t", driver="raw_exec")
    assert (task.kill_timeout, task.leader, task.lifecycle, task.restart_policy) == (
        5.0,
        False,
        None,
        None,
    )
    assert (task.resources.cpu, task.resources.memory_mb) == (100, 300)
    assert (task.logs.max_files, task.logs.max_file_size_mb) == (10, 10)
    group = TaskGroup(name="g")
    assert (group.count, group.ephemeral_disk, group.restart_policy) == (1, EphemeralDisk(), None)
    assert group.ephemeral_disk.size_mb == 300


def test_task_field_defaults_are_unchanged() -> None:
    task = Task(name="t", driver="raw_exec")
    assert task.dispatch_payload == ""
    job = mock_job()
    assert (job.periodic, job.parameterized, job.payload) == (None, None, b"")
    assert (job.parent_id, job.dispatched, job.submit_time) == ("", False, 0)


@pytest.mark.parametrize(
    ("job_type", "policy"),
    [
        ("service", SERVICE_RESTART_POLICY),
        ("system", SERVICE_RESTART_POLICY),
        ("batch", BATCH_RESTART_POLICY),
        ("sysbatch", BATCH_RESTART_POLICY),
    ],
)
def test_default_restart_policy_by_job_type(job_type: str, policy: RestartPolicy) -> None:
    assert default_restart_policy(job_type) == policy


def test_nomads_default_restart_policies() -> None:
    assert RestartPolicy(attempts=2, interval=1800.0, delay=15.0) == SERVICE_RESTART_POLICY
    assert RestartPolicy(attempts=3, interval=86400.0, delay=15.0) == BATCH_RESTART_POLICY
    assert SERVICE_RESTART_POLICY.mode == BATCH_RESTART_POLICY.mode == "fail"


def test_effective_restart_policy_is_task_then_group_then_job_type() -> None:
    own = RestartPolicy(attempts=7)
    group_policy = RestartPolicy(attempts=5)
    task = Task(name="t", driver="raw_exec")
    group = TaskGroup(name="g", tasks=[task])
    job = Job(id="j", type="batch", task_groups=[group])
    assert effective_restart_policy(job, group, task) == BATCH_RESTART_POLICY
    with_group = attrs.evolve(group, restart_policy=group_policy)
    assert effective_restart_policy(job, with_group, task) == group_policy
    with_task = attrs.evolve(task, restart_policy=own)
    assert effective_restart_policy(job, with_group, with_task) == own


@pytest.mark.parametrize(
    ("lifecycle", "kinds"),
    [
        (None, {"main"}),
        (Lifecycle(), {"main"}),
        (Lifecycle(hook="prestart"), {"prestart"}),
        (Lifecycle(hook="prestart", sidecar=True), {"prestart", "sidecar"}),
        (Lifecycle(hook="poststart"), {"poststart"}),
        (Lifecycle(hook="poststart", sidecar=True), {"poststart", "sidecar"}),
        (Lifecycle(hook="poststop"), {"poststop"}),
    ],
)
def test_task_lifecycle_predicates(lifecycle: Lifecycle | None, kinds: set[str]) -> None:
    task = Task(name="t", driver="raw_exec", lifecycle=lifecycle)
    found = {
        "main": task.is_main(),
        "prestart": task.is_prestart(),
        "poststart": task.is_poststart(),
        "poststop": task.is_poststop(),
        "sidecar": task.is_sidecar(),
    }
    assert {kind for kind, yes in found.items() if yes} == kinds


@pytest.mark.parametrize(
    ("sticky", "migrate", "carries"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
)
def test_migrate_implies_sticky(sticky: bool, migrate: bool, carries: bool) -> None:
    assert EphemeralDisk(sticky=sticky, migrate=migrate).carries_data() is carries


def test_lookups_by_name() -> None:
    web, api = Task(name="web", driver="d"), Task(name="api", driver="d")
    group = TaskGroup(name="g", tasks=[web, api])
    job = Job(id="j", task_groups=[group, TaskGroup(name="h")])
    assert group.task("api") is api and group.task("nope") is None
    assert job.lookup_task_group("g") is group and job.lookup_task_group("nope") is None


def test_periodic_and_parameterized_properties() -> None:
    plain = Job(id="j", type="batch")
    assert not plain.is_periodic() and not plain.is_parameterized()
    assert not plain.is_periodic_active()

    periodic = attrs.evolve(plain, periodic=PeriodicConfig(specs="@daily"))
    assert periodic.is_periodic() and periodic.is_periodic_active()
    disabled = attrs.evolve(periodic, periodic=PeriodicConfig(enabled=False))
    assert disabled.is_periodic() and not disabled.is_periodic_active()
    assert not attrs.evolve(periodic, stop=True).is_periodic_active()

    template = attrs.evolve(periodic, parameterized=ParameterizedJobConfig())
    assert template.is_parameterized() and not template.is_periodic_active()
    child = attrs.evolve(template, dispatched=True, parent_id="j")
    assert not child.is_parameterized() and child.is_periodic_active()


def test_periodic_specs_take_one_spec_or_several() -> None:
    assert PeriodicConfig(specs="@daily").specs == ("@daily",)
    assert PeriodicConfig(specs=["@daily", "@hourly"]).specs == ("@daily", "@hourly")
    assert PeriodicConfig(specs=None).specs == ()  # type: ignore[arg-type]
    assert PeriodicConfig().time_zone == "UTC"
    config = ParameterizedJobConfig(meta_required=["a"], meta_optional=iter(["b"]))
    assert (config.payload, config.meta_required, config.meta_optional) == (
        "optional",
        ("a",),
        ("b",),
    )


def test_free_form_maps_are_deep_frozen_and_stay_so_through_evolve() -> None:
    task = Task(name="t", driver="raw_exec", config={"args": ["-c", {"x": [1]}]}, env={"A": "1"})
    assert task.config == {"args": ("-c", {"x": (1,)})}
    assert isinstance(task.config, FrozenDict) and isinstance(task.env, FrozenDict)
    changed = attrs.evolve(task, config={"args": ["other"]}, meta={"m": "v"})
    assert changed.config == {"args": ("other",)} and isinstance(changed.meta, FrozenDict)
    assert task.config == {"args": ("-c", {"x": (1,)})}
    hash(changed)


def test_collections_become_tuples() -> None:
    group = TaskGroup(name="g", tasks=[Task(name="t", driver="d")])
    job = Job(id="j", datacenters=["a", "b"], task_groups=[group])
    assert isinstance(group.tasks, tuple) and job.datacenters == ("a", "b")
    assert isinstance(job.task_groups, tuple)


def test_values_are_frozen() -> None:
    job = mock_job()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        job.id = "other"  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        job.task_groups[0].tasks[0].driver = "other"  # type: ignore[misc]


@given(s.jobs)
def test_every_job_is_hashable_and_equal_to_its_rebuild(job: Job) -> None:
    rebuilt = attrs.evolve(job, task_groups=list(job.task_groups), meta=dict(job.meta))
    assert rebuilt == job and hash(rebuilt) == hash(job)
    assert rebuilt is not job


@given(s.jobs)
def test_evolve_changes_only_what_it_is_given(job: Job) -> None:
    renamed = attrs.evolve(job, id=job.id + "-2")
    assert renamed.id == job.id + "-2" and renamed != job
    assert attrs.evolve(renamed, id=job.id) == job
