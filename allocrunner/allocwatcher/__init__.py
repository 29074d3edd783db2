"""Previous-allocation watchers and disk migrators (see `watcher`)."""

from allocrunner.allocwatcher.watcher import (
    POLL_INTERVAL,
    GroupPrevAllocWatcher,
    LocalPrevAlloc,
    NoopPrevAlloc,
    PrevAllocMigrationError,
    PrevAllocMigrator,
    PrevAllocWaitCancelled,
    PrevAllocWatcher,
    RemotePrevAlloc,
    UnknownAllocationError,
    new_prev_watcher,
)

__all__ = [
    "POLL_INTERVAL",
    "GroupPrevAllocWatcher",
    "LocalPrevAlloc",
    "NoopPrevAlloc",
    "PrevAllocMigrationError",
    "PrevAllocMigrator",
    "PrevAllocWaitCancelled",
    "PrevAllocWatcher",
    "RemotePrevAlloc",
    "UnknownAllocationError",
    "new_prev_watcher",
]
