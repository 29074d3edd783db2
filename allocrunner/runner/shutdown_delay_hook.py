"""The group's `shutdown_delay`: a pause between deciding to kill an allocation's tasks
and telling them to stop.

Nomad (v1.6.0, its group service hook's PreKill and the alloc runner's killTasks):
the alloc runner's pre-kill hooks run before the tasks get their Killing events and
kill requests, and the group hook waits the group's shutdown_delay there (after taking
the group's services out of discovery), ended early when an update asks for
`desired_transition.no_shutdown_delay`. The group delay records no task event (the
task-level "Waiting for shutdown_delay of ..." event belongs to each task's own
delay, which applies after this one, in the task runner). Here, as there, the delay
applies whenever the alloc runner kills its tasks (a stop or evict, a sibling rule,
max_run_duration), never when the tasks all ended on their own; unlike Nomad it also
ends at once when the allocation is destroyed (a destroy never waits on it).

The pause does not sleep in the pre-kill phase: that phase runs in a state handler
pass, and sleeping there would stop the allocation's state from being
published for the whole delay (its stop, task deaths, health), and a destroy or a
no_shutdown_delay update could only be noticed by polling. `pre_kill` arms a "not
before" time instead; the state handler holds the kill sequence until `hold_until()`
has passed, a deadline the state-pass service keeps (no thread of its own), publishing
meanwhile. `cancel` (a destroy) ends the hold and kicks the handler. On an agent
shutdown the hold lasts until the run ends (`agent_shutdown`): the tasks are left
running, as a shutdown leaves them.

Threads: `pre_kill` and `hold_until` on the state handler's passes
(``alloc-state-pool-<n>``), or `pre_kill` on the destroy thread, for tasks no run
thread watches; `cancel` and `agent_shutdown` on the destroy and shutdown threads.
Locks: none; the hold time sits in a `LatestValue`, the cancellation in a
`CancelToken`. Owner: the AllocRunner
builds it, lists it among its alloc hooks and hands `hold_until` to its state handler.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from allocrunner._locking import immutable
from allocrunner._sync import CancelToken, Event, LatestValue
from allocrunner.runner.hooks import AllocHook
from allocrunner.structs import Allocation

__all__ = ["GroupShutdownDelayHook"]

log = logging.getLogger("allocrunner.runner")


def _skips_delay(alloc: Allocation) -> bool:
    return bool(alloc.desired_transition.no_shutdown_delay)


class GroupShutdownDelayHook(AllocHook):
    """Thread-safe. Holds the kill of one allocation's tasks for the group's
    shutdown_delay (module docstring)."""

    name = "group_shutdown_delay"

    _current_alloc = immutable()
    _kick = immutable()
    _monotonic = immutable()
    _until = immutable()  # LatestValue[float]: monotonic end of the hold, once armed
    _cancelled = immutable()  # a destroy ended the hold
    _shutting_down = immutable()  # the agent shuts down: hold until the run ends

    def __init__(
        self,
        current_alloc: Callable[[], Allocation],
        *,
        kick: Callable[[], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._current_alloc = current_alloc
        self._kick = kick
        self._monotonic = monotonic
        self._until: LatestValue[float] = LatestValue()
        self._cancelled = CancelToken()
        self._shutting_down = Event()

    def pre_kill(self) -> None:
        """Arm the hold (once): the group's shutdown_delay from now, unless skipped."""
        if self._until.peek() is not None or self._cancelled.cancelled():
            return
        alloc = self._current_alloc()
        group = alloc.group()
        delay = group.shutdown_delay if group is not None else 0.0
        if delay <= 0 or _skips_delay(alloc):
            return
        log.debug("allocation %s: waiting the group shutdown_delay of %ss", alloc.id, delay)
        self._until.offer(self._monotonic() + delay)

    def hold_until(self) -> float | None:
        """The monotonic time before which the tasks must not be told to stop (inf
        during an agent shutdown), or None once there is nothing to wait for."""
        until = self._until.peek()
        if until is None or self._cancelled.cancelled():
            return None
        if self._shutting_down.is_set():
            return math.inf
        if _skips_delay(self._current_alloc()):
            return None
        return until

    def cancel(self, reason: str) -> None:
        """End the hold now (the allocation is being destroyed). Notify-only."""
        self._cancelled.cancel(reason)
        self._kick()

    def agent_shutdown(self) -> None:
        """The agent shuts down: keep holding (the tasks stay running). Notify-only."""
        self._shutting_down.set()
