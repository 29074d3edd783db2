"""Archives and destinations that try to write outside the task dir are refused."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from allocrunner.artifacts import ArtifactConfig, ArtifactError, ArtifactSpec, fetch_artifact
from tests.unit.artifacts.conftest import ArtifactServer, Member, Served, make_tar, make_zip


def outside_files(task_dir: Path) -> set[str]:
    """Everything under the test's tmp dir that is not inside the task dir."""
    root = task_dir.parent.parent
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if task_dir not in p.parents and p != task_dir and p not in task_dir.parents
    }


def fetch_archive(server: ArtifactServer, task_dir: Path, name: str, body: bytes) -> None:
    server.routes[f"/{name}"] = Served(body)
    fetch_artifact(ArtifactSpec(source=server.url(f"/{name}")), task_dir, allow_local=False)


TAR_ATTACKS = {
    "dotdot": ([Member("../../evil", b"x")], "entry contains '..': ../../evil"),
    "dotdot inside": ([Member("a/../../evil", b"x")], "entry contains '..'"),
    "backslash dotdot": ([Member("..\\evil", b"x")], "entry contains '..'"),
    "symlink out": (
        [Member("link", kind="symlink", link="../../../outside")],
        "symlink link -> ../../../outside escapes the destination",
    ),
    "absolute symlink": ([Member("link", kind="symlink", link="/etc")], "is absolute"),
    "write through a symlink": (
        [
            Member("sub", kind="dir"),
            Member("sub/up", kind="symlink", link=".."),
            Member("sub/up/../../x", b"x"),
        ],
        "entry contains '..'",
    ),
    "file under a symlink": (
        [Member("dir", kind="symlink", link="."), Member("dir/x", b"x")],
        "entry dir would replace a directory",
    ),
    "chained symlinks out": (
        [
            Member("d1/d2", kind="dir"),
            Member("d1/d2/up", kind="symlink", link="../.."),
            Member("d1/d2/c", kind="symlink", link="up/../x"),
        ],
        "escapes the destination",
    ),
    "hard link out": (
        [Member("h", kind="hardlink", link="../../../../etc/passwd")],
        "entry contains '..'",
    ),
    "hard link to nothing": (
        [Member("h", kind="hardlink", link="etc/passwd")],
        "names no file unpacked before it",
    ),
    "fifo": ([Member("pipe", kind="fifo")], "entry pipe has an unsupported type"),
}


@pytest.mark.parametrize("attack", sorted(TAR_ATTACKS))
def test_tar_escapes_are_refused(server: ArtifactServer, task_dir: Path, attack: str) -> None:
    members, reason = TAR_ATTACKS[attack]
    before = outside_files(task_dir)
    with pytest.raises(ArtifactError, match=re.escape(reason)):
        fetch_archive(server, task_dir, "a.tar.gz", make_tar(members))
    assert outside_files(task_dir) == before
    assert sorted(os.listdir(task_dir / "local")) == []


def test_an_absolute_member_name_lands_beneath_the_destination(
    server: ArtifactServer, task_dir: Path
) -> None:
    fetch_archive(server, task_dir, "a.tar", make_tar([Member("/etc/passwd", b"x")], ""))
    assert (task_dir / "local" / "etc" / "passwd").read_bytes() == b"x"


def test_a_symlink_that_stays_inside_is_kept(server: ArtifactServer, task_dir: Path) -> None:
    members = [
        Member("lib/libfoo.so.1", b"so"),
        Member("lib/libfoo.so", kind="symlink", link="libfoo.so.1"),
        Member("bin/up", kind="symlink", link="../lib"),
    ]
    fetch_archive(server, task_dir, "a.tgz", make_tar(members))
    local = task_dir / "local"
    assert (local / "lib" / "libfoo.so").read_bytes() == b"so"
    assert (local / "bin" / "up" / "libfoo.so.1").read_bytes() == b"so"


ZIP_ATTACKS = {
    "dotdot": ([Member("../evil", b"x")], "entry contains '..': ../evil"),
    "deep dotdot": ([Member("a/b/../../../evil", b"x")], "entry contains '..'"),
    "symlink out": (
        [Member("link", kind="symlink", link="../../..")],
        "escapes the destination",
    ),
    "absolute symlink": ([Member("link", kind="symlink", link="/tmp")], "is absolute"),
    "file under a symlink": (
        [Member("d", kind="symlink", link="."), Member("d/x", b"x")],
        "entry d would replace a directory",
    ),
}


@pytest.mark.parametrize("attack", sorted(ZIP_ATTACKS))
def test_zip_escapes_are_refused(server: ArtifactServer, task_dir: Path, attack: str) -> None:
    members, reason = ZIP_ATTACKS[attack]
    before = outside_files(task_dir)
    with pytest.raises(ArtifactError, match=re.escape(reason)):
        fetch_archive(server, task_dir, "a.zip", make_zip(members))
    assert outside_files(task_dir) == before
    assert sorted(os.listdir(task_dir / "local")) == []


def test_a_planted_symlink_in_the_destination_is_replaced_not_followed(
    server: ArtifactServer, task_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (task_dir / "local" / "conf").symlink_to(outside)  # left by an earlier run of the task
    (task_dir / "local" / "file").symlink_to(outside / "target")
    members = [Member("conf/app.conf", b"new"), Member("file", b"data")]
    fetch_archive(server, task_dir, "a.tgz", make_tar(members))
    assert list(outside.iterdir()) == []
    assert (task_dir / "local" / "conf").is_dir()
    assert not (task_dir / "local" / "conf").is_symlink()
    assert (task_dir / "local" / "conf" / "app.conf").read_bytes() == b"new"
    assert (task_dir / "local" / "file").read_bytes() == b"data"
    assert not (task_dir / "local" / "file").is_symlink()


def test_a_file_never_replaces_a_directory(server: ArtifactServer, task_dir: Path) -> None:
    (task_dir / "local" / "data").mkdir()
    (task_dir / "local" / "data" / "keep").write_text("keep")
    with pytest.raises(ArtifactError, match="destination local/data is a directory"):
        fetch_archive(server, task_dir, "a.tgz", make_tar([Member("data", b"x")]))
    assert (task_dir / "local" / "data" / "keep").read_text() == "keep"


@pytest.mark.parametrize("destination", ["../../outside", "local/../../..", "/../../etc"])
def test_destinations_escaping_the_task_dir_are_refused(
    server: ArtifactServer, task_dir: Path, destination: str
) -> None:
    server.routes["/f"] = Served(b"x")
    spec = ArtifactSpec(source=server.url("/f"), destination=destination)
    with pytest.raises(
        ArtifactError, match="artifact destination path escapes task directory"
    ) as err:
        fetch_artifact(spec, task_dir, allow_local=False)
    assert not err.value.recoverable
    assert server.requests == []


def test_the_alloc_dir_as_root_allows_nomads_sibling_destinations(
    server: ArtifactServer, task_dir: Path
) -> None:
    alloc_dir = task_dir.parent
    server.routes["/f"] = Served(b"x")
    spec = ArtifactSpec(source=server.url("/f"), destination="../alloc/data")
    fetch_artifact(spec, task_dir, allow_local=False, root=alloc_dir)
    assert (alloc_dir / "alloc" / "data" / "f").read_bytes() == b"x"
    spec = ArtifactSpec(source=server.url("/f"), destination="../../escape")
    with pytest.raises(ArtifactError, match="escapes alloc directory"):
        fetch_artifact(spec, task_dir, allow_local=False, root=alloc_dir)


def test_an_absolute_destination_is_read_inside_the_task_dir(
    server: ArtifactServer, task_dir: Path
) -> None:
    server.routes["/f"] = Served(b"x")
    fetch_artifact(
        ArtifactSpec(source=server.url("/f"), destination="/local/sub"), task_dir, allow_local=False
    )
    assert (task_dir / "local" / "sub" / "f").read_bytes() == b"x"
    inside = task_dir / "secrets"
    fetch_artifact(
        ArtifactSpec(source=server.url("/f"), destination=str(inside)), task_dir, allow_local=False
    )
    assert (inside / "f").read_bytes() == b"x"


def test_a_destination_through_a_planted_symlink_is_refused(
    server: ArtifactServer, task_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (task_dir / "local" / "out").symlink_to(outside)
    server.routes["/f"] = Served(b"x")
    spec = ArtifactSpec(source=server.url("/f"), destination="local/out/sub")
    with pytest.raises(ArtifactError, match="escapes task directory"):
        fetch_artifact(spec, task_dir, allow_local=False)
    assert list(outside.iterdir()) == []


def test_decompression_limits(server: ArtifactServer, task_dir: Path) -> None:
    many = [Member(f"f{i}", b"x") for i in range(6)]
    server.routes["/many.tgz"] = Served(make_tar(many))
    spec = ArtifactSpec(source=server.url("/many.tgz"))
    config = ArtifactConfig(decompression_file_count_limit=5)
    with pytest.raises(ArtifactError, match="tar archive contains too many files: 6 > 5"):
        fetch_artifact(spec, task_dir, allow_local=False, config=config)
    server.routes["/big.zip"] = Served(
        make_zip([Member("a", b"0" * 5000), Member("b", b"0" * 5000)])
    )
    spec = ArtifactSpec(source=server.url("/big.zip"))
    config = ArtifactConfig(decompression_size_limit=8000)
    with pytest.raises(ArtifactError, match="zip archive larger than limit: 8000"):
        fetch_artifact(spec, task_dir, allow_local=False, config=config)
    assert sorted(os.listdir(task_dir / "local")) == []


def test_a_corrupt_archive_is_a_clear_error(server: ArtifactServer, task_dir: Path) -> None:
    with pytest.raises(ArtifactError, match=r"failed to download artifact .*tar\.gz"):
        fetch_archive(server, task_dir, "bad.tar.gz", b"not a tarball")
    with pytest.raises(ArtifactError, match="zip: File is not a zip file"):
        fetch_archive(server, task_dir, "bad.zip", b"not a zip")
