"""A git clone that hangs is ended by a cancel or by git_timeout, leaving no process
and no staging directory behind."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.artifacts import (
    ArtifactCancelled,
    ArtifactConfig,
    ArtifactError,
    ArtifactSpec,
    fetch_artifact,
)
from allocrunner.testing import wait_for


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, already dead, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pids_with(text: str) -> set[int]:
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline and _alive(int(entry)):
            found.add(int(entry))
    return found


class _Fetch:
    """Not thread-safe; owned by one test. Runs a fetch on a thread of its own."""

    def __init__(self, spec: ArtifactSpec, task_dir: Path, config: ArtifactConfig) -> None:
        self.cancel = CancelToken()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(spec, task_dir, config), name="git-fetch"
        )
        self._thread.start()

    def _run(self, spec: ArtifactSpec, task_dir: Path, config: ArtifactConfig) -> None:
        try:
            fetch_artifact(spec, task_dir, allow_local=True, cancel=self.cancel, config=config)
        except BaseException as err:  # handed to the test
            self.error = err

    def join(self) -> BaseException | None:
        self._thread.join(30)
        assert not self._thread.is_alive()
        return self.error


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def sleepy_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake git that forks a sleeper, records both pids, and waits."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pids = tmp_path / "pids"
    fake = bin_dir / "git"
    fake.write_text(
        f'#!/bin/sh\n/bin/sleep 60 &\necho "$$ $!" > {pids}.tmp\nmv {pids}.tmp {pids}\nwait\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return pids


def _assert_clean(task_dir: Path, pids: set[int]) -> None:
    def gone() -> None:
        assert [p for p in pids if _alive(p)] == []

    wait_for(gone)
    assert list(task_dir.rglob(".artifact-*")) == []
    assert not (task_dir / "local" / "repo").exists() or not any(
        (task_dir / "local" / "repo").iterdir()
    )


def test_cancel_kills_git_and_what_it_forked(task_dir: Path, sleepy_git: Path) -> None:
    spec = ArtifactSpec(source="git::https://example.invalid/r.git", destination="local/repo")
    fetch = _Fetch(spec, task_dir, ArtifactConfig())
    try:
        pids = wait_for(lambda: {int(p) for p in _read(sleepy_git).split()})
        assert all(_alive(p) for p in pids)
    finally:
        fetch.cancel.cancel("task killed")
        error = fetch.join()
    assert isinstance(error, ArtifactCancelled), error
    assert not error.recoverable
    _assert_clean(task_dir, pids)


def _read(path: Path) -> str:
    assert path.exists()
    return path.read_text()


def test_cancel_of_a_real_git_waiting_on_a_silent_server(task_dir: Path, silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}/r.git"
    spec = ArtifactSpec(source=f"git::{url}", destination="local/repo")
    fetch = _Fetch(spec, task_dir, ArtifactConfig())
    try:
        pids = wait_for(lambda: _nonempty(_pids_with(url)))
    finally:
        fetch.cancel.cancel("task killed")
        error = fetch.join()
    assert isinstance(error, ArtifactCancelled), error
    assert f'"git::{url}"' in str(error)
    _assert_clean(task_dir, pids)
    assert _pids_with(url) == set()


def _nonempty(pids: set[int]) -> set[int]:
    assert pids
    return pids


def test_git_timeout_ends_a_hung_clone(task_dir: Path, silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}/r.git"
    spec = ArtifactSpec(source=f"git::{url}", destination="local/repo")
    with pytest.raises(ArtifactError, match="git clone timed out") as err:
        fetch_artifact(spec, task_dir, allow_local=False, config=ArtifactConfig(git_timeout=0.5))
    assert err.value.recoverable
    _assert_clean(task_dir, set())
    assert _pids_with(url) == set()
