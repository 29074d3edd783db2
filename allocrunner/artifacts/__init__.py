"""Nomad ``artifact`` blocks: fetch, verify, unpack and install into a task's dir.

- `allocrunner.artifacts.spec`: the block (`ArtifactSpec`, its JSON decoder), the
  client's settings (`ArtifactConfig`), the errors, and go-getter's reading of a
  source URL.
- `allocrunner.artifacts.download`: HTTP(S) and local copies, cancellable.
- `allocrunner.artifacts.git_source` and `allocrunner.artifacts.git`: go-getter's git
  sources, cloned with the system git (cancellable, time-bounded).
- `allocrunner.artifacts.unpack`: tar / zip / gz / bz2 / xz with escape checks.
- `allocrunner.artifacts.install`: destination resolution and the final renames.
- `allocrunner.artifacts.fetch`: `fetch_artifact`, which runs them in order.

Threads: none of its own; a fetch runs on its caller's thread. Locks: none. Owner:
the task runner's artifact hook; the job codec may use `artifact_from_json`.
"""

from __future__ import annotations

from allocrunner.artifacts.fetch import fetch_artifact
from allocrunner.artifacts.spec import (
    MODE_ANY,
    MODE_DIR,
    MODE_FILE,
    ArtifactCancelled,
    ArtifactConfig,
    ArtifactError,
    ArtifactSpec,
    artifact_from_json,
)

__all__ = [
    "MODE_ANY",
    "MODE_DIR",
    "MODE_FILE",
    "ArtifactCancelled",
    "ArtifactConfig",
    "ArtifactError",
    "ArtifactSpec",
    "artifact_from_json",
    "fetch_artifact",
]
