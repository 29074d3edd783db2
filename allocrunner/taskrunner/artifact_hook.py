"""The artifact hook: fetches a task's `artifact` blocks into its directory before it
first starts (Nomad's client/allocrunner/taskrunner/artifact_hook.go).

Each block's source, destination, options and headers are interpolated with the task
environment built so far, then `allocrunner.artifacts.fetch_artifact` downloads it
(http or https, with headers; or a git repository, cloned with the system git:
``git::<url>``, ``github.com/<owner>/<repo>``, ``git@<host>:<path>``, with ``ref``,
``depth``, ``sshkey`` and ``//subdir``), verifies its checksum, unpacks archives with escape
checks and installs it beneath the task directory, confined to the allocation
directory, as Nomad does. A local file or directory (an absolute path, or `file://`)
is fetched only where the client allows it: `allow_local`, which the task runner
passes on from its `artifact_allow_local` (the client's setting); not by default.

Before the first fetch the task gets the event "Downloading Artifacts". A failure is
the event "Failed Artifact Download" with Nomad's message (`failed to download
artifact "<source>": …`); a download that may succeed later (a network error, a bad
checksum) counts against the restart policy, a refused one (a getter or a destination
this node does not allow) fails the task. Once every artifact is in place the hook is
done for good: a restart keeps the files the task may have changed, as in Nomad.

No threads and no locks: the hook runs on its task runner's run thread, called by the
prestart phase after the env hook and before the template hook (a template may read a
downloaded file); a kill cancels a download in progress. Owned by that TaskRunner.
"""

from __future__ import annotations

from allocrunner._locking import calls_out, immutable
from allocrunner.artifacts import ArtifactError, ArtifactSpec, fetch_artifact
from allocrunner.structs import TaskEvent
from allocrunner.structs.job import TaskArtifact
from allocrunner.structs.task_state import (
    EVENT_ARTIFACT_DOWNLOAD_FAILED,
    EVENT_DOWNLOADING_ARTIFACTS,
)
from allocrunner.taskrunner.env import interpolate
from allocrunner.taskrunner.hooks import (
    DONE,
    DONE_REDOABLE,
    HookEventError,
    HookRequest,
    PrestartResult,
    TaskHook,
)

__all__ = ["ArtifactHook"]


class ArtifactHook(TaskHook):
    """Thread-safe. Fetches the task's artifacts before its first start (module
    docstring); its one setting never changes."""

    name = "artifacts"

    _allow_local = immutable()

    def __init__(self, *, allow_local: bool = False) -> None:
        self._allow_local = allow_local

    @calls_out
    def prestart(self, req: HookRequest) -> PrestartResult:
        artifacts = req.task.artifacts
        if not artifacts:
            return DONE_REDOABLE  # nothing to fetch: running it again fetches nothing either
        req.emit_event(
            TaskEvent(
                EVENT_DOWNLOADING_ARTIFACTS,
                message="Client is downloading artifacts",
                display_message="Client is downloading artifacts",
            )
        )
        env = dict(req.env)
        for artifact in artifacts:
            try:
                fetch_artifact(
                    _spec(artifact, env),
                    req.task_dir.dir,
                    allow_local=self._allow_local,
                    cancel=req.cancel,
                    root=req.task_dir.dir.parent,
                )
            except ArtifactError as err:
                message = str(err)
                event = TaskEvent(
                    EVENT_ARTIFACT_DOWNLOAD_FAILED, message=message, display_message=message
                )
                raise HookEventError(message, event, recoverable=err.recoverable) from None
        return DONE


def _spec(artifact: TaskArtifact, env: dict[str, str]) -> ArtifactSpec:
    return ArtifactSpec(
        source=interpolate(artifact.getter_source, env),
        destination=interpolate(artifact.relative_dest, env),
        mode=artifact.getter_mode,
        options={k: interpolate(v, env) for k, v in artifact.getter_options.items()},
        headers={k: interpolate(v, env) for k, v in artifact.getter_headers.items()},
    )
