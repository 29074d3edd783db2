"""Job files: `load_job(path)` reads a Nomad job (HCL or API JSON) with defaults applied.

HCL2 files are evaluated with input variables as Nomad's CLI gives them: `variables`
(the `-var NAME=VALUE` values, a mapping or `NAME=VALUE` strings, later wins),
`var_files` (the `-var-file` paths, in order) and the `NOMAD_VAR_<name>` environment
variables (`env`; `load_job` reads the process's environment when it is None,
`parse_job` none). `load_job_with_warnings` / `parse_job_with_warnings` also return the
warnings, each starting with the field path: one for every valid Nomad setting this
node does not act on (`unhonoured`). A job this node would run differently from what
it says (a driver it lacks, a Consul template, a git artifact: `runnable`) is refused
with JobSpecError; `drivers` names the drivers the caller has (default: the built-in
`mock_driver` and `raw_exec`).

No threads, no locks; `load_job` reads one file and is marked `@calls_out`, so it
is never called with a lock held. Called by the command line, the agent's
`/v1/jobs/parse` (through `parse_job`) and users.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from allocrunner._locking import calls_out
from allocrunner.errors import JobSpecError
from allocrunner.jobspec.codec import decode_job
from allocrunner.jobspec.defaults import canonicalize_api_job, canonicalize_job
from allocrunner.jobspec.hcl import EvalOptions, hcl_to_api
from allocrunner.jobspec.hcl_paths import hcl_path
from allocrunner.jobspec.hcl_vars import ValueSources, cli_pairs, env_from
from allocrunner.jobspec.runnable import PathStyle, check_runnable, runtime_warnings
from allocrunner.jobspec.unhonoured import json_warnings
from allocrunner.structs import Job

__all__ = [
    "HCL_SUFFIXES",
    "JSON_SUFFIXES",
    "Variables",
    "load_job",
    "load_job_with_warnings",
    "parse_job",
    "parse_job_with_warnings",
]

Variables = Mapping[str, Any] | Iterable[str]

JSON_SUFFIXES = (".json",)
HCL_SUFFIXES = (".hcl", ".nomad")  # ".nomad.hcl" ends in ".hcl"


@calls_out
def load_job(
    path: str | os.PathLike[str],
    variables: Variables | None = None,
    var_files: Sequence[str | os.PathLike[str]] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    drivers: Collection[str] | None = None,
    runtime_check: bool = True,
) -> Job:
    """The job in a Nomad job file, with Nomad's defaults applied.

    `.json`: API JSON, with or without the top-level `{"Job": …}` wrapper. `.hcl`,
    `.nomad`, `.nomad.hcl`: Nomad's HCL2 jobspec, evaluated with `variables` (`-var`),
    `var_files` (`-var-file`) and the `NOMAD_VAR_*` variables of `env` (default: the
    process environment); file functions read relative to the job file's directory.
    The job must have at least one group, each group at least one task and at most one
    leader. Any problem raises JobSpecError: for the file as a whole (missing,
    unreadable, wrong extension, syntax) its path is the file name; for a field, the
    field's path as the file spells it (`job.group[web].task[api].kill_timeout`,
    `Job.TaskGroups[0].Tasks[0].Driver`, `variable[region]`) and the message names the
    file.
    """
    return load_job_with_warnings(
        path, variables, var_files, env=env, drivers=drivers, runtime_check=runtime_check
    )[0]


@calls_out
def load_job_with_warnings(
    path: str | os.PathLike[str],
    variables: Variables | None = None,
    var_files: Sequence[str | os.PathLike[str]] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    drivers: Collection[str] | None = None,
    runtime_check: bool = True,
) -> tuple[Job, list[str]]:
    """`load_job`, and the warnings about the file (each starts with the field path)."""
    source = os.fspath(path)
    name = os.path.basename(source).lower()
    if name.endswith(JSON_SUFFIXES):
        fmt = "json"
    elif name.endswith(HCL_SUFFIXES):
        fmt = "hcl"
    else:
        raise JobSpecError(
            source, "unsupported job file extension: expected .json, .hcl, .nomad or .nomad.hcl"
        )
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise JobSpecError(source, "no such job file") from None
    except UnicodeDecodeError as err:
        raise JobSpecError(source, f"job file is not UTF-8 text: {err.reason}") from None
    except OSError as err:
        raise JobSpecError(source, f"cannot read job file: {err.strerror or err}") from None
    return parse_job_with_warnings(
        text,
        fmt,
        source=source,
        variables=variables,
        var_files=var_files,
        base_dir=os.path.dirname(os.path.abspath(source)),
        env=env_from(env),
        drivers=drivers,
        runtime_check=runtime_check,
    )


def parse_job(
    text: str,
    fmt: str,
    *,
    source: str = "<job>",
    variables: Variables | None = None,
    var_files: Sequence[str | os.PathLike[str]] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    var_content: str = "",
    drivers: Collection[str] | None = None,
    runtime_check: bool = True,
) -> Job:
    """The job in `text` (`fmt` "json" or "hcl"), as `load_job` reads a file.

    HCL file functions (`file`, `fileexists`, …) read relative to `base_dir`; without
    one they are disabled, as in Nomad's HTTP API. `env` holds `NOMAD_VAR_*` values
    (none by default); `var_content` is var-file text in hand (the `Variables` of
    Nomad's `/v1/jobs/parse`), applied after `var_files` and before `variables`.
    """
    return parse_job_with_warnings(
        text,
        fmt,
        source=source,
        variables=variables,
        var_files=var_files,
        base_dir=base_dir,
        env=env,
        var_content=var_content,
        drivers=drivers,
        runtime_check=runtime_check,
    )[0]


def parse_job_with_warnings(
    text: str,
    fmt: str,
    *,
    source: str = "<job>",
    variables: Variables | None = None,
    var_files: Sequence[str | os.PathLike[str]] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    var_content: str = "",
    drivers: Collection[str] | None = None,
    runtime_check: bool = True,
) -> tuple[Job, list[str]]:
    """`parse_job`, and the warnings about the job (each starts with the field path).

    With `runtime_check=False` the job model alone is checked: blocks the task runner
    does not act on yet (`check_runnable`) are not refused."""
    if fmt == "json":
        obj = _parse_json(text, source)
        job = _finish(obj, source, lambda i, g: f"Job.TaskGroups[{i}]", "Tasks", "Job")
        _check_runnable(job, "json", drivers, source, runtime_check)
        return job, json_warnings(obj) + runtime_warnings(job, style="json")
    if fmt == "hcl":
        warnings: list[str] = []
        try:
            sources = ValueSources(
                env=dict(env_from(env or {})),
                var_files=tuple(os.fspath(p) for p in var_files or ()),
                var_content=var_content,
                cli=cli_pairs(variables),
            )
            options = EvalOptions(sources, None if base_dir is None else os.fspath(base_dir))
            obj = hcl_to_api(text, options=options, warnings=warnings)
        except JobSpecError as err:
            raise _in_file(err, source) from None
        try:
            job = _finish(obj, source, lambda i, g: f"job.group[{g}]", "task", "job")
        except JobSpecError as err:
            raise JobSpecError(hcl_path(err.path, obj), err.message) from None
        _check_runnable(job, "hcl", drivers, source, runtime_check)
        return job, warnings + runtime_warnings(job, style="hcl")
    raise ValueError(f"unknown job file format {fmt!r}: expected 'json' or 'hcl'")


def _parse_json(text: str, source: str) -> Any:
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        obj = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as err:
        raise JobSpecError(
            source, f"invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}"
        ) from None
    except (ValueError, RecursionError) as err:
        raise JobSpecError(source, f"invalid JSON: {err}") from None
    if isinstance(obj, Mapping) and "ID" not in obj and "Job" in obj:
        obj = obj["Job"]
    if not isinstance(obj, Mapping):
        raise JobSpecError(source, 'expected a JSON object: a job or {"Job": {…}}')
    return obj


def _finish(
    obj: Any,
    source: str,
    group_path: Callable[[int, str], str],
    tasks_key: str,
    root: str,
) -> Job:
    try:
        job = canonicalize_job(decode_job(canonicalize_api_job(obj)))
    except JobSpecError as err:
        raise _in_file(err, source) from None
    if not job.task_groups:
        raise JobSpecError(root, f"job has no task groups (in {source})")
    for i, group in enumerate(job.task_groups):
        where = group_path(i, group.name)
        if not group.tasks:
            raise JobSpecError(where, f"group {group.name!r} has no tasks (in {source})")
        leaders = [t.name for t in group.tasks if t.leader]
        if len(leaders) > 1:
            raise JobSpecError(
                f"{where}.{tasks_key}",
                f"only one task may be the leader, got {', '.join(leaders)} (in {source})",
            )
    return job


def _check_runnable(
    job: Job, style: PathStyle, drivers: Collection[str] | None, source: str, runtime: bool
) -> None:
    try:
        check_runnable(job, style=style, drivers=drivers, runtime=runtime)
    except JobSpecError as err:
        raise _in_file(err, source) from None


def _in_file(err: JobSpecError, source: str) -> JobSpecError:
    """`err` with the file named: the path stays the field's, or is the file's."""
    if not err.path:
        return JobSpecError(source, err.message)
    return JobSpecError(err.path, f"{err.message} (in {source})")
