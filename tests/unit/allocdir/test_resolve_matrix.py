"""Escape matrix for `fs.resolve` itself, the walk every fs operation and the migration
check stand on: each row is a raw path (split on "/" and handed to resolve as is, so
"", "." and ".." reach it), the options, and the exact outcome (the object and where it
really is, a lexical result, or the exact error type and message). Every row also checks
that the walk leaves no descriptor open behind it.

The tree is an alloc dir whose tasks planted links of every kind: absolute and relative
ones that leave, chains, loops, links into `secrets/` in any case, dangling ones, links
to files used as directories, and absolute links naming the alloc dir by its real path
or through a symlinked root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from allocrunner.allocdir import AllocDir, PathNotFoundError, SecretsAccessError, fs
from allocrunner.allocdir.fs import SymlinkLoopError
from allocrunner.errors import AllocDirError, PathEscapeError

CHAIN = fs.MAX_SYMLINK_HOPS  # links in alloc/data/chain-0 -> ... -> f

# relative link path -> target; <root> is the alloc dir's real path, <link-root> the
# same dir reached through a symlinked parent, <outside> a dir beside the alloc dirs
LINKS = {
    "web/local/to-root": "/",
    "web/local/to-outside": "<outside>",
    "web/local/to-outside-file": "<outside>/secret.txt",
    "web/local/relative-out": "../../../outside",
    "web/local/hop1": "hop2",
    "web/local/hop2": "../hop3",
    "web/hop3": "../../../outside",
    "web/local/to-secret": "../secrets/token",
    "web/local/to-secrets-dir": "../secrets",
    "web/local/loop-a": "loop-b",
    "web/local/loop-b": "loop-a",
    "web/local/self": "self",
    "alloc/data/upper": "../../web/SECRETS",
    "alloc/data/to-web": "../../web",
    "alloc/data/to-web-secrets-mixed": "../../web/sEcReTs",
    "alloc/data/abs-inside": "<root>/alloc/data/f",
    "alloc/data/abs-root": "<root>",
    "alloc/data/abs-root-slash": "<root>/",
    "alloc/data/abs-via-link": "<link-root>/alloc/data/f",
    "alloc/data/abs-dotdot-out": "<root>/alloc/../../outside",
    "alloc/data/abs-dotdot-in": "<root>/alloc/../web/local",
    "alloc/data/abs-sibling": "<root>-evil/x",
    "alloc/data/abs-secret": "<root>/web/secrets/token",
    "alloc/data/to-sub": "sub",
    "alloc/data/sub-slash": "sub/",
    "alloc/data/sub-dotty": "./sub//.",
    "alloc/data/flink": "f",
    "alloc/data/f-slash": "f/",
    "alloc/data/f-dot": "f/.",
    "alloc/data/up": "..",
    "alloc/data/up2": "../..",
    "alloc/data/up3": "../../..",
    "alloc/data/dangling": "missing/x",
    "alloc/data/dangling-out": "missing/../../../..",
    "alloc/data/dangling-secret": "missing/../../../web/secrets/token",
    "alloc/data/dangling-via-file": "f/x/../../../../..",
    "toplink": "web",
    **{f"alloc/data/chain-{i}": f"chain-{i + 1}" for i in range(CHAIN - 1)},
    f"alloc/data/chain-{CHAIN - 1}": "f",
    "alloc/data/chain-over": "chain-0",
}


class Found(NamedTuple):
    """resolve returned a descriptor of `kind` ("dir", "file", "link") at `parts`."""

    parts: str
    kind: str


class Lexical(NamedTuple):
    """resolve ran out of real objects and returned the lexical location (fd -1)."""

    parts: str


class Refused(NamedTuple):
    """resolve raised exactly `error` with exactly `message` (placeholders expanded)."""

    error: type[BaseException]
    message: str


Outcome = Found | Lexical | Refused

NOFOLLOW: dict[str, bool] = {"follow_final": False}
LEXICAL: dict[str, bool] = {"lexical_when_missing": True}
SECRETS_OK: dict[str, bool] = {"refuse_secrets": False}
MIGRATION = {**LEXICAL, **SECRETS_OK}  # how extract checks a migrated symlink
ALL_OFF = {**NOFOLLOW, **MIGRATION}


# In messages, <path> stands for the repr of the row's path (resolve's `display`).
ESCAPES = Refused(PathEscapeError, "path <path> escapes the alloc dir")
NOT_FOUND = Refused(
    PathNotFoundError, "[Errno 2] no such file or directory in alloc dir <root>: <path>"
)
LOOP = Refused(SymlinkLoopError, "path <path>: too many levels of symbolic links")
LEXICAL_SECRET = Refused(SecretsAccessError, "path <path> leads into a task's secrets directory")


def through(link: str, target: str) -> Refused:
    """Escapes through the absolute symlink `link` -> `target`."""
    return Refused(
        PathEscapeError,
        f"path <path> escapes the alloc dir through symlink {link!r} -> {target!r}",
    )


def secret(where: str) -> Refused:
    """Refused on entering the secrets dir `where` (as the walk really found it)."""
    return Refused(
        SecretsAccessError, f"path <path> leads into a task's secrets directory ({where!r})"
    )


def not_found_under(root: str) -> Refused:
    return Refused(
        PathNotFoundError, f"[Errno 2] no such file or directory in alloc dir {root}: <path>"
    )


class Row(NamedTuple):
    """One walk: `path` under the `root` placeholder with `options`, and its outcome."""

    path: str
    expect: Outcome
    options: dict[str, bool] = {}
    root: str = "<root>"  # or "<link-root>", "<missing-root>", "<file-root>"


ROWS: list[Row] = [
    # plain walks; resolve applies "", "." and ".." itself (a leading "/" is the caller's to refuse)
    Row("", Found("", "dir")),
    Row(".", Found("", "dir")),
    Row("alloc/data/f", Found("alloc/data/f", "file")),
    Row("alloc/./data//f", Found("alloc/data/f", "file")),
    Row("web/../alloc/data/f", Found("alloc/data/f", "file")),
    Row("alloc/data/sub/", Found("alloc/data/sub", "dir")),
    Row("alloc/data/sub/.", Found("alloc/data/sub", "dir")),
    Row("alloc/data/f", Found("alloc/data/f", "file"), NOFOLLOW),
    Row("/alloc/data/f", Found("alloc/data/f", "file")),
    # missing components and files used as directories; lexical results past them
    Row("/etc/passwd", NOT_FOUND),
    Row("alloc/data/f/", NOT_FOUND),
    Row("alloc/data/f/x", NOT_FOUND),
    Row("alloc/data/missing", NOT_FOUND),
    Row("alloc/data/missing/x", NOT_FOUND),
    Row("alloc/data/missing", Lexical("alloc/data/missing"), LEXICAL),
    Row("alloc/data/missing/../f", Lexical("alloc/data/f"), LEXICAL),
    Row("alloc/data/missing/../../../..", ESCAPES, LEXICAL),
    Row("alloc/data/missing/../../../../outside", NOT_FOUND),
    Row("alloc/data/f/x/..", Lexical("alloc/data/f"), LEXICAL),
    Row("alloc/data/f/", Lexical("alloc/data/f"), LEXICAL),
    # ".." above the root
    Row("..", ESCAPES),
    Row("../alloc-1", ESCAPES),
    Row("./..", ESCAPES),
    Row("alloc/../..", ESCAPES),
    Row("web/local/../../../outside", ESCAPES),
    Row("alloc/data/../../..", ESCAPES, MIGRATION),
    Row("..", ESCAPES, ALL_OFF),
    # secrets dirs, any case, refused before they are looked up (only directly under a task)
    Row("web/secrets", secret("web/secrets")),
    Row("web/secrets/token", secret("web/secrets")),
    Row("web/SECRETS/token", secret("web/SECRETS")),
    Row("web/Secrets", secret("web/Secrets")),
    Row("web/secrets/nosuch", secret("web/secrets")),
    Row("db/secrets/x", secret("db/secrets")),
    Row("nosuch/secrets/x", NOT_FOUND),
    Row("nosuch/secrets/x", LEXICAL_SECRET, LEXICAL),
    Row("nosuch/secrets/x", Lexical("nosuch/secrets/x"), MIGRATION),
    Row("alloc/secrets", NOT_FOUND),
    Row("alloc/data/secrets/x", Found("alloc/data/secrets/x", "file")),
    Row("alloc/data/../../web/secrets", secret("web/secrets")),
    Row("web/secrets/token", Found("web/secrets/token", "file"), SECRETS_OK),
    Row("web/secrets/token", Found("web/secrets/token", "file"), MIGRATION),
    Row("web/secrets", secret("web/secrets"), NOFOLLOW),
    # links that lead into a secrets dir; a final link is not followed with NOFOLLOW
    Row("toplink/secrets/token", secret("web/secrets")),
    Row("toplink", Found("toplink", "link"), NOFOLLOW),
    Row("alloc/data/to-web/secrets", secret("web/secrets")),
    Row("alloc/data/to-web-secrets-mixed", secret("web/sEcReTs")),
    Row("alloc/data/upper", secret("web/SECRETS")),
    Row("alloc/data/upper/token", secret("web/SECRETS")),
    Row("alloc/data/upper", NOT_FOUND, SECRETS_OK),
    Row("alloc/data/upper", Lexical("web/SECRETS"), MIGRATION),
    Row("alloc/data/upper/token", Lexical("web/SECRETS/token"), MIGRATION),
    Row("web/local/to-secret", secret("web/secrets")),
    Row("web/local/to-secrets-dir", secret("web/secrets")),
    Row("web/local/to-secret", Found("web/local/to-secret", "link"), NOFOLLOW),
    Row("web/local/to-secrets-dir/token", secret("web/secrets"), NOFOLLOW),
    Row("web/local/to-secret", Found("web/secrets/token", "file"), SECRETS_OK),
    Row("alloc/data/abs-secret", secret("web/secrets")),
    Row("alloc/data/abs-secret", Found("web/secrets/token", "file"), SECRETS_OK),
    Row("alloc/data/dangling-secret", NOT_FOUND),
    Row("alloc/data/dangling-secret", LEXICAL_SECRET, LEXICAL),
    Row("alloc/data/dangling-secret", Lexical("web/secrets/token"), MIGRATION),
    # links that leave: absolute, relative, chains; whatever the options, unless final and NOFOLLOW
    Row("web/local/to-root", through("web/local/to-root", "/")),
    Row("web/local/to-root/etc/passwd", through("web/local/to-root", "/")),
    Row("web/local/to-outside", through("web/local/to-outside", "<outside>")),
    Row("web/local/to-outside/secret.txt", through("web/local/to-outside", "<outside>")),
    Row("web/local/to-outside-file", through("web/local/to-outside-file", "<outside>/secret.txt")),
    Row("web/local/relative-out", ESCAPES),
    Row("web/local/relative-out/secret.txt", ESCAPES),
    Row("web/local/hop1", ESCAPES),
    Row("web/local/hop1/secret.txt", ESCAPES),
    Row("web/local/hop2", ESCAPES),
    Row("web/hop3", ESCAPES),
    Row("web/local/to-outside", Found("web/local/to-outside", "link"), NOFOLLOW),
    Row("web/local/to-outside/", through("web/local/to-outside", "<outside>"), NOFOLLOW),
    Row("web/local/hop1", Found("web/local/hop1", "link"), NOFOLLOW),
    Row("web/local/relative-out", ESCAPES, MIGRATION),
    Row("web/local/relative-out", Found("web/local/relative-out", "link"), ALL_OFF),
    Row("web/local/to-root", through("web/local/to-root", "/"), MIGRATION),
    # absolute links that stay inside (by the root's given or real path) or only look like it
    Row("alloc/data/abs-dotdot-out", ESCAPES),
    Row("alloc/data/abs-dotdot-in", Found("web/local", "dir")),
    Row("alloc/data/abs-sibling", through("alloc/data/abs-sibling", "<root>-evil/x")),
    Row("alloc/data/abs-sibling", through("alloc/data/abs-sibling", "<root>-evil/x"), MIGRATION),
    Row("alloc/data/abs-inside", Found("alloc/data/f", "file")),
    Row("alloc/data/abs-root", Found("", "dir")),
    Row("alloc/data/abs-root-slash", Found("", "dir")),
    Row("alloc/data/abs-root/alloc/data/f", Found("alloc/data/f", "file")),
    Row("alloc/data/abs-root/..", ESCAPES),
    Row("alloc/data/abs-via-link", through("alloc/data/abs-via-link", "<link-root>/alloc/data/f")),
    Row("alloc/data/f", Found("alloc/data/f", "file"), root="<link-root>"),
    Row("alloc/data/abs-inside", Found("alloc/data/f", "file"), root="<link-root>"),
    Row("alloc/data/abs-via-link", Found("alloc/data/f", "file"), root="<link-root>"),
    Row("alloc/data/abs-root", Found("", "dir"), root="<link-root>"),
    Row("web/local/to-outside", through("web/local/to-outside", "<outside>"), root="<link-root>"),
    Row("alloc/data/up3", ESCAPES, root="<link-root>"),
    # relative links that climb
    Row("alloc/data/up", Found("alloc", "dir")),
    Row("alloc/data/up2", Found("", "dir")),
    Row("alloc/data/up3", ESCAPES),
    Row("alloc/data/up/data/f", Found("alloc/data/f", "file")),
    Row("alloc/data/up3", ESCAPES, MIGRATION),
    Row("alloc/data/up", Found("alloc/data/up", "link"), NOFOLLOW),
    # dangling links: missing, or lexically leaving / reaching secrets past the missing part
    Row("alloc/data/dangling", NOT_FOUND),
    Row("alloc/data/dangling", Lexical("alloc/data/missing/x"), LEXICAL),
    Row("alloc/data/dangling", Found("alloc/data/dangling", "link"), NOFOLLOW),
    Row("alloc/data/dangling-out", NOT_FOUND),
    Row("alloc/data/dangling-out", ESCAPES, LEXICAL),
    Row("alloc/data/dangling-via-file", NOT_FOUND),
    Row("alloc/data/dangling-via-file", ESCAPES, LEXICAL),
    # links to directories and files; ".." after a link is taken from where it led
    Row("alloc/data/to-sub", Found("alloc/data/sub", "dir")),
    Row("alloc/data/to-sub/g", Found("alloc/data/sub/g", "file")),
    Row("alloc/data/to-sub/..", Found("alloc/data", "dir")),
    Row("alloc/data/to-sub/..", Found("alloc/data", "dir"), NOFOLLOW),
    Row("toplink/..", Found("", "dir")),
    Row("alloc/data/to-web/../alloc", Found("alloc", "dir")),
    Row("alloc/data/sub-slash", Found("alloc/data/sub", "dir")),
    Row("alloc/data/sub-dotty", Found("alloc/data/sub", "dir")),
    Row("alloc/data/sub-slash", Found("alloc/data/sub-slash", "link"), NOFOLLOW),
    Row("alloc/data/flink", Found("alloc/data/f", "file")),
    Row("alloc/data/flink/x", NOT_FOUND),
    Row("alloc/data/flink/x", Lexical("alloc/data/f/x"), LEXICAL),
    Row("alloc/data/f-slash", NOT_FOUND),
    Row("alloc/data/f-slash", Lexical("alloc/data/f"), LEXICAL),
    Row("alloc/data/f-dot", NOT_FOUND),
    Row("alloc/data/f-dot", Lexical("alloc/data/f"), LEXICAL),
    # loops, and the hop limit (a chain of exactly MAX_SYMLINK_HOPS links resolves)
    Row("web/local/loop-a", LOOP),
    Row("web/local/self", LOOP),
    Row("web/local/loop-a", Found("web/local/loop-a", "link"), NOFOLLOW),
    Row("web/local/loop-a/x", LOOP, NOFOLLOW),
    Row("web/local/loop-a", LOOP, MIGRATION),
    Row("alloc/data/chain-0", Found("alloc/data/f", "file")),
    Row("alloc/data/chain-over", LOOP),
    Row("alloc/data/chain-over", Found("alloc/data/chain-over", "link"), NOFOLLOW),
    # a root that is missing or not a directory
    Row("alloc/data/f", not_found_under("<missing-root>"), root="<missing-root>"),
    Row("", not_found_under("<missing-root>"), root="<missing-root>"),
    Row("", not_found_under("<missing-root>"), LEXICAL, root="<missing-root>"),
    Row("", not_found_under("<file-root>"), root="<file-root>"),
    Row("alloc", not_found_under("<file-root>"), MIGRATION, root="<file-root>"),
]


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, str]:
    return plant(tmp_path)


def plant(tmp_path: Path) -> dict[str, str]:
    """The planted alloc dir; returns the value of each placeholder (roots included)."""
    tmp_path = tmp_path.resolve()  # so <root> is the real path
    ad = AllocDir(tmp_path / "allocs", "alloc-1")
    ad.build()
    for task in ("web", "db"):
        ad.new_task_dir(task).build()
    root = str(ad.path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    os.symlink(tmp_path / "allocs", tmp_path / "link-allocs")
    link_root = str(tmp_path / "link-allocs" / "alloc-1")
    (ad.data_dir / "f").write_text("inside")
    (ad.data_dir / "sub").mkdir()
    (ad.data_dir / "sub" / "g").write_text("g")
    (ad.data_dir / "secrets").mkdir()
    (ad.data_dir / "secrets" / "x").write_text("plain")
    (ad.path / "web" / "secrets" / "token").write_text("s3cr3t")
    values = {"<root>": root, "<link-root>": link_root, "<outside>": str(outside)}
    for rel, target in LINKS.items():
        os.symlink(expand(target, values), ad.path / rel)
    (tmp_path / "a-file").write_text("not a dir")
    return {
        **values,
        "<missing-root>": str(tmp_path / "allocs" / "no-such-alloc"),
        "<file-root>": str(tmp_path / "a-file"),
    }


def expand(text: str, values: dict[str, str]) -> str:
    for token, value in values.items():
        text = text.replace(token, value)
    return text


def _kind(st: os.stat_result | None) -> str:
    assert st is not None
    if stat.S_ISLNK(st.st_mode):
        return "link"
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def observe(root: str, path: str, options: dict[str, Any]) -> Outcome:
    """What resolve does with `path` under `root`; fails if it leaks a descriptor."""
    before = _open_fds()
    try:
        result = fs.resolve(root, path.split("/"), display=path, **options)
    except (PathEscapeError, AllocDirError) as err:
        outcome: Outcome = Refused(type(err), str(err))
    else:
        with result:
            if result.fd < 0:
                assert result.st is None
                outcome = Lexical("/".join(result.parts))
            else:
                outcome = Found("/".join(result.parts), _kind(result.st))
    assert _open_fds() <= before, "resolve left a descriptor open"
    return outcome


def _row_id(row: Row) -> str:
    options = "+".join(f"{name}={value}" for name, value in sorted(row.options.items()))
    return f"{row.root.strip('<>')}:{row.path or '<empty>'}:{options}"


@pytest.mark.parametrize("row", ROWS, ids=_row_id)
def test_resolve_matrix(tree: dict[str, str], row: Row) -> None:
    expected = row.expect
    if isinstance(expected, Refused):
        message = expand(expected.message.replace("<path>", repr(row.path)), tree)
        expected = Refused(expected.error, message)
    assert observe(tree[row.root], row.path, row.options) == expected
