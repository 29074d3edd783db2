"""Nomad constraints and resource fit, evaluated for this one node.

A job, its groups and its tasks carry `constraint` blocks; Nomad's scheduler filters
out every node that fails one. Here the node is always this agent's, so the question
is only "may this allocation be placed here?", answered the way Nomad's feasibility
checkers answer it (scheduler/feasible.go, scheduler/propertyset.go at v1.6.0):

- A target that does not start with ``${`` is a literal. ``${node.unique.id}``,
  ``${node.datacenter}``, ``${node.unique.name}``, ``${node.class}``, ``${node.pool}``,
  ``${attr.<key>}`` and ``${meta.<key>}`` resolve from the node's variables (the
  mapping `allocrunner.agent.fingerprint.interpolation_vars` builds); any other
  ``${...}`` (``${node.region}`` included) is unresolved, as in Nomad: its value is
  ``""`` and it is "not found".
- ``=``, ``==``, ``is`` need both sides found and equal; ``!=`` and ``not`` only
  compare the values (so a missing left side differs from any non-empty literal);
  ``<``, ``<=``, ``>``, ``>=`` need both found and compare as 64-bit integers when both
  parse as such, else as floats when both do, else lexically; ``regexp`` searches the
  left side (with Python's `re`, whose syntax agrees with Go's RE2 on common
  patterns; one that does not compile is never satisfied); ``set_contains`` /
  ``set_contains_all`` and ``set_contains_any`` split both sides on commas and trim
  spaces; ``version`` and ``semver`` see
  `allocrunner.placement.versions`; ``is_set`` / ``is_not_set`` look only at whether
  the left side was found; an unknown operator is never satisfied.
- ``distinct_hosts`` (job or group level; on when its right side is empty, a true
  boolean or unparsable) and ``distinct_property`` are not about the node's values but
  about the allocations already on it. With one node they become: at most one live
  allocation of the job (job level) or of the job's group (group level) for
  ``distinct_hosts``; at most N (the right side, default 1) live allocations of the
  job or group sharing the node's value of the property for ``distinct_property`` (all
  of them do: they are on this node), and none when the node lacks the property.

`check_placement` runs the checks in the order of Nomad's stack (job constraints, the
task drivers, group and task constraints, distinct_hosts, distinct_property) and returns
the first failure, whose `reason` is the key Nomad counts it under in
``AllocMetric.ConstraintFiltered``: the constraint's ``"<ltarget> <operand>
<rtarget>"``, or ``"distinct_hosts"``, or the distinct_property sentence. `alloc_metric`
builds the AllocMetric JSON of one filtered (or exhausted) node. `check_resources`
answers resource fit with the dimension names of Nomad's ``DimensionExhausted``.

Threads: none; pure functions over immutable values, callable from any thread (the
cluster state calls them under its lock: nothing here blocks or calls out). Locks:
none. Owner: the agent's placement of jobs; the value types are built by their JSON
decoders here or by the job codec.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import attrs

from allocrunner.errors import JobSpecError
from allocrunner.placement.versions import parse_go_int, semver_check, version_check

__all__ = [
    "DISTINCT_HOSTS",
    "DISTINCT_PROPERTY",
    "MISSING_DRIVERS",
    "OPERANDS",
    "Capacity",
    "Constraint",
    "ConstraintFailure",
    "ConstraintLike",
    "PlacedAlloc",
    "alloc_metric",
    "check_constraint",
    "check_constraints",
    "check_distinct",
    "check_drivers",
    "check_placement",
    "check_resources",
    "constraint_from_json",
    "constraints_from_json",
    "resolve_target",
]

DISTINCT_HOSTS = "distinct_hosts"
DISTINCT_PROPERTY = "distinct_property"
_EQUAL = ("=", "==", "is")
_NOT_EQUAL = ("!=", "not")
_ORDER = ("<", "<=", ">", ">=")
OPERANDS: frozenset[str] = frozenset(
    {
        *_EQUAL,
        *_NOT_EQUAL,
        *_ORDER,
        "regexp",
        "version",
        "semver",
        "set_contains",
        "set_contains_all",
        "set_contains_any",
        "is_set",
        "is_not_set",
        DISTINCT_HOSTS,
        DISTINCT_PROPERTY,
    }
)
_NODE_TARGETS = {
    "${node.unique.id}": "node.unique.id",
    "${node.datacenter}": "node.datacenter",
    "${node.unique.name}": "node.unique.name",
    "${node.class}": "node.class",
    "${node.pool}": "node.pool",
}


class ConstraintLike(Protocol):
    """Anything with Nomad's three constraint fields (`Constraint`, or a job struct's)."""

    @property
    def ltarget(self) -> str: ...

    @property
    def rtarget(self) -> str: ...

    @property
    def operand(self) -> str: ...


@attrs.frozen
class Constraint:
    """Immutable. One constraint block: left target, operand, right target."""

    ltarget: str = ""
    rtarget: str = ""
    operand: str = "="

    def __str__(self) -> str:
        return describe(self)


def describe(constraint: ConstraintLike) -> str:
    """Nomad's Constraint.String(): ``"<ltarget> <operand> <rtarget>"``."""
    return f"{constraint.ltarget} {constraint.operand} {constraint.rtarget}"


@attrs.frozen
class ConstraintFailure:
    """Immutable. Why the node was filtered: `reason` is the ConstraintFiltered key."""

    reason: str
    constraint: Constraint | None = None

    def __str__(self) -> str:
        return self.reason


@attrs.frozen
class PlacedAlloc:
    """Immutable. A live (not client-terminal) allocation already on this node."""

    job_id: str
    task_group: str


# --- decoding --------------------------------------------------------------------------


def constraint_from_json(doc: object, path: str = "Constraint") -> Constraint:
    """A `Constraint` from Nomad's API JSON (``LTarget``, ``RTarget``, ``Operand``);
    `JobSpecError` naming `path` when it is malformed. An absent operand is ``=``."""
    if not isinstance(doc, Mapping):
        raise JobSpecError(path, f"expected an object, got {type(doc).__name__}")
    values: dict[str, str] = {}
    for key in ("LTarget", "RTarget", "Operand"):
        value = doc.get(key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise JobSpecError(f"{path}.{key}", f"expected a string, got {value!r}")
        values[key] = value
    operand = values["Operand"] or "="
    if operand not in OPERANDS:
        raise JobSpecError(f"{path}.Operand", f"unknown constraint operand {operand!r}")
    return Constraint(values["LTarget"], values["RTarget"], operand)


def constraints_from_json(docs: object, path: str = "Constraints") -> tuple[Constraint, ...]:
    """Every constraint of a ``Constraints`` JSON list (None is no constraint)."""
    if docs is None:
        return ()
    if not isinstance(docs, list):
        raise JobSpecError(path, f"expected a list, got {type(docs).__name__}")
    return tuple(constraint_from_json(doc, f"{path}[{i}]") for i, doc in enumerate(docs))


# --- one constraint --------------------------------------------------------------------


def resolve_target(target: str, node_vars: Mapping[str, str]) -> tuple[str, bool]:
    """The value of a constraint target on this node and whether it was found."""
    if not target.startswith("${"):
        return target, True
    node_key = _NODE_TARGETS.get(target)
    if node_key is not None:
        return node_vars.get(node_key, ""), node_key in node_vars
    for prefix in ("attr.", "meta."):
        if target.startswith("${" + prefix):
            key = prefix + target[2 + len(prefix) :].removesuffix("}")
            value = node_vars.get(key)
            return (value, True) if value is not None else ("", False)
    return "", False


def check_constraint(constraint: ConstraintLike, node_vars: Mapping[str, str]) -> bool:
    """True when the node satisfies `constraint` (distinct_* are always true here:
    they are about other allocations, see `check_distinct`)."""
    left, left_found = resolve_target(constraint.ltarget, node_vars)
    right, right_found = resolve_target(constraint.rtarget, node_vars)
    return _satisfied(constraint.operand, left, right, left_found, right_found)


def _satisfied(op: str, left: str, right: str, left_found: bool, right_found: bool) -> bool:
    if op in (DISTINCT_HOSTS, DISTINCT_PROPERTY):
        return True
    if op in _NOT_EQUAL:
        return left != right
    if op == "is_set":
        return left_found
    if op == "is_not_set":
        return not left_found
    if not (left_found and right_found):
        return False
    if op in _EQUAL:
        return left == right
    if op in _ORDER:
        return _ordered(op, left, right)
    if op == "version":
        return version_check(left, right)
    if op == "semver":
        return semver_check(left, right)
    if op == "regexp":
        return _regexp(left, right)
    if op in ("set_contains", "set_contains_all"):
        return _split_set(right) <= _split_set(left)
    if op == "set_contains_any":
        return bool(_split_set(right) & _split_set(left))
    return False


_GO_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
    re.IGNORECASE,
)
_GO_HEX_FLOAT = re.compile(r"[+-]?0[xX][0-9a-fA-F]*\.?[0-9a-fA-F]*[pP][+-]?[0-9]+")


def _go_float(text: str) -> float | None:
    """`text` as Go's ``strconv.ParseFloat(text, 64)`` reads it, or None (an
    out-of-range value fails, as in Go)."""
    try:
        if _GO_FLOAT.fullmatch(text):
            value = float(text)
        elif _GO_HEX_FLOAT.fullmatch(text):
            value = float.fromhex(text)
        else:
            return None
    except (ValueError, OverflowError):
        return None
    if math.isinf(value) and "inf" not in text.lower():
        return None
    return value


def _ordered(op: str, left: str, right: str) -> bool:
    pair: tuple[int, int] | tuple[float, float] | tuple[str, str]
    left_int, right_int = parse_go_int(left), parse_go_int(right)
    if left_int is not None and right_int is not None:
        pair = (left_int, right_int)
    else:
        left_float, right_float = _go_float(left), _go_float(right)
        if left_float is not None and right_float is not None:
            pair = (left_float, right_float)
        else:
            pair = (left, right)
    a, b = pair
    if op == "<":
        return a < b  # type: ignore[operator]  # both sides share one type
    if op == "<=":
        return a <= b  # type: ignore[operator]
    if op == ">":
        return a > b  # type: ignore[operator]
    return a >= b  # type: ignore[operator]


def _regexp(value: str, pattern: str) -> bool:
    try:
        return re.search(pattern, value) is not None
    except re.error:
        return False


def _split_set(text: str) -> frozenset[str]:
    return frozenset(part.strip() for part in text.split(","))


def check_constraints(
    constraints: Iterable[ConstraintLike], node_vars: Mapping[str, str]
) -> ConstraintFailure | None:
    """The first of `constraints` the node fails, or None when it meets them all."""
    for constraint in constraints:
        if not check_constraint(constraint, node_vars):
            return ConstraintFailure(describe(constraint), _as_constraint(constraint))
    return None


def _as_constraint(constraint: ConstraintLike) -> Constraint:
    if isinstance(constraint, Constraint):
        return constraint
    return Constraint(constraint.ltarget, constraint.rtarget, constraint.operand)


# --- distinct_hosts and distinct_property ----------------------------------------------

_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _distinct_hosts_on(constraints: Iterable[ConstraintLike]) -> bool:
    """Whether the first distinct_hosts constraint of a level turns it on."""
    for constraint in constraints:
        if constraint.operand == DISTINCT_HOSTS:
            return constraint.rtarget not in _GO_FALSE
    return False


def _property_failure(
    constraint: ConstraintLike, node_vars: Mapping[str, str], used: int
) -> ConstraintFailure | None:
    allowed = 1
    if constraint.rtarget:
        parsed = parse_go_int(constraint.rtarget)
        if parsed is None or parsed < 0 or constraint.rtarget.startswith(("+", "-")):
            text = constraint.rtarget
            return ConstraintFailure(
                f'failed to convert RTarget "{text}" to uint64: '
                f'strconv.ParseUint: parsing "{text}": invalid syntax',
                _as_constraint(constraint),
            )
        allowed = parsed
    value, found = resolve_target(constraint.ltarget, node_vars)
    if not constraint.ltarget or not found:
        return ConstraintFailure(
            f'missing property "{constraint.ltarget}"', _as_constraint(constraint)
        )
    if used < allowed:
        return None
    return ConstraintFailure(
        f"{DISTINCT_PROPERTY}: {constraint.ltarget}={value} used by {used} allocs",
        _as_constraint(constraint),
    )


def check_distinct(
    *,
    job_id: str,
    group: str,
    job_constraints: Sequence[ConstraintLike],
    group_constraints: Sequence[ConstraintLike],
    node_vars: Mapping[str, str],
    live: Iterable[PlacedAlloc],
) -> ConstraintFailure | None:
    """The distinct_hosts / distinct_property failure of placing one more allocation of
    `job_id`'s `group` on this node, given the `live` allocations already on it."""
    of_job = [a for a in live if a.job_id == job_id]
    of_group = [a for a in of_job if a.task_group == group]
    job_wide = _distinct_hosts_on(job_constraints)
    if (job_wide and of_job) or (_distinct_hosts_on(group_constraints) and of_group):
        return ConstraintFailure(DISTINCT_HOSTS)
    for constraints, used in ((job_constraints, len(of_job)), (group_constraints, len(of_group))):
        for constraint in constraints:
            if constraint.operand != DISTINCT_PROPERTY:
                continue
            failure = _property_failure(constraint, node_vars, used)
            if failure is not None:
                return failure
    return None


MISSING_DRIVERS = "missing drivers"


def check_drivers(drivers: Iterable[str], node_vars: Mapping[str, str]) -> ConstraintFailure | None:
    """``missing drivers`` unless the node's ``attr.driver.<name>`` of every driver is a
    true boolean (Nomad's DriverChecker on a fingerprinted node)."""
    for driver in drivers:
        if node_vars.get(f"attr.driver.{driver}") not in _GO_TRUE:
            return ConstraintFailure(MISSING_DRIVERS)
    return None


def check_placement(
    *,
    job_id: str,
    group: str,
    node_vars: Mapping[str, str],
    job_constraints: Sequence[ConstraintLike] = (),
    drivers: Iterable[str] = (),
    group_constraints: Sequence[ConstraintLike] = (),
    task_constraints: Sequence[ConstraintLike] = (),
    live: Iterable[PlacedAlloc] = (),
) -> ConstraintFailure | None:
    """Whether one more allocation of `job_id`'s `group` may be placed on this node:
    None, or the first failure in the order of Nomad's feasibility stack (job
    constraints, the group's task drivers, group and task constraints, distinct_hosts,
    distinct_property). `task_constraints` are those of every task of the group."""
    failure = check_constraints(job_constraints, node_vars)
    if failure is None:
        failure = check_drivers(drivers, node_vars)
    if failure is None:
        failure = check_constraints((*group_constraints, *task_constraints), node_vars)
    if failure is None:
        failure = check_distinct(
            job_id=job_id,
            group=group,
            job_constraints=job_constraints,
            group_constraints=group_constraints,
            node_vars=node_vars,
            live=live,
        )
    return failure


# --- resources and the metric ----------------------------------------------------------


@attrs.frozen
class Capacity:
    """Immutable. An amount of CPU (MHz), memory and disk (MB)."""

    cpu_mhz: int = 0
    memory_mb: int = 0
    disk_mb: int = 0

    def __add__(self, other: Capacity) -> Capacity:
        return Capacity(
            self.cpu_mhz + other.cpu_mhz,
            self.memory_mb + other.memory_mb,
            self.disk_mb + other.disk_mb,
        )

    def __sub__(self, other: Capacity) -> Capacity:
        return Capacity(
            self.cpu_mhz - other.cpu_mhz,
            self.memory_mb - other.memory_mb,
            self.disk_mb - other.disk_mb,
        )


def check_resources(
    asked: Capacity,
    *,
    node: Capacity,
    in_use: Capacity = Capacity(),
    reserved: Capacity = Capacity(),
) -> str | None:
    """The exhausted dimension (``"cpu"``, ``"memory"``, ``"disk"``, checked in Nomad's
    order) when `asked` on top of `in_use` does not fit in `node` less `reserved`;
    None when it fits. `in_use` sums the live (not client-terminal) allocations."""
    available = node - reserved
    used = in_use + asked
    if available.cpu_mhz < used.cpu_mhz:
        return "cpu"
    if available.memory_mb < used.memory_mb:
        return "memory"
    if available.disk_mb < used.disk_mb:
        return "disk"
    return None


def alloc_metric(
    *,
    filtered: ConstraintFailure | None = None,
    exhausted: str | None = None,
    node_class: str = "",
    datacenter: str = "",
) -> dict[str, object]:
    """Nomad's AllocMetric JSON for one evaluated node that was filtered by a
    constraint (`filtered`), ran out of a resource (`exhausted`), or neither."""
    available = {datacenter: 1} if datacenter else {}  # ready nodes, before filtering
    return {
        "NodesEvaluated": 1,
        "NodesFiltered": 1 if filtered else 0,
        "NodesInPool": 1,
        "NodesAvailable": available,
        "ClassFiltered": {node_class: 1} if filtered and node_class else None,
        "ConstraintFiltered": {filtered.reason: 1} if filtered else None,
        "NodesExhausted": 1 if exhausted and not filtered else 0,
        "ClassExhausted": {node_class: 1} if exhausted and not filtered and node_class else None,
        "DimensionExhausted": {exhausted: 1} if exhausted and not filtered else None,
        "QuotaExhausted": None,
        "ResourcesExhausted": None,
        "Scores": None,
        "ScoreMetaData": None,
        "AllocationTime": 0,
        "CoalescedFailures": 0,
    }
