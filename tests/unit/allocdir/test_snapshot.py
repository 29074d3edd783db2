"""snapshot() and extract(): the migration stream (Nomad's TestAllocDir_Snapshot and
TestPrevAlloc_StreamAllocDir_Ok / _Error), interop with GNU tar, and round trips."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocrunner.allocdir import AllocDir, error_marker_name
from allocrunner.allocdir.tarstream import ERROR_MARKER_MTIME
from allocrunner.errors import AllocDirError

from .conftest import snapshot_tree


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getmembers()


def snap(ad: AllocDir) -> bytes:
    buf = io.BytesIO()
    ad.snapshot(buf)
    return buf.getvalue()


@pytest.fixture
def populated(alloc_dir: AllocDir) -> AllocDir:
    web = alloc_dir.task_dir("web")
    assert web is not None
    (alloc_dir.data_dir / "data.bin").write_bytes(b"D" * 5000)
    (web.local_dir / "conf").mkdir()
    (web.local_dir / "conf" / "app.ini").write_text("[app]\n")
    os.symlink("conf/app.ini", web.local_dir / "app-link")
    os.symlink("../../alloc/data/data.bin", web.local_dir / "data-link")
    (web.secrets_dir / "token").write_text("never migrated")
    (web.tmp_dir / "scratch").write_text("never migrated")
    (alloc_dir.logs_dir / "web.stdout.0").write_text("never migrated")
    return alloc_dir


def test_snapshot_holds_data_and_task_local(populated: AllocDir) -> None:
    got = {m.name: m for m in members(snap(populated))}
    assert sorted(got) == [
        "alloc/data",
        "alloc/data/data.bin",
        "web/local",
        "web/local/app-link",
        "web/local/conf",
        "web/local/conf/app.ini",
        "web/local/data-link",
    ]
    assert got["alloc/data"].isdir()
    assert got["alloc/data/data.bin"].isfile() and got["alloc/data/data.bin"].size == 5000
    assert got["web/local/app-link"].issym()
    assert got["web/local/app-link"].linkname == "conf/app.ini"
    assert got["web/local/data-link"].linkname == "../../alloc/data/data.bin"
    assert got["web/local/conf/app.ini"].mode == 0o644


def test_snapshot_lists_directories_before_their_contents(populated: AllocDir) -> None:
    names = [m.name for m in members(snap(populated))]
    for i, name in enumerate(names):
        parent = name.rsplit("/", 1)[0]
        if "/" in parent:
            assert parent in names[:i], f"{name} before its directory"


def test_snapshot_never_follows_symlinks(alloc_dir: AllocDir, outside: Path) -> None:
    web = alloc_dir.task_dir("web")
    assert web is not None
    os.symlink("/", web.local_dir / "root")
    os.symlink(str(outside / "secret.txt"), alloc_dir.data_dir / "secret")
    data = snap(alloc_dir)
    assert b"host secret" not in data
    got = {m.name: m for m in members(data)}
    assert got["web/local/root"].issym() and got["web/local/root"].linkname == "/"


def test_snapshot_of_a_symlinked_local_dir_stores_the_link(
    alloc_dir: AllocDir, outside: Path
) -> None:
    web = alloc_dir.task_dir("web")
    assert web is not None
    os.rmdir(web.local_dir)
    os.symlink(str(outside), web.local_dir)
    data = snap(alloc_dir)
    assert b"host secret" not in data
    got = {m.name: m for m in members(data)}
    assert got["web/local"].issym()


def test_snapshot_skips_special_files_and_unbuilt_tasks(alloc_dir: AllocDir) -> None:
    os.mkfifo(alloc_dir.data_dir / "fifo")
    alloc_dir.new_task_dir("unbuilt")
    (alloc_dir.path / "unregistered" / "local").mkdir(parents=True)
    names = [m.name for m in members(snap(alloc_dir))]
    assert names == ["alloc/data", "web/local"]


def test_snapshot_of_missing_alloc_dir_fails(tmp_path: Path) -> None:
    with pytest.raises(AllocDirError, match="does not exist"):
        AllocDir(tmp_path, "gone").snapshot(io.BytesIO())


def test_snapshot_walk_error_appends_marker(
    populated: AllocDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_preadv(fd: int, buffers: object, offset: int) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "preadv", failing_preadv)
    buf = io.BytesIO()
    with pytest.raises(AllocDirError, match="Input/output error"):
        populated.snapshot(buf)
    monkeypatch.undo()
    got = members(buf.getvalue())
    marker = got[-1]
    assert marker.name == error_marker_name(populated.alloc_id)
    assert marker.name == f"NOMAD-{populated.alloc_id}-ERROR.log"
    assert marker.mtime == ERROR_MARKER_MTIME
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        body = tf.extractfile(marker)
        assert body is not None
        assert b"Input/output error" in body.read()


def test_marker_aborts_extraction_and_writes_nothing(
    populated: AllocDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TestPrevAlloc_StreamAllocDir_Error: the sender's error reaches the receiver and
    nothing of the partial stream lands in the destination."""
    (populated.data_dir / "zzz-last").write_text("x")
    real_preadv = os.preadv
    calls = {"n": 0}

    def preadv_failing_late(fd: int, buffers: list, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(5, "Input/output error")
        return real_preadv(fd, buffers, offset)

    monkeypatch.setattr(os, "preadv", preadv_failing_late)
    buf = io.BytesIO()
    with pytest.raises(AllocDirError):
        populated.snapshot(buf)
    monkeypatch.undo()
    dest = AllocDir(tmp_path / "dest", "new")
    dest.build()
    dest.new_task_dir("web").build()
    before = snapshot_tree(dest.path)
    buf.seek(0)
    with pytest.raises(AllocDirError, match=r"reported an error: .*Input/output error"):
        dest.extract(buf)
    assert snapshot_tree(dest.path) == before


def test_snapshot_read_error_in_kernel_copy_appends_marker(
    populated: AllocDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Big files go out through sendfile when the output is a real file; a read error
    there is a walk error like any other: marker, well-formed archive, error raised."""
    (populated.data_dir / "big").write_bytes(os.urandom(1 << 20))

    real_sendfile = os.sendfile
    calls: list[int] = []

    def failing_sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        calls.append(offset)
        if len(calls) == 1:  # part of the file goes out, then the disk fails
            return real_sendfile(out_fd, in_fd, offset, min(count, 100_000))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "sendfile", failing_sendfile)
    out = tmp_path / "stream.tar"
    with open(out, "wb") as f, pytest.raises(AllocDirError, match="Input/output error"):
        populated.snapshot(f)
    monkeypatch.undo()
    assert len(calls) == 2
    got = members(out.read_bytes())  # still a well-formed archive
    assert got[-1].name == error_marker_name(populated.alloc_id)
    big = next(m for m in got if m.name == "alloc/data/big")
    assert big.size == 1 << 20


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of os.<name> (still calling it)."""
    real = getattr(os, name)
    calls: list[int] = []

    def counting(*args: object) -> object:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(os, name, counting)
    return calls


@pytest.mark.parametrize("buffering", [0, -1], ids=["raw", "buffered"])
def test_kernel_copy_paths_round_trip(
    populated: AllocDir, tmp_path: Path, buffering: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshot to a real file (sendfile) and extract from it (copy_file_range when the
    input is unbuffered, plain reads when buffered): same tree either way."""
    big = os.urandom(3 << 20)
    (populated.data_dir / "big").write_bytes(big)
    sendfile_calls = spy(monkeypatch, "sendfile")
    copy_calls = spy(monkeypatch, "copy_file_range")
    out = tmp_path / "stream.tar"
    with open(out, "wb", buffering=buffering) as f:
        populated.snapshot(f)
    assert sendfile_calls, "the big file should go out through sendfile"
    assert members(out.read_bytes())[-1].name == "web/local/data-link"
    dest = fresh_dest(tmp_path)
    with open(out, "rb", buffering=buffering) as f:
        dest.extract(f)
    assert bool(copy_calls) == (buffering == 0)
    assert (dest.data_dir / "big").read_bytes() == big
    assert snapshot_tree(dest.data_dir) == snapshot_tree(populated.data_dir)


def test_extract_from_a_pipe_uses_the_whole_stream(
    populated: AllocDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From an unbuffered pipe bodies are spliced; headers and padding still line up."""
    splice_calls = spy(monkeypatch, "splice")
    for i, size in enumerate([64 * 1024, 64 * 1024 + 1, 200_001, 1 << 20]):
        (populated.data_dir / f"f{i}").write_bytes(os.urandom(size))
    read_fd, write_fd = os.pipe()
    producer = subprocess.Popen(
        ["tar", "-C", str(populated.path), "-cf", "-", "alloc/data", "web/local"],
        stdout=write_fd,
    )
    os.close(write_fd)
    dest = fresh_dest(tmp_path)
    with open(read_fd, "rb", buffering=0) as stream:
        dest.extract(stream)
    assert producer.wait(10) == 0
    assert splice_calls
    assert snapshot_tree(dest.data_dir) == snapshot_tree(populated.data_dir)


class _BrokenSink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_snapshot_sink_failure_is_reported(populated: AllocDir) -> None:
    with pytest.raises(AllocDirError, match="Broken pipe"):
        populated.snapshot(_BrokenSink())


def test_snapshot_to_a_raw_pipe_with_partial_writes(populated: AllocDir, tmp_path: Path) -> None:
    (populated.data_dir / "big").write_bytes(os.urandom(3 << 20))
    read_fd, write_fd = os.pipe()
    out = tmp_path / "stream.tar"
    with open(out, "wb") as sink_file:
        reader = subprocess.Popen(["cat"], stdin=read_fd, stdout=sink_file)
        os.close(read_fd)
        with open(write_fd, "wb", buffering=0) as sink:
            populated.snapshot(sink)
        assert reader.wait(10) == 0
    names = [m.name for m in members(out.read_bytes())]
    assert "alloc/data/big" in names


# --- extract ---------------------------------------------------------------------------


def fresh_dest(tmp_path: Path, name: str = "dest") -> AllocDir:
    dest = AllocDir(tmp_path / name, "new-alloc")
    dest.build()
    return dest


def test_round_trip_reproduces_files_dirs_modes_links(populated: AllocDir, tmp_path: Path) -> None:
    web = populated.task_dir("web")
    assert web is not None
    os.chmod(web.local_dir / "conf" / "app.ini", 0o600)
    os.chmod(web.local_dir / "conf", 0o750)
    (web.local_dir / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(web.local_dir / "run.sh", 0o755)
    os.utime(populated.data_dir / "data.bin", (1_600_000_000, 1_600_000_000))
    dest = fresh_dest(tmp_path)
    dest.extract(io.BytesIO(snap(populated)))
    assert snapshot_tree(dest.data_dir) == snapshot_tree(populated.data_dir)
    assert snapshot_tree(dest.path / "web" / "local") == snapshot_tree(web.local_dir)
    assert os.stat(dest.data_dir / "data.bin").st_mtime == 1_600_000_000
    assert stat.S_IMODE(os.stat(dest.path / "web").st_mode) == 0o777
    # nothing but the migrated parts arrives, and the staging dir is gone
    assert sorted(os.listdir(dest.path)) == ["alloc", "web"]
    assert sorted(os.listdir(dest.path / "web")) == ["local"]
    assert sorted(os.listdir(dest.shared_dir)) == ["data", "logs", "tmp"]


def test_round_trip_into_built_task_dirs(populated: AllocDir, tmp_path: Path) -> None:
    dest = fresh_dest(tmp_path)
    td = dest.new_task_dir("web")
    td.build()
    dest.extract(io.BytesIO(snap(populated)))
    assert (td.local_dir / "conf" / "app.ini").read_text() == "[app]\n"
    assert stat.S_IMODE(os.stat(td.secrets_dir).st_mode) == 0o700


def test_extract_requires_a_built_alloc_dir(populated: AllocDir, tmp_path: Path) -> None:
    dest = AllocDir(tmp_path, "not-built")
    with pytest.raises(AllocDirError, match="not built"):
        dest.extract(io.BytesIO(snap(populated)))


def test_extract_refuses_non_empty_destination_and_leaves_it(
    populated: AllocDir, tmp_path: Path
) -> None:
    dest = fresh_dest(tmp_path)
    td = dest.new_task_dir("web")
    td.build()
    (td.local_dir / "already-here").write_text("mine")
    before = snapshot_tree(dest.path)
    with pytest.raises(AllocDirError, match="not empty"):
        dest.extract(io.BytesIO(snap(populated)))
    assert snapshot_tree(dest.path) == before, "a failed extract must leave the dir as it was"


@pytest.mark.parametrize("cut", [1, 100, 512, 700, 5000])
def test_truncated_stream_fails_and_leaves_destination(
    populated: AllocDir, tmp_path: Path, cut: int
) -> None:
    data = snap(populated)
    dest = fresh_dest(tmp_path)
    before = snapshot_tree(dest.path)
    with pytest.raises(AllocDirError, match=r"truncated|bad tar header"):
        dest.extract(io.BytesIO(data[: len(data) - 1024 - cut]))
    assert snapshot_tree(dest.path) == before


def test_garbage_stream_fails(tmp_path: Path) -> None:
    dest = fresh_dest(tmp_path)
    with pytest.raises(AllocDirError):
        dest.extract(io.BytesIO(os.urandom(4096)))


def test_empty_stream_is_truncated(tmp_path: Path) -> None:
    dest = fresh_dest(tmp_path)
    with pytest.raises(AllocDirError, match="truncated"):
        dest.extract(io.BytesIO(b""))
    assert sorted(os.listdir(dest.path)) == ["alloc"]


def test_empty_archive_moves_nothing(tmp_path: Path) -> None:
    dest = fresh_dest(tmp_path)
    dest.extract(io.BytesIO(bytes(1024)))
    assert sorted(os.listdir(dest.path)) == ["alloc"]
    assert os.listdir(dest.data_dir) == []


def test_extract_reads_from_a_file_object_without_readinto(
    populated: AllocDir, tmp_path: Path
) -> None:
    class ReadOnly:
        def __init__(self, data: bytes) -> None:
            self._buf = io.BytesIO(data)

        def read(self, n: int = -1) -> bytes:
            return self._buf.read(min(n, 777))  # short reads, always

    dest = fresh_dest(tmp_path)
    dest.extract(ReadOnly(snap(populated)))  # type: ignore[arg-type]
    assert (dest.data_dir / "data.bin").read_bytes() == b"D" * 5000


def test_setuid_bits_are_dropped(alloc_dir: AllocDir, tmp_path: Path) -> None:
    tool = alloc_dir.data_dir / "tool"
    tool.write_text("#!/bin/sh\n")
    os.chmod(tool, 0o6755)
    dest = fresh_dest(tmp_path)
    dest.extract(io.BytesIO(snap(alloc_dir)))
    assert stat.S_IMODE(os.stat(dest.data_dir / "tool").st_mode) == 0o755


# --- GNU tar interop -------------------------------------------------------------------

LONG = "a-very-long-directory-name-" * 5


def _interop_tree(ad: AllocDir) -> None:
    web = ad.task_dir("web")
    assert web is not None
    deep = web.local_dir / LONG / "sub"
    deep.mkdir(parents=True)
    (deep / ("f" * 120)).write_bytes(b"long name")
    (web.local_dir / "naïve ☃.txt").write_text("unicode")
    os.symlink(LONG + "/sub", web.local_dir / ("long-link-" + "x" * 100))
    (ad.data_dir / "empty").write_bytes(b"")
    (ad.data_dir / "one").write_bytes(b"1")
    (ad.data_dir / "block").write_bytes(b"b" * 512)


def test_gnu_tar_reads_our_snapshot(alloc_dir: AllocDir, tmp_path: Path) -> None:
    _interop_tree(alloc_dir)
    out = tmp_path / "gnu"
    out.mkdir()
    subprocess.run(["tar", "-C", str(out), "-xf", "-"], input=snap(alloc_dir), check=True)
    assert snapshot_tree(out / "alloc" / "data") == snapshot_tree(alloc_dir.data_dir)
    assert snapshot_tree(out / "web" / "local") == snapshot_tree(alloc_dir.path / "web" / "local")


@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_we_read_gnu_tar_streams(alloc_dir: AllocDir, tmp_path: Path, fmt: str) -> None:
    if fmt == "ustar":  # ustar cannot hold the long names
        (alloc_dir.data_dir / "plain").write_text("plain")
    else:
        _interop_tree(alloc_dir)
    data = subprocess.run(
        [
            "tar",
            f"--format={fmt}",
            "-C",
            str(alloc_dir.path),
            "-cf",
            "-",
            "alloc/data",
            "web/local",
        ],
        check=True,
        capture_output=True,
    ).stdout
    dest = fresh_dest(tmp_path)
    dest.extract(io.BytesIO(data))
    assert snapshot_tree(dest.data_dir) == snapshot_tree(alloc_dir.data_dir)
    assert snapshot_tree(dest.path / "web" / "local") == snapshot_tree(
        alloc_dir.path / "web" / "local"
    )


def test_hard_links_in_a_stream_are_recreated(alloc_dir: AllocDir, tmp_path: Path) -> None:
    (alloc_dir.data_dir / "orig").write_text("shared inode")
    os.link(alloc_dir.data_dir / "orig", alloc_dir.data_dir / "twin")
    data = subprocess.run(
        ["tar", "-C", str(alloc_dir.path), "-cf", "-", "alloc/data"],
        check=True,
        capture_output=True,
    ).stdout
    assert any(m.islnk() for m in members(data)), "GNU tar stores the twin as a hard link"
    dest = fresh_dest(tmp_path)
    dest.extract(io.BytesIO(data))
    assert (dest.data_dir / "twin").read_text() == "shared inode"
    assert os.stat(dest.data_dir / "twin").st_ino == os.stat(dest.data_dir / "orig").st_ino


# --- round trip over generated trees ----------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c", "dir", "Data", "ü", "with space", "x" * 120, ".hidden"])
FILE_MODES = st.sampled_from([0o644, 0o600, 0o755, 0o400, 0o777, 0o640])
DIR_MODES = st.sampled_from([0o755, 0o700, 0o777, 0o1777, 0o555, 0o750])


def _node(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("file"), FILE_MODES, st.binary(max_size=2000)),
        st.tuples(st.just("link"), st.sampled_from(["a", "../a", "b/c", "missing", ".", "dir/x"])),
        st.tuples(st.just("dir"), DIR_MODES, st.dictionaries(NAMES, children, max_size=4)),
    )


TREES = st.dictionaries(
    NAMES,
    st.recursive(
        st.tuples(st.just("file"), FILE_MODES, st.binary(max_size=2000)), _node, max_leaves=12
    ),
    max_size=5,
)


def _materialize(base: Path, tree: dict) -> None:
    dirs: list[tuple[Path, int]] = []
    for name, node in tree.items():
        path = base / name
        if node[0] == "file":
            path.write_bytes(node[2])
            os.chmod(path, node[1])
            os.utime(path, (1_500_000_000, 1_500_000_000))
        elif node[0] == "link":
            os.symlink(node[1], path)
        else:
            path.mkdir()
            _materialize(path, node[2])
            dirs.append((path, node[1]))
    for path, mode in dirs:
        os.chmod(path, mode)
        os.utime(path, (1_400_000_000, 1_400_000_000))


def _full_tree(root: Path) -> dict[str, tuple]:
    """Like snapshot_tree, plus mtimes of files and directories."""
    tree = snapshot_tree(root)
    for rel, entry in list(tree.items()):
        if entry[0] != "link":
            tree[rel] = (*entry, int(os.lstat(root / rel).st_mtime))
    return tree


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data_tree=TREES, local_tree=TREES)
def test_round_trip_of_generated_trees(data_tree: dict, local_tree: dict) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        src = AllocDir(Path(tmp, "src"), "prev")
        src.build()
        src.new_task_dir("web").build()
        _materialize(src.data_dir, data_tree)
        _materialize(src.path / "web" / "local", local_tree)
        dest = AllocDir(Path(tmp, "dest"), "next")
        dest.build()
        dest.extract(io.BytesIO(snap(src)))
        assert _full_tree(dest.data_dir) == _full_tree(src.data_dir)
        assert _full_tree(dest.path / "web" / "local") == _full_tree(src.path / "web" / "local")
