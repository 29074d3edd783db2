"""move_from(): sticky-disk migration between alloc dirs on one node (Nomad's
TestAllocDir_Move and TestAllocRunner_MoveAllocDir)."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner.allocdir import AllocDir
from allocrunner.errors import AllocDirError

from .conftest import snapshot_tree


def make_prev(root: Path, alloc_id: str = "prev") -> AllocDir:
    prev = AllocDir(root, alloc_id)
    prev.build()
    web = prev.new_task_dir("web")
    web.build()
    (prev.data_dir / "db.sqlite").write_bytes(b"rows")
    (web.local_dir / "cache").mkdir()
    (web.local_dir / "cache" / "item").write_text("cached")
    os.chmod(web.local_dir / "cache" / "item", 0o600)
    os.symlink("cache/item", web.local_dir / "link")
    return prev


@pytest.fixture
def prev(tmp_path: Path) -> AllocDir:
    return make_prev(tmp_path / "allocs")


@pytest.fixture
def new(tmp_path: Path) -> AllocDir:
    ad = AllocDir(tmp_path / "allocs", "next")
    ad.build()
    return ad


def test_moves_data_and_task_local_into_unbuilt_task_dirs(prev: AllocDir, new: AllocDir) -> None:
    expected_data = snapshot_tree(prev.data_dir)
    expected_local = snapshot_tree(prev.path / "web" / "local")
    new.move_from(prev, ["web"])
    assert snapshot_tree(new.data_dir) == expected_data
    assert snapshot_tree(new.path / "web" / "local") == expected_local
    assert stat.S_IMODE(os.stat(new.path / "web").st_mode) == 0o777
    assert not prev.data_dir.exists()
    assert not (prev.path / "web" / "local").exists()
    # the new task dir can then be built around the moved local dir
    td = new.new_task_dir("web")
    td.build()
    assert (td.local_dir / "cache" / "item").read_text() == "cached"


def test_moves_into_built_task_dirs(prev: AllocDir, new: AllocDir) -> None:
    new.new_task_dir("web").build()
    new.move_from(prev, ["web"])
    assert (new.path / "web" / "local" / "link").is_symlink()
    assert (new.path / "web" / "secrets").is_dir()


def test_tasks_may_be_given_as_task_objects(prev: AllocDir, new: AllocDir) -> None:
    class Task:
        name = "web"

    new.move_from(prev, [Task()])  # type: ignore[list-item]
    assert (new.path / "web" / "local" / "cache" / "item").exists()


def test_missing_sources_are_skipped(prev: AllocDir, new: AllocDir) -> None:
    shutil.rmtree(prev.data_dir)
    new.move_from(prev, ["web", "never-ran"])
    assert (new.path / "web" / "local" / "link").is_symlink()
    assert not (new.path / "never-ran").exists()
    assert new.data_dir.is_dir() and list(new.data_dir.iterdir()) == []


def test_destination_must_be_built(prev: AllocDir, tmp_path: Path) -> None:
    unbuilt = AllocDir(tmp_path / "allocs", "unbuilt")
    with pytest.raises(AllocDirError, match="not built"):
        unbuilt.move_from(prev, ["web"])
    assert prev.data_dir.exists()


def test_refuses_to_move_into_itself(prev: AllocDir) -> None:
    with pytest.raises(AllocDirError, match="itself"):
        prev.move_from(AllocDir(prev.root, prev.alloc_id), ["web"])


def test_other_must_be_an_alloc_dir(new: AllocDir) -> None:
    with pytest.raises(TypeError, match="AllocDir"):
        new.move_from("/some/path", ["web"])  # type: ignore[arg-type]


def test_non_empty_destination_fails_and_rolls_back(prev: AllocDir, new: AllocDir) -> None:
    td = new.new_task_dir("web")
    td.build()
    (td.local_dir / "mine").write_text("do not clobber")
    prev_before = snapshot_tree(prev.path)
    new_before = snapshot_tree(new.path)
    with pytest.raises(AllocDirError, match="not empty"):
        new.move_from(prev, ["web"])
    assert snapshot_tree(prev.path) == prev_before, "the data dir must be moved back"
    assert snapshot_tree(new.path) == new_before


def test_symlinked_source_is_refused(prev: AllocDir, new: AllocDir, outside: Path) -> None:
    local = prev.path / "web" / "local"
    shutil.rmtree(local)
    os.symlink(str(outside), local)
    with pytest.raises(AllocDirError, match="not a directory"):
        new.move_from(prev, ["web"])
    assert prev.data_dir.is_dir(), "rolled back"
    assert list(new.data_dir.iterdir()) == []
    assert not (new.path / "web").exists(), "a task dir made for the move is removed again"


@pytest.fixture
def other_fs() -> Iterator[Path]:
    """A directory on a different file system than /tmp (tmpfs /dev/shm)."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev:
        pytest.skip("needs /dev/shm on a separate file system")
    path = Path(tempfile.mkdtemp(prefix="allocdir-test-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_cross_file_system_move_copies_then_removes(other_fs: Path, new: AllocDir) -> None:
    prev = make_prev(other_fs)
    expected_data = snapshot_tree(prev.data_dir)
    expected_local = snapshot_tree(prev.path / "web" / "local")
    new.move_from(prev, ["web"])
    assert snapshot_tree(new.data_dir) == expected_data
    assert snapshot_tree(new.path / "web" / "local") == expected_local
    assert not prev.data_dir.exists()
    assert not (prev.path / "web" / "local").exists()
    assert [p.name for p in new.path.iterdir() if p.name.startswith(".")] == []


def test_cross_file_system_failure_leaves_both_sides(
    prev: AllocDir, new: AllocDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated EXDEV with a copy that fails half way: nothing half-copied remains."""
    real_rename = os.rename

    def rename(src: object, dst: object, *args: object, **kwargs: object) -> None:
        if ".moving-" not in str(dst) and str(src).startswith(str(prev.path)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_rename(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    real_copytree = shutil.copytree
    copied: list[str] = []

    def copy_until_full(src: str, dst: str, **kwargs: object) -> object:
        if copied:
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        copied.append(dst)
        return shutil.copy2(src, dst)

    def copytree(src: object, dst: object, *args: object, **kwargs: object) -> object:
        if not args:  # the top-level call; recursive calls pass everything positionally
            kwargs["copy_function"] = copy_until_full
        return real_copytree(src, dst, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copytree", copytree)
    prev_before = snapshot_tree(prev.path)
    with pytest.raises(AllocDirError, match="copy"):
        new.move_from(prev, ["web"])
    monkeypatch.undo()
    assert copied, "the copy must have started before it failed"
    assert snapshot_tree(prev.path) == prev_before
    assert sorted(p.name for p in new.shared_dir.iterdir()) == ["data", "logs", "tmp"]
    assert list(new.data_dir.iterdir()) == []
