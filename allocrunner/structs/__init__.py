"""Immutable value objects for jobs, allocations and task states, with Nomad's strings.

Everything here is a frozen attrs class, a `FrozenDict`, a constant or a pure function:
a change makes a new object (`attrs.evolve`), so any of them can be shared between
threads and published under a lock without copying.

No threads, no locks (data-only; never imports `_locking`); immutable values and
pure functions, owned by no one: built and read all over the package and turned
into Nomad's API JSON and back by `allocrunner.jobspec`.
"""

from allocrunner.structs import status as _status
from allocrunner.structs import task_state as _task_state
from allocrunner.structs.alloc import (
    AllocatedPort,
    Allocation,
    AllocDeploymentStatus,
    AllocState,
    DesiredTransition,
    new_allocation,
)
from allocrunner.structs.frozen import FrozenDict, freeze, thaw
from allocrunner.structs.job import (
    BATCH_RESTART_POLICY,
    DISPATCH_LAUNCH_SUFFIX,
    DISPATCH_PAYLOAD_FORBIDDEN,
    DISPATCH_PAYLOAD_MODES,
    DISPATCH_PAYLOAD_OPTIONAL,
    DISPATCH_PAYLOAD_REQUIRED,
    PERIODIC_LAUNCH_SUFFIX,
    PERIODIC_SPEC_CRON,
    SERVICE_RESTART_POLICY,
    EphemeralDisk,
    Job,
    Lifecycle,
    LogConfig,
    MigrateStrategy,
    ParameterizedJobConfig,
    PeriodicConfig,
    Resources,
    RestartPolicy,
    Task,
    TaskGroup,
    UpdateStrategy,
    default_restart_policy,
    effective_restart_policy,
)
from allocrunner.structs.status import *  # noqa: F403  (statuses, client_status_from_task_states)
from allocrunner.structs.task_state import *  # noqa: F403  (events, TaskEvent, TaskState, utcnow)

__all__ = [
    "BATCH_RESTART_POLICY",
    "DISPATCH_LAUNCH_SUFFIX",
    "DISPATCH_PAYLOAD_FORBIDDEN",
    "DISPATCH_PAYLOAD_MODES",
    "DISPATCH_PAYLOAD_OPTIONAL",
    "DISPATCH_PAYLOAD_REQUIRED",
    "PERIODIC_LAUNCH_SUFFIX",
    "PERIODIC_SPEC_CRON",
    "SERVICE_RESTART_POLICY",
    "AllocDeploymentStatus",
    "AllocState",
    "AllocatedPort",
    "Allocation",
    "DesiredTransition",
    "EphemeralDisk",
    "FrozenDict",
    "Job",
    "Lifecycle",
    "LogConfig",
    "MigrateStrategy",
    "ParameterizedJobConfig",
    "PeriodicConfig",
    "Resources",
    "RestartPolicy",
    "Task",
    "TaskGroup",
    "UpdateStrategy",
    "default_restart_policy",
    "effective_restart_policy",
    "freeze",
    "new_allocation",
    "thaw",
]
__all__ += _status.__all__  # status constants and client_status_from_task_states
__all__ += _task_state.__all__  # event constants, TaskEvent, TaskState, utcnow
