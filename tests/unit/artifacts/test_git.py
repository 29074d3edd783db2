"""Git artifacts fetched with the real git from a local repository: refs, depth,
subdirectories, errors, and the job files that use them."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from allocrunner.artifacts import ArtifactError, ArtifactSpec, fetch_artifact
from allocrunner.artifacts.git_source import is_git_source, parse_git_source
from allocrunner.jobspec import load_job_with_warnings
from allocrunner.jobspec.runnable import ANY_DRIVER
from tests.nomad_e2e.helpers import E2E


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """Two commits on main; tag v1 and branch stable on the first."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "test@example.com")
    _git(repo, "config", "user.name", "test")
    (repo / "sub").mkdir()
    (repo / "sub" / "inner.txt").write_text("inner")
    (repo / "version.txt").write_text("one")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "one")
    _git(repo, "tag", "v1")
    _git(repo, "branch", "stable")
    (repo / "version.txt").write_text("two")
    _git(repo, "commit", "-q", "-a", "-m", "two")
    return repo


def _fetch(task_dir: Path, source: str, **options: str) -> Path:
    fetch_artifact(
        ArtifactSpec(source=source, destination="local/repo", options=options),
        task_dir,
        allow_local=True,
    )
    return task_dir / "local" / "repo"


def _no_staging_left(task_dir: Path) -> None:
    left = [p for p in task_dir.rglob(".artifact-*")]
    assert left == []


def test_default_branch_is_cloned_with_its_history(task_dir: Path, repo: Path) -> None:
    dest = _fetch(task_dir, f"git::file://{repo}")
    assert (dest / "version.txt").read_text() == "two"
    assert (dest / "sub" / "inner.txt").read_text() == "inner"
    assert _git(dest, "rev-list", "--count", "HEAD") == "2"
    _no_staging_left(task_dir)


@pytest.mark.parametrize("ref", ["v1", "stable", "commit"])
def test_ref_names_a_tag_a_branch_or_a_commit(task_dir: Path, repo: Path, ref: str) -> None:
    if ref == "commit":
        ref = _git(repo, "rev-parse", "v1")
    dest = _fetch(task_dir, f"git::file://{repo}?ref={ref}")
    assert (dest / "version.txt").read_text() == "one"


def test_options_are_the_query_parameters(task_dir: Path, repo: Path) -> None:
    dest = _fetch(task_dir, f"git::file://{repo}?ref=main", ref="v1")
    assert (dest / "version.txt").read_text() == "one"


@pytest.mark.parametrize(("ref", "version"), [("", "two"), ("v1", "one"), ("stable", "one")])
def test_depth_makes_a_shallow_clone(task_dir: Path, repo: Path, ref: str, version: str) -> None:
    options = {"depth": "1", **({"ref": ref} if ref else {})}
    dest = _fetch(task_dir, f"git::file://{repo}", **options)
    assert (dest / "version.txt").read_text() == version
    assert _git(dest, "rev-list", "--count", "HEAD") == "1"


def test_depth_with_a_commit_says_a_branch_or_tag_is_needed(task_dir: Path, repo: Path) -> None:
    commit = _git(repo, "rev-parse", "HEAD")
    with pytest.raises(ArtifactError, match="ref must name a branch or a tag") as err:
        _fetch(task_dir, f"git::file://{repo}", depth="1", ref=commit)
    assert err.value.recoverable


def test_a_subdir_installs_only_that_part(task_dir: Path, repo: Path) -> None:
    dest = _fetch(task_dir, f"git::file://{repo}//sub?ref=v1")
    assert sorted(p.name for p in dest.iterdir()) == ["inner.txt"]
    _no_staging_left(task_dir)


def test_a_bad_ref_fails_naming_the_source(task_dir: Path, repo: Path) -> None:
    source = f"git::file://{repo}"
    with pytest.raises(ArtifactError) as err:
        _fetch(task_dir, source, ref="no-such-ref")
    assert str(err.value).startswith(f'failed to download artifact "{source}": git checkout')
    assert "no-such-ref" in str(err.value)
    assert err.value.recoverable
    assert not (task_dir / "local" / "repo" / "version.txt").exists()
    _no_staging_left(task_dir)


def test_an_unreachable_repository_fails_recoverably(task_dir: Path, tmp_path: Path) -> None:
    source = f"git::file://{tmp_path / 'missing'}"
    with pytest.raises(ArtifactError, match="git clone exited with 128") as err:
        _fetch(task_dir, source)
    assert err.value.recoverable
    assert err.value.source == source
    _no_staging_left(task_dir)


def test_local_repositories_need_local_artifacts(task_dir: Path, repo: Path) -> None:
    for source in (f"git::file://{repo}", f"git::{repo}"):
        with pytest.raises(ArtifactError, match="local artifact sources are not allowed") as err:
            fetch_artifact(ArtifactSpec(source=source), task_dir, allow_local=False)
        assert not err.value.recoverable


def test_refused_shapes(task_dir: Path, repo: Path) -> None:
    cases = [
        (ArtifactSpec(source=f"git::file://{repo}", mode="file"), "mode file"),
        (ArtifactSpec(source=f"git::file://{repo}?checksum=md5:00"), "checksum cannot"),
        (ArtifactSpec(source=f"git::file://{repo}//../x"), "path traversal"),
        (ArtifactSpec(source=f"git::file://{repo}?ref=--upload-pack=x"), "invalid git ref"),
        (ArtifactSpec(source="git::ext::sh -c true"), "must be an https, http, ssh"),
        (ArtifactSpec(source="git::ssh://git@host:repo/x"), "invalid port number"),
    ]
    for spec, reason in cases:
        with pytest.raises(ArtifactError, match=reason) as err:
            fetch_artifact(spec, task_dir, allow_local=True)
        assert not err.value.recoverable


def test_a_symlink_out_of_the_checkout_is_refused(task_dir: Path, repo: Path) -> None:
    (repo / "sub" / "up").symlink_to("../version.txt")
    (repo / "inside").symlink_to("sub/inner.txt")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "links")
    dest = _fetch(task_dir, f"git::file://{repo}")
    assert (dest / "inside").read_text() == "inner"
    with pytest.raises(ArtifactError, match=r"symlink up -> \.\./version\.txt escapes"):
        fetch_artifact(
            ArtifactSpec(source=f"git::file://{repo}//sub", destination="local/sub"),
            task_dir,
            allow_local=True,
        )
    assert not (task_dir / "local" / "sub" / "inner.txt").exists()
    _no_staging_left(task_dir)


def test_git_missing_from_the_path(
    task_dir: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ArtifactError, match="git must be available and on the PATH") as err:
        _fetch(task_dir, f"git::file://{repo}")
    assert err.value.recoverable


# --- reading sources ---------------------------------------------------------------------


def test_go_getters_detectors() -> None:
    hub = parse_git_source(ArtifactSpec(source="github.com/hashicorp/go-set/sub/dir"))
    assert (hub.url, hub.subdir) == ("https://github.com/hashicorp/go-set.git", ("sub", "dir"))
    lab = parse_git_source(ArtifactSpec(source="gitlab.com/a/b.git?ref=v2"))
    assert (lab.url, lab.ref) == ("https://gitlab.com/a/b.git", "v2")
    key = base64.b64encode(b"PRIVATE KEY").decode()
    scp = parse_git_source(
        ArtifactSpec(
            source="git@github.com:hashicorp/nomad.git//e2e?sshkey=" + key,
            options={"ref": "main", "depth": "3"},
        )
    )
    assert (scp.url, scp.ref, scp.depth, scp.ssh_key, scp.subdir) == (
        "ssh://git@github.com/hashicorp/nomad.git",
        "main",
        3,
        b"PRIVATE KEY",
        ("e2e",),
    )
    odd = parse_git_source(ArtifactSpec(source="git::https://h/r.git?depth=x&x=1"))
    assert (odd.url, odd.depth) == ("https://h/r.git?x=1", 0)
    for source in ("git::https://h/r", "git://h/r", "github.com/a/b", "git@h:r"):
        assert is_git_source(source), source
    for source in ("https://github.com/a/b", "s3::https://b/k", "hg::http://h/r", "/srv/r"):
        assert not is_git_source(source), source


def test_other_getters_stay_refused(task_dir: Path) -> None:
    for source, getter in (("s3::https://b.s3.amazonaws.com/k", "s3"), ("hg::http://h/r", "hg")):
        with pytest.raises(ArtifactError, match=f"scheme '{getter}'"):
            fetch_artifact(ArtifactSpec(source=source), task_dir, allow_local=True)


def test_the_e2e_job_files_with_a_git_artifact_load() -> None:
    for name in ("artifact_darwin.nomad", "artifact_linux.nomad"):
        path = E2E / "artifact" / "input" / name
        if name == "artifact_linux.nomad":  # its other groups use exec and docker
            job, _ = load_job_with_warnings(path, env={}, drivers=ANY_DRIVER)
        else:
            job, _ = load_job_with_warnings(path, env={})
        tasks = {t.name: t for g in job.task_groups for t in g.tasks}
        artifact = tasks["rawexec_git_custom"].artifacts[0]
        assert artifact.getter_source == "git::https://github.com/hashicorp/go-set"
        assert is_git_source(artifact.getter_source)


def test_the_environment_git_runs_with(
    task_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake git records its environment and the key file it is given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    fake = bin_dir / "git"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$1 $GIT_TERMINAL_PROMPT $GIT_ALLOW_PROTOCOL $GIT_SSH_COMMAND" >> {record}\n'
        'if [ "$1" = clone ]; then\n'
        '  for last; do :; done; mkdir "$last"; echo x > "$last/file"\n'
        '  key=${GIT_SSH_COMMAND##* }; stat -c %a "$key" >> ' + f"{record}\n"
        '  cat "$key" >> ' + f"{record}; echo >> {record}\n"
        "fi\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    key = base64.b64encode(b"KEY").decode()
    dest = _fetch(task_dir, "git::ssh://git@example.com/r.git", sshkey=key)
    assert (dest / "file").read_text() == "x\n"
    lines = record.read_text().splitlines()
    clone, mode, content = lines[0].split(" "), lines[1], lines[2]
    assert clone[:4] == ["clone", "0", "https:http:ssh:git:file", "ssh"]
    assert clone[4] == "-i" and mode == "600" and content == "KEY"
    assert not Path(clone[5]).exists()
    assert [line.split(" ")[0] for line in lines[3:]] == ["submodule"]
    _no_staging_left(task_dir)


def test_the_agents_git_variables_do_not_reach_git(
    task_dir: Path, repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_WORK_TREE", str(tmp_path / "elsewhere"))
    dest = _fetch(task_dir, f"git::file://{repo}", ref="v1")
    assert (dest / "version.txt").read_text() == "one"


def test_a_git_at_source_that_is_not_scp_like_is_refused(task_dir: Path) -> None:
    with pytest.raises(ArtifactError, match="must be an https, http, ssh") as err:
        fetch_artifact(ArtifactSpec(source="git@host/path"), task_dir, allow_local=True)
    assert not err.value.recoverable
