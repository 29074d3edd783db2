"""Fixtures for the alloc dir tests: a built alloc dir with one built task, "web"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from allocrunner.allocdir import AllocDir


def snapshot_tree(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its type, mode and content (or link target)."""
    tree: dict[str, tuple] = {}
    if not os.path.lexists(root):
        return tree
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            rel = str(full.relative_to(root))
            st = os.lstat(full)
            if full.is_symlink():
                tree[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                tree[rel] = ("dir", st.st_mode & 0o7777)
            else:
                tree[rel] = ("file", st.st_mode & 0o7777, full.read_bytes())
    return tree


@pytest.fixture
def alloc_dir(tmp_path: Path) -> AllocDir:
    ad = AllocDir(tmp_path / "allocs", "alloc-1")
    ad.build()
    ad.new_task_dir("web").build()
    return ad


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the alloc dirs that nothing may ever read or write."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("host secret")
    return path
