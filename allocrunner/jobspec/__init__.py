"""Nomad job formats: the HTTP API JSON codec (both directions) and job files.

- `decode_job` / `encode_job`, `decode_allocation` / `encode_allocation`,
  `decode_alloc_state` / `encode_alloc_state`, `decode_task_state` /
  `encode_task_state`, `decode_task_event` / `encode_task_event`: Nomad's API JSON
  (PascalCase keys, durations in nanoseconds) to value objects and back, exactly.
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

__all__ = [
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
]
