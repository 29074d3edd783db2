"""Allocations encoded to API JSON once per version, not once per request.

Every answer with an allocation passes through here, so this is also where its host
ports are written into ``AllocatedResources.Shared``: ``Ports`` (label, host port,
``To``, host IP) and ``Networks`` (the group's host-mode network with the ports it
got, static ones under ``ReservedPorts`` and dynamic ones under ``DynamicPorts``), as
Nomad's AllocatedSharedResources carries them (`with_ports`).

Every change to a stored allocation gives it a new modify index (the cluster's
indexes only grow), so ``(id, modify_index)`` names one immutable version. A woken
batch of blocking queries over the same snapshot then encodes each allocation once,
and a list is the cached parts joined. `functools.lru_cache` bounds the memory and
is safe to call from every request thread.

Threads: any request thread. Locks: none declared; the cache's own internal lock is
held only inside `functools.lru_cache` and calls nothing out. Owner: the API handlers
that answer with allocations.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from typing import Any

from allocrunner.placement import ports_json
from allocrunner.structs import Allocation

__all__ = ["json_list", "networks_json", "versioned", "with_ports"]

CACHE_SIZE = 8192


class _Version:
    """An allocation keyed by its id and modify index (equal keys: the same version)."""

    __slots__ = ("alloc", "key")

    def __init__(self, alloc: Allocation, flavour: str) -> None:
        self.alloc = alloc
        self.key = (alloc.id, alloc.modify_index, flavour)

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Version) and self.key == other.key


def versioned(encode: Callable[[Allocation], Any], flavour: str) -> Callable[[Allocation], bytes]:
    """`encode` (an allocation to a JSON-able value) as cached JSON bytes."""

    @functools.lru_cache(maxsize=CACHE_SIZE)
    def cached(version: _Version) -> bytes:
        return json.dumps(with_ports(encode(version.alloc), version.alloc)).encode()

    def encoded(alloc: Allocation) -> bytes:
        return cached(_Version(alloc, flavour))

    return encoded


def json_list(parts: Iterable[bytes]) -> bytes:
    """A JSON array of already encoded values."""
    return b"[" + b",".join(parts) + b"]"


def networks_json(alloc: Allocation) -> list[dict[str, Any]] | None:
    """``AllocatedResources.Shared.Networks``: one host-mode network holding the ports
    the allocation got (None when it got none)."""
    if not alloc.allocated_ports:
        return None
    group = alloc.group()
    static = {
        p.label for n in (group.networks if group is not None else ()) for p in n.reserved_ports
    }
    host_ip = next((p.host_ip for p in alloc.allocated_ports if p.host_ip), "")

    def port(p: Any) -> dict[str, Any]:
        return {"Label": p.label, "Value": p.value, "To": p.to, "HostNetwork": "default"}

    return [
        {
            "Mode": "host",
            "Device": "",
            "CIDR": "",
            "IP": host_ip,
            "Hostname": "",
            "MBits": 0,
            "DNS": None,
            "ReservedPorts": [port(p) for p in alloc.allocated_ports if p.label in static] or None,
            "DynamicPorts": [port(p) for p in alloc.allocated_ports if p.label not in static]
            or None,
        }
    ]


def with_ports(out: Any, alloc: Allocation) -> Any:
    """`out` (an allocation's JSON) with its ports in ``AllocatedResources.Shared``
    when the answer carries ``AllocatedResources`` (the API's, with ``Tasks``); the
    ports-only object of the allocation codec is left out of answers that do not (a
    list stub without ``resources=true``, as Nomad's)."""
    if not isinstance(out, dict):
        return out
    resources = out.get("AllocatedResources")
    if not isinstance(resources, dict):
        return out
    if "Tasks" not in resources:
        out["AllocatedResources"] = None
        return out
    shared = resources.get("Shared")
    shared = dict(shared) if isinstance(shared, dict) else {}
    shared["Ports"] = ports_json(alloc.allocated_ports) if alloc.allocated_ports else None
    shared["Networks"] = networks_json(alloc)
    out["AllocatedResources"] = {**resources, "Shared": shared}
    return out
