"""The task environment (NOMAD_* variables), the node variables, and ``${...}``
interpolation.

Two maps, as in Nomad's client/taskenv/env.go:

- the task env, which the task's process gets: `nomad_env` builds the variables Nomad
  gives every task (its directories; its allocation, group, job, namespace, region and
  datacenter; its resource limits; ``NOMAD_META_*`` from the job, group and task meta;
  the ``NOMAD_*_<label>`` variables of the allocation's ports), and `task_env` adds the
  task's own ``env`` block, each value interpolated against what is already known;
- the node variables (``node.unique.id``, ``node.datacenter``, ``attr.<key>``,
  ``meta.<key>`` for the node's meta, …; `ClientConfig.task_node_vars`), which are
  only ever interpolated, never exported to the task.

`interpolation_scope` overlays the task env on the node variables: it is what the
``env`` block, the driver config, artifacts and templates are interpolated or rendered
against (on a name clash, which only a dotted env name can cause, the task env wins).
`interpolate` and `interpolate_config` replace ``${NAME}``, ``${env.NAME}``,
``${env["NAME"]}``, ``${node.unique.id}``, ``${attr.KEY}`` and ``${meta.KEY}`` in
strings, lists and maps (a driver config); a reference to something unknown is left
exactly as written, as Nomad does. ``${meta.KEY}`` is the node's meta, as in Nomad;
when the node has no such key it falls back to the task's meta (``NOMAD_META_KEY``),
which Nomad would leave unreplaced.

Drivers without filesystem isolation (raw_exec) also hand the agent's own
environment to the task, below everything else (`HOST_ENV_DRIVERS`).

No threads, no locks: pure functions, called by the task runner on its run thread (the
env hook and the driver config it interpolates).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from allocrunner.placement.ports import port_env
from allocrunner.structs import Allocation, Task
from allocrunner.structs.frozen import merge_into, plain_dict

__all__ = [
    "DEFAULT_HOST_IP",
    "HOST_ENV_DRIVERS",
    "META_PREFIX",
    "host_env",
    "interpolate",
    "interpolate_config",
    "interpolation_scope",
    "nomad_env",
    "port_host_ip",
    "task_env",
]

META_PREFIX = "NOMAD_META_"
HOST_ENV_DRIVERS = frozenset({"raw_exec"})
"""Drivers whose tasks inherit the agent's environment (no filesystem isolation)."""
DEFAULT_HOST_IP = "127.0.0.1"
"""The address of a port that carries none, on a node whose IP is unknown (the port
allocator binds on loopback by default)."""
NODE_IP_ATTRIBUTE = "attr.unique.network.ip-address"

_REFERENCE = re.compile(r"\$\{([^{}]*)\}")
_ENV_INDEX = re.compile(r"""env\[\s*(?:"([^"]*)"|'([^']*)')\s*\]""")


def host_env() -> dict[str, str]:
    """A copy of the agent's environment."""
    return dict(os.environ)


def interpolation_scope(env: Mapping[str, str], node_vars: Mapping[str, str]) -> dict[str, str]:
    """What a task's config is interpolated against: `env` over `node_vars`."""
    scope = plain_dict(node_vars)
    merge_into(scope, env)
    return scope


def port_host_ip(node_vars: Mapping[str, str]) -> str:
    """The address for a port that carries no HostIP: the node's IP when it was
    fingerprinted, else `DEFAULT_HOST_IP`."""
    return node_vars.get(NODE_IP_ATTRIBUTE) or DEFAULT_HOST_IP


def nomad_env(
    alloc: Allocation,
    task: Task,
    *,
    alloc_dir: str,
    local_dir: str,
    secrets_dir: str,
    datacenter: str = "",
    node_vars: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Nomad's NOMAD_* variables for `task` of `alloc` on the node `node_vars` describe.

    Directories are host paths: NOMAD_ALLOC_DIR is the shared ``alloc/`` dir,
    NOMAD_TASK_DIR the task's ``local/`` dir and NOMAD_SECRETS_DIR its ``secrets/``.
    NOMAD_DC is the node's ``node.datacenter`` when known, else `datacenter`.
    Each allocated port gives its ``NOMAD_*_<label>`` variables (`port_env`; a port
    without a HostIP gets `port_host_ip`). Metadata (job, then group, then task, the
    later winning) appears as ``NOMAD_META_<key>`` both as given and upper-cased, its
    values interpolated against the node variables and the variables above.
    """
    node = node_vars or {}
    job = alloc.job
    group = alloc.group()
    env = {
        "NOMAD_ALLOC_DIR": alloc_dir,
        "NOMAD_TASK_DIR": local_dir,
        "NOMAD_SECRETS_DIR": secrets_dir,
        "NOMAD_ALLOC_ID": alloc.id,
        "NOMAD_SHORT_ALLOC_ID": alloc.id[:8],
        "NOMAD_ALLOC_NAME": alloc.name,
        "NOMAD_ALLOC_INDEX": str(alloc.index()),
        "NOMAD_TASK_NAME": task.name,
        "NOMAD_GROUP_NAME": alloc.task_group,
        "NOMAD_JOB_ID": job.id if job is not None else alloc.job_id,
        "NOMAD_JOB_NAME": (job.name or job.id) if job is not None else alloc.job_id,
        "NOMAD_NAMESPACE": alloc.namespace,
        "NOMAD_REGION": job.region if job is not None else "",
        "NOMAD_DC": node.get("node.datacenter") or datacenter,
        "NOMAD_CPU_LIMIT": str(task.resources.cpu),
        "NOMAD_MEMORY_LIMIT": str(task.resources.memory_mb),
    }
    if task.resources.memory_max_mb:
        env["NOMAD_MEMORY_MAX_LIMIT"] = str(task.resources.memory_max_mb)
    env.update(port_env(alloc.allocated_ports, port_host_ip(node)))
    meta: dict[str, str] = {}
    for layer in (job.meta if job else {}, group.meta if group else {}, task.meta):
        meta.update(layer)
    scope = interpolation_scope(env, node)
    for key, value in meta.items():
        text = interpolate(str(value), scope)
        env[META_PREFIX + key] = text
        env[META_PREFIX + key.upper()] = text
    return env


def task_env(task: Task, known: Mapping[str, str]) -> dict[str, str]:
    """The task's ``env`` block, each value interpolated against `known` (and the
    entries before it); ValueError naming the entry for a non-string value."""
    env: dict[str, str] = {}
    scope = dict(known)
    for key, value in task.env.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"task {task.name!r}: env key {key!r} must be a non-empty string")
        if not isinstance(value, str):
            raise ValueError(
                f"task {task.name!r}: env[{key!r}] must be a string, not {type(value).__name__}"
            )
        resolved = interpolate(value, scope)
        env[key] = resolved
        scope[key] = resolved
    return env


def _lookup(expr: str, env: Mapping[str, str]) -> str | None:
    expr = expr.strip()
    if expr in env:
        return env[expr]
    if expr.startswith("env."):
        return env.get(expr[4:])
    indexed = _ENV_INDEX.fullmatch(expr)
    if indexed is not None:
        return env.get(indexed.group(1) if indexed.group(1) is not None else indexed.group(2))
    if expr.startswith("meta."):
        # Not the node's meta (an exact key, found above): the task's.
        key = expr[5:]
        return env.get(META_PREFIX + key, env.get(META_PREFIX + key.upper()))
    return None


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Replace every ``${...}`` reference in `text` that `env` can resolve."""
    if "${" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        value = _lookup(match.group(1), env)
        return match.group(0) if value is None else value

    return _REFERENCE.sub(replace, text)


def interpolate_config(config: Any, env: Mapping[str, str]) -> Any:
    """`config` with every string value (in nested maps and lists) interpolated;
    keys and non-string values are left alone. Maps come back as plain dicts."""
    if isinstance(config, str):
        return interpolate(config, env)
    if isinstance(config, Mapping):
        return {key: interpolate_config(value, env) for key, value in config.items()}
    if isinstance(config, list | tuple):
        return [interpolate_config(value, env) for value in config]
    return config
