"""Whether an allocation may be placed on this node, and the host ports it gets.

- `allocrunner.placement.constraints`: Nomad's constraint operators, distinct_hosts /
  distinct_property on one node, resource fit and the AllocMetric of a failure.
- `allocrunner.placement.versions`: go-version and semver constraint matching.
- `allocrunner.placement.ports`: `PortAllocator` (static and dynamic host ports,
  bind-tested) and the ``NOMAD_*`` port variables.

Threads: none of its own. Locks: only ``PortAllocator._lock`` (see `ports`); the rest
is pure functions. Owner: imported by the agent's placement and the client's runners.
"""

from __future__ import annotations

from allocrunner.placement.constraints import (
    Capacity,
    Constraint,
    ConstraintFailure,
    PlacedAlloc,
    alloc_metric,
    check_constraint,
    check_constraints,
    check_distinct,
    check_drivers,
    check_placement,
    check_resources,
    constraint_from_json,
    constraints_from_json,
    resolve_target,
)
from allocrunner.placement.ports import (
    DEFAULT_MAX_DYNAMIC_PORT,
    DEFAULT_MIN_DYNAMIC_PORT,
    AllocatedPort,
    PortAllocator,
    PortAsk,
    PortPlacementError,
    port_asks_from_json,
    port_env,
    port_is_free,
    ports_from_json,
    ports_json,
)

__all__ = [
    "DEFAULT_MAX_DYNAMIC_PORT",
    "DEFAULT_MIN_DYNAMIC_PORT",
    "AllocatedPort",
    "Capacity",
    "Constraint",
    "ConstraintFailure",
    "PlacedAlloc",
    "PortAllocator",
    "PortAsk",
    "PortPlacementError",
    "alloc_metric",
    "check_constraint",
    "check_constraints",
    "check_distinct",
    "check_drivers",
    "check_placement",
    "check_resources",
    "constraint_from_json",
    "constraints_from_json",
    "port_asks_from_json",
    "port_env",
    "port_is_free",
    "ports_from_json",
    "ports_json",
    "resolve_target",
]
