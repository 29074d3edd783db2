"""The dispatch payload hook: writes a dispatched job's payload into the task's
`local/` directory (Nomad's client/allocrunner/taskrunner/dispatch_hook.go).

A task that declares `dispatch_payload { file = "…" }` gets the payload of its
dispatched job at `<task dir>/local/<file>` before it first starts; missing parent
directories are created. Like Nomad, directories and the file are created with mode
0777 (less the process umask), and the hook is done for good once it ran: a restart
keeps the file the task may have changed. A destination that leaves `local/` (through
`..` or a symlink planted there) is refused; the codec already refuses such paths in
the job, this guards the filesystem.

No threads and no locks: the hook runs on its task runner's run thread, called by the
prestart phase; owned by that TaskRunner.
"""

from __future__ import annotations

import os
from pathlib import Path

from allocrunner._locking import calls_out
from allocrunner.taskrunner.hooks import DONE, DONE_REDOABLE, HookRequest, PrestartResult, TaskHook

__all__ = ["DispatchPayloadHook", "write_dispatch_payload"]

PAYLOAD_MODE = 0o777


class DispatchPayloadError(Exception):
    """The payload's destination is unusable (it escapes the task's local/ dir)."""


@calls_out
def write_dispatch_payload(local_dir: Path, file: str, payload: bytes) -> Path:
    """Write `payload` to `local_dir/file` and return that path; DispatchPayloadError if
    the destination is not inside `local_dir`, OSError if it cannot be written."""
    root = Path(os.path.realpath(local_dir))
    target = root / file
    parent = Path(os.path.realpath(target.parent))
    if parent != root and root not in parent.parents:
        raise DispatchPayloadError(f"dispatch payload file {file!r} escapes the task's local dir")
    if target.name in ("", ".", ".."):
        raise DispatchPayloadError(f"dispatch payload file {file!r} names no file")
    os.makedirs(parent, mode=PAYLOAD_MODE, exist_ok=True)
    path = parent / target.name
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, PAYLOAD_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(payload)
    return path


class DispatchPayloadHook(TaskHook):
    """Writes the job's dispatch payload to the task's `dispatch_payload` file."""

    name = "dispatch_payload"

    @calls_out
    def prestart(self, req: HookRequest) -> PrestartResult:
        job = req.alloc.job
        file = req.task.dispatch_payload
        if job is not None and job.payload and file:
            write_dispatch_payload(req.task_dir.local_dir, file, job.payload)
            return DONE
        return DONE_REDOABLE  # nothing to write: running it again writes nothing either
