"""What an alloc runner's restore makes of an agent that died at any step.

An agent can be killed anywhere in an allocation's life, and a restore must never
turn that into a failed allocation:

- killed during a destroy: the destroy left a durable mark (`allocrunner.state.marks`),
  so the restore finishes the destroy rather than running the allocation again or
  failing it for its half-removed directory;
- killed before the alloc dir was built (or while it was built): no task had started,
  nothing of the allocation was in the directory, and it is built again;
- a task had started and its alloc dir is gone (ephemeral storage lost): the files it
  ran with are lost, and the restore fails (Nomad's rule).

Threads: none; `prepare_restore` runs on the caller of `AllocRunner.restore`.
Locks: none (state DB reads and directory work, with no lock held).
Owner: `AllocRunner.restore` is its only caller.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from allocrunner._locking import calls_out
from allocrunner.allocdir import AllocDir
from allocrunner.state import StateDB
from allocrunner.state.marks import destroy_interrupted

__all__ = ["prepare_restore", "started_tasks"]

log = logging.getLogger("allocrunner.runner")


@calls_out
def prepare_restore(
    db: StateDB, alloc_id: str, alloc_dir: AllocDir, task_names: Iterable[str]
) -> bool:
    """True when a destroy of `alloc_id` was interrupted (the runner finishes it).
    Otherwise make sure its alloc dir exists: built again when no task had started;
    FileNotFoundError naming the tasks when some had."""
    if destroy_interrupted(db, alloc_id):
        log.info("allocation %s: its destroy was interrupted; it is finished now", alloc_id)
        return True
    if Path(alloc_dir.path).is_dir():
        return False
    started = started_tasks(db, alloc_id, task_names)
    if started:
        raise FileNotFoundError(
            f"allocation {alloc_id}: alloc dir {alloc_dir.path} does not exist, "
            f"and task(s) {', '.join(started)} ran in it"
        )
    log.info("allocation %s: no task had started; building its alloc dir again", alloc_id)
    alloc_dir.build()
    return False


@calls_out
def started_tasks(db: StateDB, alloc_id: str, task_names: Iterable[str]) -> list[str]:
    """The tasks whose saved state shows they were started (a handle, or a start time)."""
    started: list[str] = []
    for name in task_names:
        local, state = db.task_runner_state(alloc_id, name)
        if (local is not None and local.task_handle is not None) or (
            state is not None and state.started_at is not None
        ):
            started.append(name)
    return started
