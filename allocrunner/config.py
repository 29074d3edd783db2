"""ClientConfig: the node-wide settings an AllocRunner, the GC and the Client share.

Besides where allocations live and how they are stopped and collected, it says who the
node is to its tasks: `task_node_vars` gives the variables a task's config may
reference as ``${node.*}``, ``${attr.*}`` and ``${meta.*}`` (Nomad's node attributes
for interpolation, client/taskenv/env.go). They are never environment variables of a
task.

Threads and locks: none; a ClientConfig is an immutable value. Owner: the embedder (or
the agent) builds one and hands it to the `Client`, which passes it on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from allocrunner.structs.frozen import FrozenDict


def _path(value: str | os.PathLike[str]) -> str:
    return os.fspath(value)


def _str_map(field: str) -> Callable[[object], FrozenDict[str, str]]:
    """A converter to a frozen str -> str map; ValueError naming `field` and the entry
    that is not a string."""

    def convert(value: object) -> FrozenDict[str, str]:
        if value is None:
            return FrozenDict()
        if not isinstance(value, Mapping):
            raise ValueError(f"{field}: expected a mapping of strings, not {type(value).__name__}")
        for key, val in value.items():
            if not isinstance(key, str) or not isinstance(val, str):
                raise ValueError(f"{field}[{key!r}]: keys and values must be strings, got {val!r}")
        return FrozenDict(value)

    return convert


@attrs.frozen
class ClientConfig:
    """Immutable. Where allocations live on disk and how they are stopped and collected.

    `data_dir` (the state database's home) defaults to the parent of `alloc_dir`.

    Defaults follow Nomad's client: a 30 s ceiling on any task's kill timeout, GC every
    minute, two destroys at a time, collect above 80 % disk / 70 % inodes / 50 allocs.

    The node's identity as tasks see it: `node_id`, `datacenter`, `region`,
    `node_class`, `node_pool` and the node `meta` (Nomad's client ``meta`` block), plus
    `node_vars`, the fingerprinted interpolation variables (``node.unique.id``,
    ``attr.kernel.name``, ``meta.<k>``, …) that the agent fills and an embedder may.
    """

    alloc_dir: str = attrs.field(converter=_path)
    data_dir: str = attrs.field(
        default=attrs.Factory(lambda self: str(Path(self.alloc_dir).parent), takes_self=True),
        converter=_path,
    )
    max_kill_timeout: float = 30.0
    node_id: str = ""
    region: str = "global"
    datacenter: str = "dc1"
    gc_interval: float = 60.0
    gc_parallel_destroys: int = 2
    gc_disk_usage_threshold: float = 80.0
    gc_inode_usage_threshold: float = 70.0
    gc_max_allocs: int = 50
    kill_retry_base: float = 5.0
    node_class: str = ""
    node_pool: str = "default"
    meta: FrozenDict[str, str] = attrs.field(factory=FrozenDict, converter=_str_map("meta"))
    node_vars: FrozenDict[str, str] = attrs.field(
        factory=FrozenDict, converter=_str_map("node_vars")
    )
    # Whether an artifact may come from a local file or directory (an absolute path or
    # ``file://``); off by default, as a job must not read the node's files.
    artifact_allow_local: bool = False
    # `task_node_vars`, built once: every task runner of the node shares the one map.
    _task_node_vars: FrozenDict[str, str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_task_node_vars", self._build_task_node_vars())

    @classmethod
    def for_data_dir(cls, data_dir: str | os.PathLike[str], **overrides: object) -> ClientConfig:
        """A config whose alloc dirs live under ``<data_dir>/alloc``."""
        root = Path(data_dir)
        return attrs.evolve(cls(alloc_dir=root / "alloc", data_dir=root), **overrides)

    def task_node_vars(self) -> FrozenDict[str, str]:
        """The node variables a task may interpolate (`_build_task_node_vars`), one
        shared map for every task of the node."""
        return self._task_node_vars

    def _build_task_node_vars(self) -> FrozenDict[str, str]:
        """The node variables a task may interpolate: what this config knows of the
        node (``node.datacenter``, ``node.region``, ``node.class``, ``node.pool``,
        ``node.unique.id`` when `node_id` is set, ``meta.<k>`` and ``node.meta.<k>``),
        overlaid by the fingerprinted `node_vars`. Without a fingerprint ``attr.*``
        are unknown, so a reference to one stays as written."""
        known = {
            "node.datacenter": self.datacenter,
            "node.region": self.region,
            "node.class": self.node_class,
            "node.pool": self.node_pool,
        }
        if self.node_id:
            known["node.unique.id"] = self.node_id
        for key, value in self.meta.items():
            known[f"meta.{key}"] = value
            known[f"node.meta.{key}"] = value
        known.update(self.node_vars)
        return FrozenDict(known)

    def state_db_path(self) -> Path:
        """The embedded state database file."""
        return Path(self.data_dir) / "client" / "state.db"

    def raw_exec_state_dir(self) -> Path:
        """Where the raw_exec driver built for this node keeps its spawner and the
        exit records of its tasks."""
        return Path(self.data_dir) / "client" / "raw_exec"
