"""The group's `max_run_duration`: an allocation that runs past it is stopped.

Nomad's semantics (its batch_timeout end-to-end tests and the feature's history):
the deadline is the allocation's CreateTime plus the group's max_run_duration, so
neither a task restart nor an agent restart moves it; an allocation that carries no
CreateTime (one built by a library user) counts from the first time this node began
running it (its prerun). An update that changes max_run_duration moves the deadline.
Only batch and sysbatch jobs have one (Nomad's servers refuse it elsewhere, and its
clients ignore it there); the alloc runner of any other job builds no such hook
(`may_have_deadline`).
When it passes, the alloc runner (`on_exceeded`) kills the tasks as a stop does,
poststop tasks first so that they never start, with a Killing event whose display
message is `DESCRIPTION` on each, and the allocation ends complete with
ClientDescription `DESCRIPTION`.

No thread: the hook only keeps the deadline. The alloc runner's state handler hands
`due()` to the state-pass service after each pass, which makes a pass then, and calls
`fire(now)` on each pass, so the timer costs a comparison per pass and no thread of
its own.

Persisted (a restored runner keeps counting from the original start): the anchor
when it is not the CreateTime, and whether the deadline passed (so a restored
allocation keeps its description), as the client-only state of the reserved task name
`STORE_NAME` in the state DB, like the destroying mark of `allocrunner.state.marks`;
`delete_allocation` removes it with the rest. A restored allocation already past its
deadline fires on the state handler's first pass.

Threads: `restore` on the caller of `AllocRunner.restore`, `prerun` on ``alloc-<id8>``,
`update`, `due` and `fire` on the state handler's passes (``alloc-state-pool-<n>``).
Locks: none of its own; the deadline, the anchor and the flags sit in `_sync` primitives (each
with its private leaf mutex), and nothing is called while one is held. Owner: the
AllocRunner builds it, lists it among its alloc hooks and hands `due`/`fire` to its
state handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from allocrunner._locking import calls_out, immutable
from allocrunner._sync import CancelToken, Event, LatestValue
from allocrunner.runner.hooks import AllocHook
from allocrunner.runner.persistence import AllocPersister
from allocrunner.state import HookState, LocalState, StateDB
from allocrunner.structs import JOB_BATCH, JOB_SYSBATCH, Allocation

__all__ = ["DESCRIPTION", "STORE_NAME", "MaxRunDurationHook", "deadline_ns", "may_have_deadline"]

log = logging.getLogger("allocrunner.runner")

DESCRIPTION = "allocation exceeded max_run_duration"
"""Nomad's ClientDescription (and Killing display message) for a timed-out allocation."""

STORE_NAME = "/max_run_duration"
"""The reserved task name the hook's state is stored under (no task name has a /)."""

_ANCHOR = "anchor_ns"
_EXCEEDED = "exceeded"

_NS = 1_000_000_000


def may_have_deadline(alloc: Allocation) -> bool:
    """Whether `alloc` can ever have a max_run_duration: its job is batch or sysbatch.
    A job's type never changes (Nomad's servers refuse to change it), so an allocation
    of any other type needs no hook: its runner keeps no deadline at all."""
    return alloc.job is not None and alloc.job.type in (JOB_BATCH, JOB_SYSBATCH)


def deadline_ns(alloc: Allocation, anchor_ns: int) -> int | None:
    """The wall-clock deadline (Unix ns) of `alloc` counted from `anchor_ns`, or None
    when its group has no max_run_duration (or its job is neither batch nor sysbatch)."""
    group = alloc.group()
    if group is None or group.max_run_duration <= 0:
        return None
    if alloc.job is None or alloc.job.type not in (JOB_BATCH, JOB_SYSBATCH):
        return None
    return anchor_ns + round(group.max_run_duration * _NS)


class MaxRunDurationHook(AllocHook):
    """Thread-safe. Keeps one allocation's max_run_duration deadline (module docstring)."""

    name = "max_run_duration"

    _alloc = immutable()  # the allocation as built (its CreateTime)
    _state_db = immutable()
    _persister = immutable()
    _on_exceeded = immutable()
    _kick = immutable()
    _monotonic = immutable()
    _wall_ns = immutable()
    _anchor = immutable()  # LatestValue[int]: Unix ns the deadline counts from
    _deadline = immutable()  # LatestValue[float]: monotonic deadline while armed
    _fired = immutable()  # set once the deadline was met (or given up on a shutdown)
    _exceeded = immutable()  # set once the deadline passed with tasks live (persisted)
    _stored = immutable()  # set once the anchor is in the state DB

    def __init__(
        self,
        alloc: Allocation,
        *,
        state_db: StateDB,
        persister: AllocPersister,
        on_exceeded: Callable[[], bool],
        kick: Callable[[], None],
        monotonic: Callable[[], float] = time.monotonic,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._alloc = alloc
        self._state_db = state_db
        self._persister = persister
        self._on_exceeded = on_exceeded
        self._kick = kick
        self._monotonic = monotonic
        self._wall_ns = wall_ns
        self._anchor: LatestValue[int] = LatestValue()
        self._deadline: LatestValue[float] = LatestValue()
        self._fired = Event()
        self._exceeded = Event()
        self._stored = Event()
        if alloc.create_time > 0:
            self._anchor.offer(alloc.create_time)

    # --- restore and phases ------------------------------------------------------------

    @calls_out
    def restore(self) -> bool:
        """Load the stored anchor and flag (agent restart); True if the deadline had
        passed before (the allocation keeps its description)."""
        local, _ = self._state_db.task_runner_state(self._alloc.id, STORE_NAME)
        stored = local.hook(self.name) if local is not None else None
        if stored is None:
            return False
        self._stored.set()
        anchor = stored.data.get(_ANCHOR, "")
        if self._anchor.peek() is None and anchor.isdigit():
            self._anchor.offer(int(anchor))
        if stored.data.get(_EXCEEDED) == "true":
            self._exceeded.set()
        return self._exceeded.is_set()

    @calls_out
    def prerun(self, cancel: CancelToken) -> None:
        """Arm the deadline (the anchor is fixed the first time; it is stored once a
        deadline counts from it, so a group without one costs no write)."""
        if self._anchor.peek() is None:
            self._anchor.offer(self._wall_ns())
        self._arm(self._alloc)

    @calls_out
    def update(self, alloc: Allocation) -> None:
        """A new version of the job may change max_run_duration: re-arm."""
        self._arm(alloc)

    def exceeded(self) -> bool:
        """True once the deadline passed (here or before a restore)."""
        return self._exceeded.is_set()

    # --- the state handler's timer -----------------------------------------------------

    def due(self) -> float | None:
        """The monotonic time the deadline falls due, while armed and not met."""
        if self._fired.is_set():
            return None
        return self._deadline.peek()

    @calls_out
    def fire(self, now: float) -> None:
        """Enforce the deadline if it is due at monotonic `now` (once)."""
        due = self.due()
        if due is None or now < due:
            return
        if not self._fired.set():
            return
        if not self._on_exceeded():
            return  # the agent is shutting down: a restored runner fires again
        log.info("allocation %s: %s; stopping its tasks", self._alloc.id, DESCRIPTION)
        self._exceeded.set()
        self._store()

    # --- internals ---------------------------------------------------------------------

    @calls_out
    def _arm(self, alloc: Allocation) -> None:
        anchor = self._anchor.peek()
        deadline = None if anchor is None else deadline_ns(alloc, anchor)
        if deadline is None:
            self._deadline.poll()
            return
        if self._stored.set():
            self._store()
        remaining = (deadline - self._wall_ns()) / _NS
        self._deadline.offer(self._monotonic() + remaining)
        self._kick()  # the state handler's next wait ends at the new deadline

    @calls_out
    def _store(self) -> None:
        anchor = self._anchor.peek()
        data = {_EXCEEDED: "true" if self._exceeded.is_set() else "false"}
        if anchor is not None:
            data[_ANCHOR] = str(anchor)
        local = LocalState(hooks={self.name: HookState(prestart_done=True, data=data)})
        self._persister.put_local_state(STORE_NAME, local)
