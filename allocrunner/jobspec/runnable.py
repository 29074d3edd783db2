"""Refuse a job this node would run differently from what it says.

A warning is enough for a block that only Nomad's servers or other nodes act on; a
block that changes what a task sees or does and that this node cannot honour is an
error instead, so a job never starts with a silently different meaning:

- a task driver this node does not have (the built-in `mock_driver` and `raw_exec`,
  unless the caller names its own drivers);
- a template whose text calls Consul, Vault or Nomad-API functions (`key`, `secret`,
  `nomadService`, …: `allocrunner.template.consul_or_vault_functions`), calls a
  function this node refuses to run (`plugin`, `writeToFile`, …:
  `unsupported_functions`), or does not parse;
- an artifact fetched by a getter other than http, https, git or a local file (s3,
  gcs, hg, …);
- a group network whose mode is not host networking;
- raw_exec settings of the wrong type (`oom_score_adj` an integer from 0 to 1000,
  `cgroup_v1_override` a map of strings, `cgroup_v2_override` a string); both
  overrides at once fail the task's start, as in Nomad (the driver refuses them);
- a group `max_run_duration` Nomad's servers refuse: below zero, or in a job that is
  neither batch nor sysbatch.

Templates, artifacts and a group's `max_run_duration` are acted on
(`taskrunner.template_hook`, `taskrunner.artifact_hook`, `runner.max_run_duration_hook`);
group network ports are reserved, and constraints checked, when the agent places the
allocation (`allocrunner.agent.placement`).

`runtime_warnings` lists what the job model carries and this node does not act on, but
which changes nothing a task sees: a raw_exec cgroup override of a cgroup version this
node does not have (`cgroup_v2_override` without a cgroup v2 hierarchy at
/sys/fs/cgroup, `cgroup_v1_override` without cgroup v1 controllers there: the task runs
in no cgroup of its own, `allocrunner.drivers._cgroups`). raw_exec's `oom_score_adj`
and a task's `logs { disabled = true }` are honoured by the driver.

Errors are `JobSpecError` naming the block by its path, as the job file spells it
(`job.group[web].task[api].template[0].data`) or as API JSON does
(`Job.TaskGroups[0].Tasks[0].Templates[0].EmbeddedTmpl`).

No threads, no locks; pure functions over an immutable Job, called by `load` (job
files) and the agent's job registration.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from typing import Literal

import attrs

from allocrunner.errors import JobSpecError
from allocrunner.structs import JOB_BATCH, JOB_SYSBATCH, Job, Task, TaskGroup
from allocrunner.structs.job import NETWORK_MODE_HOST, Template

__all__ = [
    "ANY_DRIVER",
    "ARTIFACT_GETTERS",
    "PathStyle",
    "builtin_drivers",
    "check_runnable",
    "getter_of",
    "runtime_warnings",
]

_NOT_YET = "not honoured by this node's task runner yet"

PathStyle = Literal["hcl", "json"]

#: The artifact getters this node runs (`allocrunner.artifacts`).
ARTIFACT_GETTERS = frozenset({"http", "https", "git", "file"})
_FORCED = re.compile(r"^([A-Za-z0-9]+)::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# go-getter's detectors: host names that mean a getter without a scheme.
_DETECTED = (
    ("github.com/", "git"),
    ("gitlab.com/", "git"),
    ("bitbucket.org/", "git"),
    ("git@", "git"),
)
_DETECTED_HOSTS = ((".amazonaws.com", "s3"), ("googleapis.com", "gcs"))


class _AnyDriver(Collection[str]):
    """Immutable. The driver names of a caller that checks drivers itself: all of them."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "ANY_DRIVER"


#: Pass as `drivers` to leave drivers unchecked (the agent's placement checks them).
ANY_DRIVER: Collection[str] = _AnyDriver()


def builtin_drivers() -> frozenset[str]:
    """The names of the drivers `default_drivers()` builds."""
    from allocrunner.drivers.mock import NAME as MOCK_NAME
    from allocrunner.drivers.raw_exec import NAME as RAW_EXEC_NAME

    return frozenset({MOCK_NAME, RAW_EXEC_NAME})


@attrs.frozen
class _Paths:
    """Immutable. How one path style names the parts of a job."""

    style: PathStyle

    def group(self, index: int, group: TaskGroup) -> str:
        if self.style == "hcl":
            return f"job.group[{group.name}]"
        return f"Job.TaskGroups[{index}]"

    def task(self, group_path: str, index: int, task: Task) -> str:
        if self.style == "hcl":
            return f"{group_path}.task[{task.name}]"
        return f"{group_path}.Tasks[{index}]"

    def item(self, parent: str, hcl: str, json: str, index: int) -> str:
        return f"{parent}.{hcl}[{index}]" if self.style == "hcl" else f"{parent}.{json}[{index}]"

    def field(self, parent: str, hcl: str, json: str) -> str:
        return f"{parent}.{hcl if self.style == 'hcl' else json}"


def _check_max_run_duration(job: Job, group: TaskGroup, path: str) -> None:
    """Nomad's validation of a group's max_run_duration: above zero, and only in a batch
    or sysbatch job (it stops an allocation that is still running)."""
    if group.max_run_duration < 0:
        raise JobSpecError(path, "max_run_duration must be greater than zero")
    if job.type not in (JOB_BATCH, JOB_SYSBATCH):
        raise JobSpecError(
            path,
            f"job type {job.type!r} does not allow max_run_duration (batch and sysbatch only)",
        )


def check_runnable(
    job: Job,
    *,
    style: PathStyle = "json",
    drivers: Collection[str] | None = None,
    runtime: bool = True,
) -> None:
    """Raise JobSpecError naming the first block of `job` this node cannot honour.

    `drivers`: the driver names the node has (default: `builtin_drivers()`).
    `runtime=False` skips the refusals of what the task runner does not act on yet
    (none today) and of a max_run_duration Nomad's servers refuse: for checking the
    job model alone."""
    known = builtin_drivers() if drivers is None else drivers
    paths = _Paths(style)
    for g, group in enumerate(job.task_groups):
        group_path = paths.group(g, group)
        if runtime and group.max_run_duration:
            _check_max_run_duration(
                job, group, paths.field(group_path, "max_run_duration", "MaxRunDuration")
            )
        for n, network in enumerate(group.networks):
            network_path = paths.item(group_path, "network", "Networks", n)
            if network.mode not in ("", NETWORK_MODE_HOST):
                raise JobSpecError(
                    paths.field(network_path, "mode", "Mode"),
                    f"network mode {network.mode!r} is not supported: only host networking",
                )
        for t, task in enumerate(group.tasks):
            _check_task(task, paths.task(group_path, t, task), paths, known, runtime)


def _check_task(
    task: Task, path: str, paths: _Paths, drivers: Collection[str], runtime: bool
) -> None:
    if task.driver not in drivers:
        raise JobSpecError(
            paths.field(path, "driver", "Driver"),
            f"driver {task.driver!r} is not available on this node"
            f" (available: {', '.join(sorted(drivers))})",
        )
    if task.driver == "raw_exec":
        _check_raw_exec_config(task.config, paths.field(path, "config", "Config"))
    for i, template in enumerate(task.templates):
        _check_template(template, paths.item(path, "template", "Templates", i), paths)
    for i, artifact in enumerate(task.artifacts):
        where = paths.item(path, "artifact", "Artifacts", i)
        _check_artifact_getter(artifact.getter_source, where, paths)


def runtime_warnings(job: Job, *, style: PathStyle = "json") -> list[str]:
    """One warning per setting the job model carries and this node does not act on
    though it changes nothing the task sees (module docstring); each starts with the
    setting's path."""
    paths = _Paths(style)
    found: list[str] = []
    for g, group in enumerate(job.task_groups):
        group_path = paths.group(g, group)
        for t, task in enumerate(group.tasks):
            task_path = paths.task(group_path, t, task)
            found.extend(_task_setting_warnings(task, task_path, paths))
    return found


def _task_setting_warnings(task: Task, path: str, paths: _Paths) -> list[str]:
    found: list[str] = []
    if task.driver == "raw_exec":
        found.extend(_cgroup_override_warnings(task.config, paths.field(path, "config", "Config")))
    return found


def _cgroup_override_warnings(config: Mapping[str, object], path: str) -> list[str]:
    """A warning for a cgroup override of a version this node's cgroups are not."""
    from allocrunner.drivers._cgroups import CGROUP_ROOT, host_mode

    wanted = [(key, version) for key, version in _OVERRIDES if config.get(key)]
    if not wanted:
        return []
    mode = host_mode()
    have = f"cgroup {mode}" if mode else "no cgroups"
    return [
        f"{path}.{key}: this node has {have} at {CGROUP_ROOT}, not cgroup {version} (the task"
        " runs in no cgroup of its own); ignored"
        for key, version in wanted
        if mode != version
    ]


_OVERRIDES = (("cgroup_v1_override", "v1"), ("cgroup_v2_override", "v2"))


def _check_artifact_getter(source: str, path: str, paths: _Paths) -> None:
    getter = getter_of(source)
    if getter not in ARTIFACT_GETTERS:
        raise JobSpecError(
            paths.field(path, "source", "GetterSource"),
            f"artifact getter {getter!r} is not supported on this node"
            " (only http, https, git and local files)",
        )


def _check_template(template: Template, path: str, paths: _Paths) -> None:
    """Consul, Vault and Nomad-API functions cannot be served; text must parse."""
    text = template.embedded_tmpl
    if not text:
        return  # a source file is read at run time, and checked then
    where = paths.field(path, "data", "EmbeddedTmpl")
    from allocrunner.template import (
        TemplateError,
        consul_or_vault_functions,
        unsupported_functions,
    )

    left, right = template.left_delim or "{{", template.right_delim or "}}"
    try:
        used = consul_or_vault_functions(text, left, right)
        refused = unsupported_functions(text, left, right)
    except TemplateError as err:
        raise JobSpecError(where, f"template does not parse: {err}") from None
    if used:
        raise JobSpecError(
            where,
            "template calls functions that need Consul, Vault or the Nomad API, which this"
            f" node does not offer: {', '.join(sorted(used))}",
        )
    if refused:
        raise JobSpecError(
            where,
            "template calls functions this node does not run (disabled by Nomad's default"
            f" function denylist, or not supported here): {', '.join(sorted(refused))}",
        )


def _check_raw_exec_config(config: Mapping[str, object], path: str) -> None:
    adj = config.get("oom_score_adj")
    if adj is not None and (
        not isinstance(adj, int) or isinstance(adj, bool) or not 0 <= adj <= 1000
    ):
        raise JobSpecError(
            f"{path}.oom_score_adj", f"expected an integer from 0 to 1000, got {adj!r}"
        )
    v1 = config.get("cgroup_v1_override")
    if v1 is not None and not (
        isinstance(v1, Mapping) and all(isinstance(v, str) for v in v1.values())
    ):
        raise JobSpecError(f"{path}.cgroup_v1_override", "expected a map of strings")
    v2 = config.get("cgroup_v2_override")
    if v2 is not None and not isinstance(v2, str):
        raise JobSpecError(f"{path}.cgroup_v2_override", f"expected a string, got {v2!r}")


def getter_of(source: str) -> str:
    """The go-getter an artifact source selects: a forced `getter::` prefix, a URL
    scheme, a detected host (github.com: git, *.amazonaws.com: s3, …), else `file`."""
    forced = _FORCED.match(source)
    if forced:
        return forced.group(1).lower()
    scheme = _SCHEME.match(source)
    if scheme:
        return scheme.group(1).lower()
    for prefix, getter in _DETECTED:
        if source.startswith(prefix):
            return getter
    host = source.split("/", 1)[0]
    for suffix, getter in _DETECTED_HOSTS:
        if "." in host and host.endswith(suffix) and not source.startswith((".", "/")):
            return getter
    return "file"
