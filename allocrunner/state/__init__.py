"""State databases: where a node keeps allocations and task state across restarts.

The `StateDB` protocol and its implementations: `SQLiteStateDB` (the embedded default),
`MemDB` and `NoopDB`. Threads: a SQLiteStateDB commits on its own ``statedb-writer``
thread (see `sqlite_writer`); the others have none. Locks: each implementation holds
its own "StateDB._lock" (see its module). Owner: the embedder or `Client` opens one;
runners and task runners write to it, `Client.start` restores from it.
"""

from allocrunner.state.base import HookState, LocalState, StateDB, WriteStats
from allocrunner.state.memory import MemDB
from allocrunner.state.noop import NoopDB
from allocrunner.state.sqlite import SCHEMA_VERSION, SQLiteStateDB

__all__ = [
    "SCHEMA_VERSION",
    "HookState",
    "LocalState",
    "MemDB",
    "NoopDB",
    "SQLiteStateDB",
    "StateDB",
    "WriteStats",
]
