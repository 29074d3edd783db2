"""SQLiteStateDB: the embedded, durable StateDB (one SQLite file under the data dir).

Layout. A ``meta`` table holds the schema version; an ``entries`` table holds one
row per key, the way Nomad's bolt buckets do::

    (alloc_id, task="",     kind="alloc")          the Allocation
    (alloc_id, task="",     kind="deploy_status")  its AllocDeploymentStatus
    (alloc_id, task=<name>, kind="task_state")     the task's TaskState
    (alloc_id, task=<name>, kind="local_state")    the task's LocalState

Values are JSON text: allocations and task states in Nomad's API shape (the
`allocrunner.jobspec` codec), local state through `LocalState.to_json`.

Durability. The database runs in WAL mode with ``synchronous=NORMAL``: every write
is its own transaction and survives a crash of the process; a power loss may roll
back the last few writes but never corrupts the file. Losing the newest writes on a
power loss is harmless here because a reboot also ends the tasks they describe.
Pass ``durable=True`` for ``synchronous=FULL`` (an fsync per write).

Concurrency. One connection is shared by every thread and used only under
"StateDB._lock"; encoding and decoding run outside it. Several processes may open
the same file (SQLite serialises them, waiting up to `busy_timeout` seconds), but
the write de-duplication remembers only this instance's own writes.

Threads: none of its own; any thread may call it. Locks: "StateDB._lock" guards the
connection, the de-duplication record, the ids of deleted allocations and the write
counters; the SQLite calls under it are the package's one documented lock-held I/O.
Owner: `Client` opens one at `ClientConfig.state_db_path()` unless the embedder passes
its own StateDB, and closes the one it opened at shutdown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from allocrunner._guarded import guarded_dict
from allocrunner._locking import calls_out, guarded, immutable, make_lock, requires
from allocrunner.errors import JobSpecError, StateDBError
from allocrunner.jobspec import (
    decode_alloc_state,
    decode_allocation,
    decode_task_state,
    encode_alloc_state,
    encode_allocation,
    encode_task_state,
)
from allocrunner.state.base import LocalState, WriteStats
from allocrunner.structs import Allocation, AllocDeploymentStatus, AllocState, TaskState
from allocrunner.structs.frozen import FrozenDict

__all__ = ["SCHEMA_VERSION", "SQLiteStateDB"]

log = logging.getLogger("allocrunner.state")

SCHEMA_VERSION = 1
"""The layout this build writes; a file with a higher version is refused."""

_ALLOC = "alloc"
_DEPLOY = "deploy_status"
_TASK_STATE = "task_state"
_LOCAL_STATE = "local_state"
_NO_TASK = ""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    alloc_id TEXT NOT NULL,
    task     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (alloc_id, task, kind)
) WITHOUT ROWID
"""

_Key = tuple[str, str]  # (task, kind) within one allocation


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _encode_deployment(status: AllocDeploymentStatus) -> Any:
    """The deployment status in Nomad's API shape (the codec's ``DeploymentStatus``)."""
    return encode_alloc_state(AllocState(deployment_status=status))["DeploymentStatus"]


def _decode_deployment(obj: Any) -> AllocDeploymentStatus:
    status = decode_alloc_state({"DeploymentStatus": obj}).deployment_status
    if status is None:
        raise ValueError("DeploymentStatus: expected an object, got null")
    return status


class SQLiteStateDB:
    """Thread-safe. A StateDB in one SQLite file at `path` (parent dirs are created).

    Raises StateDBError naming the file when it cannot be opened, is not a state
    database (corrupt, or another program's), or was written by a newer version.
    """

    # _lock guards: _conn, _last (a checked container, changed in place), _deleted,
    # _writes, _skipped, _dropped
    _lock = immutable()
    _conn = guarded("_lock")
    _last = immutable()
    _deleted = guarded("_lock")
    _writes = guarded("_lock")
    _skipped = guarded("_lock")
    _dropped = guarded("_lock")
    _path = immutable()

    @calls_out
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durable: bool = False,
        busy_timeout: float = 5.0,
    ) -> None:
        self._lock = make_lock("StateDB._lock")
        self._path = Path(path)
        # per allocation: key -> (last value written, digest of its encoding)
        self._last: dict[str, FrozenDict[_Key, tuple[object, bytes]]] = guarded_dict(self._lock)
        self._deleted: frozenset[str] = frozenset()
        self._writes = self._skipped = self._dropped = 0
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StateDBError(
                f"state db {self._path}: cannot create its directory: {err}"
            ) from err
        if self._path.is_dir():
            raise StateDBError(f"state db {self._path}: is a directory, not a database file")
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=busy_timeout,
                isolation_level=None,  # autocommit: each statement is one transaction
                check_same_thread=False,  # shared by threads, always under _lock
            )
        except sqlite3.Error as err:
            raise StateDBError(f"state db {self._path}: cannot open: {err}") from err
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("state db %s: WAL mode unavailable, using %s", self._path, mode)
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._init_schema(conn)
        except StateDBError:
            conn.close()
            raise
        except sqlite3.Error as err:
            conn.close()
            raise StateDBError(
                f"state db {self._path}: not a usable state database: {err}"
            ) from err
        self._conn: sqlite3.Connection | None = conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        """Create the tables of a new file, or check the version of an existing one."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {
                row[0]
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if "meta" not in tables:
                if tables:
                    raise StateDBError(
                        f"state db {self._path}: not an allocrunner state database "
                        f"(has tables {', '.join(sorted(tables))} but no meta table)"
                    )
                conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute(_SCHEMA)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("version", str(SCHEMA_VERSION)),
                        ("created", datetime.now(UTC).isoformat()),
                    ],
                )
            else:
                self._check_version(conn)
                conn.execute(_SCHEMA)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _check_version(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        if row is None:
            raise StateDBError(f"state db {self._path}: meta table has no schema version")
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise StateDBError(
                f"state db {self._path}: unreadable schema version {row[0]!r}"
            ) from None
        if version > SCHEMA_VERSION:
            raise StateDBError(
                f"state db {self._path}: schema version {version} was written by a newer "
                f"allocrunner (this one reads up to {SCHEMA_VERSION}); refusing to downgrade it"
            )
        if version < 1:
            raise StateDBError(f"state db {self._path}: invalid schema version {version}")

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    # --- helpers (lock held) -------------------------------------------------------------

    @requires("_lock")
    def _conn_locked(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StateDBError(f"state db {self._path} is closed")
        return conn

    @requires("_lock")
    def _forget_alloc_locked(self, alloc_id: str) -> None:
        self._last.pop(alloc_id, None)

    @requires("_lock")
    def _unchanged_locked(self, alloc_id: str, key: _Key, value: object) -> bool:
        """True when `value` equals the last value this instance wrote for the key
        (values are immutable and their comparison is pure, so it may run here)."""
        mine = self._last.get(alloc_id)
        last = None if mine is None else mine.get(key)
        return last is not None and (last[0] is value or last[0] == value)

    @requires("_lock")
    def _put_locked(
        self, alloc_id: str, key: _Key, value: object, text: str, digest: bytes
    ) -> None:
        """Write one entry unless its encoding equals the last one written for its key."""
        conn = self._conn_locked()
        mine = self._last.get(alloc_id)
        last = None if mine is None else mine.get(key)
        if last is not None and last[1] == digest:
            self._skipped += 1
            return
        # lock-held I/O: the shared connection must not interleave statements of
        # different threads, and the de-dup record must match what the file holds.
        self._execute_locked(
            conn,
            "INSERT OR REPLACE INTO entries (alloc_id, task, kind, value) VALUES (?, ?, ?, ?)",
            (alloc_id, *key, text),
        )
        self._last[alloc_id] = (mine or FrozenDict()).set(key, (value, digest))
        self._writes += 1

    @requires("_lock")
    def _delete_key_locked(self, alloc_id: str, key: _Key) -> None:
        conn = self._conn_locked()
        mine = self._last.get(alloc_id)
        # lock-held I/O: see _put_locked.
        cursor = self._execute_locked(
            conn,
            "DELETE FROM entries WHERE alloc_id = ? AND task = ? AND kind = ?",
            (alloc_id, *key),
        )
        if mine is not None and key in mine:
            self._last[alloc_id] = FrozenDict({k: v for k, v in mine.items() if k != key})
        if cursor.rowcount:
            self._writes += 1
        else:
            self._skipped += 1

    @requires("_lock")
    def _execute_locked(
        self, conn: sqlite3.Connection, sql: str, params: tuple[Any, ...] = ()
    ) -> sqlite3.Cursor:
        try:
            return conn.execute(sql, params)
        except sqlite3.Error as err:
            raise StateDBError(f"state db {self._path}: {err}") from err

    def _put(
        self,
        alloc_id: str,
        key: _Key,
        value: object,
        encode: Callable[[], Any],
        *,
        revive: bool = False,
    ) -> None:
        """Store `value` under (alloc_id, key). An equal value skips the encoding too;
        an entry of a deleted allocation is dropped unless `revive` (put_allocation)."""
        with self._lock:
            self._conn_locked()
            if alloc_id in self._deleted and not revive:
                self._dropped += 1
                return
            if self._unchanged_locked(alloc_id, key, value):
                self._skipped += 1
                return
        text = _dumps(encode())
        digest = _digest(text)
        with self._lock:
            self._conn_locked()
            if alloc_id in self._deleted:
                if not revive:
                    self._dropped += 1
                    return
                self._deleted = self._deleted - {alloc_id}
            self._put_locked(alloc_id, key, value, text, digest)

    # --- StateDB -----------------------------------------------------------------------

    @calls_out
    def put_allocation(self, alloc: Allocation) -> None:
        """Store (or replace) the allocation; re-adds an id deleted earlier."""
        if not isinstance(alloc, Allocation):
            raise TypeError(f"put_allocation: expected Allocation, got {type(alloc).__name__}")
        self._put(
            alloc.id, (_NO_TASK, _ALLOC), alloc, lambda: encode_allocation(alloc), revive=True
        )

    @calls_out
    def all_allocations(self) -> list[Allocation]:
        """Every stored allocation; one that cannot be decoded is logged and skipped."""
        with self._lock:
            conn = self._conn_locked()
            # lock-held I/O: see _put_locked.
            rows = self._execute_locked(
                conn,
                "SELECT alloc_id, value FROM entries WHERE task = ? AND kind = ? ORDER BY alloc_id",
                (_NO_TASK, _ALLOC),
            ).fetchall()
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
        """Remove the allocation and its entries; later task writes for it are dropped."""
        with self._lock:
            conn = self._conn_locked()
            # lock-held I/O: see _put_locked; the delete and the tombstone must be atomic
            # with respect to task writes, or a late write could land after the delete.
            self._execute_locked(conn, "DELETE FROM entries WHERE alloc_id = ?", (alloc_id,))
            self._forget_alloc_locked(alloc_id)
            self._deleted = self._deleted | {alloc_id}

    @calls_out
    def put_task_state(self, alloc_id: str, task: str, state: TaskState) -> None:
        """Store the server-visible state of one task."""
        if not isinstance(state, TaskState):
            raise TypeError(f"put_task_state: expected TaskState, got {type(state).__name__}")
        _check_task_name(task)
        self._put(alloc_id, (task, _TASK_STATE), state, lambda: encode_task_state(state))

    @calls_out
    def put_task_local_state(self, alloc_id: str, task: str, local: LocalState) -> None:
        """Store the client-only state of one task."""
        if not isinstance(local, LocalState):
            raise TypeError(
                f"put_task_local_state: expected LocalState, got {type(local).__name__}"
            )
        _check_task_name(task)
        self._put(alloc_id, (task, _LOCAL_STATE), local, local.to_json)

    @calls_out
    def task_runner_state(
        self, alloc_id: str, task: str
    ) -> tuple[LocalState | None, TaskState | None]:
        """The task's (local state, task state); each None when absent. An entry that
        cannot be decoded raises StateDBError naming it (restoring a task from a
        guess could run it twice)."""
        with self._lock:
            conn = self._conn_locked()
            # lock-held I/O: see _put_locked.
            rows = self._execute_locked(
                conn,
                "SELECT kind, value FROM entries WHERE alloc_id = ? AND task = ? "
                "AND kind IN (?, ?)",
                (alloc_id, task, _LOCAL_STATE, _TASK_STATE),
            ).fetchall()
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
            with self._lock:
                self._conn_locked()
                if alloc_id in self._deleted:
                    self._dropped += 1
                    return
                self._delete_key_locked(alloc_id, (_NO_TASK, _DEPLOY))
            return
        if not isinstance(status, AllocDeploymentStatus):
            raise TypeError(
                "put_deployment_status: expected AllocDeploymentStatus or None, "
                f"got {type(status).__name__}"
            )
        self._put(alloc_id, (_NO_TASK, _DEPLOY), status, lambda: _encode_deployment(status))

    @calls_out
    def deployment_status(self, alloc_id: str) -> AllocDeploymentStatus | None:
        """The stored deployment status, or None."""
        with self._lock:
            conn = self._conn_locked()
            # lock-held I/O: see _put_locked.
            row = self._execute_locked(
                conn,
                "SELECT value FROM entries WHERE alloc_id = ? AND task = ? AND kind = ?",
                (alloc_id, _NO_TASK, _DEPLOY),
            ).fetchone()
        if row is None:
            return None
        try:
            return _decode_deployment(json.loads(row[0]))
        except (ValueError, TypeError, JobSpecError) as err:
            raise StateDBError(
                f"state db {self._path}: deployment status of allocation {alloc_id} "
                f"cannot be decoded: {err}"
            ) from err

    def stats(self) -> WriteStats:
        """Counters of the writes since this instance opened the file."""
        with self._lock:
            return WriteStats(self._writes, self._skipped, self._dropped)

    @calls_out
    def close(self) -> None:
        """Close the file. Idempotent; later calls of other methods raise StateDBError."""
        with self._lock:
            conn = self._conn
            self._conn = None
            if conn is not None:
                # lock-held I/O: closing under the lock keeps a concurrent writer from
                # using a connection that is being closed.
                conn.close()

    def __repr__(self) -> str:
        return f"<SQLiteStateDB {self._path}>"


def _check_task_name(task: str) -> None:
    if not isinstance(task, str) or not task:
        raise ValueError(f"task: expected a non-empty task name, got {task!r}")
