"""Allocation and AllocState: the static server view and the dynamic client view.

`Allocation` is what the server sends (plus the client fields it reports back);
`AllocState` is the runtime state an alloc runner publishes; `new_allocation` places
a job's group the way a scheduler would.

No threads, no locks; immutable values and pure functions, built by the codec,
`new_allocation` and the agent's placement, held by the alloc runner, the client, the
state DBs and the broadcaster.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import attrs

from allocrunner.structs.frozen import EMPTY, FrozenDict, frozen_map
from allocrunner.structs.job import Job, TaskGroup
from allocrunner.structs.status import (
    CLIENT_PENDING,
    DESIRED_RUN,
    is_client_terminal,
    is_server_terminal,
)
from allocrunner.structs.task_state import TaskState, _aware


@attrs.frozen
class AllocDeploymentStatus:
    """Immutable. Deployment health of an allocation (healthy None = not yet known)."""

    healthy: bool | None = None
    timestamp: datetime | None = attrs.field(default=None, converter=_aware)
    canary: bool = False
    modify_index: int = 0

    def has_health(self) -> bool:
        return self.healthy is not None

    def is_healthy(self) -> bool:
        return self.healthy is True

    def is_unhealthy(self) -> bool:
        return self.healthy is False


@attrs.frozen
class AllocatedPort:
    """Immutable. A host port given to an allocation (Nomad's AllocatedPortMapping):
    `value` on the host, `to` inside the task's network (0: the same), `host_ip` the
    address it is bound on."""

    label: str
    value: int
    to: int = 0
    host_ip: str = ""


@attrs.frozen
class DesiredTransition:
    """Immutable. Transitions the scheduler asks of an allocation."""

    migrate: bool | None = None
    reschedule: bool | None = None
    force_reschedule: bool | None = None
    no_shutdown_delay: bool | None = None

    def should_migrate(self) -> bool:
        return bool(self.migrate)


@attrs.frozen
class Allocation:
    """Immutable. An allocation: server fields plus the client fields it reports."""

    id: str
    name: str = ""
    namespace: str = "default"
    node_id: str = ""
    eval_id: str = ""
    job_id: str = ""
    job: Job | None = None
    task_group: str = ""
    desired_status: str = DESIRED_RUN
    desired_description: str = ""
    desired_transition: DesiredTransition = attrs.field(factory=DesiredTransition)
    previous_allocation: str = ""
    next_allocation: str = ""
    deployment_id: str = ""
    alloc_modify_index: int = 0
    create_index: int = 0
    modify_index: int = 0
    create_time: int = 0
    modify_time: int = 0
    client_status: str = CLIENT_PENDING
    client_description: str = ""
    task_states: FrozenDict[str, TaskState] = attrs.field(default=EMPTY, converter=frozen_map)
    deployment_status: AllocDeploymentStatus | None = None
    # The placement's ports (``AllocatedResources.Shared.Ports``), given by the server
    # (here: the agent's placement) and read by the task environment.
    allocated_ports: tuple[AllocatedPort, ...] = attrs.field(default=(), converter=tuple)

    def group(self) -> TaskGroup | None:
        """This allocation's task group from its job, or None."""
        if self.job is None:
            return None
        return self.job.lookup_task_group(self.task_group)

    def server_terminal(self) -> bool:
        """Desired status is stop or evict."""
        return is_server_terminal(self.desired_status)

    def client_terminal(self) -> bool:
        """Client status is complete, failed or lost."""
        return is_client_terminal(self.client_status)

    def terminal(self) -> bool:
        """Either terminal status (Nomad's TerminalStatus)."""
        return self.server_terminal() or self.client_terminal()

    def index(self) -> int:
        """The N of `job.group[N]` in the name, or 0."""
        start = self.name.rfind("[")
        if start < 0 or not self.name.endswith("]"):
            return 0
        try:
            return int(self.name[start + 1 : -1])
        except ValueError:
            return 0


@attrs.frozen
class AllocState:
    """Immutable. The runtime state of an allocation on this node (Nomad's state.State)."""

    client_status: str = CLIENT_PENDING
    client_description: str = ""
    deployment_status: AllocDeploymentStatus | None = None
    task_states: FrozenDict[str, TaskState] = attrs.field(default=EMPTY, converter=frozen_map)


def new_allocation(
    job: Job,
    group_name: str,
    *,
    index: int = 0,
    previous: Allocation | str | None = None,
) -> Allocation:
    """An allocation of `job`'s group `group_name` as a scheduler would place it.

    Fresh id, name ``<job>.<group>[<index>]``, desired status run, client status pending.
    `previous` (an Allocation or its id) makes this a replacement that waits for it.
    """
    if job.lookup_task_group(group_name) is None:
        names = ", ".join(g.name for g in job.task_groups) or "none"
        raise KeyError(f"job {job.id!r} has no task group {group_name!r} (groups: {names})")
    previous_id = previous.id if isinstance(previous, Allocation) else (previous or "")
    return Allocation(
        id=str(uuid.uuid4()),
        name=f"{job.id}.{group_name}[{index}]",
        namespace=job.namespace,
        job_id=job.id,
        job=job,
        task_group=group_name,
        desired_status=DESIRED_RUN,
        previous_allocation=previous_id,
        alloc_modify_index=1,
        create_index=1,
        modify_index=1,
        client_status=CLIENT_PENDING,
    )


__all__ = [
    "AllocDeploymentStatus",
    "AllocState",
    "Allocation",
    "DesiredTransition",
    "FrozenDict",
    "new_allocation",
]
