"""Dispatching parameterized jobs: the child job's id and fields, and every check
Nomad makes on a dispatch request (400 with Nomad's message)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import attrs
import pytest

from allocrunner.agent.dispatch import DISPATCH_PAYLOAD_SIZE_LIMIT, dispatch_job
from allocrunner.agent.errors import ApiError
from allocrunner.jobspec import decode_job, encode_job
from allocrunner.structs import Job, ParameterizedJobConfig, PeriodicConfig
from allocrunner.testing import mock_job

NOW = datetime(2024, 5, 1, 12, 0, 30, 250_000, tzinfo=UTC)


def template(**config: object) -> Job:
    return attrs.evolve(
        mock_job(job_id="resize", job_type="batch"),
        meta={"team": "media", "size": "small"},
        parameterized=ParameterizedJobConfig(**config),
    )


def refused(parent: Job, meta: dict[str, str] | None = None, payload: bytes = b"") -> str:
    with pytest.raises(ApiError) as info:
        dispatch_job(parent, meta=meta or {}, payload=payload, now=NOW)
    assert info.value.status == 400
    return info.value.message


def test_child_job() -> None:
    parent = template(meta_required=("image",), meta_optional=("size",))
    child = dispatch_job(parent, meta={"image": "a.png", "size": "large"}, payload=b"hi", now=NOW)
    assert re.fullmatch(rf"resize/dispatch-{int(NOW.timestamp())}-[0-9a-f]{{8}}", child.id)
    assert child.name == child.id
    assert child.parent_id == "resize"
    assert child.dispatched
    assert child.parameterized is None and not child.is_parameterized()
    assert dict(child.meta) == {"team": "media", "size": "large", "image": "a.png"}
    assert child.payload == b"hi"
    assert child.submit_time == 1714564830_250_000_000
    assert child.task_groups == parent.task_groups
    assert parent.payload == b"" and parent.is_parameterized()  # the template is unchanged


def test_each_dispatch_gets_its_own_id() -> None:
    parent = template()
    ids = {dispatch_job(parent, meta={}, payload=b"", now=NOW).id for _ in range(20)}
    assert len(ids) == 20


def test_child_survives_the_codec() -> None:
    child = dispatch_job(template(), meta={}, payload=bytes(range(256)), now=NOW)
    assert decode_job(encode_job(child)) == child


def test_periodic_block_stays_on_the_child() -> None:
    parent = attrs.evolve(template(), periodic=PeriodicConfig(specs=("@daily",)))
    assert not parent.is_periodic_active()  # a template does not launch
    child = dispatch_job(parent, meta={}, payload=b"", now=NOW)
    assert child.is_periodic_active()


def test_not_parameterized() -> None:
    assert refused(mock_job(job_id="plain", job_type="batch")) == (
        'Specified job "plain" is not a parameterized job'
    )
    child = dispatch_job(template(), meta={}, payload=b"", now=NOW)
    assert "is not a parameterized job" in refused(child)


def test_stopped() -> None:
    assert refused(attrs.evolve(template(), stop=True)) == 'Specified job "resize" is stopped'


def test_payload_required() -> None:
    parent = template(payload="required")
    assert refused(parent) == "Payload is not provided but required by parameterized job"
    assert dispatch_job(parent, meta={}, payload=b"x", now=NOW).payload == b"x"


def test_payload_forbidden() -> None:
    parent = template(payload="forbidden")
    assert refused(parent, payload=b"x") == "Payload provided but forbidden by parameterized job"
    assert dispatch_job(parent, meta={}, payload=b"", now=NOW).payload == b""


def test_payload_size_limit() -> None:
    parent = template()
    assert dispatch_job(parent, meta={}, payload=b"x" * DISPATCH_PAYLOAD_SIZE_LIMIT, now=NOW)
    message = refused(parent, payload=b"x" * (DISPATCH_PAYLOAD_SIZE_LIMIT + 1))
    assert message == "Payload exceeds maximum size; 16385 > 16384"


def test_missing_required_meta() -> None:
    parent = template(meta_required=("b", "a"), meta_optional=("c",))
    assert refused(parent, meta={"c": "1"}) == "Dispatch did not provide required meta keys: [a b]"


def test_unpermitted_meta() -> None:
    parent = template(meta_required=("a",), meta_optional=("b",))
    message = refused(parent, meta={"a": "1", "z": "2", "y": "3"})
    assert message == "Dispatch request included unpermitted metadata keys: [y z]"
    # The parent's own meta keys are not dispatch keys either.
    assert "team" in refused(parent, meta={"a": "1", "team": "x"})
