"""State databases: where a node keeps allocations and task state across restarts."""

from allocrunner.state.base import HookState, LocalState, StateDB, WriteStats
from allocrunner.state.memory import MemDB
from allocrunner.state.noop import NoopDB

__all__ = [
    "HookState",
    "LocalState",
    "MemDB",
    "NoopDB",
    "StateDB",
    "WriteStats",
]
