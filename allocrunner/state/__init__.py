"""State databases: where a node keeps allocations and task state across restarts."""

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
