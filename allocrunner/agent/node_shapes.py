"""A `NodeInfo` in the JSON shapes of Nomad's node API.

`node_json` renders ``GET /v1/node/:id`` and `node_stub_json` one entry of
``GET /v1/nodes`` (NodeListStub), with the fields Nomad's CLI and python-nomad read:
resources with Nomad's default dynamic port range, every detected driver as healthy,
and `computed_class`, Nomad's hash of what makes nodes interchangeable.

Threads: none. Locks: none. Owner: pure functions, called by the node endpoints in
`allocrunner.agent.api_node` (and re-exported by `allocrunner.agent.fingerprint`).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from allocrunner.jobspec._kinds import format_rfc3339

if TYPE_CHECKING:
    from allocrunner.agent.fingerprint import NodeInfo

__all__ = ["MAX_DYNAMIC_PORT", "MIN_DYNAMIC_PORT", "computed_class", "node_json", "node_stub_json"]

# Nomad's default dynamic port range, reported in NodeResources.
MIN_DYNAMIC_PORT = 20000
MAX_DYNAMIC_PORT = 32000


def _drivers_json(node: NodeInfo) -> dict[str, Any]:
    """Nomad's DriverInfo per detected driver (healthy, fingerprinted with the node)."""
    updated = format_rfc3339(node.fingerprinted_at)
    return {
        name: {
            "Attributes": {f"driver.{name}": "true"},
            "Detected": True,
            "Healthy": True,
            "HealthDescription": "Healthy",
            "UpdateTime": updated,
        }
        for name in node.drivers
    }


def _resources_json(node: NodeInfo) -> dict[str, Any]:
    res = node.resources
    return {
        "Cpu": {
            "CpuShares": res.cpu_mhz,
            "TotalCpuCores": res.cores,
            "ReservableCpuCores": list(res.reservable_cores),
        },
        "Memory": {"MemoryMB": res.memory_mb},
        "Disk": {"DiskMB": res.disk_mb},
        "Networks": [],
        "NodeNetworks": [],
        "Devices": [],
        "MinDynamicPort": MIN_DYNAMIC_PORT,
        "MaxDynamicPort": MAX_DYNAMIC_PORT,
    }


def _reserved_json() -> dict[str, Any]:
    return {
        "Cpu": {"CpuShares": 0, "ReservedCpuCores": []},
        "Memory": {"MemoryMB": 0},
        "Disk": {"DiskMB": 0},
        "Networks": {"ReservedHostPorts": ""},
    }


def computed_class(node: NodeInfo) -> str:
    """A hash of what makes nodes interchangeable for scheduling (datacenter, class,
    pool, non-unique attributes and meta), in Nomad's ``v1:<number>`` form."""
    parts = [node.datacenter, node.node_class, node.node_pool]
    parts += [f"a:{k}={v}" for k, v in sorted(node.attributes.items()) if "unique." not in k]
    parts += [f"m:{k}={v}" for k, v in sorted(node.meta.items()) if "unique." not in k]
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return f"v1:{int.from_bytes(digest[:8], 'big')}"


def node_json(
    node: NodeInfo,
    *,
    create_index: int,
    modify_index: int,
    status: str = "ready",
    status_description: str = "",
) -> dict[str, Any]:
    """`node` in the JSON shape of Nomad's ``GET /v1/node/:id`` (its secret id left out)."""
    registered = format_rfc3339(node.fingerprinted_at)
    return {
        "ID": node.id,
        "Name": node.name,
        "Datacenter": node.datacenter,
        "HTTPAddr": node.http_addr,
        "TLSEnabled": False,
        "Attributes": dict(node.attributes),
        "NodeResources": _resources_json(node),
        "ReservedResources": _reserved_json(),
        "Links": {},
        "Meta": dict(node.meta),
        "NodeClass": node.node_class,
        "NodePool": node.node_pool,
        "ComputedClass": computed_class(node),
        "CgroupParent": "",
        "Drain": False,
        "DrainStrategy": None,
        "SchedulingEligibility": "eligible",
        "Status": status,
        "StatusDescription": status_description,
        "StatusUpdatedAt": int(node.fingerprinted_at.timestamp()),
        "Events": [
            {
                "Message": "Node registered",
                "Subsystem": "Cluster",
                "Details": None,
                "Timestamp": registered,
                "CreateIndex": create_index,
            }
        ],
        "Drivers": _drivers_json(node),
        "HostVolumes": {},
        "HostNetworks": {},
        "CSIControllerPlugins": None,
        "CSINodePlugins": None,
        "GCVolumesOnNodeGC": False,
        "LastDrain": None,
        "NodeMaxAllocs": 0,
        "LastMissedHeartbeatIndex": 0,
        "LastAllocUpdateIndex": 0,
        "CreateIndex": create_index,
        "ModifyIndex": modify_index,
    }


def node_stub_json(
    node: NodeInfo,
    *,
    create_index: int,
    modify_index: int,
    status: str = "ready",
    status_description: str = "",
    resources: bool = False,
    os_name: bool = False,
) -> dict[str, Any]:
    """`node` in the JSON shape of one entry of Nomad's ``GET /v1/nodes`` (NodeListStub).

    `resources` and `os_name` add what the ``resources=true`` and ``os=true`` query
    parameters add: NodeResources and ReservedResources, and ``Attributes`` holding
    only ``os.name``."""
    stub: dict[str, Any] = {
        "Address": _host_of(node.http_addr),
        "ID": node.id,
        "Datacenter": node.datacenter,
        "Name": node.name,
        "NodeClass": node.node_class,
        "NodePool": node.node_pool,
        "Version": node.version,
        "Drain": False,
        "SchedulingEligibility": "eligible",
        "Status": status,
        "StatusDescription": status_description,
        "Drivers": _drivers_json(node),
        "HostVolumes": {},
        "LastDrain": None,
        "CreateIndex": create_index,
        "ModifyIndex": modify_index,
    }
    if os_name:
        stub["Attributes"] = {"os.name": node.attributes.get("os.name", "")}
    if resources:
        stub["NodeResources"] = _resources_json(node)
        stub["ReservedResources"] = _reserved_json()
    return stub


def _host_of(addr: str) -> str:
    """The host part of ``host:port`` (``[v6]:port`` too); "" when there is none."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return ""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host
