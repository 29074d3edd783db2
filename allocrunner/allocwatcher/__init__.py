"""Previous-allocation watchers and disk migrators.

The roles are the protocols `PrevAllocWatcher` and `PrevAllocMigrator` (`base`); the
implementations are `NoopPrevAlloc` (`noop`), `LocalPrevAlloc` (`local`),
`RemotePrevAlloc` (`remote`) and `GroupPrevAllocWatcher` (`group`); `new_prev_watcher`
(`factory`) picks them for an allocation. Each module states its threads and locks;
the package itself has neither. Owner: the AllocRunner that waits on or migrates from
the previous allocation (built for it by the Client through `new_prev_watcher`).
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
from allocrunner.allocwatcher.noop import NOOP_PREV_ALLOC, NoopPrevAlloc
from allocrunner.allocwatcher.remote import (
    FetchAlloc,
    FetchSnapshot,
    RemoteOptions,
    RemotePrevAlloc,
)

__all__ = [
    "NOOP_PREV_ALLOC",
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
    "RemoteOptions",
    "RemotePrevAlloc",
    "UnknownAllocationError",
    "new_prev_watcher",
]
