"""Nomad job formats: the HTTP API JSON codec (both directions) and job files.

- `decode_job` / `encode_job`, `decode_allocation` / `encode_allocation`,
  `decode_alloc_state` / `encode_alloc_state`, `decode_task_state` /
  `encode_task_state`, `decode_task_event` / `encode_task_event`: Nomad's API JSON
  (PascalCase keys, durations in nanoseconds) to value objects and back, exactly.
- `load_job(path, variables=None, var_files=None)`: a `.json` (API JSON) or HCL2
  (`.hcl`, `.nomad`, `.nomad.hcl`) job file, its variables, locals and functions
  evaluated as Nomad's jobspec2 does, with Nomad's defaults applied; `parse_job(text,
  fmt)` for text in hand; `load_job_with_warnings` / `parse_job_with_warnings` also
  return the warnings: one per valid Nomad setting this node does not act on, each
  starting with its field path (`format_warnings` joins them as Nomad's API does);
  a job this node would run differently from what it says is refused.
- `canonicalize_job(job)`: Nomad's defaults for a Job built in code;
  `canonicalize_api_job(obj)` the same on parsed API JSON, merging partial blocks.

Every malformed input raises `JobSpecError` whose `path` names the field.

No threads, no locks; pure functions over immutable values (`load_job` reads a file:
never call it with a lock held), called by the agent's HTTP API, the SQLite state DB,
the command line and users.
"""

from allocrunner.jobspec.codec import (
    decode_alloc_state,
    decode_allocation,
    decode_job,
    decode_task_event,
    decode_task_state,
    encode_alloc_state,
    encode_allocation,
    encode_job,
    encode_task_event,
    encode_task_state,
)
from allocrunner.jobspec.defaults import canonicalize_api_job, canonicalize_job
from allocrunner.jobspec.hcl import hcl_to_api
from allocrunner.jobspec.load import (
    load_job,
    load_job_with_warnings,
    parse_job,
    parse_job_with_warnings,
)
from allocrunner.jobspec.unhonoured import format_warnings, json_warnings

__all__ = [
    "canonicalize_api_job",
    "canonicalize_job",
    "decode_alloc_state",
    "decode_allocation",
    "decode_job",
    "decode_task_event",
    "decode_task_state",
    "encode_alloc_state",
    "encode_allocation",
    "encode_job",
    "encode_task_event",
    "encode_task_state",
    "format_warnings",
    "hcl_to_api",
    "json_warnings",
    "load_job",
    "load_job_with_warnings",
    "parse_job",
    "parse_job_with_warnings",
]
