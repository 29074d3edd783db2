"""Nomad's API JSON of the task and group blocks a job carries beside its scheduling
fields: `Constraints`, a group's `Networks` (`ReservedPorts`, `DynamicPorts`), a task's
`Templates` and `Artifacts`; and an allocation's ports, the ``Shared.Ports`` of its
``AllocatedResources`` (`ALLOCATED_PORTS`: only that part is read or written here; the
rest of ``AllocatedResources`` is derived from the job by the agent's API).

Each value is checked as Nomad's API canonicalises and validates it (api/tasks.go,
api/constraint.go, nomad/structs Template.Validate at v1.6.0): a template needs text or
a source and a destination inside the allocation, a known change mode (a signal one
gets `SIGHUP` unless told, upper-cased), octal permissions; an artifact needs a source
and a known mode and, when it names no destination, gets Nomad's (`local/`, or
`local/<file>` in file mode); a constraint's operator is one Nomad knows (default `=`);
a port has a label and a port number in range, and a group's port labels are unique.
Errors are `JobSpecError` naming the JSON path (`...Templates[0].DestPath`).

No threads, no locks; immutable schema tables used by `codec` (which builds the Job
schema from them) and `hcl` (which reads the same fields from a job file).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from allocrunner.errors import JobSpecError
from allocrunner.jobspec._kinds import (
    Bool,
    Duration,
    Field,
    Int,
    Kind,
    ListOf,
    Str,
    StrMap,
    Struct,
    describe,
)
from allocrunner.structs.alloc import AllocatedPort
from allocrunner.structs.job import (
    ARTIFACT_MODES,
    DEFAULT_TEMPLATE_SIGNAL,
    TEMPLATE_CHANGE_MODES,
    Constraint,
    NetworkResource,
    Port,
    TaskArtifact,
    Template,
    default_artifact_dest,
)

__all__ = [
    "ALLOCATED_PORT",
    "ALLOCATED_PORTS",
    "CONSTRAINT",
    "CONSTRAINTS",
    "CONSTRAINT_OPERANDS",
    "NETWORKS",
    "NETWORK_RESOURCE",
    "PORT",
    "TASK_ARTIFACT",
    "TEMPLATE",
    "check_port_labels",
]

#: The operators of Nomad's constraint blocks (api/constraint.go, scheduler/feasible.go).
CONSTRAINT_OPERANDS = (
    "=",
    "==",
    "is",
    "!=",
    "not",
    "<",
    "<=",
    ">",
    ">=",
    "regexp",
    "version",
    "semver",
    "set_contains",
    "set_contains_all",
    "set_contains_any",
    "is_set",
    "is_not_set",
    "distinct_hosts",
    "distinct_property",
)
MAX_PORT = 65535
_STR = Str()


def _check_constraint(kwargs: dict[str, Any], path: str) -> None:
    operand = kwargs.get("operand", "") or "="
    if operand not in CONSTRAINT_OPERANDS:
        raise JobSpecError(
            f"{path}.Operand",
            f"unknown constraint operator {operand!r} (known: {', '.join(CONSTRAINT_OPERANDS)})",
        )
    kwargs["operand"] = operand


CONSTRAINT = Struct(
    Constraint,
    [
        Field("ltarget", "LTarget", _STR),
        Field("rtarget", "RTarget", _STR),
        Field("operand", "Operand", _STR),
    ],
    check=_check_constraint,
)
CONSTRAINTS = ListOf(CONSTRAINT)

PORT = Struct(
    Port,
    [
        Field("label", "Label", Str(nonempty=True), required=True),
        Field("value", "Value", Int(hi=MAX_PORT)),
        Field("to", "To", Int(lo=-1, hi=MAX_PORT)),
        Field("host_network", "HostNetwork", _STR),
    ],
)


def _check_network(kwargs: dict[str, Any], path: str) -> None:
    for i, port in enumerate(kwargs.get("reserved_ports", ())):
        if port.value == 0:
            raise JobSpecError(
                f"{path}.ReservedPorts[{i}].Value",
                f"static port {port.label!r} needs a port number",
            )


NETWORK_RESOURCE = Struct(
    NetworkResource,
    [
        Field("mode", "Mode", _STR),
        Field("reserved_ports", "ReservedPorts", ListOf(PORT)),
        Field("dynamic_ports", "DynamicPorts", ListOf(PORT)),
    ],
    check=_check_network,
)
NETWORKS = ListOf(NETWORK_RESOURCE)


ALLOCATED_PORT = Struct(
    AllocatedPort,
    [
        Field("label", "Label", Str(nonempty=True), required=True),
        Field("value", "Value", Int(hi=MAX_PORT), required=True),
        Field("to", "To", Int(lo=-1, hi=MAX_PORT)),
        Field("host_ip", "HostIP", _STR),
    ],
)
_PORT_LIST = ListOf(ALLOCATED_PORT)


class _AllocatedPorts(Kind):
    """Immutable. An allocation's ports as Nomad's ``AllocatedResources`` JSON carries
    them (``{"Shared": {"Ports": [...]}}``); other keys are left to the agent's API."""

    __slots__ = ()
    null = ()

    def decode(self, value: Any, path: str) -> tuple[AllocatedPort, ...]:
        if not isinstance(value, Mapping):
            raise JobSpecError(path, f"expected an object, got {describe(value)}")
        shared = value.get("Shared")
        if shared is None:
            return ()
        if not isinstance(shared, Mapping):
            raise JobSpecError(f"{path}.Shared", f"expected an object, got {describe(shared)}")
        ports = shared.get("Ports")
        if ports is None:
            return ()
        return _PORT_LIST.decode(ports, f"{path}.Shared.Ports")

    def encode(self, value: tuple[AllocatedPort, ...]) -> dict[str, Any]:
        return {"Shared": {"Ports": _PORT_LIST.encode(value)}}


ALLOCATED_PORTS = _AllocatedPorts()


def check_port_labels(networks: tuple[NetworkResource, ...], path: str) -> None:
    """A group's port labels are unique across its networks (Nomad refuses repeats)."""
    seen: set[str] = set()
    for i, network in enumerate(networks):
        for port in network.ports():
            if port.label in seen:
                raise JobSpecError(f"{path}[{i}]", f"port label {port.label!r} is used twice")
            seen.add(port.label)


def _escapes_alloc_dir(dest: str) -> bool:
    """Whether `dest`, taken relative to the task dir, leaves the allocation dir (an
    absolute destination is read relative to the task dir, as Nomad joins it)."""
    joined = posixpath.normpath(posixpath.join("task", dest.lstrip("/")))
    return joined == ".." or joined.startswith("../")


def _check_perms(perms: str, path: str) -> None:
    if not perms:
        return
    try:
        bits = int(perms, 8)
    except ValueError:
        raise JobSpecError(path, f"{perms!r} is not an octal permission such as '0644'") from None
    if bits < 0 or bits > 0o7777 or perms.startswith(("+", "-")) or "_" in perms:
        raise JobSpecError(path, f"{perms!r} is not an octal permission such as '0644'")


def _check_template(kwargs: dict[str, Any], path: str) -> None:
    if not kwargs.get("source_path") and not kwargs.get("embedded_tmpl"):
        raise JobSpecError(path, "a template needs a source path or embedded template text")
    dest = kwargs.get("dest_path", "")
    if not dest:
        raise JobSpecError(f"{path}.DestPath", "a template needs a destination")
    if "\0" in dest or _escapes_alloc_dir(dest):
        raise JobSpecError(f"{path}.DestPath", f"destination {dest!r} escapes the allocation dir")
    mode = kwargs.get("change_mode", "restart")
    if mode == "script":
        raise JobSpecError(
            f"{path}.ChangeMode", 'change_mode "script" (change scripts) is not supported here'
        )
    signal = str(kwargs.get("change_signal", "")).upper()
    if mode == "signal":
        signal = signal or DEFAULT_TEMPLATE_SIGNAL
        if kwargs.get("envvars"):
            raise JobSpecError(f"{path}.ChangeMode", "cannot use signals with env var templates")
    kwargs["change_signal"] = signal
    _check_perms(kwargs.get("perms", ""), f"{path}.Perms")


TEMPLATE = Struct(
    Template,
    [
        Field("source_path", "SourcePath", _STR),
        Field("dest_path", "DestPath", _STR),
        Field("embedded_tmpl", "EmbeddedTmpl", _STR),
        Field("change_mode", "ChangeMode", Str(choices=TEMPLATE_CHANGE_MODES)),
        Field("change_signal", "ChangeSignal", _STR),
        Field("splay", "Splay", Duration()),
        Field("perms", "Perms", _STR),
        Field("left_delim", "LeftDelim", _STR),
        Field("right_delim", "RightDelim", _STR),
        Field("envvars", "Envvars", Bool()),
        Field("err_missing_key", "ErrMissingKey", Bool()),
    ],
    check=_check_template,
)


def _check_artifact(kwargs: dict[str, Any], path: str) -> None:
    if "relative_dest" not in kwargs:
        kwargs["relative_dest"] = default_artifact_dest(
            kwargs.get("getter_source", ""), kwargs.get("getter_mode", "any")
        )
    dest = kwargs["relative_dest"]
    if "\0" in dest or _escapes_alloc_dir(dest):
        raise JobSpecError(
            f"{path}.RelativeDest", f"destination {dest!r} escapes the allocation dir"
        )


TASK_ARTIFACT = Struct(
    TaskArtifact,
    [
        Field("getter_source", "GetterSource", Str(nonempty=True), required=True),
        Field("getter_options", "GetterOptions", StrMap()),
        Field("getter_headers", "GetterHeaders", StrMap()),
        Field("getter_mode", "GetterMode", Str(choices=ARTIFACT_MODES)),
        Field("relative_dest", "RelativeDest", _STR),
    ],
    check=_check_artifact,
)
