"""Which cgroup a raw_exec task runs in: the agent-side plan the spawner carries out.

The host's mode is read from the cgroup root (by default ``/sys/fs/cgroup``): ``v2`` when
it holds ``cgroup.controllers`` (a unified hierarchy), ``v1`` when controllers are
mounted below it (``<root>/<controller>/cgroup.procs``), else none.

What a task joins, following Nomad's raw_exec:

- ``cgroup_v2_override`` on a v2 host: that cgroup, joined as it is (never created,
  limited or removed). A path below the root is taken as it is; any other path is read
  relative to the root (``/custom.slice/x`` and ``custom.slice/x`` both name
  ``<root>/custom.slice/x``).
- ``cgroup_v1_override`` on a v1 host: per controller, ``<root>/<controller>/<path>``.
- no override on a v2 host where the root (or ``nomad.slice`` below it) is writable: a
  cgroup of its own, ``<root>/nomad.slice/<alloc id>.<task>.scope``, created before and
  removed after the task, with ``memory.max`` from the task's resources (``memory_max``
  when set, -1 meaning no limit, else ``memory``).
- otherwise: no cgroup of its own (the spawner's), with a warning.

An override that cannot be joined (another mode, missing, not writable) is left out with
a warning: the task runs, in no cgroup of its own. The plan is checked here (paths exist,
are writable), and the spawner still falls back safely if a step fails when it acts
(`allocrunner.drivers.spawner`): a task is spawned only once every join succeeded.

Threads: none; pure functions and a few ``stat``/``access`` calls on the caller's
thread. Locks: none. Owner: `allocrunner.drivers.raw_exec` (the plan of each start) and
`allocrunner.jobspec.runnable` (`host_mode`, for job-load warnings).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs

from allocrunner.structs.job import Resources

__all__ = [
    "CGROUP_ROOT",
    "NOMAD_SLICE",
    "CgroupPlan",
    "host_mode",
    "memory_max_bytes",
    "plan_cgroup",
]

CGROUP_ROOT = "/sys/fs/cgroup"
NOMAD_SLICE = "nomad.slice"
_MB = 1024 * 1024
_PROCS = "cgroup.procs"


def host_mode(root: str = CGROUP_ROOT) -> str:
    """``"v2"``, ``"v1"`` or ``""`` (no cgroups usable here) for the cgroup root."""
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        return "v2"
    try:
        names = os.listdir(root)
    except OSError:
        return ""
    if any(os.path.exists(os.path.join(root, name, _PROCS)) for name in names):
        return "v1"
    return ""


@attrs.frozen
class CgroupPlan:
    """Immutable. What the spawner does for one task: join each ``(mount, key,
    target)`` (``key`` names the controller in ``/proc/self/cgroup``, ``""`` for v2,
    and ``mount`` is where the spawner returns to its own cgroup of that key), after
    creating `create` (then removed once the task is reaped) with `memory_max`."""

    joins: tuple[tuple[str, str, str], ...]
    create: str = ""
    memory_max: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "joins": [list(j) for j in self.joins],
            "create": self.create,
            "memory_max": self.memory_max,
        }


def memory_max_bytes(resources: Resources) -> str:
    """The ``memory.max`` of a task: its memory_max (-1: ``max``), else its memory, in
    bytes; ``""`` for none."""
    if resources.memory_max_mb < 0:
        return "max"
    mb = resources.memory_max_mb or resources.memory_mb
    return str(mb * _MB) if mb > 0 else ""


def scope_name(alloc_id: str, task_name: str) -> str:
    """The cgroup of a task below nomad.slice, as Nomad names it."""
    return f"{alloc_id}.{task_name}.scope".replace("/", "_")


def plan_cgroup(
    *,
    root: str,
    mode: str,
    alloc_id: str,
    task_name: str,
    resources: Resources,
    v1_override: Mapping[str, str] | None,
    v2_override: str,
) -> tuple[CgroupPlan | None, str]:
    """The plan for one task and the warning to give (``""`` for none); see the module
    docstring. A plan of None: the task gets no cgroup of its own."""
    if v2_override:
        if mode != "v2":
            return None, (
                f"cgroup_v2_override {v2_override!r} not applied: {_no_mode(root, 'v2', mode)}"
            )
        target = _below(root, v2_override)
        problem = _not_joinable(root, target)
        if problem:
            return None, f"cgroup_v2_override {v2_override!r} not applied: {problem}"
        return CgroupPlan(joins=((root, "", target),)), ""
    if v1_override:
        if mode != "v1":
            return None, f"cgroup_v1_override not applied: {_no_mode(root, 'v1', mode)}"
        joins: list[tuple[str, str, str]] = []
        for controller, path in sorted(v1_override.items()):
            mount = os.path.join(root, controller)
            target = _below(mount, path)
            problem = _not_joinable(mount, target)
            if problem or not os.path.isdir(mount) or "/" in controller:
                return None, (
                    f"cgroup_v1_override not applied: {controller} cgroup {path!r}:"
                    f" {problem or 'no such controller'}"
                )
            joins.append((mount, controller, target))
        return CgroupPlan(joins=tuple(joins)), ""
    if mode != "v2":
        return None, f"tasks run in no cgroup of their own: {_no_mode(root, 'v2', mode)}"
    parent = os.path.join(root, NOMAD_SLICE)
    if not os.access(parent if os.path.isdir(parent) else root, os.W_OK):
        return None, f"tasks run in no cgroup of their own: {parent} is not writable"
    scope = os.path.join(parent, scope_name(alloc_id, task_name))
    plan = CgroupPlan(
        joins=((root, "", scope),), create=scope, memory_max=memory_max_bytes(resources)
    )
    return plan, ""


def _no_mode(root: str, wanted: str, mode: str) -> str:
    have = f"cgroup {mode}" if mode else "no cgroups"
    return f"this node has {have} at {root}, not cgroup {wanted}"


def _below(mount: str, path: str) -> str:
    """`path` as a cgroup below `mount`: kept if already below it, else joined to it."""
    mount = os.path.normpath(mount)
    normal = os.path.normpath(path)
    if normal == mount or normal.startswith(mount + os.sep):
        return normal
    return os.path.normpath(os.path.join(mount, normal.lstrip(os.sep)))


def _not_joinable(mount: str, target: str) -> str:
    """Why a task cannot join cgroup `target` of the hierarchy at `mount` (``""`` if it
    can)."""
    if target != os.path.normpath(mount) and not target.startswith(
        os.path.normpath(mount) + os.sep
    ):
        return f"{target} is outside {mount}"
    procs = os.path.join(target, _PROCS)
    if not os.path.exists(procs):
        return f"{target} is not a cgroup"
    if not os.access(procs, os.W_OK):
        return f"{procs} is not writable"
    return ""
