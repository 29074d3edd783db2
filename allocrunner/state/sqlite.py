"""SQLiteStateDB: the embedded, durable StateDB (one SQLite file under the data dir).

Layout. A ``meta`` table holds the schema version; an ``entries`` table holds one
row per key, the way Nomad's bolt buckets do::

    (alloc_id, task="",     kind="alloc")          the Allocation
    (alloc_id, task="",     kind="deploy_status")  its AllocDeploymentStatus
    (alloc_id, task=<name>, kind="task_state")     the task's TaskState
    (alloc_id, task=<name>, kind="local_state")    the task's LocalState

Values are JSON text: allocations and task states in Nomad's API shape (the
`allocrunner.jobspec` codec), local state through `LocalState.to_json`.

Writes. A caller encodes its value on its own thread and queues the record
(`sqlite_writer.WriteQueue`); the ``statedb-writer`` thread commits everything queued
in one transaction (group commit), the last write of each key winning; a batch
nobody waits on stays open a few milliseconds for more (`sqlite_writer.LINGER`). So a
put costs its caller the encoding and a few steps under a short lock, never a wait for
the file. `flush()` returns once everything queued before it is committed;
`delete_allocation` returns once the delete is, and so does a `put_task_local_state`
that records a new driver handle (the record whose loss would make a restore start
the task a second time). A caller that starts many tasks in a row and reports them
running together (`TaskStateCell.defer_commit`) queues each handle with
`queue_task_local_state` instead, and waits once, with `wait_committed`, before it
reports them: one transaction for all of them instead of one each.
`close()` commits what is queued, then closes.

Reads. Each read borrows a pooled read-only connection (`sqlite_file.ReadPool`) and
reads the last committed WAL snapshot, so it never waits for the writer's
transaction. A read sees its caller's own writes: it first waits until the writes
queued for the allocation it reads (for `all_allocations`, every write queued) are
committed; reads of allocations with nothing queued do not wait.

Durability. WAL with ``synchronous=NORMAL``: a committed transaction survives a crash
of the process; a power loss may roll back the last few but never corrupts the file.
Batches commit in queue order, so after a ``kill -9`` the file holds a prefix of the
writes, including everything a `flush()` acknowledged. ``durable=True`` selects
``synchronous=FULL`` (an fsync per transaction). A failed transaction is logged and
counted, and from then on every write, `flush()` and the first `close()` raise
StateDBError naming the file (a later commit would leave a gap, not a prefix).

Several processes may open the same file (SQLite serialises their writes, waiting up
to `busy_timeout` seconds), but the write de-duplication and the tombstones of
deleted allocations cover this instance's own writes only.

Threads: callers on any thread; ``statedb-writer`` (started by the first write, joined
by `close`). Locks: the write queue's "StateDB._lock" (see `sqlite_writer`); no I/O
runs under it. Owner: `Client` opens one at `ClientConfig.state_db_path()` unless the
embedder passes its own StateDB, and closes the one it opened at shutdown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from allocrunner._locking import calls_out, immutable
from allocrunner._sync import LatestValue
from allocrunner.errors import JobSpecError, StateDBError
from allocrunner.jobspec import (
    decode_alloc_state,
    decode_allocation,
    decode_task_state,
    encode_alloc_state,
    encode_allocation,
    encode_task_state,
)
from allocrunner.jobspec.codec import encode_allocation_without_job, encode_job
from allocrunner.state.base import LocalState, WriteStats
from allocrunner.state.sqlite_file import SCHEMA_VERSION, ReadPool, open_writer
from allocrunner.state.sqlite_writer import Enqueued, Key, WriteQueue
from allocrunner.structs import Allocation, AllocDeploymentStatus, AllocState, Job, TaskState

__all__ = ["SCHEMA_VERSION", "SQLiteStateDB"]

log = logging.getLogger("allocrunner.state")

T = TypeVar("T")

_ALLOC = "alloc"
_DEPLOY = "deploy_status"
_TASK_STATE = "task_state"
_LOCAL_STATE = "local_state"
_NO_TASK = ""


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _dumps(obj: Any) -> str:
    """Compact JSON text of `obj` (one encoder for every write: `json.dumps` with
    options builds a new one each time)."""
    return _ENCODER.encode(obj)


def _encode_deployment(status: AllocDeploymentStatus) -> Any:
    """The deployment status in Nomad's API shape (the codec's ``DeploymentStatus``)."""
    return encode_alloc_state(AllocState(deployment_status=status))["DeploymentStatus"]


def _decode_deployment(obj: Any) -> AllocDeploymentStatus:
    status = decode_alloc_state({"DeploymentStatus": obj}).deployment_status
    if status is None:
        raise ValueError("DeploymentStatus: expected an object, got null")
    return status


def _new_handle(local: LocalState, previous: object | None) -> bool:
    """True when `local` records a driver handle the previous local state did not."""
    if local.task_handle is None:
        return False
    return not isinstance(previous, LocalState) or previous.task_handle != local.task_handle


class SQLiteStateDB:
    """Thread-safe. A StateDB in one SQLite file at `path` (parent dirs are created).

    Raises StateDBError naming the file when it cannot be opened, is not a state
    database (corrupt, or another program's), or was written by a newer version.
    """

    _path = immutable()
    _queue = immutable()
    _readers = immutable()
    _last_job = immutable()  # LatestValue[(Job, its JSON text)]: the last job serialised

    @calls_out
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = False,
        busy_timeout: float = 5.0,
    ) -> None:
        self._path = Path(path)
        conn = open_writer(self._path, durable=durable, busy_timeout=busy_timeout)
        self._queue = WriteQueue(self._path, conn, join_timeout=max(30.0, 4 * busy_timeout))
        self._readers = ReadPool(self._path, busy_timeout)
        self._last_job: LatestValue[tuple[Job, str]] = LatestValue()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # --- helpers -------------------------------------------------------------------------

    @calls_out
    def _put(
        self,
        alloc_id: str,
        key: Key,
        value: object,
        text_of: Callable[[], str],
        *,
        revive: bool = False,
    ) -> Enqueued:
        """Queue `value`, whose JSON text `text_of()` makes, under (alloc_id, key):
        skipped when it is the very object last queued for the key (before it is
        encoded: `WriteQueue.skip_unchanged`) or its text equals that of the last one,
        dropped when its allocation was deleted, unless `revive` (put_allocation). One
        turn of the queue's lock per write: the check before the encoding reads a hint
        with no lock and takes the lock only for a value it finds unchanged. A locked
        check before every encoding took the lock a second time on every write, and
        with a thousand allocations writing at once that lock was where their threads
        queued."""
        if self._queue.skip_unchanged(alloc_id, key, value):
            return Enqueued(0, value)
        text = text_of()
        return self._queue.put(alloc_id, key, value, text, _digest(text), revive=revive)

    @calls_out
    def _read(self, alloc_id: str | None, query: Callable[[sqlite3.Connection], T]) -> T:
        """`query` on a read connection, once this caller's writes to `alloc_id` (to
        every allocation when None) are committed."""
        self._queue.settle(alloc_id)
        return self._readers.read(query)

    # --- StateDB -----------------------------------------------------------------------

    @calls_out
    def put_allocation(self, alloc: Allocation) -> None:
        """Store (or replace) the allocation; re-adds an id deleted earlier."""
        if not isinstance(alloc, Allocation):
            raise TypeError(f"put_allocation: expected Allocation, got {type(alloc).__name__}")
        self._put(
            alloc.id, (_NO_TASK, _ALLOC), alloc, lambda: self._allocation_text(alloc), revive=True
        )

    def _allocation_text(self, alloc: Allocation) -> str:
        """The allocation's JSON text: the text of its job, then its other fields. The
        job's text is reused when the last allocation written here had the same Job
        object (the allocations of one job version share it, and the job is two thirds
        of the text), so it is neither encoded nor serialised again."""
        job = alloc.job
        if job is None:
            return _dumps(encode_allocation(alloc))
        last = self._last_job.peek()
        if last is None or last[0] is not job:
            last = (job, _dumps(encode_job(job)))
            self._last_job.offer(last)
        rest = _dumps(encode_allocation_without_job(alloc))
        if rest == "{}":
            return f'{{"Job":{last[1]}}}'
        return f'{{"Job":{last[1]},{rest[1:]}'

    @calls_out
    def all_allocations(self) -> list[Allocation]:
        """Every stored allocation; one that cannot be decoded is logged and skipped."""
        rows = self._read(
            None,
            lambda conn: conn.execute(
                "SELECT alloc_id, value FROM entries WHERE task = ? AND kind = ? ORDER BY alloc_id",
                (_NO_TASK, _ALLOC),
            ).fetchall(),
        )
        allocs: list[Allocation] = []
        for alloc_id, text in rows:
            try:
                allocs.append(decode_allocation(json.loads(text)))
            except (ValueError, TypeError, KeyError, JobSpecError) as err:
                log.error(
                    "state db %s: skipping allocation %s that cannot be decoded: %s",
                    self._path,
                    alloc_id,
                    err,
                )
        return allocs

    @calls_out
    def delete_allocation(self, alloc_id: str) -> None:
        """Remove the allocation and its entries; returns once that (and every write
        queued before it) is committed. Later task writes for it are dropped."""
        self._queue.delete_alloc(alloc_id)

    @calls_out
    def put_task_state(self, alloc_id: str, task: str, state: TaskState) -> None:
        """Store the server-visible state of one task."""
        if not isinstance(state, TaskState):
            raise TypeError(f"put_task_state: expected TaskState, got {type(state).__name__}")
        _check_task_name(task)
        self._put(alloc_id, (task, _TASK_STATE), state, lambda: _dumps(encode_task_state(state)))

    @calls_out
    def put_task_local_state(self, alloc_id: str, task: str, local: LocalState) -> None:
        """Store the client-only state of one task. One that records a new driver
        handle returns once committed: a restore must never miss the handle of a
        process that was started (it would start the task a second time)."""
        queued = self._queue_local(alloc_id, task, local)
        if queued.seq and _new_handle(local, queued.previous):
            self._queue.wait_for(queued.seq)

    @calls_out
    def queue_task_local_state(self, alloc_id: str, task: str, local: LocalState) -> None:
        """`put_task_local_state` that never waits, a new driver handle included: the
        caller must call `wait_committed` before it reports the task running (or
        anything else a restore must agree with)."""
        self._queue_local(alloc_id, task, local)

    def _queue_local(self, alloc_id: str, task: str, local: LocalState) -> Enqueued:
        if not isinstance(local, LocalState):
            raise TypeError(
                f"put_task_local_state: expected LocalState, got {type(local).__name__}"
            )
        _check_task_name(task)
        return self._put(alloc_id, (task, _LOCAL_STATE), local, lambda: _dumps(local.to_json()))

    @calls_out
    def wait_committed(self, alloc_id: str) -> None:
        """Return once every write queued so far for `alloc_id` is committed (with
        whatever else is queued: after the first of many, the others return at once)."""
        self._queue.settle(alloc_id)

    @calls_out
    def task_runner_state(
        self, alloc_id: str, task: str
    ) -> tuple[LocalState | None, TaskState | None]:
        """The task's (local state, task state); each None when absent. An entry that
        cannot be decoded raises StateDBError naming it (restoring a task from a
        guess could run it twice)."""
        rows = self._read(
            alloc_id,
            lambda conn: conn.execute(
                "SELECT kind, value FROM entries WHERE alloc_id = ? AND task = ? "
                "AND kind IN (?, ?)",
                (alloc_id, task, _LOCAL_STATE, _TASK_STATE),
            ).fetchall(),
        )
        local: LocalState | None = None
        state: TaskState | None = None
        for kind, text in rows:
            try:
                if kind == _LOCAL_STATE:
                    local = LocalState.from_json(json.loads(text))
                else:
                    state = decode_task_state(json.loads(text))
            except (ValueError, TypeError, KeyError, JobSpecError) as err:
                raise StateDBError(
                    f"state db {self._path}: {kind} of task {task!r} in allocation "
                    f"{alloc_id} cannot be decoded: {err}"
                ) from err
        return local, state

    @calls_out
    def put_deployment_status(self, alloc_id: str, status: AllocDeploymentStatus | None) -> None:
        """Store the deployment status; None removes it."""
        if status is None:
            self._queue.delete_key(alloc_id, (_NO_TASK, _DEPLOY))
            return
        if not isinstance(status, AllocDeploymentStatus):
            raise TypeError(
                "put_deployment_status: expected AllocDeploymentStatus or None, "
                f"got {type(status).__name__}"
            )
        self._put(
            alloc_id, (_NO_TASK, _DEPLOY), status, lambda: _dumps(_encode_deployment(status))
        )

    @calls_out
    def deployment_status(self, alloc_id: str) -> AllocDeploymentStatus | None:
        """The stored deployment status, or None."""
        rows = self._read(
            alloc_id,
            # fetchall: a statement left unfinished would pin its connection's snapshot
            lambda conn: conn.execute(
                "SELECT value FROM entries WHERE alloc_id = ? AND task = ? AND kind = ?",
                (alloc_id, _NO_TASK, _DEPLOY),
            ).fetchall(),
        )
        if not rows:
            return None
        try:
            return _decode_deployment(json.loads(rows[0][0]))
        except (ValueError, TypeError, JobSpecError) as err:
            raise StateDBError(
                f"state db {self._path}: deployment status of allocation {alloc_id} "
                f"cannot be decoded: {err}"
            ) from err

    def stats(self) -> WriteStats:
        """Counters of the writes since this instance opened the file (`commits`,
        `coalesced` and `failed` as far as the writer thread got)."""
        return self._queue.stats()

    @calls_out
    def flush(self) -> None:
        """Return once every write queued before the call is committed; StateDBError
        naming the file if a write failed (or once closed)."""
        self._queue.flush()

    @calls_out
    def close(self) -> None:
        """Commit what is queued, stop the writer, close the file. Idempotent; later
        calls of other methods raise StateDBError. The first call raises StateDBError
        if a write failed (the file is closed all the same)."""
        try:
            self._queue.close()
        finally:
            self._readers.close()

    def __repr__(self) -> str:
        return f"<SQLiteStateDB {self._path}>"


def _check_task_name(task: str) -> None:
    if not isinstance(task, str) or not task:
        raise ValueError(f"task: expected a non-empty task name, got {task!r}")
