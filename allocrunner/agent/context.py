"""What every API handler needs: the agent's collaborators, in one immutable record."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
    agent_info: dict[str, Any] = attrs.field(factory=dict)
    started: float = 0.0
