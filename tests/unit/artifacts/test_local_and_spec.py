"""Local sources (allowed or refused), unsupported getters (git: test_git.py), the
block's JSON."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from allocrunner.artifacts import (
    ArtifactError,
    ArtifactSpec,
    artifact_from_json,
    fetch_artifact,
)
from allocrunner.errors import AllocRunnerError, JobSpecError, RecoverableError
from tests.unit.artifacts.conftest import Member, make_tar


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "conf").mkdir(parents=True)
    (src / "conf" / "a.conf").write_text("a")
    (src / "run.sh").write_text("run")
    (src / "bundle.tar.gz").write_bytes(make_tar([Member("inner.txt", b"inner")]))
    return src


def test_local_sources_are_refused_unless_allowed(task_dir: Path, source_dir: Path) -> None:
    for source in (str(source_dir / "run.sh"), f"file://{source_dir / 'run.sh'}"):
        with pytest.raises(ArtifactError, match="local artifact sources are not allowed") as err:
            fetch_artifact(ArtifactSpec(source=source), task_dir, allow_local=False)
        assert not err.value.recoverable
    assert not (task_dir / "local" / "run.sh").exists()


def test_a_local_file_when_allowed(task_dir: Path, source_dir: Path) -> None:
    digest = hashlib.sha256(b"run").hexdigest()
    spec = ArtifactSpec(source=str(source_dir / "run.sh"), options={"checksum": f"sha256:{digest}"})
    fetch_artifact(spec, task_dir, allow_local=True)
    assert (task_dir / "local" / "run.sh").read_text() == "run"
    spec = ArtifactSpec(source=f"file://{source_dir / 'run.sh'}", destination="local/bin")
    fetch_artifact(spec, task_dir, allow_local=True)
    assert (task_dir / "local" / "bin" / "run.sh").read_text() == "run"


def test_a_local_archive_is_unpacked(task_dir: Path, source_dir: Path) -> None:
    fetch_artifact(
        ArtifactSpec(source=str(source_dir / "bundle.tar.gz")), task_dir, allow_local=True
    )
    assert (task_dir / "local" / "inner.txt").read_bytes() == b"inner"


def test_a_local_directory_is_copied(task_dir: Path, source_dir: Path) -> None:
    fetch_artifact(
        ArtifactSpec(source=str(source_dir), destination="local/copy"), task_dir, allow_local=True
    )
    assert (task_dir / "local" / "copy" / "conf" / "a.conf").read_text() == "a"
    assert (task_dir / "local" / "copy" / "run.sh").read_text() == "run"
    (source_dir / "link").symlink_to(source_dir / "run.sh")
    with pytest.raises(ArtifactError, match="copying of symlinks has been disabled"):
        fetch_artifact(ArtifactSpec(source=str(source_dir)), task_dir, allow_local=True)


def test_a_relative_or_missing_local_path(task_dir: Path, source_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="must be an absolute path"):
        fetch_artifact(ArtifactSpec(source="src/run.sh"), task_dir, allow_local=True)
    with pytest.raises(ArtifactError, match="No such file or directory") as err:
        fetch_artifact(ArtifactSpec(source=str(source_dir / "nope")), task_dir, allow_local=True)
    assert err.value.recoverable


@pytest.mark.parametrize(
    ("source", "scheme"),
    [
        ("s3::https://bucket.s3.amazonaws.com/x", "s3"),
        ("gcs::https://www.googleapis.com/storage/v1/b/x", "gcs"),
        ("ftp://example.com/x", "ftp"),
    ],
)
def test_other_getters_are_refused(task_dir: Path, source: str, scheme: str) -> None:
    with pytest.raises(ArtifactError, match=f"download not supported for scheme '{scheme}'"):
        fetch_artifact(ArtifactSpec(source=source), task_dir, allow_local=True)


def test_bad_mode_and_unsupported_archive(task_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="invalid artifact mode 'all'"):
        fetch_artifact(
            ArtifactSpec(source="http://127.0.0.1:1/x", mode="all"), task_dir, allow_local=False
        )
    with pytest.raises(ArtifactError, match="zst archives are not supported"):
        fetch_artifact(ArtifactSpec(source="http://127.0.0.1:1/x.zst"), task_dir, allow_local=False)


def test_errors_belong_to_the_project_hierarchy() -> None:
    assert issubclass(ArtifactError, RecoverableError)
    assert issubclass(ArtifactError, AllocRunnerError)
    err = ArtifactError('http://x/"a"', "boom")
    assert str(err) == 'failed to download artifact "http://x/\\"a\\"": boom'


def test_artifact_from_nomad_json() -> None:
    spec = artifact_from_json(
        {
            "GetterSource": "https://example.com/app.tgz",
            "GetterOptions": {"checksum": "sha256:00"},
            "GetterHeaders": {"X-Token": "t"},
            "GetterMode": "any",
            "RelativeDest": "local/app",
        }
    )
    assert spec == ArtifactSpec(
        source="https://example.com/app.tgz",
        destination="local/app",
        mode="any",
        options={"checksum": "sha256:00"},
        headers={"X-Token": "t"},
    )
    assert artifact_from_json({"GetterSource": "https://e/x"}).mode == "any"
    with pytest.raises(
        JobSpecError, match=r"Artifacts\[0\]\.GetterSource: source must be specified"
    ):
        artifact_from_json({"GetterSource": ""})
    with pytest.raises(JobSpecError, match=r"Artifacts\[0\]\.GetterMode"):
        artifact_from_json({"GetterSource": "x", "GetterMode": "tree"})
    with pytest.raises(JobSpecError, match=r"Artifacts\[0\]\.GetterHeaders\.X"):
        artifact_from_json({"GetterSource": "x", "GetterHeaders": {"X": 1}})
