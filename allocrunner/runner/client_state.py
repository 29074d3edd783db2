"""The client side of an allocation: its runtime state, computed from its task states.

- `ClientState`: the runtime state as last published, and what it is computed from
  (a forced client status, a timeout override, the deployment status, the state the
  server acknowledged).
- `compute_state`: Nomad's clientAlloc: the runtime `AllocState` (client status and
  description, deployment status, task states) from the task states, a forced
  status and the deployment status.
- `client_view`: the allocation the server sent with its client fields filled in
  from a runtime state: what the state updater and the broadcaster are given.
- `update_priority`: how urgently a client view should go to the server, compared
  with the state the server last acknowledged (Nomad's GetUpdatePriority).

Threads: `ClientState` is written by the alloc runner's state handler (its passes,
on ``alloc-state-pool-<n>``), its health watcher and API callers, and read from any
thread. Locks: `ClientState` uses the alloc runner's ``AllocRunner._state_lock`` (RW),
which the runner lends it: writers publish a new immutable `AllocState` under the
write side, readers take the current one under the read side and never write. The
functions are pure. Owner: the AllocRunner builds its `ClientState` and is its only
caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import attrs

from allocrunner._locking import RWLock, guarded, immutable
from allocrunner.structs import (
    CLIENT_COMPLETE,
    CLIENT_FAILED,
    CLIENT_PENDING,
    Allocation,
    AllocDeploymentStatus,
    AllocState,
    FrozenDict,
    TaskState,
    client_status_from_task_states,
    utcnow,
)
from allocrunner.structs.evolve import evolve
from allocrunner.structs.status import CLIENT_TERMINAL

__all__ = [
    "UPDATE_NONE",
    "UPDATE_TYPICAL",
    "UPDATE_URGENT",
    "ClientState",
    "client_view",
    "compute_state",
    "update_priority",
]

UPDATE_NONE = "none"
UPDATE_TYPICAL = "typical"
UPDATE_URGENT = "urgent"


def client_view(alloc: Allocation, state: AllocState) -> Allocation:
    """The allocation with its client fields taken from the runtime state."""
    return evolve(
        alloc,
        client_status=state.client_status,
        client_description=state.client_description,
        task_states=state.task_states,
        deployment_status=state.deployment_status,
    )


def compute_state(
    alloc: Allocation,
    states: Mapping[str, TaskState],
    forced: str,
    deployment: AllocDeploymentStatus | None,
    previous: AllocState | None = None,
    timed_out: str = "",
) -> AllocState:
    """The client status from task states (a forced status wins); a terminal
    allocation stamps FinishedAt on every task, and a failed one in a deployment with
    no verdict yet is marked unhealthy. Stamps made for the `previous` state are
    kept, so an unchanged state computes an equal value. `timed_out` (the description
    of a group whose max_run_duration passed) makes a terminal allocation complete
    with that description, however its killed tasks exited; while a task is live
    the status stays what the tasks say."""
    status, description = client_status_from_task_states(states)
    if forced:
        status, description = forced, description or forced
    if not status:
        status, description = CLIENT_PENDING, ""
    if timed_out and status in CLIENT_TERMINAL:
        status, description = CLIENT_COMPLETE, timed_out
    task_states = dict(states)
    if status in CLIENT_TERMINAL:
        now = utcnow()
        if (
            status == CLIENT_FAILED
            and alloc.deployment_id
            and (deployment is None or not deployment.has_health())
        ):
            deployment = AllocDeploymentStatus(healthy=False, timestamp=now)
        task_states = _stamp_finished(alloc, task_states, previous, now)
    return AllocState(
        client_status=status,
        client_description=description,
        deployment_status=deployment,
        task_states=FrozenDict(task_states),
    )


def _stamp_finished(
    alloc: Allocation,
    task_states: dict[str, TaskState],
    previous: AllocState | None,
    now: datetime,
) -> dict[str, TaskState]:
    """Every task of the group with a FinishedAt: the one `previous` stamped, else now."""
    group = alloc.group()
    names = [t.name for t in group.tasks] if group else list(task_states)
    stamped = previous.task_states if previous is not None else {}
    stamped_states = dict(task_states)
    for name in names:
        ts = task_states.get(name) or TaskState()
        if ts.finished_at is None:
            earlier = stamped.get(name)
            stamp = earlier.finished_at if earlier is not None else None
            ts = attrs.evolve(ts, finished_at=stamp or now)
        stamped_states[name] = ts
    return stamped_states


def update_priority(acknowledged: AllocState | None, alloc: Allocation) -> str:
    """How urgently the client view `alloc` should go to the server: "urgent" for a
    new client status (or a first report of failure), "typical" for any other change,
    "none" when the server already has it."""
    if acknowledged is None:
        return UPDATE_URGENT if alloc.client_status == CLIENT_FAILED else UPDATE_TYPICAL
    if acknowledged.client_status != alloc.client_status:
        return UPDATE_URGENT
    if (
        acknowledged.client_description != alloc.client_description
        or acknowledged.deployment_status != alloc.deployment_status
        or dict(acknowledged.task_states) != dict(alloc.task_states)
    ):
        return UPDATE_TYPICAL
    return UPDATE_NONE


class ClientState:
    """Thread-safe. The runtime state of one allocation as last published, with what it
    is computed from; guarded by the runner's state lock (module docstring)."""

    # _lock guards: _state, _forced_status, _timed_out, _deployment_status, _acknowledged
    _lock = immutable()
    _state = guarded("_lock")
    _forced_status = guarded("_lock")
    _timed_out = guarded("_lock")  # the max_run_duration description once it passed
    _deployment_status = guarded("_lock")
    _acknowledged = guarded("_lock")

    def __init__(self, lock: RWLock, alloc: Allocation, states: Mapping[str, TaskState]) -> None:
        self._lock = lock
        self._forced_status = ""
        self._timed_out = ""
        self._deployment_status = alloc.deployment_status
        self._acknowledged: AllocState | None = None
        self._state = compute_state(alloc, states, "", alloc.deployment_status)

    def current(self) -> AllocState:
        """The published state: an immutable snapshot; takes only the read side."""
        with self._lock.read():
            return self._state

    def publish(
        self, alloc: Allocation, states: Mapping[str, TaskState]
    ) -> tuple[AllocState, bool]:
        """Compute and publish the state of `alloc` with task `states`; the new state
        and whether it differs from the one before."""
        with self._lock.write():
            previous = self._state
            state = compute_state(
                alloc,
                states,
                self._forced_status,
                self._deployment_status,
                previous,
                self._timed_out,
            )
            self._state = state
            # A verdict computed here (failed in a deployment → unhealthy) is kept.
            self._deployment_status = state.deployment_status
        return state, state != previous

    def restore(
        self,
        alloc: Allocation,
        states: Mapping[str, TaskState],
        deployment: AllocDeploymentStatus | None,
    ) -> None:
        """Publish the restored `states`, with the stored `deployment` status if any."""
        with self._lock.write():
            if deployment is not None:
                self._deployment_status = deployment
            self._state = compute_state(
                alloc,
                states,
                self._forced_status,
                self._deployment_status,
                self._state,
                self._timed_out,
            )

    def has_health(self) -> bool:
        """True once a health verdict is set."""
        with self._lock.read():
            status = self._deployment_status
        return status is not None and status.has_health()

    def set_deployment_status(self, status: AllocDeploymentStatus | None) -> None:
        """Set (or, with None, clear) the deployment status; the next publish shows it."""
        with self._lock.write():
            self._deployment_status = status

    def force_status(self, status: str) -> None:
        """Force the client status (e.g. failed after a failed restore)."""
        with self._lock.write():
            self._forced_status = status

    def set_timed_out(self, description: str) -> None:
        """The group's max_run_duration passed: once no task is live the allocation is
        complete with `description` (the next publish shows it)."""
        with self._lock.write():
            self._timed_out = description

    def acknowledge(self, state: AllocState) -> None:
        """Record the state the server has acknowledged (drives `priority`)."""
        with self._lock.write():
            self._acknowledged = state

    def priority(self, alloc: Allocation) -> str:
        """`update_priority` of the client view `alloc` against the acknowledged state."""
        with self._lock.read():
            acknowledged = self._acknowledged
        return update_priority(acknowledged, alloc)
