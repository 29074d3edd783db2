"""Re-rendering templates read from a `source` file while their task runs, and their
`change_mode` (Nomad's client/allocrunner/taskrunner/template/template.go, for file
sources).

`TemplateLifecycle` is what a watcher needs of its task runner: the task runner's
public `request_restart`, `signal` and `kill`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from allocrunner.structs import TaskEvent

__all__ = ["TemplateLifecycle"]


class TemplateLifecycle(Protocol):
    """Restarts, signals or kills one task (`TaskRunner` is one)."""

    def request_restart(
        self, event: TaskEvent, failure: bool = False, *, force: bool = False
    ) -> Callable[[], object]: ...

    def signal(self, event: TaskEvent, sig: str) -> None: ...

    def kill(self, event: TaskEvent | None = None, timeout: float | None = None) -> bool: ...
