"""raw_exec's task config: the keys Nomad's raw_exec takes, parsed and checked
(`parse_raw_exec_config`), with a `DriverError` naming the key for a bad value.

Keys: ``command`` (required string), ``args`` (list of strings), ``oom_score_adj``
(an integer from 0 to 1000, as the kernel takes it; unset means 0 for the task),
``cgroup_v1_override`` (a map of controller names to cgroup paths; a list of such maps,
as HCL blocks decode, is merged) and ``cgroup_v2_override`` (a cgroup path); at most one
of the two overrides, as Nomad requires.

No threads, no locks; pure functions. Owner: `allocrunner.drivers.raw_exec` (which
re-exports `RawExecSpec` and `parse_raw_exec_config`) and the job-file checks of tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from allocrunner.drivers._common import check_keys
from allocrunner.errors import DriverError
from allocrunner.structs.frozen import FrozenDict

__all__ = ["OOM_SCORE_ADJ_MAX", "RawExecSpec", "parse_raw_exec_config"]

NAME = "raw_exec"

_KNOWN_KEYS = frozenset(
    {"command", "args", "cgroup_v1_override", "cgroup_v2_override", "oom_score_adj"}
)

OOM_SCORE_ADJ_MAX = 1000
"""The largest oom_score_adj the kernel takes."""


@attrs.frozen
class RawExecSpec:
    """Immutable. A raw_exec driver config, parsed and checked."""

    command: str
    args: tuple[str, ...] = ()
    oom_score_adj: int | None = None
    cgroup_v1_override: FrozenDict[str, str] = attrs.field(factory=FrozenDict, converter=FrozenDict)
    cgroup_v2_override: str = ""


def parse_raw_exec_config(config: Mapping[str, Any]) -> RawExecSpec:
    """Parse a raw_exec config; DriverError naming the key for a bad value."""
    check_keys(NAME, config, _KNOWN_KEYS)
    spec = RawExecSpec(
        command=_parse_command(config),
        args=_parse_args(config),
        oom_score_adj=_parse_oom_score_adj(config),
        cgroup_v1_override=_parse_v1_override(config),
        cgroup_v2_override=_parse_v2_override(config),
    )
    if spec.cgroup_v1_override and spec.cgroup_v2_override:
        raise DriverError(
            f"invalid {NAME} config: only one of cgroup_v1_override and cgroup_v2_override"
            " may be set"
        )
    return spec


def _parse_command(config: Mapping[str, Any]) -> str:
    command = config.get("command")
    if command is None or command == "":
        raise DriverError(f"invalid {NAME} config: missing command (the 'command' key is required)")
    if not isinstance(command, str):
        raise DriverError(
            f"invalid {NAME} config: command must be a string, not {type(command).__name__}"
        )
    return command


def _parse_args(config: Mapping[str, Any]) -> tuple[str, ...]:
    args = config.get("args", ())
    if args is None:
        args = ()
    if isinstance(args, str) or not isinstance(args, list | tuple):
        raise DriverError(
            f"invalid {NAME} config: args must be a list of strings, not {type(args).__name__}"
        )
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            raise DriverError(
                f"invalid {NAME} config: args[{i}] must be a string, not {type(arg).__name__}"
            )
    return tuple(args)


def _parse_oom_score_adj(config: Mapping[str, Any]) -> int | None:
    value = config.get("oom_score_adj")
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DriverError(
            f"invalid {NAME} config: oom_score_adj must be an integer, not {type(value).__name__}"
        )
    if not 0 <= value <= OOM_SCORE_ADJ_MAX:
        raise DriverError(
            f"invalid {NAME} config: oom_score_adj must be between 0 and {OOM_SCORE_ADJ_MAX},"
            f" not {value}"
        )
    return value


def _parse_v1_override(config: Mapping[str, Any]) -> dict[str, str]:
    """The controller -> path map (a list of maps, as HCL blocks decode, is merged)."""
    value = config.get("cgroup_v1_override")
    if value is None:
        return {}
    maps = list(value) if isinstance(value, list | tuple) else [value]
    merged: dict[str, str] = {}
    for item in maps:
        if not isinstance(item, Mapping):
            raise DriverError(
                f"invalid {NAME} config: cgroup_v1_override must be a map of controller"
                f" names to paths, not {type(value).__name__}"
            )
        for controller, path in item.items():
            if not isinstance(controller, str) or not isinstance(path, str) or not path:
                raise DriverError(
                    f"invalid {NAME} config: cgroup_v1_override[{controller!r}] must be a"
                    f" non-empty string path, not {path!r}"
                )
            merged[controller] = path
    return merged


def _parse_v2_override(config: Mapping[str, Any]) -> str:
    value = config.get("cgroup_v2_override")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DriverError(
            f"invalid {NAME} config: cgroup_v2_override must be a string, not"
            f" {type(value).__name__}"
        )
    return value
