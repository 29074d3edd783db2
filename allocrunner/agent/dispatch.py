"""Dispatching a parameterized job: the checks Nomad makes on a dispatch request and
the child job it registers (nomad/job_endpoint.go Dispatch, validateDispatchRequest).

The child is `<parent>/dispatch-<unix>-<8 hex>`: a copy of the parent with ParentID
set, `Dispatched` true, its submit time set, the dispatch meta merged over the
parent's meta and the payload attached for the tasks' `dispatch_payload` files. The
parameterized block is cleared, so nothing can mistake the child for a template
(Nomad keeps it and relies on `Dispatched` alone). A periodic block stays: a
dispatched periodic job launches on its schedule.

Nomad stores the payload snappy-compressed on the server; here the child carries it
as given (there is no server between the agent and the task runner).

Threads: none; pure functions on the request thread. Locks: none. Owner: the
dispatch endpoint in `allocrunner.agent.api_jobs`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime

import attrs

from allocrunner.agent.errors import ApiError
from allocrunner.structs import (
    DISPATCH_LAUNCH_SUFFIX,
    DISPATCH_PAYLOAD_FORBIDDEN,
    DISPATCH_PAYLOAD_REQUIRED,
    Job,
)

__all__ = ["DISPATCH_PAYLOAD_SIZE_LIMIT", "dispatch_job", "dispatched_id", "validate_dispatch"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Nomad's DispatchPayloadSizeLimit: 16 KiB.
DISPATCH_PAYLOAD_SIZE_LIMIT = 16 * 1024


def dispatched_id(
    parent_id: str, now: datetime, suffix: str | None = None, id_prefix_template: str = ""
) -> str:
    """`<parent>/dispatch-[<template>-]<unix seconds>-<8 hex>` (Nomad's DispatchedID);
    `suffix` replaces the random 8 hex digits (for tests)."""
    unique = suffix if suffix is not None else secrets.token_hex(4)
    prefix = f"{id_prefix_template}-" if id_prefix_template else ""
    return f"{parent_id}{DISPATCH_LAUNCH_SUFFIX}{prefix}{int(now.timestamp() // 1)}-{unique}"


def validate_dispatch(parent: Job, meta: Mapping[str, str], payload: bytes) -> None:
    """Raise ApiError(400, …) unless `parent` may be dispatched with `meta` and
    `payload`, with Nomad's messages."""
    if not parent.is_parameterized():
        raise ApiError(400, f"Specified job {json.dumps(parent.id)} is not a parameterized job")
    if parent.stop:
        raise ApiError(400, f"Specified job {json.dumps(parent.id)} is stopped")
    config = parent.parameterized
    assert config is not None
    if config.payload == DISPATCH_PAYLOAD_REQUIRED and not payload:
        raise ApiError(400, "Payload is not provided but required by parameterized job")
    if config.payload == DISPATCH_PAYLOAD_FORBIDDEN and payload:
        raise ApiError(400, "Payload provided but forbidden by parameterized job")
    if len(payload) > DISPATCH_PAYLOAD_SIZE_LIMIT:
        raise ApiError(
            400, f"Payload exceeds maximum size; {len(payload)} > {DISPATCH_PAYLOAD_SIZE_LIMIT}"
        )
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ApiError(400, f"Dispatch meta must map strings to strings, got {key!r}")
    allowed = set(config.meta_required) | set(config.meta_optional)
    unpermitted = sorted(set(meta) - allowed)
    if unpermitted:
        raise ApiError(
            400,
            f"Dispatch request included unpermitted metadata keys: [{' '.join(unpermitted)}]",
        )
    missing = sorted(set(config.meta_required) - set(meta))
    if missing:
        raise ApiError(400, f"Dispatch did not provide required meta keys: [{' '.join(missing)}]")


def dispatch_job(
    parent: Job,
    *,
    meta: Mapping[str, str],
    payload: bytes,
    now: datetime,
    id_prefix_template: str = "",
) -> Job:
    """The child job a dispatch of `parent` registers; ApiError(400, …) when Nomad
    would refuse the dispatch (see `validate_dispatch`)."""
    validate_dispatch(parent, meta, payload)
    child_id = dispatched_id(parent.id, now, id_prefix_template=id_prefix_template)
    return attrs.evolve(
        parent,
        id=child_id,
        name=child_id,
        parent_id=parent.id,
        dispatched=True,
        parameterized=None,
        meta={**parent.meta, **meta},
        payload=bytes(payload),
        submit_time=_unix_nanos(now),
    )


def _unix_nanos(when: datetime) -> int:
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
