"""NoopDB: a StateDB that stores nothing (dev mode: nothing survives a restart).

Threads: none. Locks: none (it has no state). Owner: embedders and tests create it
and pass it where a `StateDB` is expected.
"""

from __future__ import annotations

from allocrunner._locking import calls_out, thread_safe
from allocrunner.state.base import LocalState, WriteStats
from allocrunner.structs import Allocation, AllocDeploymentStatus, TaskState

__all__ = ["NoopDB"]


@thread_safe
class NoopDB:
    """Thread-safe. Accepts every write and forgets it; every read finds nothing.

    It has no state at all, so it never fails, not even after `close()`.
    """

    @calls_out
    def put_allocation(self, alloc: Allocation) -> None:
        """Forget the allocation."""

    @calls_out
    def all_allocations(self) -> list[Allocation]:
        """Always empty."""
        return []

    @calls_out
    def delete_allocation(self, alloc_id: str) -> None:
        """Nothing to delete."""

    @calls_out
    def put_task_state(self, alloc_id: str, task: str, state: TaskState) -> None:
        """Forget the task state."""

    @calls_out
    def put_task_local_state(self, alloc_id: str, task: str, local: LocalState) -> None:
        """Forget the local state."""

    @calls_out
    def task_runner_state(
        self, alloc_id: str, task: str
    ) -> tuple[LocalState | None, TaskState | None]:
        """Always (None, None)."""
        return None, None

    @calls_out
    def put_deployment_status(self, alloc_id: str, status: AllocDeploymentStatus | None) -> None:
        """Forget the deployment status."""

    @calls_out
    def deployment_status(self, alloc_id: str) -> AllocDeploymentStatus | None:
        """Always None."""
        return None

    def stats(self) -> WriteStats:
        """Always zero: nothing is written."""
        return WriteStats()

    @calls_out
    def flush(self) -> None:
        """Nothing to wait for."""

    @calls_out
    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "<NoopDB>"
