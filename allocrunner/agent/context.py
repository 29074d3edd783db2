"""What every API handler needs: the agent's collaborators, in one immutable record.

Threads: none; the handlers read it on every request thread. Locks: none (the record
is immutable and each collaborator is thread-safe on its own). Owner: the `Agent`
builds one in its start and hands it to every module's routes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from allocrunner.agent.cluster import Cluster
    from allocrunner.agent.fingerprint import NodeInfo
    from allocrunner.agent.periodic import PeriodicLauncher
    from allocrunner.agent.stats import StatsSampler
    from allocrunner.client import Client
    from allocrunner.config import ClientConfig


@attrs.frozen
class ApiContext:
    """Immutable. The agent's parts the HTTP handlers use (each one thread-safe)."""

    cluster: Cluster
    client: Client
    config: ClientConfig
    node: NodeInfo
    sampler: StatsSampler
    periodic: PeriodicLauncher
    http_host: str = "127.0.0.1"
    """The host the HTTP API listens on (reported as the agent's address)."""
    token_required: bool = False
    """Whether the API asks for a token (reported as ACLs being enabled)."""
    started: float = 0.0
