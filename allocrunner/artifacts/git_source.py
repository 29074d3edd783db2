"""Reading an artifact source that selects go-getter's git getter.

A source is fetched with git (go-getter v1.7.0's detectors and GitGetter, as Nomad
v1.6 vendors them) when it is:

- forced: ``git::<url>`` with an https, http, ssh, git or (local sources allowed)
  file URL, an absolute path, or one of the shorthands below;
- ``github.com/<owner>/<repo>[/<subdir>]`` (also gitlab.com and bitbucket.org): the
  repository over https, ``.git`` added to its path, anything after the repository
  becoming the subdirectory;
- scp-like ``git@<host>:<path>``: ``ssh://git@<host>/<path>`` (another ``git@``
  source is refused, as the job loader sees it as git too);
- a ``git://`` URL.

The block's options become query parameters (an option replaces a parameter of the
same name, as Nomad's ``q.Set``); go-getter then takes out ``ref`` (a branch, tag or
commit to check out), ``depth`` (a shallow clone; a value that is not a positive
integer means a full clone) and ``sshkey`` (a base64 private key); what remains stays
on the URL given to git. A ``//subdir`` suffix selects the part of the checkout to
install. A checksum cannot apply to a directory, and an archive kind to a checkout:
both are refused.

Threads: none; pure functions over immutable values. Locks: none. Owner: called by
`allocrunner.artifacts.fetch`.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse

import attrs

from allocrunner.artifacts.spec import (
    _GO_FALSE,
    ArtifactSpec,
    _query_with_options,
    _take,
    split_subdir,
)

__all__ = ["GIT_SCHEMES", "GitSource", "is_git_source", "parse_git_source"]

#: URL schemes git is run with (file only where local artifacts are allowed).
GIT_SCHEMES = ("https", "http", "ssh", "git", "file")
_FORCED = re.compile(r"^([A-Za-z0-9]+)::(.+)$", re.DOTALL)
_SCP = re.compile(r"^git@([^:/]+):/?(.+)$", re.DOTALL)
_HOSTED = ("github.com/", "gitlab.com/", "bitbucket.org/")


@attrs.frozen
class GitSource:
    """Immutable. A git source as go-getter reads it."""

    url: str  # what git clones: no ref, depth, sshkey or subdir
    ref: str = ""  # "" for the remote's default branch
    depth: int = 0  # 0 for a full clone
    ssh_key: bytes = b""  # the decoded private key, b"" for none
    subdir: tuple[str, ...] = ()
    local_path: str = ""  # the repository's path, for a file URL

    @property
    def scheme(self) -> str:
        return urllib.parse.urlsplit(self.url).scheme


def is_git_source(source: str) -> bool:
    """Whether go-getter would fetch `source` with its git getter."""
    forced = _FORCED.match(source)
    if forced:
        return forced.group(1).lower() == "git"
    if source.lower().startswith("git://"):
        return True
    return source.startswith((*_HOSTED, "git@"))


def _hosted(base: str) -> tuple[str, tuple[str, ...]] | None:
    """github.com/owner/repo[/sub]: the https URL and the subdirectory's parts."""
    host = next((h for h in _HOSTED if base.startswith(h)), None)
    if host is None:
        return None
    parts = base.split("/")
    if len(parts) < 3 or not parts[1] or not parts[2]:
        raise ValueError(f"{host[:-1]} sources should be {host}<owner>/<repo>")
    path = f"{parts[1]}/{parts[2]}"
    if not path.endswith(".git"):
        path += ".git"
    return f"https://{host}{path}", tuple(p for p in parts[3:] if p not in ("", "."))


def _as_url(base: str, forced: bool) -> tuple[str, tuple[str, ...]]:
    """The source (without its query and subdir) as a URL, and a detected subdir."""
    hosted = _hosted(base)
    if hosted is not None:
        return hosted
    scp = _SCP.match(base)
    if scp is not None:
        return f"ssh://git@{scp.group(1)}/{scp.group(2)}", ()
    if forced and base.startswith("/"):
        return "file://" + urllib.parse.quote(base), ()
    scheme = urllib.parse.urlsplit(base).scheme.lower() if "://" in base else ""
    if scheme not in GIT_SCHEMES:
        raise ValueError(
            "a git source must be an https, http, ssh, git or file URL,"
            " github.com/<owner>/<repo> or git@<host>:<path>"
        )
    return base, ()


def _check_url(url: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file" and not parts.netloc:
        raise ValueError(f"git URL {url} names no host")
    try:
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError:
        raise ValueError(
            f"invalid port number in {url}; for the scp-like address, drop ssh:// and"
            " write git@<host>:<path>"
        ) from None
    return parts


def _depth(value: str) -> int:
    try:
        depth = int(value, 10)
    except ValueError:
        return 0
    return max(depth, 0)


def _ssh_key(value: str) -> bytes:
    if not value:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("sshkey is not valid base64") from None


def parse_git_source(spec: ArtifactSpec) -> GitSource:
    """Read `spec`'s git source (see the module docstring); ValueError naming the
    problem."""
    forced = _FORCED.match(spec.source)
    rest = forced.group(2) if forced else spec.source
    rest, subdir = split_subdir(rest)
    base, _, query = rest.partition("?")
    url, detected = _as_url(base, forced is not None)
    pairs = _query_with_options(query, spec.options)
    ref, pairs = _take(pairs, "ref")
    depth, pairs = _take(pairs, "depth")
    ssh_key, pairs = _take(pairs, "sshkey")
    checksum, pairs = _take(pairs, "checksum")
    archive, pairs = _take(pairs, "archive")
    if checksum:
        raise ValueError("checksum cannot be specified for directory download")
    if archive and archive not in _GO_FALSE:
        raise ValueError("a git source cannot be unpacked as an archive")
    if ref.startswith("-"):
        raise ValueError(f"invalid git ref {ref!r}")
    parts = _check_url(url)
    full = urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urllib.parse.urlencode(pairs), "")
    )
    local = urllib.parse.unquote(parts.path) if parts.scheme == "file" else ""
    return GitSource(full, ref, _depth(depth), _ssh_key(ssh_key), detected + subdir, local)
