"""Nomad's event stream: ``GET /v1/event/stream`` as newline-delimited JSON.

Each line is ``{"Index": N, "Events": [...]}`` for the changes at index N, or ``{}``
as a heartbeat every 10 s so a client (and the server) notices a dead connection.
Topics ``Job``, ``Allocation`` and ``Evaluation`` are served, filtered by
``topic=Topic:key`` (``*`` for any key, the key matching the event's key or one of
its filter keys, e.g. an allocation's job id) and by ``namespace``. ``index=N``
replays the buffered events after N first. The stream is fed by the cluster's
latest-only broadcaster: a burst of changes is sent as one read of the buffer.

Threads: each subscriber's request thread runs its stream until the client leaves or
the agent shuts down. Locks: none; each batch is read from one `ClusterState`.
Owner: `build_router` adds the route; `HttpServer` calls it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from allocrunner.agent.cluster import ClusterEvent, encode_event_payload
from allocrunner.agent.context import ApiContext
from allocrunner.agent.errors import bad_request
from allocrunner.agent.http import Request, Response, Router

__all__ = ["add_routes"]

HEARTBEAT = 10.0
TOPICS = ("Job", "Allocation", "Evaluation", "Deployment", "Node", "*")


def add_routes(router: Router, ctx: ApiContext) -> None:
    router.add("GET", "/v1/event/stream", lambda r: stream(ctx, r))


def _filters(req: Request) -> dict[str, set[str]]:
    filters: dict[str, set[str]] = {}
    for raw in req.query.get("topic", ()) or ("*:*",):
        topic, _, key = raw.partition(":")
        if topic not in TOPICS:
            raise bad_request(f"query parameter 'topic': unknown topic {topic!r}")
        filters.setdefault(topic, set()).add(key or "*")
    return filters


def _wanted(event: ClusterEvent, filters: dict[str, set[str]], namespace: str) -> bool:
    if namespace != "*" and event.namespace != namespace:
        return False
    keys = filters.get(event.topic, set()) | filters.get("*", set())
    return "*" in keys or event.key in keys or any(k in keys for k in event.filter_keys)


def stream(ctx: ApiContext, req: Request) -> Response:
    filters = _filters(req)
    namespace = req.param("namespace") or "default"
    start = req.int_param("index", 0)
    return Response(
        body=_lines(ctx, req, filters, namespace, start), content_type="application/json"
    )


def _lines(
    ctx: ApiContext, req: Request, filters: dict[str, set[str]], namespace: str, after: int
) -> Iterator[bytes]:
    cursor = after if after > 0 else ctx.cluster.state().index
    while not req.cancel.cancelled():
        state = ctx.cluster.wait_for(
            lambda s, seen=cursor: s.index > seen, HEARTBEAT, cancel=req.cancel
        )
        if req.cancel.cancelled() or ctx.cluster.is_closed():
            return
        fresh = [e for e in state.events if e.index > cursor]
        cursor = max(cursor, state.index)
        batches: dict[int, list[ClusterEvent]] = {}
        for event in fresh:
            if _wanted(event, filters, namespace):
                batches.setdefault(event.index, []).append(event)
        if not batches:
            yield b"{}\n"
            continue
        for index, events in sorted(batches.items()):
            yield (
                json.dumps({"Index": index, "Events": [_event_json(e) for e in events]}).encode()
                + b"\n"
            )


def _event_json(event: ClusterEvent) -> dict[str, object]:
    return {
        "Topic": event.topic,
        "Type": event.type,
        "Key": event.key,
        "Namespace": event.namespace,
        "FilterKeys": list(event.filter_keys),
        "Index": event.index,
        "Payload": encode_event_payload(event),
    }
