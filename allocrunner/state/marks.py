"""Durable marks an allocation runner leaves in any StateDB, so that a restart after a
crash knows what was under way.

The one mark today is *destroying*: an AllocRunner writes it before its destroy stops
the tasks and removes the alloc dir, and the destroy ends by deleting the allocation's
state, the mark with it. A mark found on restore means the agent died in the middle
of a destroy, and the restore finishes that destroy instead of running the allocation
again (or failing it for its half-removed directory).

The mark is kept through the StateDB protocol itself, as the client-only state of a
reserved task name that no task can have (task names never contain ``/``), so every
implementation keeps it, and `delete_allocation` removes it with the rest.

Threads: none. Locks: none (these are StateDB calls, made with no lock held).
Owner: the AllocRunner's persister writes the mark; `AllocRunner.restore` and
`Client` read it.
"""

from __future__ import annotations

from allocrunner.state.base import HookState, LocalState, StateDB, flush_state_db

__all__ = ["DESTROYING_TASK", "destroy_interrupted", "mark_destroying"]

DESTROYING_TASK = "/destroying"
"""The reserved task name the destroying mark is stored under."""

_MARK = LocalState(hooks={"destroy": HookState(prestart_done=True)})


def mark_destroying(db: StateDB, alloc_id: str) -> None:
    """Record, durably, that the destroy of `alloc_id` has begun (a callout: it writes
    and flushes, so the mark is on disk before anything is removed)."""
    db.put_task_local_state(alloc_id, DESTROYING_TASK, _MARK)
    flush_state_db(db)


def destroy_interrupted(db: StateDB, alloc_id: str) -> bool:
    """True if a destroy of `alloc_id` began and its state was never deleted."""
    local, _ = db.task_runner_state(alloc_id, DESTROYING_TASK)
    return local is not None
