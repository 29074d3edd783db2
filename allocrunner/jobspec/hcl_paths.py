"""An API JSON field path, spelled as the HCL job file spells the same field.

Some checks only run once a job file has become API JSON (a template's destination,
a constraint's operator, unique port labels), so their errors name JSON paths such as
`Job.TaskGroups[0].Tasks[1].Templates[0].DestPath`. For a job file the user wants the
file's own words: `job.group[web].task[api].template[0].destination`. `hcl_path`
walks the JSON path along `hcl_specs`' tables (reversed), reading group, task and port
labels from the converted JSON; a path it cannot follow is returned unchanged.

No threads, no locks; pure functions, called by `load` for errors of HCL job files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from allocrunner.jobspec.hcl_specs import JOB_SPEC, Spec

__all__ = ["hcl_path"]

_SEGMENT = re.compile(r"\.?([A-Za-z0-9_]+)((?:\[[^\]]*\])?)")
_PORT_KEYS = ("ReservedPorts", "DynamicPorts")


def _reverse(mapping: Mapping[str, Any], key: str) -> str | None:
    for name, target in mapping.items():
        if target == key or (isinstance(target, tuple) and target[0] == key):
            return name
    return None


def _segments(path: str) -> list[tuple[str, str]] | None:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(path):
        m = _SEGMENT.match(path, pos)
        if m is None or m.end() == pos:
            return None
        out.append((m.group(1), m.group(2)[1:-1] if m.group(2) else ""))
        pos = m.end()
    return out


def _index(doc: Any, key: str, index: str) -> Any:
    items = doc.get(key) if isinstance(doc, Mapping) else None
    if not isinstance(items, list) or not index.isdigit() or int(index) >= len(items):
        return None
    return items[int(index)]


def hcl_path(path: str, api_job: Any) -> str:
    """`path` (rooted at `Job`) as the HCL file spells it, or `path` itself."""
    segments = _segments(path)
    if not segments or segments[0] != ("Job", ""):
        return path
    out, spec, doc = "job", JOB_SPEC, api_job
    for key, index in segments[1:]:
        step = _step(spec, doc, key, index)
        if step is None:
            return path
        text, spec, doc = step
        out += text
    return out


def _step(spec: Spec | None, doc: Any, key: str, index: str) -> tuple[str, Spec | None, Any] | None:
    """One segment: its HCL text, and the spec and JSON below it."""
    if spec is None:
        return f".{key}" + (f"[{index}]" if index else ""), None, None
    name = _reverse(spec.repeated, key)
    if name is not None or (key in _PORT_KEYS and "port" in spec.repeated):
        name = "port" if key in _PORT_KEYS else name
        item = _index(doc, key, index)
        if name is None or not isinstance(item, Mapping):
            return None
        sub = spec.repeated[name][1]
        return f".{name}[{item.get(sub.label_key, index)}]", sub, item
    name = _reverse(spec.lists, key)
    if name is not None:
        return f".{name}[{index}]", spec.lists[name][1], _index(doc, key, index)
    name = _reverse(spec.blocks, key)
    if name is not None:
        inner = doc.get(key) if isinstance(doc, Mapping) else None
        return f".{name}", spec.blocks[name][1], inner
    name = _reverse(spec.attributes, key) or _reverse(spec.maps, key)
    if name is not None:
        return f".{name}" + (f"[{index}]" if index else ""), None, None
    return None
