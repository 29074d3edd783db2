"""The HCL shape of each Nomad job block: which names are attributes, maps, blocks.

Each `Spec` ties an HCL block to the API JSON struct it becomes (`codec`'s schema):
attribute name -> JSON key, maps (`env`, `meta`, `config`), single blocks, labelled
blocks (`group "web"`, `port "http"`), unlabelled repeated blocks (`constraint`,
`template`, `artifact`, `network`), and the level of `unhonoured.UNHONOURED` whose
names are valid Nomad but not acted on here (each one becomes a warning). `post`
finishes a block from attributes that do not map one to one: the constraint
shortcuts of jobspec2 (`version = "..."`, `distinct_hosts = true`, …) and the split of
a network's `port` blocks into static and dynamic ports (jobspec2 normalizeNetworkPorts).

No threads, no locks; immutable tables, read by `hcl._Converter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from allocrunner.errors import JobSpecError
from allocrunner.jobspec._kinds import Struct, describe
from allocrunner.jobspec.codec import (
    DISPATCH_PAYLOAD_CONFIG,
    EPHEMERAL_DISK,
    JOB,
    LIFECYCLE,
    LOG_CONFIG,
    MIGRATE_STRATEGY,
    PARAMETERIZED_JOB,
    PERIODIC,
    RESOURCES,
    RESTART_POLICY,
    TASK,
    TASK_GROUP,
    UPDATE_STRATEGY,
)
from allocrunner.jobspec.codec_blocks import (
    CONSTRAINT,
    NETWORK_RESOURCE,
    PORT,
    TASK_ARTIFACT,
    TEMPLATE,
)
from allocrunner.jobspec.hcl_types import ConversionError, to_string
from allocrunner.jobspec.unhonoured import UNHONOURED

__all__ = ["JOB_SPEC", "Spec"]


@attrs.frozen
class Spec:
    """Immutable. The HCL block shape of one API struct: which names go where."""

    struct: Struct
    attributes: Mapping[str, str] = attrs.field(factory=dict)  # hcl name -> JSON key
    maps: Mapping[str, str] = attrs.field(factory=dict)  # block-or-map -> JSON key
    blocks: Mapping[str, tuple[str, Spec]] = attrs.field(factory=dict)  # single blocks
    repeated: Mapping[str, tuple[str, Spec]] = attrs.field(factory=dict)  # labelled, many
    negated: Mapping[str, str] = attrs.field(factory=dict)  # bool set as its negation
    lists: Mapping[str, tuple[str, Spec]] = attrs.field(factory=dict)  # unlabelled, many
    unhonoured: str = ""  # the level of `unhonoured.UNHONOURED` whose names warn
    kept_but_warned: frozenset[str] = frozenset()  # converted, and warned about
    raw: frozenset[str] = frozenset()  # attributes handed to `post` as evaluated
    post: Callable[[dict[str, Any], dict[str, Any], str], None] | None = None
    required: frozenset[str] = frozenset()
    label_key: str = ""

    def warns(self, name: str) -> str | None:
        """The reason `name` is not honoured here, or None."""
        entry = UNHONOURED.get(self.unhonoured, {}).get(name)
        return entry[1] if entry is not None else None


_RESTART = Spec(
    RESTART_POLICY,
    attributes={
        "attempts": "Attempts",
        "interval": "Interval",
        "delay": "Delay",
        "mode": "Mode",
        "render_templates": "RenderTemplates",
    },
)
_EPHEMERAL_DISK = Spec(
    EPHEMERAL_DISK, attributes={"size": "SizeMB", "sticky": "Sticky", "migrate": "Migrate"}
)
_HEALTH_ATTRS = {
    "max_parallel": "MaxParallel",
    "health_check": "HealthCheck",
    "min_healthy_time": "MinHealthyTime",
    "healthy_deadline": "HealthyDeadline",
}
_UPDATE = Spec(
    UPDATE_STRATEGY,
    attributes={**_HEALTH_ATTRS, "auto_revert": "AutoRevert", "canary": "Canary"},
    unhonoured="update",
    kept_but_warned=frozenset({"auto_revert", "canary"}),
)
_MIGRATE = Spec(MIGRATE_STRATEGY, attributes=_HEALTH_ATTRS)
_RESOURCES = Spec(
    RESOURCES,
    attributes={
        "cpu": "CPU",
        "cores": "Cores",
        "memory": "MemoryMB",
        "memory_max": "MemoryMaxMB",
        "disk": "DiskMB",
    },
    unhonoured="resources",
)
_LOGS = Spec(
    LOG_CONFIG,
    attributes={"max_files": "MaxFiles", "max_file_size": "MaxFileSizeMB", "disabled": "Disabled"},
    negated={"enabled": "Disabled"},  # the pre-1.6 spelling
)
_LIFECYCLE = Spec(
    LIFECYCLE, attributes={"hook": "Hook", "sidecar": "Sidecar"}, required=frozenset({"hook"})
)
_DISPATCH_PAYLOAD = Spec(DISPATCH_PAYLOAD_CONFIG, attributes={"file": "File"})
_PERIODIC = Spec(
    PERIODIC,
    attributes={
        "enabled": "Enabled",
        "cron": "Spec",
        "crons": "Specs",
        "prohibit_overlap": "ProhibitOverlap",
        "time_zone": "TimeZone",
    },
)
_PARAMETERIZED = Spec(
    PARAMETERIZED_JOB,
    attributes={
        "payload": "Payload",
        "meta_required": "MetaRequired",
        "meta_optional": "MetaOptional",
    },
)

# --- constraint: jobspec2's shortcuts -------------------------------------------------

_OPERATOR_SHORTCUTS = ("version", "semver", "regexp", "set_contains")
_UNUSED_SHORTCUTS = ("set_contains_all", "set_contains_any", "is_set", "is_not_set")


def _shortcut_text(value: Any, path: str) -> str:
    if isinstance(value, bool | int | float | str):
        try:
            return to_string(value)
        except ConversionError:
            pass
    raise JobSpecError(path, f"expected a string, got {describe(value)}")


def _constraint_shortcuts(raw: dict[str, Any], out: dict[str, Any], path: str) -> None:
    """`version = "> 1.2"` is operator version with that value, and so on (a later
    shortcut of jobspec2's order wins); `distinct_property` names the left side."""
    for name in _OPERATOR_SHORTCUTS:
        text = _shortcut_text(raw[name], f"{path}.{name}") if name in raw else ""
        if text:
            out["Operand"], out["RTarget"] = name, text
    if "distinct_hosts" in raw:
        flag = raw["distinct_hosts"]
        if isinstance(flag, str) and flag in ("true", "false"):
            flag = flag == "true"
        if not isinstance(flag, bool):
            raise JobSpecError(f"{path}.distinct_hosts", f"expected a bool, got {describe(flag)}")
        out["Operand"], out["RTarget"] = "distinct_hosts", "true" if flag else "false"
    if "distinct_property" in raw:
        prop = _shortcut_text(raw["distinct_property"], f"{path}.distinct_property")
        if prop:
            out["Operand"], out["LTarget"] = "distinct_property", prop
    for name in _UNUSED_SHORTCUTS:
        if name in raw:
            raise JobSpecError(
                f"{path}.{name}",
                f"Nomad reads no {name} shortcut in a constraint: use operator and value",
            )
    out.setdefault("Operand", "=")


_CONSTRAINT = Spec(
    CONSTRAINT,
    attributes={"attribute": "LTarget", "value": "RTarget", "operator": "Operand"},
    raw=frozenset(
        {*_OPERATOR_SHORTCUTS, *_UNUSED_SHORTCUTS, "distinct_hosts", "distinct_property"}
    ),
    post=_constraint_shortcuts,
)

# --- template, artifact, network ------------------------------------------------------

_TEMPLATE = Spec(
    TEMPLATE,
    attributes={
        "source": "SourcePath",
        "destination": "DestPath",
        "data": "EmbeddedTmpl",
        "change_mode": "ChangeMode",
        "change_signal": "ChangeSignal",
        "splay": "Splay",
        "perms": "Perms",
        "left_delimiter": "LeftDelim",
        "right_delimiter": "RightDelim",
        "env": "Envvars",
        "error_on_missing_key": "ErrMissingKey",
    },
    unhonoured="template",
)
_ARTIFACT = Spec(
    TASK_ARTIFACT,
    attributes={"source": "GetterSource", "destination": "RelativeDest", "mode": "GetterMode"},
    maps={"options": "GetterOptions", "headers": "GetterHeaders"},
)
_PORT = Spec(
    PORT,
    attributes={"static": "Value", "to": "To", "host_network": "HostNetwork"},
    label_key="Label",
)


def _split_ports(raw: dict[str, Any], out: dict[str, Any], path: str) -> None:
    """`port` blocks with a static port are reserved ports, the others dynamic."""
    ports = out.pop("DynamicPorts", [])
    reserved = [p for p in ports if p.get("Value")]
    if reserved:
        out["ReservedPorts"] = [*out.get("ReservedPorts", []), *reserved]
    dynamic = [p for p in ports if not p.get("Value")]
    if dynamic:
        out["DynamicPorts"] = dynamic


_NETWORK = Spec(
    NETWORK_RESOURCE,
    attributes={"mode": "Mode"},
    repeated={"port": ("DynamicPorts", _PORT), "reserved_ports": ("ReservedPorts", _PORT)},
    unhonoured="network",
    post=_split_ports,
)

_TASK = Spec(
    TASK,
    attributes={
        "driver": "Driver",
        "user": "User",
        "leader": "Leader",
        "kill_timeout": "KillTimeout",
        "kill_signal": "KillSignal",
        "shutdown_delay": "ShutdownDelay",
    },
    maps={"config": "Config", "env": "Env", "meta": "Meta"},
    blocks={
        "lifecycle": ("Lifecycle", _LIFECYCLE),
        "restart": ("RestartPolicy", _RESTART),
        "resources": ("Resources", _RESOURCES),
        "logs": ("LogConfig", _LOGS),
        "dispatch_payload": ("DispatchPayload", _DISPATCH_PAYLOAD),
    },
    lists={
        "constraint": ("Constraints", _CONSTRAINT),
        "template": ("Templates", _TEMPLATE),
        "artifact": ("Artifacts", _ARTIFACT),
    },
    unhonoured="task",
    required=frozenset({"driver"}),
    label_key="Name",
)
_GROUP = Spec(
    TASK_GROUP,
    attributes={
        "count": "Count",
        "shutdown_delay": "ShutdownDelay",
        "max_run_duration": "MaxRunDuration",
    },
    maps={"meta": "Meta"},
    blocks={
        "restart": ("RestartPolicy", _RESTART),
        "ephemeral_disk": ("EphemeralDisk", _EPHEMERAL_DISK),
        "update": ("Update", _UPDATE),
        "migrate": ("Migrate", _MIGRATE),
    },
    repeated={"task": ("Tasks", _TASK)},
    lists={"constraint": ("Constraints", _CONSTRAINT), "network": ("Networks", _NETWORK)},
    unhonoured="group",
    label_key="Name",
)
_JOB = Spec(
    JOB,
    attributes={
        "region": "Region",
        "namespace": "Namespace",
        "name": "Name",
        "type": "Type",
        "priority": "Priority",
        "datacenters": "Datacenters",
    },
    maps={"meta": "Meta"},
    blocks={
        "update": ("Update", _UPDATE),
        "migrate": ("Migrate", _MIGRATE),
        "periodic": ("Periodic", _PERIODIC),
        "parameterized": ("ParameterizedJob", _PARAMETERIZED),
    },
    repeated={"group": ("TaskGroups", _GROUP)},
    lists={"constraint": ("Constraints", _CONSTRAINT)},
    unhonoured="job",
    label_key="ID",
)

#: The job block's shape.
JOB_SPEC = _JOB
