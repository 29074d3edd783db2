"""ClientConfig: the node-wide settings an AllocRunner, the GC and the Client share.

Threads and locks: none; a ClientConfig is an immutable value. Owner: the embedder (or
the agent) builds one and hands it to the `Client`, which passes it on.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs


def _path(value: str | os.PathLike[str]) -> str:
    return os.fspath(value)


@attrs.frozen
class ClientConfig:
    """Immutable. Where allocations live on disk and how they are stopped and collected.

    `data_dir` (the state database's home) defaults to the parent of `alloc_dir`.

    Defaults follow Nomad's client: a 30 s ceiling on any task's kill timeout, GC every
    minute, two destroys at a time, collect above 80 % disk / 70 % inodes / 50 allocs.
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

    @classmethod
    def for_data_dir(cls, data_dir: str | os.PathLike[str], **overrides: object) -> ClientConfig:
        """A config whose alloc dirs live under ``<data_dir>/alloc``."""
        root = Path(data_dir)
        return attrs.evolve(cls(alloc_dir=root / "alloc", data_dir=root), **overrides)

    def state_db_path(self) -> Path:
        """The embedded state database file."""
        return Path(self.data_dir) / "client" / "state.db"

    def raw_exec_state_dir(self) -> Path:
        """Where the raw_exec driver built for this node keeps its spawner and the
        exit records of its tasks."""
        return Path(self.data_dir) / "client" / "raw_exec"
