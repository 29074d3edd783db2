"""The writing side of the state DB crash test (`test_statedb_stress.py`): a fork server.

Run as ``python -m tests.stress.statedb_crash_child`` from the repository root. It
imports the package once, then for each line on stdin (JSON: ``db``, a file path, and
``seed``) forks a child that writes numbered task states to that file through a
SQLiteStateDB, round after round (one value per key, keys in a fixed order), and
after some rounds flushes and prints ``ack N``: every key now holds N or more. The
server prints ``pid P`` for each child and ``exit P STATUS`` once it is reaped; the
test kills the child with SIGKILL in between. Every line is one ``os.write`` (shorter
than PIPE_BUF), so lines of the server and of a dying child never interleave.

Threads: the server has none (so forking is safe); each child has its state DB's
writer. Locks: none of its own. Owner: the crash test starts and stops the server.
"""

from __future__ import annotations

import json
import os
import random
import sys
import traceback

from allocrunner.state import SQLiteStateDB
from allocrunner.structs import TaskState

ALLOC = "crash-alloc"
KEYS = [f"task-{k}" for k in range(4)]
ROUNDS = 200_000  # far more than a test waits for: the child is killed long before


def _say(line: str) -> None:
    os.write(1, f"{line}\n".encode())


def write_until_killed(path: str, seed: int) -> None:
    rng = random.Random(seed)
    db = SQLiteStateDB(path)
    for n in range(1, ROUNDS + 1):
        for task in KEYS:
            db.put_task_state(ALLOC, task, TaskState(restarts=n))
        if rng.random() < 0.5:  # other rounds stay queued when the kill comes
            db.flush()
            _say(f"ack {n}")
    db.close()


def _child(spec: dict[str, object]) -> None:
    code = 0
    try:
        write_until_killed(str(spec["db"]), int(str(spec["seed"])))
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def main() -> None:
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        spec = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(spec)
        _say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"exit {pid} {status}")


if __name__ == "__main__":
    main()
