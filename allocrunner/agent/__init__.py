"""The long-running node agent: one owner per data dir, Nomad's HTTP API over a Client.

`Agent(AgentConfig(data_dir=…))` runs in-process (the command line embeds one when
no agent is running); `main(argv)` is ``allocrunner agent``.

The names below are loaded on first use, so that importing one small module of the
package (its errors, the data-dir record) does not load the whole agent. Type checkers
see them through the ``TYPE_CHECKING`` imports.

Threads: none. Locks: none. Owner: the importer; `Agent` is created by
``allocrunner agent`` (`main`) or by the command line when no agent runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from allocrunner.agent.agent import DEFAULT_HTTP_ADDR, Agent, AgentConfig
    from allocrunner.agent.command import main
    from allocrunner.agent.datadir import find_agent
    from allocrunner.agent.errors import AgentError, ApiError, DataDirLockedError

_EXPORTS = {
    "DEFAULT_HTTP_ADDR": "allocrunner.agent.agent",
    "Agent": "allocrunner.agent.agent",
    "AgentConfig": "allocrunner.agent.agent",
    "main": "allocrunner.agent.command",
    "find_agent": "allocrunner.agent.datadir",
    "AgentError": "allocrunner.agent.errors",
    "ApiError": "allocrunner.agent.errors",
    "DataDirLockedError": "allocrunner.agent.errors",
}

__all__ = [
    "DEFAULT_HTTP_ADDR",
    "Agent",
    "AgentConfig",
    "AgentError",
    "ApiError",
    "DataDirLockedError",
    "find_agent",
    "main",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'allocrunner.agent' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
