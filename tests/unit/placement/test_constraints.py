"""Nomad's constraint operators, targets, distinct_* on one node, resource fit."""

from __future__ import annotations

import pytest

from allocrunner.errors import JobSpecError
from allocrunner.placement import (
    Capacity,
    Constraint,
    ConstraintFailure,
    PlacedAlloc,
    alloc_metric,
    check_constraint,
    check_constraints,
    check_drivers,
    check_placement,
    check_resources,
    constraint_from_json,
    constraints_from_json,
    resolve_target,
)

NODE = {
    "node.unique.id": "9d5741c1-3f3c-4e5e-8a1e-1ec6c0b1bd2e",
    "node.unique.name": "host-1",
    "node.datacenter": "dc1",
    "node.region": "global",
    "node.class": "",
    "node.pool": "default",
    "attr.kernel.name": "linux",
    "attr.cpu.numcores": "8",
    "attr.cpu.frequency": "2400.5",
    "attr.nomad.version": "1.6.0",
    "attr.driver.raw_exec": "1",
    "attr.os.version": "22.04",
    "attr.empty": "",
    "meta.rack": "r1",
    "meta.tags": "ssd, gpu ,fast",
    "node.attr.kernel.name": "linux",
    "node.meta.rack": "r1",
}


def ok(ltarget: str, operand: str, rtarget: str = "") -> bool:
    return check_constraint(Constraint(ltarget, rtarget, operand), NODE)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("linux", ("linux", True)),
        ("", ("", True)),
        ("${node.unique.id}", (NODE["node.unique.id"], True)),
        ("${node.datacenter}", ("dc1", True)),
        ("${node.unique.name}", ("host-1", True)),
        ("${node.class}", ("", True)),
        ("${node.pool}", ("default", True)),
        ("${attr.kernel.name}", ("linux", True)),
        ("${attr.empty}", ("", True)),
        ("${meta.rack}", ("r1", True)),
        ("${attr.missing}", ("", False)),
        ("${meta.missing}", ("", False)),
        # Nomad resolves only these node fields in constraints
        ("${node.region}", ("", False)),
        ("${node.attr.kernel.name}", ("", False)),
        ("${env.HOME}", ("", False)),
    ],
)
def test_targets_resolve_as_nomad(target: str, expected: tuple[str, bool]) -> None:
    assert resolve_target(target, NODE) == expected


@pytest.mark.parametrize("op", ["=", "==", "is"])
def test_equality_needs_both_sides_found(op: str) -> None:
    assert ok("${attr.kernel.name}", op, "linux")
    assert not ok("${attr.kernel.name}", op, "windows")
    assert not ok("${attr.missing}", op, "")
    assert not ok("${attr.missing}", op, "${meta.missing}")
    assert ok("${meta.rack}", op, "r1")


@pytest.mark.parametrize("op", ["!=", "not"])
def test_inequality_compares_values_only(op: str) -> None:
    assert ok("${attr.kernel.name}", op, "windows")
    assert not ok("${attr.kernel.name}", op, "linux")
    # a missing target has the value "": it differs from a literal, not from ""
    assert ok("${attr.missing}", op, "foo")
    assert not ok("${attr.missing}", op, "${meta.missing}")


@pytest.mark.parametrize(
    ("left", "op", "right", "expected"),
    [
        ("bar", "<", "foo", True),
        ("foo", "<=", "foo", True),
        ("bar", ">", "foo", False),
        ("bar", ">=", "bar", True),
        ("1", ">", "foo", False),  # lexical: "1" < "f"
        ("10", "<", "1", False),  # integers
        ("1", "<", "10", True),
        ("9", "<", "10", True),  # numerically, though "9" > "10" lexically
        ("10.5", "<", "1.5", False),  # floats
        ("1.5", "<", "10.5", True),
        ("2", "<", "10.5", True),  # int and float: both floats
        ("1e3", ">", "999", True),
        ("-5", "<", "3", True),
        ("10 ", ">", "9", False),  # Go's ParseInt takes no spaces: lexical
        ("1_0", ">", "9", False),  # nor underscores: lexical
        ("abc", "<", "abd", True),
    ],
)
def test_order_integer_then_float_then_lexical(
    left: str, op: str, right: str, expected: bool
) -> None:
    assert ok(left, op, right) is expected


def test_order_with_targets() -> None:
    assert ok("${attr.cpu.numcores}", ">=", "4")
    assert not ok("${attr.cpu.numcores}", ">", "16")
    assert ok("${attr.cpu.frequency}", ">", "2000")
    assert not ok("${attr.missing}", "<", "5")
    assert not ok("${attr.missing}", ">=", "")


def test_regexp_searches() -> None:
    assert ok("${attr.kernel.name}", "regexp", "^lin")
    assert ok("foobarbaz", "regexp", "bar")
    assert ok("foobarbaz", "regexp", r"[\w]+")
    assert not ok("${attr.kernel.name}", "regexp", "^win")
    assert not ok("${attr.missing}", "regexp", ".*")
    assert not ok("foo", "regexp", "(")  # does not compile: never satisfied


def test_set_operators_split_and_trim() -> None:
    assert ok("${meta.tags}", "set_contains", "gpu")
    assert ok("${meta.tags}", "set_contains", "ssd,  gpu ")
    assert ok("${meta.tags}", "set_contains_all", "fast,ssd")
    assert not ok("${meta.tags}", "set_contains", "gpu,tpu")
    assert ok("${meta.tags}", "set_contains_any", "tpu, fast")
    assert not ok("${meta.tags}", "set_contains_any", "tpu,hdd")
    assert not ok("${meta.missing}", "set_contains_any", "tpu")


@pytest.mark.parametrize(
    ("value", "constraint", "expected"),
    [
        ("1.6.0", ">= 1.2, < 2.0", True),
        ("2.0.0", ">= 1.2, < 2.0", False),
        ("1.2.3", "~> 1.0", True),
        ("2.0.1", "~> 1.0", False),
        ("1.9", "~> 1.2", True),
        ("1.2.9", "~> 1.2.3", True),
        ("1.3.0", "~> 1.2.3", False),
        ("1.2.2", "~> 1.2.3", False),
        ("1.4", ">= 1.0, < 1.4", False),
        ("v1.2.3", "= 1.2.3", True),
        ("1.2.3", "1.2.3", True),
        ("1.2.3", "!= 1.2.3", False),
        # a pre-release never satisfies a constraint without one ...
        ("1.3.0-beta1", ">= 0.6.1", False),
        # ... and one with a pre-release only on the same segments
        ("1.7.0-alpha1", ">= 1.6.0-beta1", False),
        ("1.6.0-rc1", ">= 1.6.0-beta1", True),
        ("1.6.0-alpha", ">= 1.6.0-beta1", False),
        ("1.6.0", ">= 1.6.0-beta1", True),
        ("1.3.0-beta1+ent", "= 1.3.0-beta1", True),  # metadata is ignored
        ("1.2.0", "~> 1.2.0-beta", False),  # ~> with a pre-release wants one
        ("1.2.0-rc", "~> 1.2.0-beta", True),
        ("1.2.3.4", "> 1.2.3", True),  # more than three segments
        ("1.2.3.0", "= 1.2.3", True),
        ("junk", ">= 1.0", False),
        ("1.0", "not a constraint", False),
    ],
)
def test_version_operator(value: str, constraint: str, expected: bool) -> None:
    assert ok(value, "version", constraint) is expected


@pytest.mark.parametrize(
    ("value", "constraint", "expected"),
    [
        ("1.2.3", ">= 1.0, < 1.4", True),
        ("1.4", ">= 1.0, < 1.4", False),
        ("1.2.3", "~> 1.0", False),  # no pessimistic operator in semver
        ("1.3.0-beta1", ">= 0.6.1", True),  # plain semver ordering
        ("1.7.0-alpha1", ">= 1.6.0-beta1", True),
        ("1.3.0-beta1", "< 1.3.0", True),
        ("1.3.0-beta.2", "> 1.3.0-beta.11", False),  # numeric parts compare as numbers
        ("1.3.0-beta.x", "> 1.3.0-beta.11", True),  # words sort above numbers
        ("1.3.0-beta1+ent", "= 1.3.0-beta1", True),
        ("1.0.0", ">= 1.0.0beta", False),  # the constraint must be strict semver
    ],
)
def test_semver_operator(value: str, constraint: str, expected: bool) -> None:
    assert ok(value, "semver", constraint) is expected


def test_version_of_an_attribute() -> None:
    assert ok("${attr.nomad.version}", "version", ">= 1.5")
    assert ok("${attr.nomad.version}", "semver", "< 2.0.0")
    assert not ok("${attr.missing}", "version", ">= 0.0")
    assert not ok("${attr.nomad.version}", "version", "${attr.missing}")


def test_is_set_and_is_not_set_look_at_presence_only() -> None:
    assert ok("${attr.kernel.name}", "is_set")
    assert ok("${attr.empty}", "is_set")
    assert not ok("${attr.missing}", "is_set")
    assert ok("${attr.missing}", "is_not_set")
    assert not ok("${attr.empty}", "is_not_set")
    assert ok("${node.region}", "is_not_set")  # unresolvable in Nomad's constraints


def test_unknown_operator_is_never_satisfied() -> None:
    assert not ok("${attr.kernel.name}", "contains", "linux")


def test_failure_carries_nomads_string_form() -> None:
    constraints = [
        Constraint("${attr.kernel.name}", "linux", "="),
        Constraint("${attr.kernel.name}", "windows", "="),
        Constraint("${attr.missing}", "", "is_set"),
    ]
    failure = check_constraints(constraints, NODE)
    assert failure == ConstraintFailure(
        "${attr.kernel.name} = windows", Constraint("${attr.kernel.name}", "windows", "=")
    )
    assert str(failure) == "${attr.kernel.name} = windows"
    assert str(Constraint("${attr.missing}", "", "is_set")) == "${attr.missing} is_set "
    assert check_constraints(constraints[:1], NODE) is None


def test_distinct_hosts_admits_one_alloc_of_the_job_per_node() -> None:
    job_level = [Constraint(operand="distinct_hosts", rtarget="true")]
    assert (
        check_placement(job_id="web", group="a", node_vars=NODE, job_constraints=job_level) is None
    )
    live = [PlacedAlloc("web", "b")]
    failure = check_placement(
        job_id="web", group="a", node_vars=NODE, job_constraints=job_level, live=live
    )
    assert failure is not None and failure.reason == "distinct_hosts"
    other_job = [PlacedAlloc("api", "a")]
    assert (
        check_placement(
            job_id="web", group="a", node_vars=NODE, job_constraints=job_level, live=other_job
        )
        is None
    )


def test_distinct_hosts_at_group_level_counts_the_group_only() -> None:
    group_level = [Constraint(operand="distinct_hosts")]
    args = {"job_id": "web", "group": "a", "node_vars": NODE, "group_constraints": group_level}
    assert check_placement(**args, live=[PlacedAlloc("web", "b")]) is None  # type: ignore[arg-type]
    failure = check_placement(**args, live=[PlacedAlloc("web", "a")])  # type: ignore[arg-type]
    assert failure is not None and failure.reason == "distinct_hosts"


@pytest.mark.parametrize(
    ("rtarget", "on"),
    [("", True), ("true", True), ("1", True), ("false", False), ("0", False), ("junk", True)],
)
def test_distinct_hosts_switch(rtarget: str, on: bool) -> None:
    failure = check_placement(
        job_id="web",
        group="a",
        node_vars=NODE,
        job_constraints=[Constraint(operand="distinct_hosts", rtarget=rtarget)],
        live=[PlacedAlloc("web", "a")],
    )
    assert (failure is not None) is on


def test_distinct_property_counts_allocs_sharing_the_nodes_value() -> None:
    two_per_rack = [Constraint("${meta.rack}", "2", "distinct_property")]
    args = {"job_id": "web", "group": "a", "node_vars": NODE, "job_constraints": two_per_rack}
    assert check_placement(**args, live=[PlacedAlloc("web", "a")]) is None  # type: ignore[arg-type]
    failure = check_placement(  # type: ignore[arg-type]
        **args, live=[PlacedAlloc("web", "a"), PlacedAlloc("web", "b")]
    )
    assert failure is not None
    assert failure.reason == "distinct_property: ${meta.rack}=r1 used by 2 allocs"
    one_default = [Constraint("${meta.rack}", "", "distinct_property")]
    failure = check_placement(
        job_id="web",
        group="a",
        node_vars=NODE,
        group_constraints=one_default,
        live=[PlacedAlloc("web", "a")],
    )
    assert failure is not None and failure.reason.endswith("used by 1 allocs")


def test_distinct_property_on_a_missing_property_or_bad_count() -> None:
    missing = [Constraint("${meta.zone}", "", "distinct_property")]
    failure = check_placement(job_id="j", group="g", node_vars=NODE, job_constraints=missing)
    assert failure is not None and failure.reason == 'missing property "${meta.zone}"'
    bad = [Constraint("${meta.rack}", "x", "distinct_property")]
    failure = check_placement(job_id="j", group="g", node_vars=NODE, job_constraints=bad)
    assert failure is not None and failure.reason.startswith('failed to convert RTarget "x"')


def test_placement_order_job_then_group_and_tasks_then_distinct() -> None:
    failure = check_placement(
        job_id="j",
        group="g",
        node_vars=NODE,
        job_constraints=[
            Constraint(operand="distinct_hosts"),
            Constraint("${attr.x}", "", "is_set"),
        ],
        group_constraints=[Constraint("${attr.kernel.name}", "darwin")],
        task_constraints=[Constraint("${meta.rack}", "r2")],
        live=[PlacedAlloc("j", "g")],
    )
    assert failure is not None and failure.reason == "${attr.x} is_set "
    failure = check_placement(
        job_id="j",
        group="g",
        node_vars=NODE,
        group_constraints=[Constraint("${attr.kernel.name}", "linux")],
        task_constraints=[Constraint("${meta.rack}", "r2")],
    )
    assert failure is not None and failure.reason == "${meta.rack} = r2"


def test_constraints_from_nomad_json() -> None:
    docs = [
        {"LTarget": "${attr.kernel.name}", "RTarget": "linux", "Operand": "="},
        {"LTarget": "", "RTarget": "", "Operand": "distinct_hosts"},
        {"LTarget": "${attr.x}", "Operand": None},
    ]
    assert constraints_from_json(docs) == (
        Constraint("${attr.kernel.name}", "linux", "="),
        Constraint("", "", "distinct_hosts"),
        Constraint("${attr.x}", "", "="),
    )
    assert constraints_from_json(None) == ()
    with pytest.raises(JobSpecError, match=r"Constraints\[0\]\.Operand"):
        constraints_from_json([{"Operand": "near"}])
    with pytest.raises(JobSpecError, match=r"Constraint\.RTarget"):
        constraint_from_json({"RTarget": 5})


def test_resources_name_the_exhausted_dimension_in_nomads_order() -> None:
    node = Capacity(cpu_mhz=4000, memory_mb=8192, disk_mb=10000)
    assert check_resources(Capacity(500, 256, 300), node=node) is None
    assert check_resources(Capacity(4001, 256), node=node) == "cpu"
    assert check_resources(Capacity(5000, 99999), node=node) == "cpu"
    assert check_resources(Capacity(100, 8193), node=node) == "memory"
    assert check_resources(Capacity(100, 100, 10001), node=node) == "disk"
    in_use = Capacity(3500, 1000)
    assert check_resources(Capacity(500, 100), node=node, in_use=in_use) is None
    assert check_resources(Capacity(501, 100), node=node, in_use=in_use) == "cpu"
    reserved = Capacity(0, 8000)
    assert check_resources(Capacity(100, 193), node=node, reserved=reserved) == "memory"


def test_alloc_metric_of_a_filtered_and_an_exhausted_node() -> None:
    failure = ConstraintFailure("${attr.kernel.name} = windows")
    metric = alloc_metric(filtered=failure, node_class="gpu", datacenter="dc1")
    assert metric["NodesEvaluated"] == 1
    assert metric["NodesFiltered"] == 1
    assert metric["ConstraintFiltered"] == {"${attr.kernel.name} = windows": 1}
    assert metric["ClassFiltered"] == {"gpu": 1}
    assert metric["NodesAvailable"] == {"dc1": 1}
    assert metric["DimensionExhausted"] is None
    metric = alloc_metric(exhausted="memory")
    assert metric["NodesFiltered"] == 0
    assert metric["NodesExhausted"] == 1
    assert metric["DimensionExhausted"] == {"memory": 1}
    assert metric["ConstraintFiltered"] is None


def test_task_drivers_are_checked_after_job_constraints() -> None:
    assert check_placement(job_id="j", group="g", node_vars=NODE, drivers=["raw_exec"]) is None
    failure = check_placement(
        job_id="j",
        group="g",
        node_vars=NODE,
        drivers=["raw_exec", "docker"],
        group_constraints=[Constraint("${attr.kernel.name}", "darwin")],
    )
    assert failure == ConstraintFailure("missing drivers")
    failure = check_placement(
        job_id="j",
        group="g",
        node_vars=NODE,
        job_constraints=[Constraint("${attr.kernel.name}", "darwin")],
        drivers=["docker"],
    )
    assert failure is not None and failure.reason == "${attr.kernel.name} = darwin"
    assert check_drivers(["raw_exec"], {**NODE, "attr.driver.raw_exec": "false"}) is not None
