"""Nomad HCL job files (the jobspec syntax) to Nomad API JSON.

`hcl_to_api(text, options=...)` evaluates the file's HCL2 (variables, locals, functions:
hcl_body and the hcl_* modules) and converts the `job "<id>" { … }` block to the same API
JSON a `.json` job file holds, holding only what the file sets (so
`canonicalize_api_job` can merge partial blocks over Nomad's defaults). Every value is
checked where it is read, and errors name the field the way the file spells it:
`job.group[web].task[api].kill_timeout`. Number and bool fields take strings the way
HCL converts them (`cpu = "500"`).

The blocks and settings read are `hcl_specs`' tables: job, group (with `network` and
its `port`s, `constraint`, `max_run_duration`), task (with `template`, `artifact`,
`constraint`, `resources`, `logs`, `lifecycle`, `dispatch_payload`), and the rest.
Valid Nomad settings this node does not act on (`service`, `vault`, `affinity`,
`update.canary`, … — `unhonoured.UNHONOURED`) are converted to nothing and each gives
one warning starting with its path; anything else is an error, so a misspelt setting
is never silently dropped. References the client resolves at run time
(`${NOMAD_*}`, `${attr.*}`, `${node.*}`, `${meta.*}`, `${env["X"]}`) are kept as
written.

No threads, no locks; pure functions (file functions and var files read files),
called by `parse_job` for `load_job` and the agent's `/v1/jobs/parse`.
"""

from __future__ import annotations

import math
from typing import Any

from allocrunner.durations import parse_duration
from allocrunner.errors import JobSpecError
from allocrunner.jobspec._kinds import (
    MAX_DEPTH,
    Bool,
    Duration,
    FreeMap,
    Int,
    Kind,
    Str,
    StrMap,
    describe,
)
from allocrunner.jobspec.hcl_body import BLOCK_MARK, EvalOptions, evaluate_file
from allocrunner.jobspec.hcl_specs import JOB_SPEC, Spec
from allocrunner.jobspec.hcl_types import ConversionError, parse_number, to_string
from allocrunner.jobspec.unhonoured import UNHONOURED, warning

__all__ = ["EvalOptions", "HCLExpression", "hcl_to_api"]

_BLOCK = BLOCK_MARK


class HCLExpression:
    """Immutable. An HCL expression's source text (kept for callers of earlier versions;
    expressions are evaluated now, so the converter never meets one)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HCLExpression) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


# --- conversion --------------------------------------------------------------------


def hcl_to_api(
    text: str,
    *,
    options: EvalOptions | None = None,
    warnings: list[str] | None = None,
) -> dict[str, Any]:
    """The API JSON job (without the `{"Job": …}` wrapper) of a Nomad HCL job file.

    `options` gives variable values and the directory file functions read from (none:
    defaults only, file functions disabled); `warnings`, when given, receives notes
    about the file, each starting with the field path.

    JobSpecError: path "" for a syntax error (the message gives line and column),
    otherwise the field's path as the file spells it (`job.group[web].count`).
    """
    notes: list[str] = [] if warnings is None else warnings
    try:
        raw = evaluate_file(text, options or EvalOptions(), notes)
    except RecursionError:
        raise JobSpecError("", "HCL nested too deeply") from None
    return _Converter(strict_blocks=True, warnings=notes).job(raw)


class _Converter:
    """Not thread-safe; owned by one `hcl_to_api` call. Walks blocks by their Spec."""

    def __init__(self, *, strict_blocks: bool, warnings: list[str] | None = None) -> None:
        # python-hcl2 8 marks blocks, so a block and a map attribute can be told apart.
        self.strict_blocks = strict_blocks
        self.warnings: list[str] = [] if warnings is None else warnings

    def job(self, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise JobSpecError("", "expected a job block")
        for key in raw:
            if key not in ("job", _BLOCK):
                raise JobSpecError(
                    str(key), "unsupported top-level block: a job file holds one job block"
                )
        jobs = raw.get("job")
        if not jobs:
            raise JobSpecError("job", 'missing job block: job "<id>" { … }')
        if not isinstance(jobs, list) or len(jobs) != 1:
            raise JobSpecError("job", "a job file holds exactly one job block")
        (label,), body = self._unwrap(jobs[0], 1, "job", "job")
        out = self._body(body, JOB_SPEC, "job")
        out["ID"] = label
        return out

    def _unwrap(self, item: Any, nlabels: int, path: str, name: str) -> tuple[list[str], dict]:
        """(labels, body) of one block occurrence."""
        labels: list[str] = []
        cur = item
        for _ in range(nlabels):
            if not isinstance(cur, dict) or _BLOCK in cur or len(cur) != 1:
                raise JobSpecError(path, f'{name} block needs a name label: {name} "<name>" {{…}}')
            ((label, cur),) = cur.items()
            if not isinstance(label, str) or not label:
                raise JobSpecError(path, f"{name} block label must be a non-empty string")
            labels.append(label)
        if not isinstance(cur, dict) or (self.strict_blocks and _BLOCK not in cur):
            if nlabels:
                msg = f"{name} block takes exactly {nlabels} label"
            else:
                msg = f"expected a {name} {{…}} block without labels"
            raise JobSpecError(path, msg)
        return labels, {k: v for k, v in cur.items() if k != _BLOCK}

    def _body(self, body: dict[str, Any], spec: Spec, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        raw_values: dict[str, Any] = {}
        for name, raw in body.items():
            p = f"{path}.{name}"
            reason = spec.warns(name)
            if reason is not None:
                self._warn_unhonoured(name, raw, p, reason)
                if name not in spec.kept_but_warned:
                    continue
            if name in spec.raw:
                if raw is not None:
                    raw_values[name] = raw
            elif name in spec.attributes:
                if raw is None:
                    continue
                key = spec.attributes[name]
                out[key] = self._attr(raw, spec.struct.field(key).kind, p)
            elif name in spec.maps:
                if raw is None:
                    continue
                key = spec.maps[name]
                out[key] = self._map(raw, spec.struct.field(key).kind, p, name)
            elif name in spec.blocks:
                key, sub = spec.blocks[name]
                out[key] = self._single_block(raw, sub, p, name)
            elif name in spec.repeated:
                key, sub = spec.repeated[name]
                out[key] = self._labelled_blocks(raw, sub, path, name)
            elif name in spec.lists:
                key, sub = spec.lists[name]
                out[key] = self._block_list(raw, sub, p, name)
            elif name in spec.negated:
                if raw is None:
                    continue
                key = spec.negated[name]
                out.setdefault(key, not self._attr(raw, spec.struct.field(key).kind, p))
            else:
                raise JobSpecError(p, f"unsupported setting {name!r} (known: {_known(spec)})")
        if spec.post is not None:
            spec.post(raw_values, out, path)
        for name in sorted(spec.required):
            if spec.attributes[name] not in out:
                raise JobSpecError(f"{path}.{name}", "missing required setting")
        return out

    def _warn_unhonoured(self, name: str, raw: Any, path: str, reason: str) -> None:
        """One warning for the setting; a service's checks get theirs too."""
        if raw is None:
            return
        self.warnings.append(warning(path, reason))
        if name == "service" and _has_block(raw, "check"):
            self.warnings.append(warning(f"{path}.check", UNHONOURED["service"]["check"][1]))

    def _block_list(self, raw: Any, spec: Spec, path: str, name: str) -> list[dict[str, Any]]:
        """Unlabelled blocks that may repeat (`constraint`, `template`): `path[i]` each."""
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            raise JobSpecError(path, f"expected {name} {{…}} blocks, got {describe(raw)}")
        out: list[dict[str, Any]] = []
        for i, item in enumerate(raw):
            _, body = self._unwrap(item, 0, f"{path}[{i}]", name)
            out.append(self._body(body, spec, f"{path}[{i}]"))
        return out

    def _single_block(self, raw: Any, spec: Spec, path: str, name: str) -> dict[str, Any]:
        if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
            raise JobSpecError(path, f"expected a {name} {{…}} block, got {describe(raw)}")
        if len(raw) != 1:
            raise JobSpecError(path, f"only one {name} block is allowed here")
        _, body = self._unwrap(raw[0], 0, path, name)
        return self._body(body, spec, path)

    def _labelled_blocks(
        self, raw: Any, spec: Spec, parent: str, name: str
    ) -> list[dict[str, Any]]:
        if not isinstance(raw, list):
            raise JobSpecError(
                f"{parent}.{name}", f'expected {name} "<name>" {{…}} blocks, got {describe(raw)}'
            )
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for item in raw:
            (label,), body = self._unwrap(item, 1, f"{parent}.{name}", name)
            path = f"{parent}.{name}[{label}]"
            if label in seen:
                raise JobSpecError(path, f"duplicate {name} {label!r}")
            seen.add(label)
            converted = self._body(body, spec, path)
            converted[spec.label_key] = label
            out.append(converted)
        return out

    def _attr(self, raw: Any, kind: Kind, path: str) -> Any:
        _reject_expressions(raw, path)
        value = raw
        if isinstance(kind, Duration):
            if not isinstance(raw, str):
                raise JobSpecError(
                    path, f'expected a duration string such as "10s", got {describe(raw)}'
                )
            try:
                value = round(parse_duration(raw) * 1e9)
            except (ValueError, OverflowError) as err:
                raise JobSpecError(path, str(err)) from None
        elif isinstance(kind, Int):
            value = _hcl_number(raw, path)
        elif isinstance(kind, Bool) and isinstance(raw, str) and raw in ("true", "false", "1", "0"):
            value = raw in ("true", "1")  # HCL converts these strings for a bool field
        elif isinstance(kind, Str) and isinstance(raw, bool | int | float):
            value = _to_string(raw, path)  # and numbers and bools for a string field
        kind.decode(value, path)  # checks type and range, naming the HCL path
        return value

    def _map(self, raw: Any, kind: Kind, path: str, name: str) -> dict[str, Any]:
        if isinstance(raw, list):
            if len(raw) != 1 or not isinstance(raw[0], dict):
                raise JobSpecError(path, f"expected one {name} {{…}} block or a map")
            _, body = self._unwrap(raw[0], 0, path, name)
        elif isinstance(raw, dict) and _BLOCK not in raw:
            body = raw
        else:
            raise JobSpecError(path, f"expected a {name} {{…}} block or a map, got {describe(raw)}")
        if isinstance(kind, StrMap):
            value: dict[str, Any] = {}
            for k, v in body.items():
                if v is not None:
                    value[k] = _to_string(v, f"{path}[{k}]")
        else:
            assert isinstance(kind, FreeMap)
            value = _free(body, path)
        kind.decode(value, path)
        return value


def _known(spec: Spec) -> str:
    names = {
        *spec.attributes,
        *spec.maps,
        *spec.blocks,
        *spec.repeated,
        *spec.lists,
        *spec.negated,
        *spec.raw,
        *UNHONOURED.get(spec.unhonoured, {}),
    }
    return ", ".join(sorted(names))


def _has_block(raw: Any, name: str) -> bool:
    """Whether any occurrence of a block (a list of bodies, maybe labelled) holds `name`."""
    items = raw if isinstance(raw, list) else [raw]
    for item in items:
        body = item
        while isinstance(body, dict) and BLOCK_MARK not in body and len(body) == 1:
            (body,) = body.values()  # labels
        if isinstance(body, dict) and body.get(name) is not None:
            return True
    return False


def _hcl_number(raw: Any, path: str) -> Any:
    """A number field's value as HCL converts it: "500" is 500, 2.0 is 2."""
    value = raw
    if isinstance(raw, str):
        try:
            value = parse_number(raw)
        except ConversionError:
            raise JobSpecError(path, f"expected an integer, got string {raw!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def _reject_expressions(value: Any, path: str) -> None:
    if isinstance(value, HCLExpression):
        raise JobSpecError(
            path,
            f"HCL expressions (variables, functions, arithmetic) are not supported: {value.text}",
        )
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_expressions(v, f"{path}[{k}]")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _reject_expressions(v, f"{path}[{i}]")


def _to_string(value: Any, path: str) -> str:
    """An env/meta value as HCL converts it to a string (numbers and bools allowed)."""
    _reject_expressions(value, path)
    if isinstance(value, float) and not math.isfinite(value):
        raise JobSpecError(path, f"expected a string, got {describe(value)}")
    try:
        return to_string(value)
    except ConversionError:
        raise JobSpecError(path, f"expected a string, got {describe(value)}") from None


def _free(value: Any, path: str, depth: int = 0) -> Any:
    """Driver config as JSON data: nested blocks become arrays of objects."""
    if depth > MAX_DEPTH:
        raise JobSpecError(path, f"nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, HCLExpression):
        _reject_expressions(value, path)
    if isinstance(value, dict):
        return {k: _free(v, f"{path}[{k}]", depth + 1) for k, v in value.items() if k != _BLOCK}
    if isinstance(value, list):
        return [_free(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    return value
