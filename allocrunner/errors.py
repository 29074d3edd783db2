"""The exception hierarchy of allocrunner.

This module sits at the bottom of the import graph: it imports nothing from
the package, so every other module can raise these errors.

Threads and locks: none. Owner: every module raises these; embedders catch them.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


class AllocRunnerError(Exception):
    """Base class of every error this library raises on purpose."""


# --- lock discipline -----------------------------------------------------------------


class LockDisciplineError(AllocRunnerError):
    """A lock rule of DESIGN.md §4 was broken (raised only in check mode)."""


class LockOrderError(LockDisciplineError):
    """A lock was taken out of rank order, or a non-reentrant lock was re-entered."""


class LockNotHeldError(LockDisciplineError):
    """A guarded field or a `_locked` helper was used without its lock (or its write side)."""


class CalloutUnderLockError(LockDisciplineError):
    """A `@calls_out` function (hook, driver, I/O, wait) was entered while holding a lock."""


# --- data and formats ----------------------------------------------------------------


class JobSpecError(AllocRunnerError, ValueError):
    """A job or allocation document is malformed; `path` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


# --- runtime -------------------------------------------------------------------------


class BroadcasterClosed(AllocRunnerError):
    """The broadcaster was closed: no more values will be sent."""


class PathEscapeError(AllocRunnerError, ValueError):
    """A path given to the alloc dir escapes it (`..`, absolute, or through a symlink)."""


class AllocDirError(AllocRunnerError):
    """An alloc dir operation failed (not built, unknown task, I/O failure)."""


class TaskNotRunningError(AllocRunnerError):
    """The task is not running, so it cannot be restarted or signalled."""


class UnknownTaskError(AllocRunnerError, KeyError):
    """No task of that name exists in the allocation's task group."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown task"


class RecoverableError(AllocRunnerError):
    """An error that the restart policy may retry (Nomad's structs.RecoverableError)."""

    def __init__(self, message: str, *, recoverable: bool = True) -> None:
        super().__init__(message)
        self.recoverable = recoverable


class DriverError(AllocRunnerError):
    """A driver could not start, stop, signal or recover a task."""

    def __init__(self, message: str, *, recoverable: bool = False) -> None:
        super().__init__(message)
        self.recoverable = recoverable


class TaskExitedError(DriverError, TaskNotRunningError):
    """The driver's task has exited, so it cannot be signalled (it may not be reported
    dead yet: the task runner learns of the exit on its own thread)."""


class HookError(AllocRunnerError):
    """A runner hook failed; `hook` names it and `__cause__` holds the original error."""

    def __init__(self, hook: str, phase: str, message: str, *, recoverable: bool = False) -> None:
        super().__init__(f'{phase} hook "{hook}" failed: {message}')
        self.hook = hook
        self.phase = phase
        self.recoverable = recoverable


class HookErrors(ExceptionGroup):
    """Every error of a hook phase that runs all hooks (postrun, destroy, update)."""


class StateDBError(AllocRunnerError):
    """The state database could not be opened, read or written."""


@runtime_checkable
class Recoverable(Protocol):
    """An error that says whether a retry may help (Nomad's structs.Recoverable):
    `RecoverableError`, `DriverError`, `HookError` and hook errors of the task runner."""

    recoverable: bool


def is_recoverable(err: BaseException) -> bool:
    """True when the restart policy may retry after `err` (plain errors are not)."""
    return isinstance(err, Recoverable) and bool(err.recoverable)
