"""Escape matrix for extract(): hostile migration streams (Nomad's
TestPrevAlloc_StreamAllocDir_FileEscape / BadSymlink / BadSymlink_Linkname /
SyminkWriteAttack). Every one is refused, nothing is written anywhere, and the
destination alloc dir is left exactly as it was."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import NamedTuple

import pytest

from allocrunner.allocdir import AllocDir
from allocrunner.errors import AllocDirError, PathEscapeError

from .conftest import snapshot_tree


class E(NamedTuple):
    """One tar member to put in a hand-made stream."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b"pwned"
    link: str = ""
    mode: int = 0o644


def stream(*entries: E) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.kind
            info.linkname = e.link
            info.mode = e.mode
            if e.kind == tarfile.REGTYPE:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


DIRS = (E("alloc/data", tarfile.DIRTYPE, mode=0o777),)


def _cases(outside: Path) -> dict[str, tuple[tuple[E, ...], type[Exception], str]]:
    out = str(outside)
    return {
        "dotdot-file": ((E("../evil"),), PathEscapeError, r"'\.\.'"),
        "dotdot-inside-name": (
            (*DIRS, E("alloc/data/../../../evil")),
            PathEscapeError,
            r"'\.\.'",
        ),
        "dotdot-deep": (
            (*DIRS, E("alloc/data/./../../../outside/evil")),
            PathEscapeError,
            r"'\.\.'",
        ),
        "absolute-name": ((E(f"{out}/evil"),), PathEscapeError, "absolute"),
        "symlink-to-root": (
            (*DIRS, E("alloc/data/l", tarfile.SYMTYPE, link="/")),
            PathEscapeError,
            "absolute",
        ),
        "symlink-absolute-outside": (
            (*DIRS, E("alloc/data/l", tarfile.SYMTYPE, link=out)),
            PathEscapeError,
            "absolute",
        ),
        "symlink-relative-outside": (
            (*DIRS, E("alloc/data/l", tarfile.SYMTYPE, link="../../../outside")),
            PathEscapeError,
            "escapes",
        ),
        "write-through-symlink-inside": (
            (
                *DIRS,
                E("web/local", tarfile.DIRTYPE),
                E("alloc/data/l", tarfile.SYMTYPE, link="../../web/local"),
                E("alloc/data/l/evil"),
            ),
            PathEscapeError,
            "symlink",
        ),
        "write-attack-symlink-then-file": (
            (
                *DIRS,
                E("alloc/data/f", tarfile.SYMTYPE, link="../../../outside/secret.txt"),
                E("alloc/data/f", data=b"overwritten"),
            ),
            PathEscapeError,
            "escapes",
        ),
        "symlink-chain-leaves": (
            (
                *DIRS,
                E("alloc/data/p1/p2/p3", tarfile.DIRTYPE),
                E("alloc/data/p1/p2/p3/s", tarfile.SYMTYPE, link="../../../q"),
                E("alloc/data/q", tarfile.DIRTYPE),
                E("alloc/data/l", tarfile.SYMTYPE, link="p1/p2/p3/s/../../../../.."),
            ),
            PathEscapeError,
            "escapes",
        ),
        "dangling-chain-leaves": (
            (
                *DIRS,
                E("alloc/data/p1/p2/p3", tarfile.DIRTYPE),
                E("alloc/data/p1/p2/p3/s", tarfile.SYMTYPE, link="../../../missing"),
                E("alloc/data/l", tarfile.SYMTYPE, link="p1/p2/p3/s/../../../../.."),
            ),
            PathEscapeError,
            "escapes",
        ),
        "hardlink-absolute": (
            (*DIRS, E("alloc/data/h", tarfile.LNKTYPE, link="/etc/passwd")),
            PathEscapeError,
            "absolute",
        ),
        "hardlink-dotdot": (
            (*DIRS, E("alloc/data/h", tarfile.LNKTYPE, link="../../../outside/secret.txt")),
            PathEscapeError,
            r"'\.\.'",
        ),
        "hardlink-outside-roots": (
            (*DIRS, E("alloc/data/h", tarfile.LNKTYPE, link="web/secrets/token")),
            AllocDirError,
            "outside alloc/data",
        ),
        "into-secrets": ((E("web/secrets/token"),), AllocDirError, "outside alloc/data"),
        "into-logs": ((E("alloc/logs/web.stdout.0"),), AllocDirError, "outside alloc/data"),
        "into-task-tmp": ((E("web/tmp/x"),), AllocDirError, "outside alloc/data"),
        "top-level-file": ((E("evil"),), AllocDirError, "outside alloc/data"),
        "alloc-dir-itself": ((E(".", tarfile.DIRTYPE),), AllocDirError, "itself"),
        "device": (
            (*DIRS, E("alloc/data/null", tarfile.CHRTYPE)),
            AllocDirError,
            "unsupported type",
        ),
        "fifo": ((*DIRS, E("alloc/data/fifo", tarfile.FIFOTYPE)), AllocDirError, "unsupported"),
        "empty-link-target": (
            (*DIRS, E("alloc/data/l", tarfile.SYMTYPE, link="")),
            AllocDirError,
            "invalid target",
        ),
        "error-marker": (
            (*DIRS, E("alloc/data/ok", data=b"fine"), E("NOMAD-prev-ERROR.log", data=b"boom")),
            AllocDirError,
            "reported an error: boom",
        ),
    }


CASE_NAMES = sorted(_cases(Path("/x")))


@pytest.fixture
def dest(tmp_path: Path) -> AllocDir:
    ad = AllocDir(tmp_path / "allocs", "dest")
    ad.build()
    ad.new_task_dir("web").build()
    (ad.data_dir / "existing").write_text("keep")  # untouched: the move never happens
    return ad


@pytest.mark.parametrize("case", CASE_NAMES)
def test_hostile_stream_is_refused_and_nothing_is_written(
    dest: AllocDir, outside: Path, tmp_path: Path, case: str
) -> None:
    entries, error, pattern = _cases(outside)[case]
    before = snapshot_tree(tmp_path)
    with pytest.raises(error, match=pattern):
        dest.extract(io.BytesIO(stream(*entries)))
    assert snapshot_tree(tmp_path) == before
    assert (outside / "secret.txt").read_text() == "host secret"


def test_symlink_then_file_of_the_same_name_replaces_the_link(tmp_path: Path) -> None:
    """The write attack with a link that is itself harmless: the later file entry must
    replace the link, never write through it."""
    dest = AllocDir(tmp_path, "d")
    dest.build()
    data = stream(
        *DIRS,
        E("alloc/data/target", data=b"original"),
        E("alloc/data/f", tarfile.SYMTYPE, link="target"),
        E("alloc/data/f", data=b"new content"),
    )
    dest.extract(io.BytesIO(data))
    assert not (dest.data_dir / "f").is_symlink()
    assert (dest.data_dir / "f").read_bytes() == b"new content"
    assert (dest.data_dir / "target").read_bytes() == b"original"


def test_duplicate_entries_take_the_last(tmp_path: Path) -> None:
    dest = AllocDir(tmp_path, "d")
    dest.build()
    dest.extract(
        io.BytesIO(stream(*DIRS, E("alloc/data/f", data=b"1"), E("alloc/data/f", data=b"2")))
    )
    assert (dest.data_dir / "f").read_bytes() == b"2"


def test_links_that_stay_inside_are_kept(tmp_path: Path) -> None:
    dest = AllocDir(tmp_path, "d")
    dest.build()
    data = stream(
        *DIRS,
        E("web/local", tarfile.DIRTYPE),
        E("web/local/to-data", tarfile.SYMTYPE, link="../../alloc/data"),
        E("web/local/to-secrets", tarfile.SYMTYPE, link="../secrets/token"),
        E("web/local/dangling", tarfile.SYMTYPE, link="not/there/yet"),
        E("alloc/data/loop-a", tarfile.SYMTYPE, link="loop-b"),
        E("alloc/data/loop-b", tarfile.SYMTYPE, link="loop-a"),
    )
    dest.extract(io.BytesIO(data))
    local = dest.path / "web" / "local"
    assert os.readlink(local / "to-data") == "../../alloc/data"
    assert os.readlink(local / "dangling") == "not/there/yet"
    assert os.readlink(dest.data_dir / "loop-a") == "loop-b"
    # the fs API still refuses to follow the link into secrets
    with pytest.raises(PermissionError):
        dest.read_at("web/local/to-secrets", 0, 1)


def test_preexisting_symlink_in_the_destination_is_not_followed(
    tmp_path: Path, outside: Path
) -> None:
    """A task of an earlier run left web/local as a symlink out of the alloc dir; the
    migrated local dir must not land there."""
    dest = AllocDir(tmp_path / "allocs", "d")
    dest.build()
    (dest.path / "web").mkdir()
    os.symlink(str(outside), dest.path / "web" / "local")
    before = snapshot_tree(outside)
    data = stream(*DIRS, E("web/local", tarfile.DIRTYPE), E("web/local/evil"))
    with pytest.raises(AllocDirError):
        dest.extract(io.BytesIO(data))
    assert snapshot_tree(outside) == before
    assert os.path.islink(dest.path / "web" / "local")


def test_missing_parent_dirs_are_created(tmp_path: Path) -> None:
    dest = AllocDir(tmp_path, "d")
    dest.build()
    dest.extract(io.BytesIO(stream(E("web/local/a/b/c.txt", data=b"deep"))))
    assert (dest.path / "web" / "local" / "a" / "b" / "c.txt").read_bytes() == b"deep"
    assert oct(os.stat(dest.path / "web" / "local" / "a").st_mode & 0o777) == oct(0o755)
