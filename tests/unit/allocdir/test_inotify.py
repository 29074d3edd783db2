"""The inotify binding, and the alloc dir's waits on it: woken by events and by their
token (never by a timer), re-armed as directories appear, falling back to polling where
inotify is missing or exhausted, and leaking no descriptor."""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.allocdir import DELETED, MODIFIED, TRUNCATED, AllocDir, FileChange
from allocrunner.allocdir import inotify as ino
from allocrunner.errors import PathEscapeError
from allocrunner.testing import assert_stays, wait_for

pytestmark = pytest.mark.skipif(not ino.Inotify.available(), reason="no inotify here")


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _leaked_since(before: set[str]) -> set[str]:
    """Descriptors open now that were not before: a leak. (Descriptors closed meanwhile,
    by the collection of an earlier test's garbage, are no concern of these tests.)"""
    return _open_fds() - before


@pytest.fixture
def no_timed_waits(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """Record every timed `CancelToken.wait`: a wait on inotify makes none."""
    timed: list[float | None] = []
    original = CancelToken.wait

    def wait(self: CancelToken, timeout: float | None = None) -> bool:
        if timeout is not None and timeout > 0:
            timed.append(timeout)
        return original(self, timeout)

    monkeypatch.setattr(CancelToken, "wait", wait)
    return timed


class Background:
    """One call run on its own thread; its result (or exception) is kept."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.results: list[object] = []
        self._call = call
        self.thread = threading.Thread(target=self._run, name="inotify-test-waiter")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.results.append(self._call())
        except Exception as err:
            self.results.append(err)

    def done(self) -> object:
        assert self.results, "still waiting"
        return self.results[0]

    def still_waiting(self) -> None:
        assert not self.results, f"returned {self.results}"

    def join(self) -> None:
        self.thread.join(5)
        assert not self.thread.is_alive()


# --- the binding -------------------------------------------------------------------------


def test_parse_events_reads_padded_names_and_stops_at_a_truncated_record() -> None:
    first = struct.pack("iIII", 1, ino.IN_CREATE, 0, 16) + b"name\x00".ljust(16, b"\x00")
    second = struct.pack("iIII", 2, ino.IN_IGNORED, 7, 0)
    truncated = struct.pack("iIII", 3, ino.IN_MODIFY, 0, 16) + b"abc"
    assert ino.parse_events(first + second + truncated) == [
        ino.InotifyEvent(1, ino.IN_CREATE, 0, b"name"),
        ino.InotifyEvent(2, ino.IN_IGNORED, 7, b""),
    ]


def test_watch_through_a_descriptor_reports_creation(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH | os.O_CLOEXEC)
    inotify = ino.Inotify.open()
    assert inotify is not None
    with inotify:
        try:
            wd = inotify.add_watch_fd(fd, ino.DIR_EVENTS)
        finally:
            os.close(fd)
        assert inotify.read_events() == []
        (tmp_path / "new").write_text("x")
        assert ino.InotifyEvent(wd, ino.IN_CREATE, 0, b"new") in inotify.read_events()
        inotify.rm_watch(wd)
        inotify.rm_watch(wd)  # already gone: no error


def test_only_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    fd = os.open(tmp_path / "file", os.O_PATH | os.O_CLOEXEC)
    inotify = ino.Inotify.open()
    assert inotify is not None
    try:
        with inotify, pytest.raises(NotADirectoryError):
            inotify.add_watch_fd(fd, ino.DIR_EVENTS)
    finally:
        os.close(fd)


def test_cancel_wake_becomes_readable_and_closes_cleanly() -> None:
    before = _open_fds()
    cancel = CancelToken()
    wake = ino.CancelWake(cancel)
    cancel.cancel()
    assert os.eventfd_read(wake.fileno()) == 1
    wake.close()
    assert _leaked_since(before) == set()


def test_cancel_wake_close_racing_cancel_never_leaks(fast_switching: None) -> None:
    before = _open_fds()
    for _ in range(200):
        cancel = CancelToken()
        wake = ino.CancelWake(cancel)
        canceller = threading.Thread(target=cancel.cancel, name="inotify-test-cancel")
        canceller.start()
        wake.close()
        canceller.join(5)
    assert _leaked_since(before) == set()


# --- block_until_exists ----------------------------------------------------------------


def _block(alloc_dir: AllocDir, path: str, cancel: CancelToken) -> Background:
    return Background(lambda: alloc_dir.block_until_exists(path, cancel))


def test_wakes_on_a_rename_into_place(alloc_dir: AllocDir, no_timed_waits: list) -> None:
    cancel = CancelToken()
    waiter = _block(alloc_dir, "alloc/logs/web.stdout.1", cancel)
    try:
        assert_stays(waiter.still_waiting, 0.1)
        tmp = alloc_dir.logs_dir / ".partial"
        tmp.write_text("x")
        os.rename(tmp, alloc_dir.logs_dir / "web.stdout.1")
        assert wait_for(waiter.done) is True
    finally:
        cancel.cancel()
        waiter.join()
    assert no_timed_waits == []


def test_wakes_when_the_directories_above_appear_later(
    alloc_dir: AllocDir, no_timed_waits: list
) -> None:
    cancel = CancelToken()
    waiter = _block(alloc_dir, "alloc/data/a/b/c.txt", cancel)
    try:
        (alloc_dir.data_dir / "a").mkdir()
        assert_stays(waiter.still_waiting, 0.05)
        (alloc_dir.data_dir / "a" / "b").mkdir()
        assert_stays(waiter.still_waiting, 0.05)
        (alloc_dir.data_dir / "a" / "b" / "c.txt").write_text("x")
        assert wait_for(waiter.done) is True
    finally:
        cancel.cancel()
        waiter.join()
    assert no_timed_waits == []


def test_wakes_when_a_whole_tree_is_renamed_into_place(alloc_dir: AllocDir) -> None:
    cancel = CancelToken()
    waiter = _block(alloc_dir, "alloc/data/tree/leaf", cancel)
    try:
        staging = alloc_dir.shared_dir / "tmp" / "tree"
        staging.mkdir()
        (staging / "leaf").write_text("x")
        os.rename(staging, alloc_dir.data_dir / "tree")
        assert wait_for(waiter.done) is True
    finally:
        cancel.cancel()
        waiter.join()


def test_follows_a_symlink_retargeted_while_waiting(alloc_dir: AllocDir) -> None:
    (alloc_dir.data_dir / "empty").mkdir()
    (alloc_dir.data_dir / "full").mkdir()
    (alloc_dir.data_dir / "full" / "f").write_text("x")
    os.symlink("empty", alloc_dir.data_dir / "link")
    cancel = CancelToken()
    waiter = _block(alloc_dir, "alloc/data/link/f", cancel)
    try:
        assert_stays(waiter.still_waiting, 0.05)
        os.symlink("full", alloc_dir.data_dir / "link.new")
        os.replace(alloc_dir.data_dir / "link.new", alloc_dir.data_dir / "link")
        assert wait_for(waiter.done) is True
    finally:
        cancel.cancel()
        waiter.join()


def test_a_symlink_planted_while_waiting_that_escapes_raises(
    alloc_dir: AllocDir, outside: Path
) -> None:
    cancel = CancelToken()
    waiter = _block(alloc_dir, "alloc/data/sub/secret.txt", cancel)
    try:
        assert_stays(waiter.still_waiting, 0.05)
        os.symlink(outside, alloc_dir.data_dir / "sub")
        assert isinstance(wait_for(waiter.done), PathEscapeError)
    finally:
        cancel.cancel()
        waiter.join()


def test_cancel_wakes_the_wait_without_a_timer(alloc_dir: AllocDir, no_timed_waits: list) -> None:
    cancel = CancelToken()
    waiter = _block(alloc_dir, "alloc/logs/never", cancel)
    assert_stays(waiter.still_waiting, 0.05)
    cancel.cancel("test over")
    waiter.join()
    assert waiter.done() is False
    assert no_timed_waits == []


def test_waits_leak_no_descriptor(alloc_dir: AllocDir) -> None:
    before = _open_fds()
    for i in range(20):
        cancel = CancelToken()
        waiter = _block(alloc_dir, f"alloc/data/x{i}", cancel)
        if i % 2:
            (alloc_dir.data_dir / f"x{i}").write_text("x")
        else:
            cancel.cancel()
        waiter.join()
        cancel.cancel()
    assert _leaked_since(before) == set()


# --- fallback ----------------------------------------------------------------------------


def test_falls_back_to_polling_without_inotify(
    alloc_dir: AllocDir, monkeypatch: pytest.MonkeyPatch, no_timed_waits: list
) -> None:
    monkeypatch.setattr(ino.Inotify, "open", classmethod(lambda cls: None))
    cancel = CancelToken()
    waiter = _block(alloc_dir, "alloc/logs/later", cancel)
    try:
        wait_for(lambda: _expect_true(bool(no_timed_waits)))  # it is polling
        (alloc_dir.logs_dir / "later").write_text("x")
        assert wait_for(waiter.done) is True
    finally:
        cancel.cancel()
        waiter.join()


def test_falls_back_to_polling_when_watches_run_out(
    alloc_dir: AllocDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(self: ino.Inotify, fd: int, mask: int) -> int:
        raise OSError(errno.ENOSPC, "no space left for watches")

    monkeypatch.setattr(ino.Inotify, "add_watch_fd", no_space)
    before = _open_fds()
    cancel = CancelToken()
    waiter = _block(alloc_dir, "alloc/logs/later", cancel)
    try:
        assert_stays(waiter.still_waiting, 0.1)
        (alloc_dir.logs_dir / "later").write_text("x")
        assert wait_for(waiter.done) is True
    finally:
        cancel.cancel()
        waiter.join()
    assert _leaked_since(before) == set()


def test_polls_while_the_alloc_dir_itself_is_missing_then_watches(
    tmp_path: Path, no_timed_waits: list
) -> None:
    alloc_dir = AllocDir(tmp_path / "allocs", "later")
    cancel = CancelToken()
    waiter = _block(alloc_dir, "alloc/logs/out", cancel)
    try:
        assert_stays(waiter.still_waiting, 0.1)
        assert no_timed_waits, "nothing to watch: it polls"
        alloc_dir.build()
        seen = [len(no_timed_waits)]

        def no_more_polls() -> None:
            before, seen[0] = seen[0], len(no_timed_waits)
            assert seen[0] == before, "still polling"

        wait_for(lambda: assert_stays(no_more_polls, 0.2))
        (alloc_dir.logs_dir / "out").write_text("x")
        assert wait_for(waiter.done) is True
    finally:
        cancel.cancel()
        waiter.join()


def _expect_true(value: bool) -> None:
    assert value


# --- change_events -----------------------------------------------------------------------


def _next_in_background(events: Iterator[FileChange]) -> Background:
    return Background(lambda: next(events, None))


def test_change_events_wake_on_writes_without_a_timer(
    alloc_dir: AllocDir, no_timed_waits: list
) -> None:
    path = alloc_dir.logs_dir / "out"
    path.write_bytes(b"abc")
    cancel = CancelToken()
    events = alloc_dir.change_events("alloc/logs/out", 3, cancel)
    try:
        pending = _next_in_background(events)
        assert_stays(pending.still_waiting, 0.05)
        with open(path, "ab") as f:
            f.write(b"de")
        assert wait_for(pending.done) == FileChange(kind=MODIFIED, size=5, offset=3)
        pending.join()
        pending = _next_in_background(events)
        os.truncate(path, 1)
        assert wait_for(pending.done) == FileChange(kind=TRUNCATED, size=1, offset=5)
        pending.join()
        pending = _next_in_background(events)
        assert_stays(pending.still_waiting, 0.05)
        cancel.cancel()
        assert wait_for(pending.done) is None
        pending.join()
    finally:
        cancel.cancel()
    assert no_timed_waits == []


def test_change_events_see_the_file_renamed_away(alloc_dir: AllocDir) -> None:
    path = alloc_dir.logs_dir / "out"
    path.write_bytes(b"abc")
    events = alloc_dir.change_events("alloc/logs/out", 3, CancelToken())
    pending = _next_in_background(events)
    os.rename(path, alloc_dir.logs_dir / "out.old")
    assert wait_for(pending.done) == FileChange(kind=DELETED, size=0, offset=3)
    pending.join()


def test_change_events_see_their_directory_replaced(alloc_dir: AllocDir) -> None:
    (alloc_dir.data_dir / "d").mkdir()
    (alloc_dir.data_dir / "d" / "f").write_bytes(b"abc")
    events = alloc_dir.change_events("alloc/data/d/f", 3, CancelToken())
    pending = _next_in_background(events)
    assert_stays(pending.still_waiting, 0.05)
    os.rename(alloc_dir.data_dir / "d", alloc_dir.data_dir / "gone")
    assert wait_for(pending.done) == FileChange(kind=DELETED, size=0, offset=3)
    pending.join()


def test_abandoned_and_finished_iterators_leak_no_descriptor(alloc_dir: AllocDir) -> None:
    path = alloc_dir.logs_dir / "out"
    path.write_bytes(b"abc")
    before = _open_fds()
    for _ in range(10):
        events = alloc_dir.change_events("alloc/logs/out", 0, CancelToken())
        assert next(events).kind == MODIFIED  # opened its watch, then dropped
        del events
    cancel = CancelToken()
    events = alloc_dir.change_events("alloc/logs/out", 3, cancel)
    cancel.cancel()
    assert list(events) == []
    assert _leaked_since(before) == set()
