"""The write side of SQLiteStateDB: a queue of encoded records and the one thread that
commits them in groups.

Callers hand in records already encoded on their own thread; `WriteQueue` decides under
its lock whether each one is written (the de-duplication against the last value queued
for its key, the tombstones of deleted allocations, the counters), gives it the next
sequence number and queues it. That is all a write costs its caller. The
``statedb-writer`` thread takes everything queued, keeps the last record of each key
(an allocation delete drops the earlier records of that allocation), applies the batch
in one transaction and publishes the highest sequence number committed; `wait_for`
returns once a given number is committed. Batches commit in queue order, each
atomically, so the file always holds a prefix of the queue.

Group commit. A batch nobody waits on is held open for up to `LINGER` after its first
record was queued, so that the records of the next moments join it: a thousand
allocations starting at once write three records each, and one transaction per
record or two costs the writer several times what their rows do. A caller that waits
(`flush`, `settle` before a read, `delete_alloc`, the commit of a new driver handle, a
queue over `MAX_PENDING`) has the open batch committed at once; so does a batch of
`LINGER_MAX` records, and `close`. So a write nobody waits for reaches the file within
`LINGER` (a crash may lose it either way), and nobody who waits waits for the window.

A failed transaction is rolled back, logged and counted, and turns the queue failed for
good: committing later batches would leave a gap instead of a prefix. Every later
write, wait and the first `close` raise StateDBError naming the file.

Threads: callers on any thread; ``statedb-writer``, started by the first queued record
and joined by `close`, owns the write connection. Locks: "StateDB._lock" guards the
queued records (a checked list) and when the oldest of them was queued, the de-dup
record (a checked dict per allocation, (task, kind) -> last value and digest queued, in
a checked dict by allocation id, so a delete drops an allocation's record in one step
however many allocations there are), the pending sequence per allocation (a checked
dict), the tombstones, the sequence numbers, the flush waiters, whether the writer
lingers, the counters, the failure and the started / closed / exited flags. It is held
for bookkeeping only: no I/O, wait or callout runs under it (kicks and wakes are
notify-only).

The one read without the lock: `skip_unchanged` looks up the last value queued for a
key in a hint map (`_Hints`, written only under the lock, beside the de-dup record) to
tell, before anything is encoded, whether the value put is that very object again. Only
then does it take the lock, to confirm and count the skip; any other value is encoded
and queued by `put`, which takes the lock once, as before. So a write of an unchanged
value costs a lock turn instead of its encoding, and a changed write pays one dict
lookup more. The GIL orders the plain dict read (`_GIL`); without one no hint is read.

Owner: `SQLiteStateDB` builds one over its write connection and is its only caller.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from allocrunner._guarded import guarded_dict, guarded_list
from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires, thread_safe
from allocrunner._rwlock import _GIL  # the GIL orders a plain read of the hints
from allocrunner._sync import Event, Kick, ThreadGroup, Waiter
from allocrunner.errors import StateDBError
from allocrunner.state.base import WriteStats

__all__ = ["WRITER_THREAD", "Enqueued", "Key", "Plan", "Record", "WriteQueue", "plan_batch"]

log = logging.getLogger("allocrunner.state")

WRITER_THREAD = "statedb-writer"

MAX_PENDING = 10_000
"""A write that finds more records than this uncommitted waits for the writer to catch
up, so a stalled disk bounds the memory the queue holds."""

LINGER = 0.005
"""Seconds a batch nobody waits on stays open for more records (group commit; module
docstring): the most a write waits to reach the file when nobody asks for it sooner."""

LINGER_MAX = 512
"""A batch of this many records is committed at once, lingering or not."""

PUT = "put"
DELETE_KEY = "delete_key"
DELETE_ALLOC = "delete_alloc"

Key = tuple[str, str]  # (task, kind) within one allocation


class Record(NamedTuple):
    """Immutable. One queued write: an entry put (`text` is its encoding), an entry
    deleted, or every entry of an allocation deleted."""

    seq: int
    op: str
    alloc_id: str
    task: str = ""
    kind: str = ""
    text: str = ""


class Plan(NamedTuple):
    """Immutable. What one batch does to the file: allocations deleted first, then the
    last put or delete of each key; `coalesced` records were superseded in the batch."""

    deleted_allocs: tuple[str, ...]
    puts: tuple[tuple[str, str, str, str], ...]
    deleted_keys: tuple[tuple[str, str, str], ...]
    coalesced: int


class Enqueued(NamedTuple):
    """Immutable. What became of a put: its sequence number (0 when it was skipped or
    dropped) and the value queued before it for the same key (None if unknown)."""

    seq: int
    previous: object | None


NOT_QUEUED = Enqueued(0, None)


class _Last(NamedTuple):
    """Immutable. The last value queued for a key and the digest of its encoding; a
    value of None means the key was deleted."""

    value: object | None
    digest: bytes


_ABSENT = _Last(None, b"")


@thread_safe
class _Hints:
    """Thread-safe. The last value queued for each key of each allocation, changed only
    by its `WriteQueue` under that queue's lock and read with no lock (module
    docstring): the same values as the de-dup record, in one plain map."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[tuple[str, str, str], object] = {}

    def get(self, alloc_id: str, key: Key) -> object | None:
        """The last value queued for the key, or None; a plain read, valid under the
        GIL only."""
        return self._values.get((alloc_id, key[0], key[1]))

    def remember(self, alloc_id: str, key: Key, value: object) -> None:
        """Under the queue's lock: `value` was queued for the key."""
        self._values[(alloc_id, key[0], key[1])] = value

    def forget(self, alloc_id: str, keys: Iterable[Key]) -> None:
        """Under the queue's lock: the keys were deleted."""
        for key in keys:
            self._values.pop((alloc_id, key[0], key[1]), None)


def plan_batch(batch: Sequence[Record]) -> Plan:
    """The batch reduced to its effect. A delete of an allocation drops the earlier
    records of that allocation, so every record left for it comes after its last
    delete: running the deletes first and then the key writes is the batch's effect."""
    latest: dict[tuple[str, str, str], Record] = {}
    keys_of: dict[str, list[tuple[str, str, str]]] = {}
    deleted: dict[str, None] = {}
    coalesced = 0
    for record in batch:
        if record.op == DELETE_ALLOC:
            for key in keys_of.pop(record.alloc_id, ()):
                del latest[key]
                coalesced += 1
            deleted[record.alloc_id] = None
            continue
        key = (record.alloc_id, record.task, record.kind)
        if key in latest:
            coalesced += 1
        else:
            keys_of.setdefault(record.alloc_id, []).append(key)
        latest[key] = record
    puts = tuple((r.alloc_id, r.task, r.kind, r.text) for r in latest.values() if r.op == PUT)
    removed = tuple((r.alloc_id, r.task, r.kind) for r in latest.values() if r.op == DELETE_KEY)
    return Plan(tuple(deleted), puts, removed, coalesced)


class WriteQueue:
    """Thread-safe. Queues encoded writes for one file and commits them on its own
    thread, many per transaction."""

    _lock = immutable()
    _path = immutable()
    _conn = immutable()  # the writer thread's (close() uses it only if none started)
    _join_timeout = immutable()
    _kick = immutable()
    _exited_event = immutable()
    _threads = immutable()
    _records = immutable()
    _last = immutable()
    _hints = immutable()
    _pending = immutable()
    _deleted = guarded("_lock")
    _enqueued = guarded("_lock")
    _committed = guarded("_lock")
    _waiters = guarded("_lock")
    _opened_at = guarded("_lock")  # monotonic time the oldest queued record came
    _lingering = guarded("_lock")  # the writer holds the batch open (`_take`)
    _writes = guarded("_lock")
    _skipped = guarded("_lock")
    _dropped = guarded("_lock")
    _commits = guarded("_lock")
    _coalesced = guarded("_lock")
    _failed = guarded("_lock")
    _failure = guarded("_lock")
    _started = guarded("_lock")
    _closed = guarded("_lock")
    _exited = guarded("_lock")

    def __init__(self, path: Path, conn: sqlite3.Connection, *, join_timeout: float) -> None:
        self._lock = make_lock("StateDB._lock")
        self._path = path
        self._conn = conn
        self._join_timeout = join_timeout
        self._kick = Kick()
        self._exited_event = Event()
        self._threads = ThreadGroup("statedb")
        self._records: list[Record] = guarded_list(self._lock)
        self._last: dict[str, dict[Key, _Last]] = guarded_dict(self._lock)
        self._hints = _Hints()
        self._pending: dict[str, int] = guarded_dict(self._lock)
        self._deleted: frozenset[str] = frozenset()
        self._enqueued = self._committed = 0
        self._waiters: tuple[tuple[int, Waiter], ...] = ()
        self._opened_at = 0.0
        self._lingering = False
        self._writes = self._skipped = self._dropped = 0
        self._commits = self._coalesced = self._failed = 0
        self._failure: str | None = None
        self._started = self._closed = self._exited = False

    # --- callers: queueing ------------------------------------------------------------

    @requires("_lock")
    def _check_usable_locked(self) -> None:
        if self._closed:
            raise StateDBError(f"state db {self._path} is closed")
        if self._failure is not None:
            raise StateDBError(self._failure)

    @requires("_lock")
    def _append_locked(self, op: str, alloc_id: str, key: Key = ("", ""), text: str = "") -> int:
        """Queue a record under the next sequence number, and return that number."""
        self._enqueued += 1
        seq = self._enqueued
        queued = len(self._records)
        if not queued:  # the writer waits untimed only after finding the queue empty
            self._opened_at = time.monotonic()
            self._kick.kick()
        elif queued + 1 == LINGER_MAX:  # a lingering writer commits it now
            self._kick.kick()
        self._records.append(Record(seq, op, alloc_id, key[0], key[1], text))
        self._pending[alloc_id] = seq
        return seq

    @requires("_lock")
    def _claim_start_locked(self) -> bool:
        if self._started:
            return False
        self._started = True
        return True

    @requires("_lock")
    def _last_locked(self, alloc_id: str, key: Key) -> _Last | None:
        """The last value queued for (alloc_id, key), None if none is known."""
        keys = self._last.get(alloc_id)
        return None if keys is None else keys.get(key)

    @requires("_lock")
    def _keys_locked(self, alloc_id: str) -> dict[Key, _Last]:
        """The de-dup record of `alloc_id`, made on its first write."""
        keys = self._last.get(alloc_id)
        if keys is None:
            keys = self._last[alloc_id] = guarded_dict(self._lock)
        return keys

    @calls_out
    def put(
        self, alloc_id: str, key: Key, value: object, text: str, digest: bytes, *, revive: bool
    ) -> Enqueued:
        """Queue `text` as the entry (alloc_id, key), unless the allocation was deleted
        (dropped; `revive` lifts the tombstone instead) or the digest equals the last
        one queued for the key (skipped)."""
        # The hot path of every write: the lookups of `_last_locked` and `_keys_locked`
        # and the start claim are spelled out here, one call each fewer.
        with self._lock:
            if self._closed or self._failure is not None:
                self._check_usable_locked()
            if alloc_id in self._deleted:
                if not revive:
                    self._dropped += 1
                    return NOT_QUEUED
                self._deleted = self._deleted - {alloc_id}
            keys = self._last.get(alloc_id)
            last = None if keys is None else keys.get(key)
            previous = None if last is None else last.value
            if last is not None and last.digest == digest:
                self._skipped += 1
                return Enqueued(0, previous)
            seq = self._append_locked(PUT, alloc_id, key, text)
            if keys is None:
                keys = self._keys_locked(alloc_id)
            keys[key] = _Last(value, digest)
            self._hints.remember(alloc_id, key, value)
            self._writes += 1
            start = not self._started
            self._started = True
            lag = seq - self._committed
        if start or lag > MAX_PENDING:
            self._after_append(start, seq, lag)
        return Enqueued(seq, previous)

    def skip_unchanged(self, alloc_id: str, key: Key, value: object) -> bool:
        """True, and counted as skipped, if `value` is the very object last queued for
        (alloc_id, key): nothing need be encoded or queued. False otherwise (the caller
        encodes it and calls `put`, which de-duplicates an equal value by its digest).
        Raises as `put` does once the queue is closed or failed."""
        if not _GIL or self._hints.get(alloc_id, key) is not value:
            return False
        with self._lock:
            self._check_usable_locked()
            last = self._last_locked(alloc_id, key)
            if alloc_id in self._deleted or last is None or last.value is not value:
                return False
            self._skipped += 1
            return True

    @calls_out
    def delete_key(self, alloc_id: str, key: Key) -> None:
        """Queue the removal of one entry; skipped when it is known to be absent."""
        with self._lock:
            self._check_usable_locked()
            if alloc_id in self._deleted:
                self._dropped += 1
                return
            if self._last_locked(alloc_id, key) is _ABSENT:
                self._skipped += 1
                return
            seq = self._append_locked(DELETE_KEY, alloc_id, key)
            self._keys_locked(alloc_id)[key] = _ABSENT
            self._hints.forget(alloc_id, (key,))
            self._writes += 1
            start = self._claim_start_locked()
            lag = seq - self._committed
        self._after_append(start, seq, lag)

    @calls_out
    def delete_alloc(self, alloc_id: str) -> None:
        """Tombstone the allocation at once (later writes of it are dropped), queue the
        removal of its entries and return once that is committed."""
        with self._lock:
            self._check_usable_locked()
            self._deleted = self._deleted | {alloc_id}
            keys = self._last.pop(alloc_id, None)
            if keys is not None:
                self._hints.forget(alloc_id, list(keys))
            seq = self._append_locked(DELETE_ALLOC, alloc_id)
            start = self._claim_start_locked()
        self._after_append(start, seq, 0)
        self.wait_for(seq)

    @calls_out
    def _after_append(self, start: bool, seq: int, lag: int) -> None:
        if start:
            self._start_writer()
        if lag > MAX_PENDING:
            self.wait_for(seq - MAX_PENDING)

    @calls_out
    def _start_writer(self) -> None:
        try:
            self._threads.spawn(WRITER_THREAD, self._run)
        except BaseException as err:
            self._fail(f"state db {self._path}: cannot start its writer: {err}", 0)
            self._exit()
            raise StateDBError(f"state db {self._path}: cannot start its writer: {err}") from err

    # --- callers: waiting ---------------------------------------------------------------

    @calls_out
    def flush(self) -> None:
        """Return once every record queued before the call is committed."""
        with self._lock:
            self._check_usable_locked()
            target = self._enqueued
        self.wait_for(target)

    @calls_out
    def settle(self, alloc_id: str | None) -> None:
        """Return once the records queued so far for `alloc_id` (for every allocation
        when None) are committed: what a read must wait for to see its own writes."""
        with self._lock:
            if self._closed:
                raise StateDBError(f"state db {self._path} is closed")
            target = self._enqueued if alloc_id is None else self._pending.get(alloc_id, 0)
        self.wait_for(target)

    @calls_out
    def wait_for(self, seq: int) -> None:
        """Return once record `seq` is committed; StateDBError if it never will be. A
        lingering batch is committed at once (module docstring)."""
        if seq <= 0:
            return
        while True:
            waiter = Waiter()
            with self._lock:
                if self._committed >= seq:
                    return
                if self._failure is not None:
                    raise StateDBError(self._failure)
                if self._exited:
                    raise StateDBError(f"state db {self._path}: its writer has stopped")
                self._waiters = (*self._waiters, (seq, waiter))
                cut_short = self._lingering
            if cut_short:
                self._kick.kick()
            waiter.wait()

    def stats(self) -> WriteStats:
        """The counters; `commits`, `coalesced` and `failed` as far as the writer got."""
        with self._lock:
            return WriteStats(
                writes=self._writes,
                skipped=self._skipped,
                dropped=self._dropped,
                commits=self._commits,
                coalesced=self._coalesced,
                failed=self._failed,
            )

    @calls_out
    def close(self) -> None:
        """Refuse new records, let the writer commit what is queued and stop, join it.
        Every call waits for that; the first raises the failure, if any."""
        with self._lock:
            first = not self._closed
            self._closed = True
            started = self._started
        self._kick.kick()
        if started:
            if not self._exited_event.wait(self._join_timeout):
                raise StateDBError(
                    f"state db {self._path}: its writer did not finish within "
                    f"{self._join_timeout:.0f} s"
                )
            self._threads.join(self._join_timeout)
        elif first:
            self._conn.close()
        if first:
            with self._lock:
                failure = self._failure
            if failure is not None:
                raise StateDBError(failure)

    # --- the writer thread --------------------------------------------------------------

    @calls_out
    def _run(self) -> None:
        try:
            while True:
                batch, stop, linger = self._take()
                if batch:
                    self._write(batch)
                elif stop:
                    return
                else:
                    self._kick.wait(linger)
        except Exception as err:  # a bug here must not leave flushers waiting forever
            log.exception("state db %s: writer failed", self._path)
            self._fail(f"state db {self._path}: writer failed: {err!r}", 0)
        finally:
            self._conn.close()
            self._exit()

    def _take(self) -> tuple[tuple[Record, ...], bool, float | None]:
        """Everything queued, whether the queue is closed, and how long to wait for a
        kick before looking again when nothing is taken (None: until kicked). A batch
        nobody waits on is left queued while it lingers (module docstring). Once
        failed, what is queued is counted lost instead."""
        with self._lock:
            queued = len(self._records)
            if (
                queued
                and not self._waiters
                and not self._closed
                and self._failure is None
                and queued < LINGER_MAX
            ):
                left = self._opened_at + LINGER - time.monotonic()
                if left > 0:
                    self._lingering = True
                    return (), False, left
            self._lingering = False
            batch = tuple(self._records)
            self._records.clear()
            if self._failure is not None and batch:
                self._failed += len(batch)
                batch = ()
            return batch, self._closed, None

    @calls_out
    def _write(self, batch: tuple[Record, ...]) -> None:
        plan = plan_batch(batch)
        try:
            self._apply(plan)
        except sqlite3.Error as err:
            self._rollback()
            log.error("state db %s: writing %d records failed: %s", self._path, len(batch), err)
            self._fail(f"state db {self._path}: write failed: {err}", len(batch))
            return
        self._published(batch, plan.coalesced)

    @calls_out
    def _apply(self, plan: Plan) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "DELETE FROM entries WHERE alloc_id = ?", [(a,) for a in plan.deleted_allocs]
        )
        conn.executemany(
            "INSERT OR REPLACE INTO entries (alloc_id, task, kind, value) VALUES (?, ?, ?, ?)",
            plan.puts,
        )
        conn.executemany(
            "DELETE FROM entries WHERE alloc_id = ? AND task = ? AND kind = ?", plan.deleted_keys
        )
        self._commit()

    @calls_out
    def _commit(self) -> None:
        """End the batch's transaction (its own step, so a test can hold the writer with
        a transaction open)."""
        self._conn.execute("COMMIT")

    @calls_out
    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error as err:
            log.error("state db %s: rollback failed: %s", self._path, err)

    def _published(self, batch: tuple[Record, ...], coalesced: int) -> None:
        """Publish the commit of `batch` and wake the waiters it satisfies."""
        last = batch[-1].seq
        allocs = {record.alloc_id for record in batch}
        with self._lock:
            self._committed = last
            self._commits += 1
            self._coalesced += coalesced
            for alloc_id in allocs:
                if self._pending.get(alloc_id, 0) <= last:
                    self._pending.pop(alloc_id, None)
            ready = tuple(w for seq, w in self._waiters if seq <= last)
            if ready:
                self._waiters = tuple((seq, w) for seq, w in self._waiters if seq > last)
        for waiter in ready:
            waiter.wake()

    def _fail(self, failure: str, lost: int) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = failure
            self._failed += lost
            waiters, self._waiters = self._waiters, ()
        for _, waiter in waiters:
            waiter.wake()

    def _exit(self) -> None:
        with self._lock:
            self._exited = True
            waiters, self._waiters = self._waiters, ()
        for _, waiter in waiters:
            waiter.wake()
        self._exited_event.set()
