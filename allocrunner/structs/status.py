"""Nomad's status strings and the rule that derives an alloc's client status.

The strings are Nomad's own: client status (what this node reports for an
allocation), desired status (what the scheduler wants), task state, job type, restart
mode and lifecycle hook. `client_status_from_task_states` is Nomad's rule for the
client status an allocation's task states add up to.

No threads, no locks; constants and pure functions, called by the value objects, the
alloc runner (which derives its client status here) and the agent's API.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from allocrunner.structs.task_state import TaskState

# Client status of an allocation (what this node reports).
CLIENT_PENDING = "pending"
CLIENT_RUNNING = "running"
CLIENT_COMPLETE = "complete"
CLIENT_FAILED = "failed"
CLIENT_LOST = "lost"
CLIENT_STATUSES = (CLIENT_PENDING, CLIENT_RUNNING, CLIENT_COMPLETE, CLIENT_FAILED, CLIENT_LOST)
CLIENT_TERMINAL = frozenset({CLIENT_COMPLETE, CLIENT_FAILED, CLIENT_LOST})

# Desired status (what the scheduler wants).
DESIRED_RUN = "run"
DESIRED_STOP = "stop"
DESIRED_EVICT = "evict"
DESIRED_STATUSES = (DESIRED_RUN, DESIRED_STOP, DESIRED_EVICT)
DESIRED_TERMINAL = frozenset({DESIRED_STOP, DESIRED_EVICT})

# Task state.
TASK_PENDING = "pending"
TASK_RUNNING = "running"
TASK_DEAD = "dead"
TASK_STATES = (TASK_PENDING, TASK_RUNNING, TASK_DEAD)

# Job types.
JOB_SERVICE = "service"
JOB_BATCH = "batch"
JOB_SYSTEM = "system"
JOB_SYSBATCH = "sysbatch"
JOB_TYPES = (JOB_SERVICE, JOB_BATCH, JOB_SYSTEM, JOB_SYSBATCH)

# Restart policy modes.
RESTART_MODE_FAIL = "fail"
RESTART_MODE_DELAY = "delay"

# Lifecycle hooks.
LIFECYCLE_PRESTART = "prestart"
LIFECYCLE_POSTSTART = "poststart"
LIFECYCLE_POSTSTOP = "poststop"
LIFECYCLE_HOOKS = (LIFECYCLE_PRESTART, LIFECYCLE_POSTSTART, LIFECYCLE_POSTSTOP)

DESC_FAILED = "Failed tasks"
DESC_RUNNING = "Tasks are running"
DESC_PENDING = "No tasks have started"
DESC_COMPLETE = "All tasks have completed"


def client_status_from_task_states(
    states: Mapping[str, TaskState] | Iterable[TaskState],
) -> tuple[str, str]:
    """Nomad's getClientStatus: (status, description) from task states.

    Any dead and failed task → failed; else any running → running; else any pending →
    pending; else any dead → complete; no tasks → ("", "").
    """
    values = states.values() if isinstance(states, Mapping) else states
    failed = running = pending = dead = False
    for st in values:
        if st.state == TASK_RUNNING:
            running = True
        elif st.state == TASK_PENDING:
            pending = True
        elif st.state == TASK_DEAD:
            if st.failed:
                failed = True
            else:
                dead = True
    if failed:
        return CLIENT_FAILED, DESC_FAILED
    if running:
        return CLIENT_RUNNING, DESC_RUNNING
    if pending:
        return CLIENT_PENDING, DESC_PENDING
    if dead:
        return CLIENT_COMPLETE, DESC_COMPLETE
    return "", ""


def is_client_terminal(client_status: str) -> bool:
    """complete, failed or lost."""
    return client_status in CLIENT_TERMINAL


def is_server_terminal(desired_status: str) -> bool:
    """stop or evict."""
    return desired_status in DESIRED_TERMINAL


__all__ = [
    "CLIENT_COMPLETE",
    "CLIENT_FAILED",
    "CLIENT_LOST",
    "CLIENT_PENDING",
    "CLIENT_RUNNING",
    "CLIENT_STATUSES",
    "CLIENT_TERMINAL",
    "DESC_COMPLETE",
    "DESC_FAILED",
    "DESC_PENDING",
    "DESC_RUNNING",
    "DESIRED_EVICT",
    "DESIRED_RUN",
    "DESIRED_STATUSES",
    "DESIRED_STOP",
    "DESIRED_TERMINAL",
    "JOB_BATCH",
    "JOB_SERVICE",
    "JOB_SYSBATCH",
    "JOB_SYSTEM",
    "JOB_TYPES",
    "LIFECYCLE_HOOKS",
    "LIFECYCLE_POSTSTART",
    "LIFECYCLE_POSTSTOP",
    "LIFECYCLE_PRESTART",
    "RESTART_MODE_DELAY",
    "RESTART_MODE_FAIL",
    "TASK_DEAD",
    "TASK_PENDING",
    "TASK_RUNNING",
    "TASK_STATES",
    "client_status_from_task_states",
    "is_client_terminal",
    "is_server_terminal",
]
