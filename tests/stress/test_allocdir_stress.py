"""Stress: every AllocDir method at once, with forced thread switches.

Threads build, register and build task dirs, list, stat, read, snapshot + extract,
move data back and forth, write files and destroy, all on the same alloc dirs for a
bounded time. Only the documented errors may surface (`AllocDirError` and its
subclasses); the lock checker and the thread-leak check of the harness run throughout.
A second group races a symlink that flips between a directory inside the alloc dir and
one outside it against readers and snapshots: the outside must never be read.
"""

from __future__ import annotations

import io
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.allocdir import AllocDir
from allocrunner.errors import AllocDirError, PathEscapeError

pytestmark = pytest.mark.stress

DURATION = 2.5
MAX_ITERATIONS = 5_000
PACE = 0.002



class Outcomes:
    """Thread-safe. What each worker saw; each worker appends once, when it ends."""

    def __init__(self) -> None:
        self._results: list[tuple[str, int, int, BaseException | None]] = []

    def add(self, name: str, ok: int, expected: int, error: BaseException | None) -> None:
        self._results.append((name, ok, expected, error))  # list.append is atomic

    @property
    def ok(self) -> dict[str, int]:
        return {name: ok for name, ok, _, _ in self._results}

    @property
    def expected(self) -> dict[str, int]:
        return {name: expected for name, _, expected, _ in self._results}

    @property
    def unexpected(self) -> list[tuple[str, BaseException]]:
        return [(name, err) for name, _, _, err in self._results if err is not None]


def run_workers(
    workers: dict[str, Callable[[], object]],
    allowed: tuple[type[BaseException], ...],
    outcomes: Outcomes,
) -> None:
    stop = CancelToken()
    group = ThreadGroup("allocdir-stress")

    def loop(name: str, work: Callable[[], object]) -> None:
        ok = expected = 0
        error: BaseException | None = None
        deadline = time.monotonic() + DURATION
        for _ in range(MAX_ITERATIONS):
            if stop.cancelled() or time.monotonic() > deadline:
                break
            try:
                work()
                ok += 1
            except allowed:
                expected += 1
            except BaseException as err:
                error = err
                stop.cancel(f"{name} failed")
                break
            stop.wait(PACE)
        outcomes.add(name, ok, expected, error)

    for name, work in workers.items():
        group.spawn(f"stress-{name}", loop, name, work)
    try:
        assert group.join(timeout=DURATION + 30), "stress workers did not finish"
    finally:
        stop.cancel("done")
        group.join(timeout=30)
    assert len(outcomes.ok) == len(workers)
    problems = [
        f"{name}: {''.join(traceback.format_exception(err))}" for name, err in outcomes.unexpected
    ]
    assert not problems, "\n".join(problems)


def test_every_method_concurrently(tmp_path: Path, fast_switching: None) -> None:
    root = tmp_path / "allocs"
    main = AllocDir(root, "main")
    other = AllocDir(root, "other")
    receiver = AllocDir(root, "receiver")
    for ad in (main, other, receiver):
        ad.build()
    tasks = ["t0", "t1", "t2"]

    def build() -> None:
        main.build()
        for name in tasks:
            main.new_task_dir(name).build()

    def write() -> None:
        try:
            (main.data_dir / "f").write_bytes(os.urandom(2048))
            (main.path / "t0" / "local" / "g").write_text("local")
        except OSError:
            pass  # the test's own plain writes race destroy and move; not under test

    def read() -> None:
        main.list("")
        main.list("alloc/data")
        main.stat("alloc/data/f")
        main.read_at("alloc/data/f", 100, 500)
        with main.open("t0/local/g") as f:
            f.read()
        main.disk_usage()
        main.is_built()
        main.task_dirs()

    def migrate() -> None:
        buf = io.BytesIO()
        main.snapshot(buf)
        buf.seek(0)
        try:
            receiver.extract(buf)
        finally:
            receiver.destroy()
            receiver.build()

    def move() -> None:
        other.move_from(main, tasks)
        main.move_from(other, tasks)

    def destroy() -> None:
        main.destroy()

    outcomes = Outcomes()
    run_workers(
        {
            "build": build,
            "write": write,
            "read-1": read,
            "read-2": read,
            "migrate": migrate,
            "move": move,
            "destroy": destroy,
        },
        (AllocDirError,),
        outcomes,
    )
    assert not outcomes.unexpected, outcomes.unexpected
    for name in ("build", "read-1", "migrate", "move", "destroy"):
        assert outcomes.ok[name] + outcomes.expected[name] > 0, f"{name} never ran"
    assert outcomes.ok["build"] > 0 and outcomes.ok["destroy"] > 0
    # after the storm the alloc dir still works
    build()
    write()
    assert main.read_at("alloc/data/f", 0, 10)


def test_flipping_symlink_never_leaks_the_outside(tmp_path: Path, fast_switching: None) -> None:
    ad = AllocDir(tmp_path / "allocs", "victim")
    ad.build()
    inside = ad.data_dir / "inside"
    inside.mkdir()
    (inside / "secret.txt").write_text("inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("HOST SECRET")
    flip = ad.data_dir / "flip"
    os.symlink("inside", flip)
    flips = iter(range(1, 10**9))  # used by the flipper thread only
    staging = ad.path / "staging"  # outside what snapshot reads, on the same file system
    staging.mkdir()

    def flipper() -> None:
        n = next(flips)
        tmp = staging / f"flip-{n}"
        os.symlink(str(outside) if n % 2 else "inside", tmp)
        os.replace(tmp, flip)  # atomic: the path always exists

    def reader() -> None:
        data = ad.read_at("alloc/data/flip/secret.txt", 0, 100)
        assert data == b"inside", f"read {data!r} through the flipping link"

    def snapshotter() -> None:
        buf = io.BytesIO()
        ad.snapshot(buf)
        assert b"HOST SECRET" not in buf.getvalue()

    def lister() -> None:
        names = [i.name for i in ad.list("alloc/data/flip")]
        assert names == ["secret.txt"]

    outcomes = Outcomes()
    run_workers(
        {
            "flipper": flipper,
            "reader-1": reader,
            "reader-2": reader,
            "snapshot": snapshotter,
            "lister": lister,
        },
        (PathEscapeError,),
        outcomes,
    )
    assert not outcomes.unexpected, outcomes.unexpected
    reads = outcomes.ok["reader-1"] + outcomes.ok["reader-2"]
    assert reads > 0, "the reader never got through while the link pointed inside"
    assert outcomes.expected["reader-1"] + outcomes.expected["reader-2"] > 0, (
        "the reader never met the escaping link: the race was not exercised"
    )
