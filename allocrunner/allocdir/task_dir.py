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

    The paths are kept as strings and each Path is made on read: every running task
    holds its TaskDir, a kept Path is two more objects for the cyclic garbage collector
    to walk (a string is none), and a start needs the strings (`paths`), where a read of
    a Path is rare.
    """

    name: str
    _dir: str = attrs.field(converter=os.fspath, alias="dir")
    _shared_alloc_dir: str = attrs.field(converter=os.fspath, alias="shared_alloc_dir")
    _logs_dir: str = attrs.field(converter=os.fspath, alias="logs_dir")

    @classmethod
    def for_alloc(
        cls,
        alloc_path: str | os.PathLike[str],
        shared_dir: str | os.PathLike[str],
        logs_dir: str | os.PathLike[str],
        name: str,
    ) -> TaskDir:
        """The TaskDir of task `name` in the alloc dir at `alloc_path`."""
        return cls(
            name=name,
            dir=f"{os.fspath(alloc_path)}/{name}",
            shared_alloc_dir=shared_dir,
            logs_dir=logs_dir,
        )

    @property
    def dir(self) -> Path:
        return Path(self._dir)

    @property
    def shared_alloc_dir(self) -> Path:
        return Path(self._shared_alloc_dir)

    @property
    def logs_dir(self) -> Path:
        return Path(self._logs_dir)

    def paths(self) -> TaskPaths:
        """The task dir, the shared alloc dir, local/, secrets/ and the logs dir as
        strings. Every start needs them so (its task config and its env)."""
        task_dir = self._dir
        return TaskPaths(
            task_dir,
            self._shared_alloc_dir,
            f"{task_dir}/{LOCAL_DIR}",
            f"{task_dir}/{SECRETS_DIR}",
            self._logs_dir,
        )

    @property
    def local_dir(self) -> Path:
        return Path(f"{self._dir}/{LOCAL_DIR}")

    @property
    def secrets_dir(self) -> Path:
        return Path(f"{self._dir}/{SECRETS_DIR}")

    @property
    def tmp_dir(self) -> Path:
        return Path(f"{self._dir}/{TMP_DIR}")

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
            fs.build_layout(self._dir, TASK_DIR_MODES, TASK_DIR_MODE, self._build_existing)
        except FileNotFoundError as err:
            raise AllocDirError(
                f"cannot build task dir {self.name!r}: alloc dir {self.dir.parent} is not built"
            ) from err
        except OSError as err:
            raise AllocDirError(f"cannot build task dir {self.dir}: {err}") from err

    def _build_existing(self) -> None:
        """Complete a task dir that exists (a restart, or a build cut short) and reset
        its modes, through descriptors, never following a symlink."""
        alloc_path = os.path.dirname(self._dir)
        try:
            alloc_fd = os.open(alloc_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise AllocDirError(f"cannot build task dir {self.name!r}: {err}") from err
        try:
            task_fd = fs.ensure_dir(alloc_fd, self.name, TASK_DIR_MODE, self._dir)
            try:
                for name, mode in TASK_DIR_MODES:
                    os.close(fs.ensure_dir(task_fd, name, mode, f"{self._dir}/{name}"))
            finally:
                os.close(task_fd)
        except AllocDirError:
            raise
        except OSError as err:
            raise AllocDirError(f"cannot build task dir {self.dir}: {err}") from err
        finally:
            os.close(alloc_fd)
