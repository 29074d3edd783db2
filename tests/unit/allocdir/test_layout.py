"""AllocDir / TaskDir layout: build, modes, registration, destroy, disk usage
(semantics §1.3; Nomad's TestAllocDir_BuildAlloc)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from allocrunner.allocdir import AllocDir, AllocDirDestroyError, TaskDir
from allocrunner.errors import AllocDirError, PathEscapeError


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_paths_follow_the_contract(tmp_path: Path) -> None:
    ad = AllocDir(tmp_path, "abc")
    assert ad.alloc_id == "abc"
    assert ad.root == tmp_path
    assert ad.path == tmp_path / "abc"
    assert ad.shared_dir == ad.path / "alloc"
    assert ad.data_dir == ad.shared_dir / "data"
    assert ad.logs_dir == ad.shared_dir / "logs"
    assert ad.tmp_dir == ad.shared_dir / "tmp"
    assert not ad.path.exists(), "the constructor must not touch the disk"
    assert not ad.is_built()


def test_task_paths_are_the_task_dirs_as_strings(tmp_path: Path) -> None:
    td = AllocDir(tmp_path, "abc").new_task_dir("web")
    assert td.paths() == (
        str(td.dir),
        str(td.shared_alloc_dir),
        str(td.local_dir),
        str(td.secrets_dir),
        str(td.logs_dir),
    )
    assert td.paths().local_dir == str(tmp_path / "abc" / "web" / "local")


def test_relative_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ad = AllocDir("allocs", "a")
    assert ad.root == tmp_path / "allocs"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert AllocDir("allocs", "b").root == tmp_path / "elsewhere" / "allocs"
    assert AllocDir(str(tmp_path / "x" / ".." / "allocs"), "c").root == tmp_path / "allocs"


@pytest.mark.parametrize("alloc_id", ["", ".", "..", "a/b", "a\x00b"])
def test_bad_alloc_id_is_refused(tmp_path: Path, alloc_id: str) -> None:
    with pytest.raises(PathEscapeError, match="alloc_id"):
        AllocDir(tmp_path, alloc_id)


def test_build_creates_shared_dirs_with_nomads_modes(tmp_path: Path) -> None:
    ad = AllocDir(tmp_path / "root", "a1")
    ad.build()
    assert ad.is_built()
    assert mode(ad.path) == 0o755
    assert mode(ad.shared_dir) == 0o755
    for sub in (ad.data_dir, ad.logs_dir, ad.tmp_dir):
        assert sub.is_dir(), sub
        assert mode(sub) == 0o777, sub


def test_build_makes_a_missing_root_and_its_parents(tmp_path: Path) -> None:
    ad = AllocDir(tmp_path / "node" / "allocs", "abc")
    ad.build()
    assert ad.is_built()
    assert ad.logs_dir.is_dir() and ad.data_dir.is_dir() and ad.tmp_dir.is_dir()
    AllocDir(tmp_path / "node" / "allocs", "def").build()  # the root there already
    assert sorted(os.listdir(tmp_path / "node" / "allocs")) == ["abc", "def"]


def test_build_under_a_root_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "allocs").write_text("not a directory")
    ad = AllocDir(tmp_path / "allocs", "abc")
    with pytest.raises(AllocDirError, match="abc"):
        ad.build()
    assert not ad.is_built()


def test_build_is_idempotent_and_keeps_contents(alloc_dir: AllocDir) -> None:
    (alloc_dir.data_dir / "keep").write_text("x")
    os.chmod(alloc_dir.data_dir, 0o700)
    alloc_dir.build()
    alloc_dir.build()
    assert (alloc_dir.data_dir / "keep").read_text() == "x"
    assert mode(alloc_dir.data_dir) == 0o777, "build resets the layout's modes"


def test_build_refuses_symlink_in_place_of_shared_dir(tmp_path: Path, outside: Path) -> None:
    ad = AllocDir(tmp_path / "root", "a1")
    ad.build()
    os.rmdir(ad.tmp_dir)
    os.symlink(outside, ad.tmp_dir)
    before = mode(outside)
    with pytest.raises(AllocDirError, match="not a directory"):
        ad.build()
    assert mode(outside) == before, "build must not chmod through a symlink"


def test_new_task_dir_registers_without_creating(alloc_dir: AllocDir) -> None:
    td = alloc_dir.new_task_dir("db")
    assert isinstance(td, TaskDir)
    assert td.name == "db"
    assert td.dir == alloc_dir.path / "db"
    assert td.local_dir == td.dir / "local"
    assert td.secrets_dir == td.dir / "secrets"
    assert td.tmp_dir == td.dir / "tmp"
    assert td.shared_alloc_dir == alloc_dir.shared_dir
    assert td.logs_dir == alloc_dir.logs_dir
    assert not td.dir.exists()
    assert alloc_dir.task_dir("db") is td
    assert alloc_dir.new_task_dir("db") is td, "registration is idempotent"


def test_task_dir_lookup_and_copy(alloc_dir: AllocDir) -> None:
    assert alloc_dir.task_dir("missing") is None
    dirs = alloc_dir.task_dirs()
    assert set(dirs) == {"web"}
    dirs["intruder"] = dirs["web"]
    assert set(alloc_dir.task_dirs()) == {"web"}, "task_dirs() must return a copy"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x\x00"])
def test_bad_task_names_are_refused(alloc_dir: AllocDir, name: str) -> None:
    with pytest.raises(PathEscapeError, match="task name"):
        alloc_dir.new_task_dir(name)


def test_task_named_like_the_shared_dir_is_refused(alloc_dir: AllocDir) -> None:
    with pytest.raises(ValueError, match="shared alloc dir"):
        alloc_dir.new_task_dir("alloc")


def test_concurrent_registration_yields_one_task_dir(alloc_dir: AllocDir) -> None:
    results: list[TaskDir] = []
    barrier = threading.Barrier(8)

    def register() -> None:
        barrier.wait()
        results.append(alloc_dir.new_task_dir("raced"))

    threads = [threading.Thread(target=register, name=f"register-{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(r) for r in results}) == 1


def test_task_dir_build_modes_and_idempotence(alloc_dir: AllocDir) -> None:
    td = alloc_dir.new_task_dir("db")
    td.build()
    assert mode(td.dir) == 0o777
    assert mode(td.local_dir) == 0o777
    assert mode(td.secrets_dir) == 0o700
    assert mode(td.tmp_dir) == 0o1777
    assert os.stat(td.tmp_dir).st_mode & stat.S_ISVTX, "tmp must be sticky"
    (td.local_dir / "f").write_text("keep")
    td.build()
    assert (td.local_dir / "f").read_text() == "keep"
    assert mode(td.secrets_dir) == 0o700


def test_task_dir_build_needs_a_built_alloc_dir(tmp_path: Path) -> None:
    ad = AllocDir(tmp_path, "nope")
    td = ad.new_task_dir("web")
    with pytest.raises(AllocDirError, match="not built"):
        td.build()


def test_task_dir_build_never_follows_a_planted_symlink(alloc_dir: AllocDir, outside: Path) -> None:
    td = alloc_dir.task_dir("web")
    assert td is not None
    os.rmdir(td.local_dir)
    os.symlink(outside, td.local_dir)
    os.chmod(outside, 0o700)
    with pytest.raises(AllocDirError, match="not a directory"):
        td.build()
    assert mode(outside) == 0o700


def test_task_dir_is_immutable(alloc_dir: AllocDir) -> None:
    td = alloc_dir.new_task_dir("x")
    with pytest.raises(AttributeError):
        td.name = "y"  # type: ignore[misc]


def test_destroy_removes_everything_and_is_idempotent(alloc_dir: AllocDir) -> None:
    td = alloc_dir.task_dir("web")
    assert td is not None
    (td.local_dir / "deep" / "deeper").mkdir(parents=True)
    (td.local_dir / "deep" / "deeper" / "f").write_text("x")
    alloc_dir.destroy()
    assert not alloc_dir.path.exists()
    assert not alloc_dir.is_built()
    alloc_dir.destroy()
    assert alloc_dir.task_dir("web") is td, "registrations survive destroy"


def test_destroy_then_build_starts_afresh(alloc_dir: AllocDir) -> None:
    (alloc_dir.data_dir / "old").write_text("x")
    alloc_dir.destroy()
    alloc_dir.build()
    assert alloc_dir.is_built()
    assert list(alloc_dir.data_dir.iterdir()) == []


def test_destroy_never_follows_symlinks(alloc_dir: AllocDir, outside: Path) -> None:
    os.symlink(outside, alloc_dir.data_dir / "to-outside")
    os.symlink(outside / "secret.txt", alloc_dir.data_dir / "to-file")
    alloc_dir.destroy()
    assert (outside / "secret.txt").read_text() == "host secret"


def test_destroy_removes_read_only_dirs(alloc_dir: AllocDir) -> None:
    locked = alloc_dir.data_dir / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    os.chmod(locked, 0o500)
    alloc_dir.destroy()
    assert not alloc_dir.path.exists()


def test_destroy_collects_every_error(alloc_dir: AllocDir, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure to remove one entry does not stop the rest; all are reported."""
    for name in ("a", "b", "c"):
        (alloc_dir.data_dir / name).write_text(name)
    real_unlink = os.unlink

    def failing_unlink(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(path) in ("a", "b") or str(path).endswith(("/a", "/b")):
            raise OSError(5, "Input/output error", path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", failing_unlink)
    with pytest.raises(AllocDirDestroyError) as info:
        alloc_dir.destroy()
    monkeypatch.undo()
    err = info.value
    assert isinstance(err, AllocDirError)
    # each failing file is reported (once per retry round at most), and c is gone
    failed = {os.path.basename(str(e.filename)) for e in err.errors if e.filename}
    assert {"a", "b"} <= failed, err.errors
    assert not (alloc_dir.data_dir / "c").exists()
    assert (alloc_dir.data_dir / "a").exists()
    assert "a" in str(err) and "b" in str(err)
    alloc_dir.destroy()
    assert not alloc_dir.path.exists()


def test_disk_usage_counts_this_alloc_dir(alloc_dir: AllocDir) -> None:
    empty = alloc_dir.disk_usage()
    assert empty > 0, "directories themselves use blocks"
    with open(alloc_dir.data_dir / "blob", "wb") as f:
        f.write(os.urandom(3 << 20))
        f.flush()
        os.fsync(f.fileno())
    used = alloc_dir.disk_usage()
    assert used >= empty + (3 << 20)
    os.link(alloc_dir.data_dir / "blob", alloc_dir.data_dir / "hardlink")
    assert alloc_dir.disk_usage() == used, "hard links are counted once"


def test_disk_usage_ignores_symlink_targets(alloc_dir: AllocDir, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(2 << 20))
    before = alloc_dir.disk_usage()
    os.symlink(big, alloc_dir.data_dir / "big-link")
    os.symlink(tmp_path, alloc_dir.data_dir / "dir-link")
    assert alloc_dir.disk_usage() < before + (1 << 20)


def test_disk_usage_of_missing_alloc_dir_is_zero(tmp_path: Path) -> None:
    assert AllocDir(tmp_path, "never-built").disk_usage() == 0
