"""Nomad's agent, status and node endpoints for a one-node cluster.

``/v1/agent/{self,health,members}``, ``/v1/status/{leader,peers}``, ``/v1/regions``,
``/v1/nodes``, ``/v1/node/:id`` and ``/v1/node/:id/allocations``. The node is this
host, as fingerprinted at start; the agent is both its client and its server.

Threads: the handlers run on the HTTP server's request threads. Locks: none; the node
is an immutable `NodeInfo` and the allocations come from one `ClusterState`. Owner:
`build_router` adds the routes; `HttpServer` calls them.
"""

from __future__ import annotations

import os
import time
from typing import Any

from allocrunner.agent import blocking
from allocrunner.agent.api_allocs import alloc_bytes
from allocrunner.agent.context import ApiContext
from allocrunner.agent.encoded import json_list
from allocrunner.agent.errors import not_found
from allocrunner.agent.http import Request, Response, Router, json_response
from allocrunner.agent.node_shapes import node_json, node_stub_json

__all__ = ["add_routes"]

RPC_PORT = 4647
SERF_PORT = 4648


def add_routes(router: Router, ctx: ApiContext) -> None:
    router.add("GET", "/v1/agent/self", lambda r: agent_self(ctx, r))
    router.add("GET", "/v1/agent/health", lambda r: agent_health(ctx, r))
    router.add("GET", "/v1/agent/members", lambda r: agent_members(ctx, r))
    router.add("GET", "/v1/status/leader", lambda r: json_response(_rpc_addr(ctx)))
    router.add("GET", "/v1/status/peers", lambda r: json_response([_rpc_addr(ctx)]))
    router.add("GET", "/v1/regions", lambda r: json_response([ctx.config.region]))
    router.add("GET", "/v1/nodes", lambda r: list_nodes(ctx, r))
    router.add("GET", "/v1/node/:id", lambda r: read_node(ctx, r))
    router.add("GET", "/v1/node/:id/allocations", lambda r: node_allocs(ctx, r))


def _host(ctx: ApiContext) -> str:
    return ctx.http_host


def _rpc_addr(ctx: ApiContext) -> str:
    return f"{_host(ctx)}:{RPC_PORT}"


def _member(ctx: ApiContext) -> dict[str, Any]:
    node = ctx.node
    return {
        "Name": f"{node.name}.{ctx.config.region}",
        "Addr": _host(ctx),
        "Port": SERF_PORT,
        "Tags": {
            "role": "nomad",
            "region": ctx.config.region,
            "dc": ctx.config.datacenter,
            "build": node.version,
            "port": str(RPC_PORT),
        },
        "Status": "alive",
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


def agent_self(ctx: ApiContext, req: Request) -> Response:
    node = ctx.node
    state = ctx.cluster.state()
    config = {
        "Region": ctx.config.region,
        "Datacenter": ctx.config.datacenter,
        "NodeName": node.name,
        "DataDir": ctx.config.data_dir,
        "Version": {"Version": node.version, "VersionPrerelease": "", "Revision": ""},
        "Client": {"Enabled": True, "NodeClass": node.node_class, "Meta": dict(node.meta)},
        "Server": {"Enabled": True, "BootstrapExpect": 1},
        "Addresses": {"HTTP": _host(ctx)},
        "ACL": {"Enabled": ctx.token_required},
    }
    stats = {
        "client": {
            "node_id": node.id,
            "known_servers": _rpc_addr(ctx),
            "num_allocations": str(ctx.client.num_allocs()),
            "last_heartbeat": "0",
            "heartbeat_ttl": "0",
        },
        "nomad": {
            "server": "true",
            "leader": "true",
            "bootstrap": "true",
            "known_regions": "1",
            "leader_addr": _rpc_addr(ctx),
        },
        "raft": {"applied_index": str(state.index), "last_log_index": str(state.index)},
        "runtime": {
            "arch": node.attributes.get("cpu.arch", ""),
            "cpu_count": str(os.cpu_count() or 1),
            "goroutines": "0",
            "version": "python",
        },
        "agent": {"pid": str(os.getpid()), "uptime": f"{time.time() - ctx.started:.0f}s"},
    }
    return json_response({"config": config, "member": _member(ctx), "stats": stats})


def agent_health(ctx: ApiContext, req: Request) -> Response:
    ok = {"ok": True, "message": "ok"}
    return json_response({"client": ok, "server": ok})


def agent_members(ctx: ApiContext, req: Request) -> Response:
    return json_response(
        {
            "ServerName": ctx.node.name,
            "ServerRegion": ctx.config.region,
            "ServerDC": ctx.config.datacenter,
            "Members": [_member(ctx)],
        }
    )


def _node_index(state: object) -> int:
    """The node never changes after start: a blocking read waits out its `wait`."""
    return 1


def list_nodes(ctx: ApiContext, req: Request) -> Response:
    _, index = blocking.query(ctx, req, _node_index)
    prefix = req.param("prefix") or ""
    nodes = []
    if ctx.node.id.startswith(prefix):
        nodes.append(
            node_stub_json(
                ctx.node,
                create_index=1,
                modify_index=1,
                resources=req.flag("resources"),
                os_name=req.flag("os"),
            )
        )
    return json_response(nodes, index=index)


def _node(ctx: ApiContext, node_id: str) -> None:
    if node_id != ctx.node.id:
        raise not_found("node not found")


def read_node(ctx: ApiContext, req: Request) -> Response:
    _node(ctx, req.args[0])
    _, index = blocking.query(ctx, req, _node_index)
    return json_response(node_json(ctx.node, create_index=1, modify_index=1), index=index)


def node_allocs(ctx: ApiContext, req: Request) -> Response:
    _node(ctx, req.args[0])
    state, index = blocking.query(ctx, req, lambda s: s.alloc_index)
    allocs = sorted(state.allocs.values(), key=lambda a: a.create_index)
    return Response(body=json_list(alloc_bytes(a) for a in allocs), index=index)
