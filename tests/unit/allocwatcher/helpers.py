"""Shared pieces of the prev-alloc watcher tests: real alloc dirs with known content,
a stand-in for a previous runner built on a real broadcaster, and a thread runner
that reports how a blocking call ended."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

import attrs

from allocrunner._sync import ThreadGroup
from allocrunner.allocdir import AllocDir
from allocrunner.broadcaster import AllocBroadcaster, AllocListener
from allocrunner.structs import (
    CLIENT_COMPLETE,
    CLIENT_RUNNING,
    AllocState,
    EphemeralDisk,
    Job,
)
from allocrunner.structs import Allocation as Alloc
from allocrunner.testing import mock_alloc, mock_job, mock_task

TASKS = ("web", "db")

# what build_prev_dir writes: relative path -> (content, mode)
FILES = {
    "alloc/data/db.txt": (b"the data\n", 0o644),
    "alloc/data/nested/deep.bin": (bytes(range(256)) * 40, 0o640),
    "web/local/state.json": (b'{"n": 1}', 0o600),
    "db/local/wal/000001.log": (b"log entry\n" * 100, 0o664),
}
# relative symlink path -> target
LINKS = {
    "alloc/data/latest": "db.txt",
    "web/local/shared": "../../alloc/data/nested",
}


def job(*, sticky: bool = False, migrate: bool = False) -> Job:
    return mock_job(
        *(mock_task(name) for name in TASKS),
        ephemeral_disk=EphemeralDisk(sticky=sticky, migrate=migrate),
    )


def prev_and_next(*, sticky: bool = False, migrate: bool = False) -> tuple[Alloc, Alloc]:
    """A running previous allocation and its replacement (same job)."""
    j = job(sticky=sticky, migrate=migrate)
    prev = attrs.evolve(mock_alloc(job=j), client_status=CLIENT_RUNNING)
    nxt = attrs.evolve(mock_alloc(job=j), previous_allocation=prev.id)
    return prev, nxt


def build_prev_dir(root: Path, alloc_id: str) -> AllocDir:
    """A built alloc dir holding FILES and LINKS."""
    d = AllocDir(root, alloc_id)
    d.build()
    for name in TASKS:
        d.new_task_dir(name).build()
    for rel, (content, mode) in FILES.items():
        path = d.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)
    for rel, target in LINKS.items():
        os.symlink(target, d.path / rel)
    return d


def new_dest(root: Path, alloc_id: str) -> AllocDir:
    d = AllocDir(root, alloc_id)
    d.build()
    for name in TASKS:
        d.new_task_dir(name)
    return d


def assert_has_prev_data(d: AllocDir) -> None:
    for rel, (content, mode) in FILES.items():
        path = d.path / rel
        assert path.is_file(), f"{rel} missing in {d.path}"
        assert path.read_bytes() == content, f"{rel} content differs"
        assert path.stat().st_mode & 0o7777 == mode, f"{rel} mode differs"
    for rel, target in LINKS.items():
        path = d.path / rel
        assert path.is_symlink(), f"{rel} is not a symlink in {d.path}"
        assert os.readlink(path) == target


def assert_has_no_prev_data(d: AllocDir) -> None:
    for rel in (*FILES, *LINKS):
        assert not os.path.lexists(d.path / rel), f"{rel} unexpectedly present in {d.path}"


def snapshot_bytes(d: AllocDir) -> bytes:
    buf = io.BytesIO()
    d.snapshot(buf)
    return buf.getvalue()


def leftovers(root: Path) -> list[str]:
    """Staging dirs a migration left behind under the alloc root."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


class PrevRunner:
    """Thread-safe (its broadcaster is). A previous allocation's runner as a watcher
    sees it: `alloc()`, `alloc_state()`, `listen()` and `alloc_dir`, backed by a real
    broadcaster and a real alloc dir."""

    def __init__(self, alloc: Alloc, alloc_dir: AllocDir | None) -> None:
        self._alloc = alloc
        self.alloc_dir = alloc_dir
        self.broadcaster = AllocBroadcaster()
        self._client = alloc
        self.listens = 0
        self.broadcaster.send(alloc)

    def alloc(self) -> Alloc:
        return self._alloc

    def alloc_state(self) -> AllocState:
        c = self._client
        return AllocState(client_status=c.client_status, client_description=c.client_description)

    def listen(self) -> AllocListener:
        self.listens += 1
        return self.broadcaster.listen()

    def set_status(self, status: str) -> None:
        self._client = attrs.evolve(self._alloc, client_status=status)
        self.broadcaster.send(self._client)

    def finish(self) -> None:
        self.set_status(CLIENT_COMPLETE)


class Outcome:
    """Not thread-safe on purpose: written once by the worker, read after `done`."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


def run_in_thread(group: ThreadGroup, name: str, fn: Any, *args: Any) -> Outcome:
    outcome = Outcome()

    def body() -> None:
        try:
            fn(*args)
        except BaseException as err:
            outcome.error = err
        finally:
            outcome.done.set()

    group.spawn(name, body)
    return outcome
