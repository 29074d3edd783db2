"""The SQLite file under a SQLiteStateDB: opening and checking it, and its read pool.

`open_writer` opens the one connection that writes (WAL, the requested ``synchronous``
level, the schema created or its version checked); `ReadPool` hands out read-only
connections, one per reading thread at a time, so reads run on WAL snapshots and
never wait for the writer's transaction.

Threads: any thread may read through the pool; a borrowed connection is used by one
thread at a time. Locks: none declared; the pool is a `Fifo` of free connections and
an `Event` that says it is closed (their private leaf mutexes are never held across
anything). Owner: `SQLiteStateDB` opens the writer connection and builds the pool; it
closes the pool at `close()`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from allocrunner._locking import immutable
from allocrunner._sync import Event, Fifo
from allocrunner.errors import StateDBError

__all__ = ["SCHEMA_VERSION", "ReadPool", "open_writer"]

log = logging.getLogger("allocrunner.state")

SCHEMA_VERSION = 1
"""The layout this build writes; a file with a higher version is refused."""

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    alloc_id TEXT NOT NULL,
    task     TEXT NOT NULL,
    kind     TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (alloc_id, task, kind)
) WITHOUT ROWID
"""


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    return sqlite3.connect(
        path,
        timeout=busy_timeout,
        isolation_level=None,  # transactions are explicit
        check_same_thread=False,  # handed between threads, used by one at a time
    )


def open_writer(path: Path, *, durable: bool, busy_timeout: float) -> sqlite3.Connection:
    """The write connection of the state database at `path` (parent dirs created), its
    schema ready. StateDBError naming the file when it cannot be used."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StateDBError(f"state db {path}: cannot create its directory: {err}") from err
    if path.is_dir():
        raise StateDBError(f"state db {path}: is a directory, not a database file")
    try:
        conn = _connect(path, busy_timeout)
    except sqlite3.Error as err:
        raise StateDBError(f"state db {path}: cannot open: {err}") from err
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("state db %s: WAL mode unavailable, using %s", path, mode)
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        _init_schema(conn, path)
    except StateDBError:
        conn.close()
        raise
    except sqlite3.Error as err:
        conn.close()
        raise StateDBError(f"state db {path}: not a usable state database: {err}") from err
    return conn


def _init_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables of a new file, or check the version of an existing one."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "meta" not in tables:
            if tables:
                raise StateDBError(
                    f"state db {path}: not an allocrunner state database "
                    f"(has tables {', '.join(sorted(tables))} but no meta table)"
                )
            conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(_SCHEMA)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("version", str(SCHEMA_VERSION)), ("created", datetime.now(UTC).isoformat())],
            )
        else:
            _check_version(conn, path)
            conn.execute(_SCHEMA)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _check_version(conn: sqlite3.Connection, path: Path) -> None:
    row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    if row is None:
        raise StateDBError(f"state db {path}: meta table has no schema version")
    try:
        version = int(row[0])
    except (TypeError, ValueError):
        raise StateDBError(f"state db {path}: unreadable schema version {row[0]!r}") from None
    if version > SCHEMA_VERSION:
        raise StateDBError(
            f"state db {path}: schema version {version} was written by a newer "
            f"allocrunner (this one reads up to {SCHEMA_VERSION}); refusing to downgrade it"
        )
    if version < 1:
        raise StateDBError(f"state db {path}: invalid schema version {version}")


class ReadPool:
    """Thread-safe. Read-only connections to one file, lent to one thread at a time.

    A connection is opened when no free one is left, so the pool holds at most as many
    as threads ever read at once. `close` closes the free ones; one lent out at that
    moment is closed by its borrower when the read ends.
    """

    _path = immutable()
    _busy_timeout = immutable()
    _free = immutable()
    _closed = immutable()

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._free: Fifo[sqlite3.Connection] = Fifo()
        self._closed = Event()

    def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """`query(conn)` on a pooled connection; StateDBError naming the file when it
        fails or the pool is closed."""
        conn = self._borrow()
        try:
            result = query(conn)
        except sqlite3.Error as err:
            conn.close()  # a connection in an unknown state is not lent again
            raise StateDBError(f"state db {self._path}: {err}") from err
        except BaseException:
            conn.close()
            raise
        self._give_back(conn)
        return result

    def _borrow(self) -> sqlite3.Connection:
        if self._closed.is_set():
            raise StateDBError(f"state db {self._path} is closed")
        conn = self._free.take()
        if conn is not None:
            return conn
        try:
            conn = _connect(self._path, self._busy_timeout)
            conn.execute("PRAGMA query_only=ON")
        except sqlite3.Error as err:
            raise StateDBError(f"state db {self._path}: cannot open for reading: {err}") from err
        return conn

    def _give_back(self, conn: sqlite3.Connection) -> None:
        self._free.put(conn)
        if self._closed.is_set():  # closed meanwhile: what close() drained missed this one
            self._close_free()

    def close(self) -> None:
        """Close the free connections and refuse to lend more. Idempotent."""
        self._closed.set()
        self._close_free()

    def _close_free(self) -> None:
        for conn in self._free.drain():
            conn.close()
