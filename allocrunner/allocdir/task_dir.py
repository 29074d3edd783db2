"""TaskDir: one task's directories inside an alloc dir.

Threads and locks: none; a TaskDir is an immutable set of paths and `build()` is
idempotent file work. Owner: `AllocDir.new_task_dir` makes them; task runners build them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, NamedTuple

import attrs

from allocrunner._locking import calls_out
from allocrunner.allocdir import fs
from allocrunner.errors import AllocDirError

__all__ = ["TASK_DIR_MODES", "TaskDir", "TaskPaths"]

LOCAL_DIR: Final = "local"
SECRETS_DIR: Final = "secrets"
TMP_DIR: Final = "tmp"

# Nomad's modes: the task dir and local/ open to the task's user, tmp/ sticky and
# world-writable like /tmp, secrets/ readable by its owner only.
TASK_DIR_MODE: Final = 0o777
TASK_DIR_MODES: Final = (
    (LOCAL_DIR, 0o777),
    (TMP_DIR, 0o1777),
    (SECRETS_DIR, 0o700),
)


class TaskPaths(NamedTuple):
    """Immutable. A task's directories as strings, the form a driver's task config and
    the task's environment take them in (`TaskDir.paths`)."""

    task_dir: str
    alloc_dir: str
    local_dir: str
    secrets_dir: str
    logs_dir: str


@attrs.frozen
class TaskDir:
    """Immutable. The paths of one task's directories, and `build()` to create them.

    Layout: ``<alloc dir>/<task>/{local,secrets,tmp}``; the task also sees the shared
    ``alloc/`` dir (`shared_alloc_dir`) and its logs (`logs_dir`). Made by
    `AllocDir.new_task_dir`; `build()` may be called from any thread, any number of
    times.
    """

    name: str
    dir: Path
    shared_alloc_dir: Path
    logs_dir: Path

    @classmethod
    def for_alloc(cls, alloc_path: Path, shared_dir: Path, logs_dir: Path, name: str) -> TaskDir:
        """The TaskDir of task `name` in the alloc dir at `alloc_path`."""
        return cls(name=name, dir=alloc_path / name, shared_alloc_dir=shared_dir, logs_dir=logs_dir)

    # The task's own subdirectories are derived on each read rather than kept: every
    # running task holds its TaskDir, and each kept Path is two more objects for the
    # cyclic garbage collector to walk, where a read is rare.

    def paths(self) -> TaskPaths:
        """The task dir, the shared alloc dir, local/, secrets/ and the logs dir as
        strings. Every start needs them so (its task config and its env); a Path join
        per directory would cost a dozen calls each."""
        task_dir = str(self.dir)
        return TaskPaths(
            task_dir,
            str(self.shared_alloc_dir),
            f"{task_dir}/{LOCAL_DIR}",
            f"{task_dir}/{SECRETS_DIR}",
            str(self.logs_dir),
        )

    @property
    def local_dir(self) -> Path:
        return self.dir / LOCAL_DIR

    @property
    def secrets_dir(self) -> Path:
        return self.dir / SECRETS_DIR

    @property
    def tmp_dir(self) -> Path:
        return self.dir / TMP_DIR

    @calls_out
    def build(self) -> None:
        """Create ``<task>/{local,secrets,tmp}`` with Nomad's modes; idempotent.

        The alloc dir must exist (`AllocDir.build`). Existing directories keep their
        contents and get their modes reset; a symlink or file where a directory belongs
        raises `AllocDirError` instead of being followed. A fresh task dir is made
        private, filled by path and opened up last; an existing one is walked by
        descriptor (`fs.build_layout`).
        """
        try:
            fs.build_layout(str(self.dir), TASK_DIR_MODES, TASK_DIR_MODE, self._build_existing)
        except FileNotFoundError as err:
            raise AllocDirError(
                f"cannot build task dir {self.name!r}: alloc dir {self.dir.parent} is not built"
            ) from err
        except OSError as err:
            raise AllocDirError(f"cannot build task dir {self.dir}: {err}") from err

    def _build_existing(self) -> None:
        """Complete a task dir that exists (a restart, or a build cut short) and reset
        its modes, through descriptors, never following a symlink."""
        alloc_path = str(self.dir.parent)
        try:
            alloc_fd = os.open(alloc_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise AllocDirError(f"cannot build task dir {self.name!r}: {err}") from err
        try:
            task_fd = fs.ensure_dir(alloc_fd, self.name, TASK_DIR_MODE, str(self.dir))
            try:
                for name, mode in TASK_DIR_MODES:
                    os.close(fs.ensure_dir(task_fd, name, mode, str(self.dir / name)))
            finally:
                os.close(task_fd)
        except AllocDirError:
            raise
        except OSError as err:
            raise AllocDirError(f"cannot build task dir {self.dir}: {err}") from err
        finally:
            os.close(alloc_fd)
