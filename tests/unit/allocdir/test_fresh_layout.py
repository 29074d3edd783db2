"""A fresh alloc dir or task dir is built privately by path, then opened up: its
modes are Nomad's whatever the umask, nobody else can enter it while it is filled,
and a build cut short is completed by the next one."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from allocrunner.allocdir import AllocDir, fs_dirs
from allocrunner.errors import AllocDirError

EXPECTED = {
    ".": 0o755,
    "alloc": 0o755,
    "alloc/data": 0o777,
    "alloc/logs": 0o777,
    "alloc/tmp": 0o777,
    "web": 0o777,
    "web/local": 0o777,
    "web/secrets": 0o700,
    "web/tmp": 0o1777,
}

_BUILD_UNDER_UMASK = """
import json, os, stat, sys
from allocrunner.allocdir import AllocDir
os.umask(int(sys.argv[2], 8))
ad = AllocDir(sys.argv[1], "a1")
ad.build()
ad.new_task_dir("web").build()
print(json.dumps({rel: stat.S_IMODE(os.lstat(os.path.join(ad.path, rel)).st_mode)
                  for rel in sys.argv[3:]}))
"""


def modes(alloc_dir: AllocDir) -> dict[str, int]:
    return {rel: stat.S_IMODE(os.lstat(alloc_dir.path / rel).st_mode) for rel in EXPECTED}


@pytest.mark.parametrize("umask", ["077", "022", "000", "277"])
def test_a_fresh_layout_has_nomads_modes_whatever_the_umask(tmp_path: Path, umask: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _BUILD_UNDER_UMASK, str(tmp_path), umask, *EXPECTED],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == EXPECTED


# Makes mkdir refuse, as the kernel does for a user without CAP_DAC_OVERRIDE, to
# create an entry in a directory whose owner (this process) has no write bit: the
# tests run as root, which the kernel never refuses.
_AS_NON_ROOT = """
import errno, os
_real_mkdir = os.mkdir
def _mkdir(path, mode=0o777, *, dir_fd=None):
    parent = os.fstat(dir_fd) if dir_fd is not None else os.stat(os.path.dirname(path))
    if not parent.st_mode & 0o200:
        raise PermissionError(errno.EACCES, "Permission denied", path)
    _real_mkdir(path, mode, dir_fd=dir_fd)
os.mkdir = _mkdir
"""


def test_a_non_root_agent_builds_under_a_umask_without_the_owners_write_bit(
    tmp_path: Path,
) -> None:
    """Under umask 277 a fresh dir is made unwritable (0500); the build then walks it by
    descriptor, which sets its mode before making anything in it."""
    out = subprocess.run(
        [sys.executable, "-c", _AS_NON_ROOT + _BUILD_UNDER_UMASK, str(tmp_path), "277", *EXPECTED],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(out.stdout) == EXPECTED


def test_nobody_else_can_enter_a_fresh_dir_while_it_is_filled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ad = AllocDir(tmp_path, "a1")
    task_dir = f"{ad.path}/web"
    seen: dict[str, int] = {}
    real_mkdir = os.mkdir

    def watching_mkdir(path: str, mode: int = 0o777, **kwargs: object) -> None:
        """Note the mode of the fresh dir being filled as each entry is made in it."""
        path = str(path)
        if path.startswith(f"{task_dir}/"):
            seen[path] = stat.S_IMODE(os.lstat(task_dir).st_mode)
        elif path.startswith(f"{ad.path}/") and path != task_dir:
            seen[path] = stat.S_IMODE(os.lstat(ad.path).st_mode)
        real_mkdir(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fs_dirs.os, "mkdir", watching_mkdir)
    ad.build()
    ad.new_task_dir("web").build()
    monkeypatch.undo()
    assert {str(ad.path / rel) for rel in EXPECTED if rel not in (".", "web")} == set(seen)
    assert set(seen.values()) == {fs_dirs.PRIVATE_DIR_MODE}, seen
    assert modes(ad) == EXPECTED


def test_a_build_cut_short_is_completed_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ad = AllocDir(tmp_path, "a1")
    real_chmod = os.chmod

    def failing_chmod(path: str, mode: int, **kwargs: object) -> None:
        if str(path).endswith("/logs") or str(path).endswith("/secrets"):
            raise OSError(28, "No space left on device", str(path))
        real_chmod(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fs_dirs.os, "chmod", failing_chmod)
    with pytest.raises(AllocDirError, match="logs"):
        ad.build()
    assert stat.S_IMODE(os.lstat(ad.path).st_mode) == 0o700, "left private"
    assert not ad.is_built()
    monkeypatch.undo()
    ad.build()
    monkeypatch.setattr(fs_dirs.os, "chmod", failing_chmod)
    task = ad.new_task_dir("web")
    with pytest.raises(AllocDirError, match="secrets"):
        task.build()
    assert stat.S_IMODE(os.lstat(task.dir).st_mode) == 0o700, "left private"
    monkeypatch.undo()
    task.build()
    assert modes(ad) == EXPECTED


@pytest.mark.parametrize("which", ["alloc", "task"])
def test_a_build_that_runs_while_a_fresh_dir_is_filled_leaves_both_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """The second build finds the dir and walks it by descriptor, opening it up; the
    first then meets entries that exist and walks it by descriptor too."""
    ad = AllocDir(tmp_path, "a1")
    if which == "task":
        ad.build()
    task = ad.new_task_dir("web")
    build = ad.build if which == "alloc" else task.build
    top = str(ad.path if which == "alloc" else task.dir)
    real_mkdir = os.mkdir
    nested: list[bool] = []

    def racing_mkdir(path: str, mode: int = 0o777, **kwargs: object) -> None:
        if not nested and str(path).startswith(f"{top}/"):
            nested.append(True)
            build()  # on this thread, between the fresh dir's mkdir and its filling
        real_mkdir(path, mode, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fs_dirs.os, "mkdir", racing_mkdir)
    build()
    monkeypatch.undo()
    assert nested == [True]
    if which == "alloc":
        task.build()
    assert modes(ad) == EXPECTED


@pytest.mark.parametrize("which", ["alloc", "task"])
def test_a_symlink_where_the_fresh_dir_belongs_is_never_followed(
    tmp_path: Path, which: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    ad = AllocDir(tmp_path / "root", "a1")
    if which == "task":
        ad.build()
        os.symlink(outside, ad.path / "web")
        build = ad.new_task_dir("web").build
    else:
        (tmp_path / "root").mkdir()
        os.symlink(outside, ad.path)
        build = ad.build
    with pytest.raises(AllocDirError):
        build()
    assert stat.S_IMODE(os.lstat(outside).st_mode) == 0o700
    assert os.listdir(outside) == []
