"""The alloc dir's fs API: list, stat, read_at, open, block_until_exists, change_events."""

from __future__ import annotations

import os
import stat
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.allocdir import (
    DELETED,
    MODIFIED,
    POLL_INTERVAL,
    TRUNCATED,
    AllocDir,
    FileChange,
    FileInfo,
    PathNotFoundError,
)
from allocrunner.allocdir.fs import go_file_mode
from allocrunner.errors import AllocDirError
from allocrunner.testing import assert_stays, wait_for


@pytest.fixture
def files(alloc_dir: AllocDir) -> AllocDir:
    (alloc_dir.data_dir / "hello.txt").write_bytes(b"hello world")
    (alloc_dir.data_dir / "sub").mkdir()
    (alloc_dir.data_dir / "sub" / "inner").write_bytes(b"inner")
    os.symlink("hello.txt", alloc_dir.data_dir / "link")
    os.symlink("sub", alloc_dir.data_dir / "dirlink")
    return alloc_dir


# --- FileInfo / modes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("st_mode", "expected"),
    [
        (stat.S_IFREG | 0o644, "-rw-r--r--"),
        (stat.S_IFDIR | 0o755, "drwxr-xr-x"),
        (stat.S_IFLNK | 0o777, "Lrwxrwxrwx"),
        (stat.S_IFDIR | 0o1777, "dtrwxrwxrwx"),
        (stat.S_IFREG | 0o4755, "urwxr-xr-x"),
        (stat.S_IFREG | 0o2755, "grwxr-xr-x"),
        (stat.S_IFIFO | 0o600, "prw-------"),
        (stat.S_IFSOCK | 0o755, "Srwxr-xr-x"),
        (stat.S_IFCHR | 0o666, "Dcrw-rw-rw-"),
        (stat.S_IFBLK | 0o660, "Drw-rw----"),
        (stat.S_IFREG, "----------"),
    ],
)
def test_go_file_mode_strings(st_mode: int, expected: str) -> None:
    assert go_file_mode(st_mode) == expected


def test_file_change_kind_is_validated() -> None:
    with pytest.raises(ValueError, match="kind"):
        FileChange(kind="exploded", size=0, offset=0)


# --- list / stat ----------------------------------------------------------------------


def test_list_root_shows_the_layout(alloc_dir: AllocDir) -> None:
    names = [info.name for info in alloc_dir.list("")]
    assert names == ["alloc", "web"]
    assert [i.name for i in alloc_dir.list("/".join(["alloc"]))] == ["data", "logs", "tmp"]
    assert alloc_dir.list(".") == alloc_dir.list("")


def test_list_reports_entries_like_nomad(files: AllocDir) -> None:
    infos = {info.name: info for info in files.list("alloc/data")}
    assert sorted(infos) == ["dirlink", "hello.txt", "link", "sub"]
    hello = infos["hello.txt"]
    assert isinstance(hello, FileInfo)
    assert hello.size == 11
    assert not hello.is_dir
    assert hello.file_mode == go_file_mode(os.stat(files.data_dir / "hello.txt").st_mode)
    assert hello.mod_time.tzinfo is not None
    assert abs(hello.mod_time - datetime.now(UTC)) < timedelta(minutes=5)
    assert infos["sub"].is_dir and infos["sub"].file_mode.startswith("d")
    # links are listed as links (not followed), as Go's ReadDir does
    assert infos["link"].file_mode.startswith("L") and not infos["link"].is_dir
    assert infos["dirlink"].file_mode.startswith("L") and not infos["dirlink"].is_dir


def test_list_follows_a_symlinked_directory_inside(files: AllocDir) -> None:
    assert [i.name for i in files.list("alloc/data/dirlink")] == ["inner"]


def test_list_of_a_file_or_missing_path_fails(files: AllocDir) -> None:
    with pytest.raises(AllocDirError, match="not a directory"):
        files.list("alloc/data/hello.txt")
    with pytest.raises(PathNotFoundError):
        files.list("alloc/data/missing")
    with pytest.raises(FileNotFoundError):
        files.list("alloc/data/hello.txt/below")


def test_stat_follows_symlinks_inside(files: AllocDir) -> None:
    info = files.stat("alloc/data/link")
    assert info.name == "link"
    assert info.size == 11
    assert info.file_mode.startswith("-")
    assert files.stat("alloc/data/sub").is_dir
    root = files.stat("")
    assert root.is_dir and root.name == files.alloc_id


def test_stat_missing_is_not_found(files: AllocDir) -> None:
    with pytest.raises(PathNotFoundError) as info:
        files.stat("alloc/data/nope")
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, AllocDirError)
    assert "alloc/data/nope" in str(info.value)


def test_fs_api_needs_no_build(files: AllocDir) -> None:
    """Another process (or a fresh object) can read an alloc dir it did not build."""
    reader = AllocDir(files.root, files.alloc_id)
    assert not reader.is_built()
    assert reader.read_at("alloc/data/hello.txt", 0, 5) == b"hello"


def test_fs_api_on_missing_alloc_dir(tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError):
        AllocDir(tmp_path, "gone").list("")


# --- read_at / open -------------------------------------------------------------------


def test_read_at_offsets_and_lengths(files: AllocDir) -> None:
    assert files.read_at("alloc/data/hello.txt", 0, 5) == b"hello"
    assert files.read_at("alloc/data/hello.txt", 6, 100) == b"world"
    assert files.read_at("alloc/data/hello.txt", 11, 10) == b""
    assert files.read_at("alloc/data/hello.txt", 50, 10) == b""
    assert files.read_at("alloc/data/hello.txt", 3, 0) == b""
    assert files.read_at("alloc/data/link", 0, 5) == b"hello"


def test_read_at_large_file(files: AllocDir) -> None:
    blob = os.urandom(3 << 20)
    (files.data_dir / "blob").write_bytes(blob)
    assert files.read_at("alloc/data/blob", 1000, 2 << 20) == blob[1000 : 1000 + (2 << 20)]


@pytest.mark.parametrize(("offset", "length"), [(-1, 1), (0, -1), (1.5, 1), (0, "3")])
def test_read_at_rejects_bad_ranges(files: AllocDir, offset: object, length: object) -> None:
    with pytest.raises(ValueError, match=r"offset|length"):
        files.read_at("alloc/data/hello.txt", offset, length)  # type: ignore[arg-type]


def test_read_at_refuses_directories_and_special_files(files: AllocDir) -> None:
    with pytest.raises(AllocDirError, match="directory"):
        files.read_at("alloc/data/sub", 0, 1)
    os.mkfifo(files.data_dir / "fifo")
    # must not block waiting for a writer
    with pytest.raises(AllocDirError, match="regular file"):
        files.read_at("alloc/data/fifo", 0, 1)
    assert files.stat("alloc/data/fifo").file_mode.startswith("p")


def test_open_streams_the_file(files: AllocDir) -> None:
    with files.open("alloc/data/link") as f:
        assert f.read() == b"hello world"
    with pytest.raises(AllocDirError, match="directory"):
        files.open("alloc/data/sub")
    with pytest.raises(PathNotFoundError):
        files.open("alloc/data/nope")


def test_open_keeps_reading_the_same_file_after_a_swap(files: AllocDir) -> None:
    with files.open("alloc/data/hello.txt") as f:
        os.unlink(files.data_dir / "hello.txt")
        (files.data_dir / "hello.txt").write_bytes(b"replaced")
        assert f.read() == b"hello world"


def test_path_like_arguments(files: AllocDir) -> None:
    assert files.read_at(Path("alloc/data/hello.txt"), 0, 5) == b"hello"
    with pytest.raises(TypeError):
        files.stat(b"alloc")  # type: ignore[arg-type]


# --- block_until_exists ---------------------------------------------------------------


def test_block_until_exists_returns_at_once_for_existing(files: AllocDir) -> None:
    cancel = CancelToken()
    start = time.monotonic()
    assert files.block_until_exists("alloc/data/hello.txt", cancel)
    assert time.monotonic() - start < 1.0


def test_block_until_exists_waits_for_creation(alloc_dir: AllocDir) -> None:
    cancel = CancelToken()
    result: list[bool] = []

    def wait() -> None:
        result.append(alloc_dir.block_until_exists("alloc/logs/web.stdout.0", cancel))

    waiter = threading.Thread(target=wait, name="block-until-exists")
    waiter.start()
    try:

        def still_waiting() -> None:
            assert not result, f"returned {result} before the file existed"

        assert_stays(still_waiting, 4 * POLL_INTERVAL)
        (alloc_dir.logs_dir / "web.stdout.0").write_text("started")
        wait_for(lambda: _expect(result, [True]), timeout=5)
    finally:
        cancel.cancel()
        waiter.join(5)


def _expect(actual: object, expected: object) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"


def test_block_until_exists_is_cancellable(alloc_dir: AllocDir) -> None:
    cancel = CancelToken()
    result: list[bool] = []

    def wait() -> None:
        result.append(alloc_dir.block_until_exists("alloc/logs/never", cancel))

    waiter = threading.Thread(target=wait, name="block-until-exists")
    waiter.start()
    time_cancelled = time.monotonic()
    cancel.cancel("test over")
    waiter.join(5)
    assert not waiter.is_alive()
    assert result == [False]
    assert time.monotonic() - time_cancelled < 2.0


# --- change_events --------------------------------------------------------------------


def test_change_events_modified_truncated_deleted(alloc_dir: AllocDir) -> None:
    path = alloc_dir.logs_dir / "out"
    path.write_bytes(b"abc")
    cancel = CancelToken()
    events = alloc_dir.change_events("alloc/logs/out", 3, cancel)
    with open(path, "ab") as f:
        f.write(b"defg")
    assert next(events) == FileChange(kind=MODIFIED, size=7, offset=3)
    os.truncate(path, 2)
    assert next(events) == FileChange(kind=TRUNCATED, size=2, offset=7)
    # same size, new content and mtime: still a modification
    path.write_bytes(b"zz")
    os.utime(path, ns=(0, 10**9))
    assert next(events) == FileChange(kind=MODIFIED, size=2, offset=2)
    path.unlink()
    assert next(events) == FileChange(kind=DELETED, size=0, offset=2)
    with pytest.raises(StopIteration):
        next(events)


def test_change_events_offset_past_end_is_a_truncation(alloc_dir: AllocDir) -> None:
    (alloc_dir.logs_dir / "out").write_bytes(b"abc")
    events = alloc_dir.change_events("alloc/logs/out", 10, CancelToken())
    assert next(events) == FileChange(kind=TRUNCATED, size=3, offset=10)


def test_change_events_replaced_file_is_deleted(alloc_dir: AllocDir) -> None:
    path = alloc_dir.logs_dir / "out"
    path.write_bytes(b"abc")
    events = alloc_dir.change_events("alloc/logs/out", 0, CancelToken())
    tmp = alloc_dir.logs_dir / "out.new"
    tmp.write_bytes(b"abc")
    os.replace(tmp, path)
    assert next(events).kind == DELETED


def test_change_events_ends_on_cancel(alloc_dir: AllocDir) -> None:
    (alloc_dir.logs_dir / "out").write_bytes(b"abc")
    cancel = CancelToken()
    events = alloc_dir.change_events("alloc/logs/out", 3, cancel)
    cancel.cancel()
    start = time.monotonic()
    assert list(events) == []
    assert time.monotonic() - start < 10 * POLL_INTERVAL


def test_change_events_checks_the_path_before_iterating(alloc_dir: AllocDir) -> None:
    with pytest.raises(PathNotFoundError):
        alloc_dir.change_events("alloc/logs/missing", 0, CancelToken())
    with pytest.raises(ValueError, match="offset"):
        alloc_dir.change_events("alloc/logs", -1, CancelToken())
