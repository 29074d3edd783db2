"""Escape matrix for the fs API: every way out of the alloc dir, and every way into a
task's secrets, is refused by every method (Nomad's TestAllocDir_EscapeChecking and
TestAllocDir_ReadAt_SecretDir, plus symlink escapes)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir, SecretsAccessError
from allocrunner.errors import PathEscapeError


def _block(ad: AllocDir, path: str) -> Any:
    cancel = CancelToken()
    cancel.cancel()  # an escape must raise, never wait; a cancelled token proves it
    return ad.block_until_exists(path, cancel)


METHODS: dict[str, Callable[[AllocDir, str], Any]] = {
    "list": lambda ad, p: ad.list(p),
    "stat": lambda ad, p: ad.stat(p),
    "read_at": lambda ad, p: ad.read_at(p, 0, 100),
    "open": lambda ad, p: ad.open(p).close(),
    "block_until_exists": _block,
    "change_events": lambda ad, p: ad.change_events(p, 0, CancelToken()),
}

LEXICAL_ESCAPES = [
    "..",
    "../",
    "../alloc-1",
    "../outside/secret.txt",
    "./..",
    "alloc/../..",
    "alloc/../../outside/secret.txt",
    "alloc/data/../../../outside",
    "web/local/../../../outside/secret.txt",
    "web//..//..//outside",
]

ABSOLUTE = ["/", "/etc/passwd", "//etc", "/alloc/data"]

SECRET_PATHS = [
    "web/secrets",
    "web/secrets/token",
    "web/secrets/",
    "web/SECRETS/token",
    "web/Secrets/token",
    "web/sEcReTs",
    "./web/./secrets/token",
    "web/local/../secrets/token",
    "alloc/../web/secrets/token",
    "db/secrets/anything",  # any task, registered or not
]


@pytest.fixture
def hostile(alloc_dir: AllocDir, outside: Path) -> AllocDir:
    """An alloc dir whose task planted every kind of escaping symlink."""
    web = alloc_dir.task_dir("web")
    assert web is not None
    (web.secrets_dir / "token").write_text("s3cr3t")
    local = web.local_dir
    os.symlink("/", local / "to-root")
    os.symlink(str(outside), local / "to-outside")
    os.symlink(str(outside / "secret.txt"), local / "to-outside-file")
    os.symlink("../../../outside", local / "relative-out")
    # a chain: each link looks harmless alone, together they leave
    os.symlink("hop2", local / "hop1")
    os.symlink("../hop3", local / "hop2")
    os.symlink("../../../outside", web.dir / "hop3")
    # links into the secrets dir
    os.symlink("../secrets/token", local / "to-secret")
    os.symlink("../secrets", local / "to-secrets-dir")
    os.symlink("../../web/SECRETS", alloc_dir.data_dir / "upper")
    # a link loop
    os.symlink("loop-b", local / "loop-a")
    os.symlink("loop-a", local / "loop-b")
    return alloc_dir


SYMLINK_ESCAPES = [
    "web/local/to-root",
    "web/local/to-root/etc/passwd",
    "web/local/to-outside",
    "web/local/to-outside/secret.txt",
    "web/local/to-outside-file",
    "web/local/relative-out/secret.txt",
    "web/local/hop1",
    "web/local/hop1/secret.txt",
]


def _outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "host secret"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("path", LEXICAL_ESCAPES + ABSOLUTE)
def test_lexical_and_absolute_escapes_are_refused(
    hostile: AllocDir, outside: Path, method: str, path: str
) -> None:
    with pytest.raises(PathEscapeError):
        METHODS[method](hostile, path)
    _outside_untouched(outside)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("path", SYMLINK_ESCAPES)
def test_symlinks_resolving_outside_are_refused(
    hostile: AllocDir, outside: Path, method: str, path: str
) -> None:
    with pytest.raises(PathEscapeError, match="escapes"):
        METHODS[method](hostile, path)
    _outside_untouched(outside)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("path", SECRET_PATHS)
def test_secrets_are_refused_in_any_case(hostile: AllocDir, method: str, path: str) -> None:
    with pytest.raises(PermissionError) as info:
        METHODS[method](hostile, path)
    assert isinstance(info.value, SecretsAccessError)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize(
    "path", ["web/local/to-secret", "web/local/to-secrets-dir", "alloc/data/upper/token"]
)
def test_symlinks_into_secrets_are_refused(hostile: AllocDir, method: str, path: str) -> None:
    # alloc/data/upper reaches web/SECRETS, which does not even exist on a case-sensitive
    # file system; it is refused all the same (on a case-insensitive one it *is* secrets/).
    with pytest.raises(SecretsAccessError):
        METHODS[method](hostile, path)


def test_upper_case_secrets_link_is_refused_even_when_it_exists(hostile: AllocDir) -> None:
    web = hostile.task_dir("web")
    assert web is not None
    (web.dir / "SECRETS").mkdir()
    (web.dir / "SECRETS" / "token").write_text("x")
    with pytest.raises(SecretsAccessError):
        hostile.read_at("alloc/data/upper/token", 0, 10)


def test_symlink_loops_fail_cleanly(hostile: AllocDir) -> None:
    from allocrunner.errors import AllocDirError

    with pytest.raises(AllocDirError, match="symbolic links"):
        hostile.read_at("web/local/loop-a", 0, 1)


def test_paths_that_stay_inside_are_served(hostile: AllocDir) -> None:
    (hostile.data_dir / "f").write_text("inside")
    assert hostile.read_at("web/../alloc/data/f", 0, 10) == b"inside"
    assert hostile.read_at("alloc/./data//f", 0, 10) == b"inside"
    # an absolute symlink naming a place inside the alloc dir is fine
    os.symlink(str(hostile.data_dir / "f"), hostile.data_dir / "abs-inside")
    assert hostile.read_at("alloc/data/abs-inside", 0, 10) == b"inside"
    # the secrets dir shows up in a listing of the task dir (its name is no secret)
    assert "secrets" in [i.name for i in hostile.list("web")]
    # and "secrets" elsewhere than directly under a task is ordinary
    (hostile.data_dir / "secrets").mkdir()
    (hostile.data_dir / "secrets" / "x").write_text("plain")
    assert hostile.read_at("alloc/data/secrets/x", 0, 10) == b"plain"


def test_nul_bytes_are_refused(hostile: AllocDir) -> None:
    with pytest.raises(PathEscapeError, match="NUL"):
        hostile.stat("alloc/data/\x00x")


def test_swapping_a_dir_for_a_symlink_between_calls(hostile: AllocDir, outside: Path) -> None:
    """The check is the walk: a path checked once cannot be redirected later."""
    sub = hostile.data_dir / "sub"
    sub.mkdir()
    (sub / "secret.txt").write_text("inside")
    assert hostile.read_at("alloc/data/sub/secret.txt", 0, 100) == b"inside"
    os.rename(sub, hostile.data_dir / "sub.old")
    os.symlink(str(outside), sub)
    with pytest.raises(PathEscapeError):
        hostile.read_at("alloc/data/sub/secret.txt", 0, 100)
