"""Periodic and parameterized jobs in the codec and in HCL: Nomad's JSON shapes (`Spec`
and `Specs`, base64 `Payload`, task `DispatchPayload`), exact round trips, the defaults,
and errors that name the field."""

from __future__ import annotations

import base64
import json

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocrunner.errors import JobSpecError
from allocrunner.jobspec import decode_job, encode_job, parse_job
from allocrunner.structs import Job, ParameterizedJobConfig, PeriodicConfig
from allocrunner.testing import mock_job, mock_task


def via_json(obj: object) -> object:
    return json.loads(json.dumps(obj))


def api_job(**fields: object) -> dict[str, object]:
    job: dict[str, object] = {
        "ID": "report",
        "Type": "batch",
        "TaskGroups": [{"Name": "g", "Tasks": [{"Name": "t", "Driver": "raw_exec"}]}],
    }
    job.update(fields)
    return job


def api_task_job(**task_fields: object) -> dict[str, object]:
    task = {"Name": "t", "Driver": "raw_exec", **task_fields}
    return api_job(TaskGroups=[{"Name": "g", "Tasks": [task]}])


def hcl_job(body: str, task_body: str = "") -> str:
    return f"""
job "report" {{
  type = "batch"
  {body}
  group "g" {{
    task "t" {{
      driver = "raw_exec"
      config {{ command = "/bin/true" }}
      {task_body}
    }}
  }}
}}
"""


def error_of(obj: object) -> JobSpecError:
    with pytest.raises(JobSpecError) as info:
        decode_job(obj)
    return info.value


def hcl_error_of(text: str) -> JobSpecError:
    with pytest.raises(JobSpecError) as info:
        parse_job(text, "hcl")
    return info.value


# --- JSON shapes ----------------------------------------------------------------------


def test_single_spec_decodes_and_encodes_as_spec() -> None:
    job = decode_job(
        api_job(
            Periodic={
                "Enabled": True,
                "Spec": "*/5 * * * *",
                "SpecType": "cron",
                "ProhibitOverlap": True,
                "TimeZone": "America/New_York",
            }
        )
    )
    assert job.periodic == PeriodicConfig(
        specs=("*/5 * * * *",), prohibit_overlap=True, time_zone="America/New_York"
    )
    out = encode_job(job)["Periodic"]
    assert out == {
        "Enabled": True,
        "Spec": "*/5 * * * *",
        "Specs": [],
        "SpecType": "cron",
        "ProhibitOverlap": True,
        "TimeZone": "America/New_York",
    }


def test_several_specs_use_specs_and_an_empty_spec_is_unset() -> None:
    job = decode_job(api_job(Periodic={"Spec": "", "Specs": ["@daily", "0 12 * * MON-FRI"]}))
    assert job.periodic is not None
    assert job.periodic.specs == ("@daily", "0 12 * * MON-FRI")
    out = encode_job(job)["Periodic"]
    assert out["Spec"] == "" and out["Specs"] == ["@daily", "0 12 * * MON-FRI"]


def test_absent_periodic_fields_take_nomads_defaults() -> None:
    job = decode_job(api_job(Periodic={"Spec": "@hourly"}))
    assert job.periodic == PeriodicConfig(
        enabled=True, spec_type="cron", specs=("@hourly",), prohibit_overlap=False, time_zone="UTC"
    )


def test_parameterized_payload_and_dispatch_fields() -> None:
    payload = b"\x00binary\xffdata"
    job = decode_job(
        api_job(
            ParameterizedJob={
                "Payload": "required",
                "MetaRequired": ["customer"],
                "MetaOptional": ["priority"],
            },
            Payload=base64.b64encode(payload).decode(),
            ParentID="template",
            Dispatched=True,
            SubmitTime=1_700_000_000_123_456_789,
        )
    )
    assert job.parameterized == ParameterizedJobConfig(
        payload="required", meta_required=("customer",), meta_optional=("priority",)
    )
    assert job.payload == payload
    assert (job.parent_id, job.dispatched, job.submit_time) == (
        "template",
        True,
        1_700_000_000_123_456_789,
    )
    out = encode_job(job)
    assert out["ParameterizedJob"] == {
        "Payload": "required",
        "MetaRequired": ["customer"],
        "MetaOptional": ["priority"],
    }
    assert base64.b64decode(out["Payload"]) == payload
    assert out["ParentID"] == "template" and out["Dispatched"] is True


def test_task_dispatch_payload_is_the_file_name() -> None:
    job = decode_job(api_task_job(DispatchPayload={"File": "input/data.json"}))
    task = job.task_groups[0].tasks[0]
    assert task.dispatch_payload == "input/data.json"
    assert encode_job(job)["TaskGroups"][0]["Tasks"][0]["DispatchPayload"] == {
        "File": "input/data.json"
    }


def test_unset_fields_encode_as_go_does() -> None:
    out = encode_job(mock_job())
    assert out["Periodic"] is None and out["ParameterizedJob"] is None
    assert out["Payload"] is None  # a nil []byte
    assert out["ParentID"] == "" and out["Dispatched"] is False
    assert out["TaskGroups"][0]["Tasks"][0]["DispatchPayload"] is None


def test_null_fields_mean_unset() -> None:
    job = decode_job(
        api_job(Periodic=None, ParameterizedJob=None, Payload=None, ParentID=None, Dispatched=None)
    )
    assert job.periodic is None and job.parameterized is None
    assert job.payload == b"" and job.parent_id == "" and not job.dispatched


# --- round trips ----------------------------------------------------------------------

_CRONS = st.sampled_from(
    ["*/5 * * * *", "0 0 * * *", "@daily", "*/1 * * * * * *", "0 0 1 1 * 2030", "15 3 * JAN MON"]
)
_ZONES = st.sampled_from(["UTC", "", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"])


@st.composite
def _periodic(draw: st.DrawFn) -> PeriodicConfig:
    return PeriodicConfig(
        enabled=True,
        specs=tuple(draw(st.lists(_CRONS, min_size=1, max_size=3))),
        prohibit_overlap=draw(st.booleans()),
        time_zone=draw(_ZONES),
    )


@st.composite
def _parameterized(draw: st.DrawFn) -> ParameterizedJobConfig:
    names = draw(st.lists(st.text(min_size=1, max_size=8), max_size=6, unique=True))
    cut = draw(st.integers(0, len(names)))
    return ParameterizedJobConfig(
        payload=draw(st.sampled_from(["optional", "required", "forbidden"])),
        meta_required=tuple(names[:cut]),
        meta_optional=tuple(names[cut:]),
    )


@st.composite
def _jobs(draw: st.DrawFn) -> Job:
    task = mock_task(
        "t",
        driver="raw_exec",
        dispatch_payload=draw(st.sampled_from(["", "in.txt", "a/b/c.bin", "./x"])),
    )
    return attrs.evolve(
        mock_job(task, job_type=draw(st.sampled_from(["batch", "sysbatch"]))),
        periodic=draw(st.none() | _periodic()),
        parameterized=draw(st.none() | _parameterized()),
        payload=draw(st.binary(max_size=64)),
        parent_id=draw(st.sampled_from(["", "parent"])),
        dispatched=draw(st.booleans()),
        submit_time=draw(st.integers(0, 2**63 - 1)),
    )


@settings(max_examples=60, deadline=None)
@given(_jobs())
def test_round_trip(job: Job) -> None:
    assert decode_job(encode_job(job)) == job
    assert decode_job(via_json(encode_job(job))) == job


# --- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("periodic", "path", "words"),
    [
        ({"Spec": "every day"}, "Job.Periodic.Spec", "fields"),
        ({"Spec": "61 * * * *"}, "Job.Periodic.Spec", "invalid cron spec"),
        ({"Spec": "0 0 1 1 * 1900"}, "Job.Periodic.Spec", "out of range"),
        ({"Specs": ["@daily", "nope nope"]}, "Job.Periodic.Specs[1]", "fields"),
        ({"Specs": [""]}, "Job.Periodic.Specs[0]", "must not be empty"),
        ({"Spec": "@daily", "Specs": ["@hourly"]}, "Job.Periodic.Specs", "only one"),
        ({}, "Job.Periodic.Spec", "needs a cron spec"),
        ({"Spec": "@daily", "TimeZone": "Mars/Olympus"}, "Job.Periodic.TimeZone", "unknown"),
        ({"Spec": "@daily", "TimeZone": "../../etc"}, "Job.Periodic.TimeZone", "unknown"),
        ({"Spec": "@daily", "SpecType": "_internal_test"}, "Job.Periodic.SpecType", "one of"),
        ({"Spec": 5}, "Job.Periodic.Spec", "expected a string"),
    ],
)
def test_bad_periodic_names_the_field(periodic: dict, path: str, words: str) -> None:
    err = error_of(api_job(Periodic=periodic))
    assert err.path == path
    assert words in err.message


def test_disabled_periodic_needs_no_spec() -> None:
    job = decode_job(api_job(Periodic={"Enabled": False}))
    assert job.periodic == PeriodicConfig(enabled=False)
    assert not job.is_periodic_active()


@pytest.mark.parametrize("kind", ["Periodic", "ParameterizedJob"])
def test_periodic_and_parameterized_jobs_must_be_batch(kind: str) -> None:
    block = {"Spec": "@daily"} if kind == "Periodic" else {}
    err = error_of(api_job(Type="service", **{kind: block}))
    assert err.path == f"Job.{kind}"
    assert "batch or sysbatch" in err.message


@pytest.mark.parametrize(
    ("config", "path", "words"),
    [
        ({"Payload": "sometimes"}, "Job.ParameterizedJob.Payload", "one of"),
        (
            {"MetaRequired": ["a"], "MetaOptional": ["a", "b"]},
            "Job.ParameterizedJob.MetaOptional",
            "disjoint",
        ),
        ({"MetaRequired": "a"}, "Job.ParameterizedJob.MetaRequired", "array"),
    ],
)
def test_bad_parameterized_names_the_field(config: dict, path: str, words: str) -> None:
    err = error_of(api_job(ParameterizedJob=config))
    assert err.path == path
    assert words in err.message


@pytest.mark.parametrize("payload", ["not base64!", "YWJj=", 12])
def test_bad_payload(payload: object) -> None:
    assert error_of(api_job(Payload=payload)).path == "Job.Payload"


@pytest.mark.parametrize("file", ["/etc/passwd", "../secrets/x", "a/../../x", "..", "."])
def test_dispatch_payload_file_must_stay_in_local(file: str) -> None:
    err = error_of(api_task_job(DispatchPayload={"File": file}))
    assert err.path == "Job.TaskGroups[0].Tasks[0].DispatchPayload.File"


def test_dispatch_payload_must_be_an_object() -> None:
    err = error_of(api_task_job(DispatchPayload="in.txt"))
    assert err.path == "Job.TaskGroups[0].Tasks[0].DispatchPayload"


# --- HCL ------------------------------------------------------------------------------


def test_hcl_periodic_cron() -> None:
    job = parse_job(
        hcl_job(
            'periodic {\n cron = "*/15 * * * *"\n prohibit_overlap = true\n'
            ' time_zone = "Europe/Berlin"\n }'
        ),
        "hcl",
    )
    assert job.periodic == PeriodicConfig(
        specs=("*/15 * * * *",), prohibit_overlap=True, time_zone="Europe/Berlin"
    )
    assert job.is_periodic_active()


def test_hcl_periodic_crons_and_default_zone() -> None:
    job = parse_job(hcl_job('periodic {\n crons = ["@daily", "0 12 * * *"]\n }'), "hcl")
    assert job.periodic == PeriodicConfig(specs=("@daily", "0 12 * * *"), time_zone="UTC")


def test_hcl_parameterized_and_dispatch_payload() -> None:
    job = parse_job(
        hcl_job(
            'parameterized {\n payload = "required"\n meta_required = ["customer"]\n'
            ' meta_optional = ["priority"]\n }',
            'dispatch_payload {\n file = "input.txt"\n }',
        ),
        "hcl",
    )
    assert job.parameterized == ParameterizedJobConfig(
        payload="required", meta_required=("customer",), meta_optional=("priority",)
    )
    assert job.is_parameterized() and not job.is_periodic_active()
    assert job.task_groups[0].tasks[0].dispatch_payload == "input.txt"


def test_hcl_parameterized_defaults_to_optional_payload() -> None:
    job = parse_job(hcl_job("parameterized {\n }"), "hcl")
    assert job.parameterized == ParameterizedJobConfig(payload="optional")


@pytest.mark.parametrize(
    ("body", "task_body", "path"),
    [
        ('periodic {\n cron = "bad"\n }', "", "job.periodic.cron"),
        ('periodic {\n crons = ["@daily", "x y"]\n }', "", "job.periodic.crons[1]"),
        ('periodic {\n cron = "@daily"\n time_zone = "No/Where"\n }', "", "job.periodic.time_zone"),
        ('periodic {\n cron = "@daily"\n spec = "x"\n }', "", "job.periodic.spec"),
        ('parameterized {\n payload = "maybe"\n }', "", "job.parameterized.payload"),
        ("parameterized {\n meta_required = 3\n }", "", "job.parameterized.meta_required"),
        (
            "",
            'dispatch_payload {\n file = "../x"\n }',
            "job.group[g].task[t].dispatch_payload.file",
        ),
        ("", "dispatch_payload {\n name = 1\n }", "job.group[g].task[t].dispatch_payload.name"),
    ],
)
def test_hcl_errors_name_the_setting(body: str, task_body: str, path: str) -> None:
    assert hcl_error_of(hcl_job(body, task_body)).path == path


def test_hcl_periodic_on_a_service_job_is_refused() -> None:
    text = hcl_job('periodic {\n cron = "@daily"\n }').replace('"batch"', '"service"')
    err = hcl_error_of(text)
    assert err.path == "job.periodic"  # as the job file spells it
