"""The valid Nomad job settings this node does not act on, and their warnings.

A local runner has no Consul, Vault, CSI, autoscaler, deployments or other nodes, so a
job file may hold blocks that are valid Nomad but mean nothing here. None is dropped
without a word: each occurrence becomes one warning that starts with its field path,
`job.group[web].task[api].service: not honoured on this node (no Consul or Nomad
service discovery); ignored`. The table below names each setting as HCL spells it
and as Nomad's API JSON does, per level (job, group, task, update, network,
resources, template, service), with the reason.

For API JSON (`json_warnings`) only values that differ from what Nomad's canonical JSON
holds anyway count (a null, an empty list, `Canary: 0`, the job type's default
reschedule policy), so the output of `nomad job run -output` stays quiet.

No threads, no locks; immutable tables and pure functions, used by `hcl` (job files)
and `load` / the agent's job registration (API JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["UNHONOURED", "format_warnings", "json_warnings", "warning"]

_NO_CONSUL = "no Consul or Nomad service discovery"
_ONE_NODE = "one node: no other node to choose"
_NO_RESCHEDULE = "allocations are not rescheduled"
_NO_DISCONNECT = "the node is its own server and never disconnects from it"
_NO_DEPLOYMENTS = "no deployments"
_NO_VOLUMES = "no host or CSI volumes"

#: level -> HCL name -> (API JSON key, reason).
UNHONOURED: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "job": {
        "all_at_once": ("AllAtOnce", "one node: placements are never partial"),
        "node_pool": ("NodePool", "one node, in its own pool"),
        "affinity": ("Affinities", _ONE_NODE),
        "spread": ("Spreads", _ONE_NODE),
        "multiregion": ("Multiregion", "one region"),
        "reschedule": ("Reschedule", _NO_RESCHEDULE),
        "vault": ("Vault", "no Vault"),
        "consul": ("Consul", "no Consul"),
        "ui": ("UI", "no web UI"),
        "vault_token": ("VaultToken", "no Vault"),
        "consul_token": ("ConsulToken", "no Consul"),
    },
    "group": {
        "affinity": ("Affinities", _ONE_NODE),
        "spread": ("Spreads", _ONE_NODE),
        "volume": ("Volumes", _NO_VOLUMES),
        "service": ("Services", _NO_CONSUL),
        "reschedule": ("ReschedulePolicy", _NO_RESCHEDULE),
        "disconnect": ("Disconnect", _NO_DISCONNECT),
        "scaling": ("Scaling", "no autoscaler"),
        "consul": ("Consul", "no Consul"),
        "vault": ("Vault", "no Vault"),
        "stop_after_client_disconnect": ("StopAfterClientDisconnect", _NO_DISCONNECT),
        "max_client_disconnect": ("MaxClientDisconnect", _NO_DISCONNECT),
        "prevent_reschedule_on_lost": ("PreventRescheduleOnLost", _NO_RESCHEDULE),
    },
    "task": {
        "affinity": ("Affinities", _ONE_NODE),
        "service": ("Services", _NO_CONSUL),
        "vault": ("Vault", "no Vault"),
        "consul": ("Consul", "no Consul"),
        "volume_mount": ("VolumeMounts", _NO_VOLUMES),
        "csi_plugin": ("CSIPluginConfig", "no CSI plugins"),
        "kind": ("Kind", "no Consul Connect"),
        "scaling": ("ScalingPolicies", "no autoscaler"),
        "identity": ("Identity", "no workload identities"),
        "secret": ("Secrets", "no secret providers"),
        "action": ("Actions", "no task actions"),
        "schedule": ("Schedule", "no task schedules"),
    },
    "update": {
        "canary": ("Canary", _NO_DEPLOYMENTS),
        "auto_promote": ("AutoPromote", _NO_DEPLOYMENTS),
        "auto_revert": ("AutoRevert", _NO_DEPLOYMENTS),
        "progress_deadline": ("ProgressDeadline", _NO_DEPLOYMENTS),
        "stagger": ("Stagger", _NO_DEPLOYMENTS),
    },
    "network": {
        "dns": ("DNS", "host networking only"),
        "hostname": ("Hostname", "host networking only"),
        "device": ("Device", "host networking only"),
        "cidr": ("CIDR", "host networking only"),
        "ip": ("IP", "host networking only"),
        "mbits": ("MBits", "bandwidth is not reserved"),
    },
    "resources": {
        "device": ("Devices", "no device plugins"),
        "numa": ("NUMA", "no NUMA placement"),
        "network": ("Networks", "task networks are replaced by group networks"),
        "iops": ("IOPS", "IOPS are not reserved"),
        "secrets": ("SecretsMB", "the secrets dir is not a sized tmpfs"),
    },
    "template": {
        "uid": ("Uid", "rendered files belong to the agent's user"),
        "gid": ("Gid", "rendered files belong to the agent's group"),
        "wait": ("Wait", "templates have no dynamic sources to wait for"),
        "vault_grace": ("VaultGrace", "no Vault"),
        "change_script": ("ChangeScript", "change scripts are not supported"),
    },
    "service": {
        "check": ("Checks", "no service checks"),
    },
}

# Canonical Nomad JSON holds these whatever the job file said: not a sign of intent.
_RESCHEDULE_DEFAULTS = (
    {
        "Attempts": 0,
        "Interval": 0,
        "Delay": 30_000_000_000,
        "DelayFunction": "exponential",
        "MaxDelay": 3_600_000_000_000,
        "Unlimited": True,
    },
    {
        "Attempts": 1,
        "Interval": 86_400_000_000_000,
        "Delay": 5_000_000_000,
        "DelayFunction": "constant",
        "MaxDelay": 0,
        "Unlimited": False,
    },
)
_QUIET_JSON: Mapping[str, tuple[Any, ...]] = {
    "ProgressDeadline": (600_000_000_000,),
    "Stagger": (30_000_000_000,),
    "ReschedulePolicy": _RESCHEDULE_DEFAULTS,
    "Reschedule": _RESCHEDULE_DEFAULTS,
    "NodePool": ("default",),
    "Consul": ({"Namespace": ""}, {"Namespace": "", "Cluster": "default"}),
    "MBits": (10,),
}


def warning(path: str, reason: str) -> str:
    """The warning for the setting at `path`."""
    return f"{path}: not honoured on this node ({reason}); ignored"


def format_warnings(warnings: list[str] | tuple[str, ...]) -> str:
    """Warnings as one text, the way Nomad's API and CLI join them (helper/warning.go's
    multierror format): "" for none, else `1 warning:` / `N warnings:`, a blank line,
    then `* <warning>` for each."""
    if not warnings:
        return ""
    head = "1 warning:\n" if len(warnings) == 1 else f"{len(warnings)} warnings:\n"
    return head + "".join(f"\n* {w.strip()}" for w in warnings)


def _set_in_json(key: str, value: Any) -> bool:
    if value is None or value is False or value == 0 or value == "":
        return False
    if isinstance(value, list | tuple | dict) and not value:
        return False
    return value not in _QUIET_JSON.get(key, ())


def _scan(doc: Any, level: str, path: str, out: list[str]) -> None:
    if not isinstance(doc, Mapping):
        return
    for _name, (key, reason) in UNHONOURED[level].items():
        value = doc.get(key)
        if _set_in_json(key, value):
            out.append(warning(f"{path}.{key}", reason))
        if level in ("group", "task") and key == "Services" and isinstance(value, list):
            checked = any(isinstance(s, Mapping) and s.get("Checks") for s in value)
            if checked:
                out.append(warning(f"{path}.Services.Checks", UNHONOURED["service"]["check"][1]))


def _items(doc: Mapping[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    return list(value) if isinstance(value, list | tuple) else []


def json_warnings(job: Any, root: str = "Job") -> list[str]:
    """The warnings about an API JSON job (parsed, not yet decoded)."""
    out: list[str] = []
    if not isinstance(job, Mapping):
        return out
    _scan(job, "job", root, out)
    _scan(job.get("Update"), "update", f"{root}.Update", out)
    for i, group in enumerate(_items(job, "TaskGroups")):
        if not isinstance(group, Mapping):
            continue
        gpath = f"{root}.TaskGroups[{i}]"
        _scan(group, "group", gpath, out)
        _scan(group.get("Update"), "update", f"{gpath}.Update", out)
        for n, network in enumerate(_items(group, "Networks")):
            _scan(network, "network", f"{gpath}.Networks[{n}]", out)
        for j, task in enumerate(_items(group, "Tasks")):
            if not isinstance(task, Mapping):
                continue
            tpath = f"{gpath}.Tasks[{j}]"
            _scan(task, "task", tpath, out)
            _scan(task.get("Resources"), "resources", f"{tpath}.Resources", out)
            for k, template in enumerate(_items(task, "Templates")):
                _scan(template, "template", f"{tpath}.Templates[{k}]", out)
    return out
