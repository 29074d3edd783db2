"""What an `SQLiteStateDB` file holds, read by a connection of the test's own (not the
store's readers), for tests that check what is on disk at a given moment."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path


def handle_on_disk(path: Path, alloc_id: str, task: str) -> bool:
    """Whether the file at `path` holds a driver handle in the task's local state."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute(
            "SELECT value FROM entries WHERE alloc_id = ? AND task = ? AND kind = ?",
            (alloc_id, task, "local_state"),
        ).fetchone()
    finally:
        conn.close()
    return row is not None and json.loads(row[0])["task_handle"] is not None
