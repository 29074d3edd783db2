"""The published state of one task, and the single-writer protocol that persists it.

`TaskStateCell` holds what a task runner publishes about its task: the `TaskState`
the server sees and the client-only `LocalState` (hook progress, the driver handle,
run complete), each with a version bumped on every change. A writer builds the new
immutable snapshot outside the lock and swaps it in (trying again if another writer
came first); a reader takes the current snapshot under the lock, so it costs a few
steps and can never change under the reader. The lock is a plain mutex, not an
RWLock: every hold is a field read or a swap, so readers would gain no concurrency,
and a read side costs a reader several times what the mutex does (a task start
takes it about thirty times).

Persistence runs with no lock held, one writer at a time: whoever finds nobody writing
becomes the writer and writes the newest snapshot; a caller whose version is not yet
written waits for the writer's round to end and looks again. So the database never ends
older than the newest snapshot anyone asked to persist, and `publish` returns once its
change is handed to the StateDB (an `SQLiteStateDB` commits it on its writer thread, in
order; a new driver handle, whose loss would start a task twice, is committed before the
write returns, unless the caller deferred that wait with `defer_commit`: it then waits
in `settle_commit`, before the task is reported running, so that a thread making many
starts in a row waits once for all of them). `record` and `note_local` are the
exceptions: they change the snapshot without writing (`record` for callers that must not
block and for the events of prestart hooks, `note_local` for hook progress whose loss in
a crash only makes the restore run the hook again, see `hooks.PrestartResult.redoable`),
and the next write of any caller carries the change.

Threads: any. Lock: ``TaskStateCell._lock`` (a mutex) guards `_current` (the snapshot
and its versions), `_saved` (the versions known to be written), `_writing` (a write is
in progress), `_round` (the event its waiters wait for) and the two flags of a deferred
commit (`_deferring`, `_deferred`); nothing is called, written or waited for under it.
Owner: each TaskRunner creates one; its run loop, its kill / restart paths (`lifecycle`)
and its public methods publish through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock
from allocrunner._sync import Event
from allocrunner.drivers.base import TaskHandle
from allocrunner.state import LocalState, StateDB
from allocrunner.structs import TaskEvent, TaskState

__all__ = ["KEEP", "TaskStateCell"]

log = logging.getLogger("allocrunner.taskrunner")

KEEP: Any = object()
"""Passed as `handle` to `TaskStateCell.publish`: leave the driver handle as it is."""


@attrs.frozen
class _Snapshot:
    """Immutable. One published version of the task's state."""

    state: TaskState
    local: LocalState
    state_version: int = 0
    local_version: int = 0

    def versions(self) -> tuple[int, int]:
        return (self.state_version, self.local_version)

    def replaced(self, state: TaskState, local: LocalState) -> _Snapshot:
        """This snapshot with `state` and `local`, bumping the version of each that is
        a new object."""
        return _Snapshot(
            state,
            local,
            self.state_version + (state is not self.state),
            self.local_version + (local is not self.local),
        )

    def bumped(self) -> _Snapshot:
        """The same content under new versions, so that the next write rewrites both."""
        return attrs.evolve(
            self, state_version=self.state_version + 1, local_version=self.local_version + 1
        )


def _next_state(base: TaskState, state: str | None, event: TaskEvent | None) -> TaskState:
    """`base` with `event` appended, then moved to `state` (either may be None)."""
    new = base
    if event is not None:
        new = new.with_event(event)
    if state is not None:
        new = new.with_state(state)
    return new


def _with_local(change: Callable[[LocalState], LocalState], current: _Snapshot) -> _Snapshot:
    """`current` with its LocalState replaced by `change(local)`, unless that is equal."""
    new = change(current.local)
    return current.replaced(current.state, current.local if new == current.local else new)


def _covers(saved: tuple[int, int], want: tuple[int, int]) -> bool:
    return saved[0] >= want[0] and saved[1] >= want[1]


class TaskStateCell:
    """Thread-safe. The task's published TaskState and LocalState and their persistence.

    Invariant (under `_lock`): `_saved` never exceeds `_current`'s versions, and the
    database holds, for each of the two entries, a version at least as new as
    `_saved`; `_writing` is True exactly while one thread (the writer) writes; `_round`
    is None unless a caller waits for that write, and the writer sets it when done.
    """

    _alloc_id = immutable()
    _name = immutable()
    _db = immutable()
    _on_change = immutable()

    _lock = immutable()
    _current = guarded("_lock")
    _saved = guarded("_lock")
    _writing = guarded("_lock")
    _round = guarded("_lock")
    _deferring = guarded("_lock")  # between defer_commit and settle_commit
    _deferred = guarded("_lock")  # a local state was queued meanwhile, not waited for

    def __init__(
        self,
        alloc_id: str,
        task_name: str,
        db: StateDB,
        initial: TaskState,
        on_change: Callable[[], None],
    ) -> None:
        self._alloc_id = alloc_id
        self._name = task_name
        self._db = db
        self._on_change = on_change
        self._lock = make_lock("TaskStateCell._lock")
        self._current = _Snapshot(initial, LocalState())
        self._saved = (0, 0)
        self._writing = False
        self._round: Event | None = None
        self._deferring = self._deferred = False

    # --- reading ------------------------------------------------------------------------

    def state(self) -> TaskState:
        with self._lock:
            return self._current.state

    def local(self) -> LocalState:
        with self._lock:
            return self._current.local

    def handle(self) -> TaskHandle | None:
        """The driver task attached now, if any."""
        return self.local().task_handle

    def snapshot(self) -> tuple[TaskState, LocalState]:
        """Both halves of one published version."""
        with self._lock:
            current = self._current
        return current.state, current.local

    @calls_out
    def stored(self) -> tuple[LocalState | None, TaskState | None]:
        """What the database holds for this task (None for a missing entry)."""
        return self._db.task_runner_state(self._alloc_id, self._name)

    # --- changing ---------------------------------------------------------------------

    @calls_out
    def publish(
        self,
        *,
        state: str | None = None,
        event: TaskEvent | None = None,
        handle: Any = KEEP,
        notify: bool = True,
    ) -> None:
        """Append `event`, move to `state`, attach `handle` (None detaches; KEEP leaves
        it), persist, and then notify unless `notify` is False. Nothing happens for no
        change."""

        def change(current: _Snapshot) -> _Snapshot:
            local = current.local if handle is KEEP else current.local.with_task_handle(handle)
            return current.replaced(_next_state(current.state, state, event), local)

        versions = self._swap(change)
        if versions is None:
            return
        self._persist(versions)
        if notify:
            self._on_change()

    @calls_out
    def publish_if(self, event: TaskEvent, when: Callable[[TaskState, LocalState], bool]) -> bool:
        """Append `event`, persist and notify if `when(state, local)` holds for the
        snapshot it is appended to; True if it was. The test and the append are one
        step: a change published meanwhile by another thread is tested again, so a
        caller that decided on an older snapshot cannot record on a newer one that no
        longer qualifies (e.g. a kill reason after the task's Killed event)."""

        def apply(current: _Snapshot) -> _Snapshot:
            if not when(current.state, current.local):
                return current
            return current.replaced(current.state.with_event(event), current.local)

        versions = self._swap(apply)
        if versions is None:
            return False
        self._persist(versions)
        self._on_change()
        return True

    @calls_out
    def record(self, event: TaskEvent) -> None:
        """Append `event` and notify without writing; the next write carries it."""

        def apply(current: _Snapshot) -> _Snapshot:
            return current.replaced(current.state.with_event(event), current.local)

        if self._swap(apply) is not None:
            self._on_change()

    @calls_out
    def update_local(self, change: Callable[[LocalState], LocalState]) -> None:
        """Replace the LocalState by `change(local)` and persist, unless it is equal."""
        versions = self._swap(partial(_with_local, change))
        if versions is not None:
            self._persist(versions)

    def note_local(self, change: Callable[[LocalState], LocalState]) -> None:
        """Replace the LocalState by `change(local)` without writing, unless it is
        equal; the next write carries it."""
        self._swap(partial(_with_local, change))

    def adopt(self, state: TaskState | None, local: LocalState | None) -> TaskState:
        """Take over a restored `state` and `local` (None keeps the current one) without
        writing them back; the current TaskState after that."""

        def apply(current: _Snapshot) -> _Snapshot:
            return current.replaced(
                current.state if state is None else state,
                current.local if local is None else local,
            )

        self._swap(apply)
        return self.state()

    @calls_out
    def persist_all(self) -> None:
        """Write both entries again, changed or not."""
        versions = self._swap(lambda current: current.bumped())
        assert versions is not None
        self._persist(versions)

    def _swap(self, change: Callable[[_Snapshot], _Snapshot]) -> tuple[int, int] | None:
        """Publish `change(current)`: built outside the write side so that readers are
        never held up by the building, swapped in only if nobody published meanwhile
        (else built again). Its versions, or None when it changed nothing."""
        while True:
            with self._lock:
                base = self._current
            new = change(base)
            if new.versions() == base.versions():
                return None
            with self._lock:
                if self._current is base:
                    self._current = new
                    return new.versions()

    # --- persistence --------------------------------------------------------------------

    def defer_commit(self) -> None:
        """Until `settle_commit`, a local state this cell writes (a new driver handle
        included) is queued without waiting for its commit, on a StateDB that can
        (`SQLiteStateDB.queue_task_local_state`); elsewhere nothing changes. For a
        thread that starts many tasks in a row: the task must not be reported running
        before `settle_commit` returns."""
        with self._lock:
            self._deferring = True

    @calls_out
    def settle_commit(self) -> None:
        """End `defer_commit`: return once what it left uncommitted is committed
        (`SQLiteStateDB.wait_committed`). A failure is logged, as a failed write is."""
        with self._lock:
            deferred = self._deferred
            self._deferring = self._deferred = False
        if deferred:
            self._wait_committed()

    @calls_out
    def _wait_committed(self) -> None:
        """Wait for the local state queued by a deferred write (`settle_commit`)."""
        try:
            self._db.wait_committed(self._alloc_id)  # type: ignore[attr-defined]
        except Exception as err:
            log.warning(
                "task %s/%s: persisting task state failed: %s", self._alloc_id[:8], self._name, err
            )

    @calls_out
    def _persist(self, want: tuple[int, int]) -> None:
        """Return once the database holds at least versions `want` (state, local)."""
        while True:
            with self._lock:
                if _covers(self._saved, want):
                    return
                lead = not self._writing
                if lead:
                    self._writing = True
                elif self._round is None:
                    self._round = Event()  # made by the first waiter: most rounds have none
                snapshot, saved, round_done = self._current, self._saved, self._round
                defer = self._deferring
            if lead:
                self._write(snapshot, saved, defer)
            else:
                assert round_done is not None
                round_done.wait()

    @calls_out
    def _write(self, snapshot: _Snapshot, saved: tuple[int, int], defer: bool = False) -> None:
        """The writer's round: write what is newer than `saved`, then end the round;
        with `defer`, the local state is only queued, where the StateDB can
        (`defer_commit`).

        The local state (which holds the driver handle) is written first: a crash
        between the two writes then leaves a handle beside an older task state, which a
        restore re-attaches to, never a "running" task state without the handle of
        its process, which a restore would start a second time."""
        queued = False
        try:
            if snapshot.local_version > saved[1]:
                queue = getattr(self._db, "queue_task_local_state", None) if defer else None
                if queue is not None:
                    queue(self._alloc_id, self._name, snapshot.local)
                    queued = True
                else:
                    self._db.put_task_local_state(self._alloc_id, self._name, snapshot.local)
            if snapshot.state_version > saved[0]:
                self._db.put_task_state(self._alloc_id, self._name, snapshot.state)
        except Exception as err:
            log.warning(
                "task %s/%s: persisting task state failed: %s", self._alloc_id[:8], self._name, err
            )
        finally:
            with self._lock:
                self._saved = (
                    max(self._saved[0], snapshot.state_version),
                    max(self._saved[1], snapshot.local_version),
                )
                self._writing = False
                # Settled meanwhile: nobody else will wait for this one.
                late = queued and not self._deferring
                self._deferred = self._deferred or (queued and not late)
                done, self._round = self._round, None
            if late:
                self._wait_committed()
            if done is not None:
                done.set()
