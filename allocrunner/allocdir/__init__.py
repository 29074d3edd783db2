"""The alloc dir: per-allocation directory tree, safe fs API, migration stream.

`AllocDir` lays out ``<root>/<alloc_id>/alloc/{data,logs,tmp}`` and, through
`TaskDir`, ``<root>/<alloc_id>/<task>/{local,secrets,tmp}``; it moves, snapshots and
extracts the migrated parts (``alloc/data`` and each task's ``local/``), and serves
reads of the tree to outside callers without ever letting a path or a symlink lead
out of it.

Threads: none of its own. Locks: "AllocDir._lock" (see `alloc_dir`). Owner: each
AllocRunner creates its AllocDir; migration and the agent's file API read it.
"""

from allocrunner.allocdir.alloc_dir import POLL_INTERVAL, AllocDir
from allocrunner.allocdir.fs import (
    DELETED,
    MODIFIED,
    TRUNCATED,
    AllocDirDestroyError,
    FileChange,
    FileInfo,
    PathNotFoundError,
    SecretsAccessError,
)
from allocrunner.allocdir.tarstream import error_marker_name
from allocrunner.allocdir.task_dir import TaskDir, TaskPaths

__all__ = [
    "DELETED",
    "MODIFIED",
    "POLL_INTERVAL",
    "TRUNCATED",
    "AllocDir",
    "AllocDirDestroyError",
    "FileChange",
    "FileInfo",
    "PathNotFoundError",
    "SecretsAccessError",
    "TaskDir",
    "TaskPaths",
    "error_marker_name",
]
