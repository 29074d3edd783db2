"""The names this package's implementations were first published under, kept
importable from here: each now lives in its own module (`base` for the protocols and
errors, `noop`, `local`, `remote`, `group`, `factory`).

Threads, locks: none (re-exports only). Owner: older imports of
``allocrunner.allocwatcher.watcher``.
"""

from allocrunner.allocwatcher.base import (
    POLL_INTERVAL,
    PrevAllocMigrationError,
    PrevAllocMigrator,
    PrevAllocWaitCancelled,
    PrevAllocWatcher,
    UnknownAllocationError,
)
from allocrunner.allocwatcher.factory import PrevAllocRunner, new_prev_watcher
from allocrunner.allocwatcher.group import GroupPrevAllocWatcher
from allocrunner.allocwatcher.local import LocalPrevAlloc
from allocrunner.allocwatcher.noop import NoopPrevAlloc
from allocrunner.allocwatcher.remote import FetchAlloc, FetchSnapshot, RemotePrevAlloc

__all__ = [
    "POLL_INTERVAL",
    "FetchAlloc",
    "FetchSnapshot",
    "GroupPrevAllocWatcher",
    "LocalPrevAlloc",
    "NoopPrevAlloc",
    "PrevAllocMigrationError",
    "PrevAllocMigrator",
    "PrevAllocRunner",
    "PrevAllocWaitCancelled",
    "PrevAllocWatcher",
    "RemotePrevAlloc",
    "UnknownAllocationError",
    "new_prev_watcher",
]
