"""Log rotation: sizes, numbering, retention, reopening."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocrunner.drivers.logs import RotatingLogWriter, log_indices, log_path, read_logs


def sizes(d, task="web", stream="stdout"):
    return [
        (i, os.path.getsize(log_path(str(d), task, stream, i)))
        for i in log_indices(str(d), task, stream)
    ]


def test_first_file_is_index_zero(tmp_path):
    w = RotatingLogWriter(str(tmp_path), "web", "stdout", max_files=3, max_bytes=10)
    w.write(b"hello")
    w.close()
    assert (tmp_path / "web.stdout.0").read_bytes() == b"hello"


def test_write_fills_file_then_rotates(tmp_path):
    w = RotatingLogWriter(str(tmp_path), "web", "stdout", max_files=10, max_bytes=4)
    w.write(b"abcdefghij")
    w.close()
    assert sizes(tmp_path) == [(0, 4), (1, 4), (2, 2)]
    assert read_logs(str(tmp_path), "web", "stdout") == b"abcdefghij"
    assert w.index == 2


def test_keeps_at_most_max_files(tmp_path):
    w = RotatingLogWriter(str(tmp_path), "web", "stderr", max_files=2, max_bytes=3)
    for _ in range(5):
        w.write(b"xyz")
    w.write(b"!")
    w.close()
    assert log_indices(str(tmp_path), "web", "stderr") == [4, 5]
    assert read_logs(str(tmp_path), "web", "stderr") == b"xyz!"


def test_reopen_appends_to_newest_file(tmp_path):
    w = RotatingLogWriter(str(tmp_path), "web", "stdout", max_files=5, max_bytes=4)
    w.write(b"abcdef")
    w.close()
    again = RotatingLogWriter(str(tmp_path), "web", "stdout", max_files=5, max_bytes=4)
    assert again.index == 1
    again.write(b"gh")
    again.close()
    assert sizes(tmp_path) == [(0, 4), (1, 4)]
    assert read_logs(str(tmp_path), "web", "stdout") == b"abcdefgh"


def test_reopen_with_fewer_max_files_purges_oldest(tmp_path):
    for i in range(4):
        (tmp_path / f"web.stdout.{i}").write_bytes(b"x")
    RotatingLogWriter(str(tmp_path), "web", "stdout", max_files=2, max_bytes=4).close()
    assert log_indices(str(tmp_path), "web", "stdout") == [2, 3]


def test_other_tasks_and_streams_are_ignored(tmp_path):
    (tmp_path / "webx.stdout.0").write_bytes(b"a")
    (tmp_path / "web.stdout.0.bak").write_bytes(b"a")
    (tmp_path / "web.stderr.7").write_bytes(b"a")
    assert log_indices(str(tmp_path), "web", "stdout") == []
    assert log_indices(str(tmp_path / "missing"), "web", "stdout") == []


def test_only_plain_decimal_suffixes_count_in_numeric_order(tmp_path):
    for name in ("a.b.stdout.10", "a.b.stdout.9", "aXb.stdout.3", "a.b.stdout."):
        (tmp_path / name).write_bytes(b"")
    for suffix in ("-1", "+2", "1 ", "0x4", "1.5"):
        (tmp_path / f"a.b.stdout.{suffix}").write_bytes(b"")
    assert log_indices(str(tmp_path), "a.b", "stdout") == [9, 10]


@pytest.mark.parametrize(("files", "size"), [(0, 10), (1, 0)])
def test_bad_limits(tmp_path, files, size):
    with pytest.raises(ValueError, match="max"):
        RotatingLogWriter(str(tmp_path), "web", "stdout", max_files=files, max_bytes=size)


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=40), max_size=20),
    max_files=st.integers(1, 4),
    max_bytes=st.integers(1, 16),
)
def test_rotation_properties(tmp_path_factory, chunks, max_files, max_bytes):
    d = tmp_path_factory.mktemp("logs")
    w = RotatingLogWriter(str(d), "t", "stdout", max_files=max_files, max_bytes=max_bytes)
    for chunk in chunks:
        w.write(chunk)
    w.close()
    data = b"".join(chunks)
    kept = sizes(d, "t")
    assert len(kept) <= max_files
    indices = [i for i, _ in kept]
    assert indices == list(range(indices[0], indices[0] + len(indices))) if indices else True
    assert all(size == max_bytes for _, size in kept[:-1])
    stored = read_logs(str(d), "t", "stdout")
    assert data.endswith(stored)
    # Everything that fits in the kept files is there: only whole old files are dropped.
    dropped = len(data) - len(stored)
    assert dropped % max_bytes == 0
