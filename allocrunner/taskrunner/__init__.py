"""Task runners: run one task of an allocation through a driver, from pending to dead.

- `TaskRunner` (runner.py): the public facade, over its parts: `TaskRunLoop`
  (run_loop.py: the run loop, on the run thread), `TaskHookPhases` (hook_phases.py:
  the task hook phases), `TaskStateCell` (state.py: the published task state and its
  persistence) and `TaskControl` / `TaskMailbox` (lifecycle.py: start, kill, restart,
  signal, and the requests other threads leave for the run thread).
- `RestartTracker`: Nomad's restart policy as a pure decision procedure.
- Task hooks (`TaskHook`, `run_phase`, the built-ins) and the task environment.

The package itself starts no threads and declares no locks; each module states its
own. Owner: the AllocRunner builds one TaskRunner per task of its group.
"""

from allocrunner.taskrunner.env import (
    HOST_ENV_DRIVERS,
    interpolate,
    interpolate_config,
    nomad_env,
    task_env,
)
from allocrunner.taskrunner.hooks import (
    COLLECT_ALL,
    STOP_AT_FIRST,
    EnvHook,
    HookEventError,
    HookRequest,
    LogsHook,
    PrestartResult,
    TaskDirHook,
    TaskHook,
    ValidateHook,
    default_hooks,
    run_phase,
)
from allocrunner.taskrunner.restarts import (
    KILLED,
    NO_DECISION,
    NOT_RESTARTING,
    RESTARTING,
    TERMINATED,
    RestartDecision,
    RestartTracker,
    restarts_on_success,
)
from allocrunner.taskrunner.runner import StartGate, TaskRunner

__all__ = [
    "COLLECT_ALL",
    "HOST_ENV_DRIVERS",
    "KILLED",
    "NOT_RESTARTING",
    "NO_DECISION",
    "RESTARTING",
    "STOP_AT_FIRST",
    "TERMINATED",
    "EnvHook",
    "HookEventError",
    "HookRequest",
    "LogsHook",
    "PrestartResult",
    "RestartDecision",
    "RestartTracker",
    "StartGate",
    "TaskDirHook",
    "TaskHook",
    "TaskRunner",
    "ValidateHook",
    "default_hooks",
    "interpolate",
    "interpolate_config",
    "nomad_env",
    "restarts_on_success",
    "run_phase",
    "task_env",
]
