"""What an ``artifact`` block asks for, and how its source URL is read.

A task's ``artifact`` block names a `source`, an optional `destination` (relative to
the task dir), a `mode` (``any``, ``file`` or ``dir``), `options` and `headers`.
Nomad hands it to hashicorp/go-getter (client/allocrunner/taskrunner/getter at
v1.6.0, go-getter v1.7.0); this module reads it the same way:

- every option becomes a query parameter of the source URL; go-getter's magic
  parameters are then taken out: ``archive`` (an archive kind, or a false boolean to
  never unpack), ``checksum`` (``<type>:<hex>`` with md5, sha1, sha256 or sha512, or a
  bare hex value whose length picks the type) and, in ``any`` mode, ``filename``;
- an archive kind not given is found from the URL path's longest matching suffix;
- a ``//`` after the host (or in a local path) splits off a subdirectory: only that
  part of the unpacked archive (or local directory) is installed;
- a destination left out is ``local/`` (``local/<base name of the source>`` in file
  mode), as Nomad's API canonicalises it.

Threads: none; pure functions over immutable values. Locks: none. Owner: called by
`allocrunner.artifacts.fetch`; `artifact_from_json` is for the job codec.
"""

from __future__ import annotations

import binascii
import hashlib
import posixpath
import re
import urllib.parse
from collections.abc import Mapping

import attrs

from allocrunner.errors import JobSpecError, RecoverableError
from allocrunner.structs.frozen import EMPTY, FrozenDict, frozen_map

__all__ = [
    "ARCHIVE_KINDS",
    "MODE_ANY",
    "MODE_DIR",
    "MODE_FILE",
    "ArtifactCancelled",
    "ArtifactConfig",
    "ArtifactError",
    "ArtifactSpec",
    "Checksum",
    "Source",
    "artifact_from_json",
    "default_destination",
    "parse_checksum",
    "parse_source",
]

MODE_ANY = "any"
MODE_FILE = "file"
MODE_DIR = "dir"
MODES = (MODE_ANY, MODE_FILE, MODE_DIR)

# go-getter's decompressors that this client can run (zstd needs a library Python
# lacks: such a source is refused instead of being installed still compressed).
ARCHIVE_KINDS = frozenset(
    {"tar", "tar.gz", "tgz", "tar.bz2", "tbz2", "tar.xz", "txz", "zip", "gz", "bz2", "xz"}
)
UNSUPPORTED_ARCHIVE_KINDS = frozenset({"zst", "tar.zst", "tzst"})
_HASH_SIZES = {16: "md5", 20: "sha1", 32: "sha256", 64: "sha512"}
_HASHES = frozenset(_HASH_SIZES.values())
_FORCED = re.compile(r"^([A-Za-z0-9]+)::(.+)$")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_GO_BOOLS = (*_GO_FALSE, "1", "t", "T", "TRUE", "true", "True")
GB = 1000**3


class ArtifactError(RecoverableError):
    """An artifact could not be fetched; the message names its source, as Nomad's
    ``failed to download artifact "<source>": <reason>``."""

    def __init__(self, source: str, reason: str, *, recoverable: bool = True) -> None:
        message = f"failed to download artifact {_go_quote(source)}: {reason}"
        super().__init__(message, recoverable=recoverable)
        self.source = source
        self.reason = reason


class ArtifactCancelled(ArtifactError):
    """The fetch was cancelled (its task is being stopped); nothing was installed."""


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@attrs.frozen
class ArtifactConfig:
    """Immutable. The client's ``artifact`` settings, with Nomad's defaults."""

    http_read_timeout: float = 1800.0  # seconds for a whole HTTP download
    http_socket_timeout: float = 60.0  # seconds a connect or a single read may block
    http_max_bytes: int = 100 * GB
    decompression_file_count_limit: int = 4096
    decompression_size_limit: int = 100 * GB
    git_timeout: float = 1800.0  # seconds for all the git commands of one clone


@attrs.frozen
class ArtifactSpec:
    """Immutable. One ``artifact`` block (after the task env's interpolation)."""

    source: str
    destination: str | None = None
    mode: str = MODE_ANY
    options: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    headers: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)


def default_destination(spec: ArtifactSpec) -> str:
    """The destination Nomad gives an artifact block that names none."""
    if spec.destination is not None:
        return spec.destination
    if spec.mode == MODE_FILE:
        return posixpath.join("local", posixpath.basename(spec.source))
    return "local/"


def _str_map(doc: Mapping[str, object], key: str, path: str) -> dict[str, str]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise JobSpecError(f"{path}.{key}", "expected an object of strings")
    result: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not isinstance(item, str):
            raise JobSpecError(f"{path}.{key}.{name}", f"expected a string, got {item!r}")
        result[name] = item
    return result


def artifact_from_json(doc: object, path: str = "Artifacts[0]") -> ArtifactSpec:
    """An `ArtifactSpec` from Nomad's TaskArtifact JSON (``GetterSource``,
    ``GetterOptions``, ``GetterHeaders``, ``GetterMode``, ``RelativeDest``)."""
    if not isinstance(doc, Mapping):
        raise JobSpecError(path, f"expected an object, got {type(doc).__name__}")
    source = doc.get("GetterSource")
    if not isinstance(source, str) or not source:
        raise JobSpecError(f"{path}.GetterSource", "source must be specified")
    mode = doc.get("GetterMode") or MODE_ANY
    if mode not in MODES:
        raise JobSpecError(
            f"{path}.GetterMode", f"invalid artifact mode {mode!r}; must be one of: any, file, dir"
        )
    dest = doc.get("RelativeDest")
    if dest is not None and not isinstance(dest, str):
        raise JobSpecError(f"{path}.RelativeDest", f"expected a string, got {dest!r}")
    return ArtifactSpec(
        source=source,
        destination=dest,
        mode=str(mode),
        options=_str_map(doc, "GetterOptions", path),
        headers=_str_map(doc, "GetterHeaders", path),
    )


# --- the source ------------------------------------------------------------------------


@attrs.frozen
class Checksum:
    """Immutable. An expected digest: hash name and raw bytes."""

    kind: str
    digest: bytes

    def new(self) -> hashlib._Hash:
        return hashlib.new(self.kind)


def parse_checksum(value: str) -> Checksum:
    """go-getter's ``checksum`` value: ``<type>:<hex>``, or a bare hex value whose
    length picks md5, sha1, sha256 or sha512. ValueError when it is not one."""
    kind, sep, text = value.partition(":")
    if not sep:
        kind, text = "", value
    if kind == "file":
        raise ValueError("checksum files (checksum=file:<url>) are not supported")
    try:
        digest = binascii.unhexlify(text)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"invalid checksum: {text!r} is not hexadecimal") from err
    if not kind:
        guessed = _HASH_SIZES.get(len(digest))
        if guessed is None:
            raise ValueError(f"Unknown type for checksum {text}")
        return Checksum(guessed, digest)
    kind = kind.lower()
    if kind not in _HASHES:
        raise ValueError(f"unsupported checksum type: {kind}")
    if len(digest) != hashlib.new(kind).digest_size:
        raise ValueError(f"invalid {kind} checksum: {text}")
    return Checksum(kind, digest)


@attrs.frozen
class Source:
    """Immutable. A source as go-getter reads it: where to fetch from (`url` for HTTP,
    `local_path` for a file) and the magic parameters taken out of it."""

    scheme: str  # "http", "https" or "file"
    url: str = ""
    local_path: str = ""
    archive: str | None = None  # an archive kind, or None: do not unpack
    checksum: Checksum | None = None
    filename: str = ""  # the ?filename= of any mode
    url_path: str = ""  # the path part, which names the file in any mode
    subdir: tuple[str, ...] = ()  # go-getter's "//sub/dir": install only that part


def _query_with_options(query: str, options: Mapping[str, str]) -> list[tuple[str, str]]:
    pairs = [(k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True)]
    for key, value in options.items():
        pairs = [(k, v) for k, v in pairs if k != key]
        pairs.append((key, value))
    return sorted(pairs, key=lambda kv: kv[0])


def _take(pairs: list[tuple[str, str]], key: str) -> tuple[str, list[tuple[str, str]]]:
    """The first value of `key` ("" when absent) and the pairs without it."""
    value = next((v for k, v in pairs if k == key), "")
    return value, [(k, v) for k, v in pairs if k != key]


def _archive_kind(value: str, path: str) -> str | None:
    if value in _GO_FALSE:
        return None
    if value and value in _GO_BOOLS:
        value = "-"  # "true": go-getter looks this up as a kind, and finds none
    if value:
        if value in UNSUPPORTED_ARCHIVE_KINDS:
            raise ValueError(f"{value} archives are not supported by this client")
        return value if value in ARCHIVE_KINDS else None
    matches = [k for k in ARCHIVE_KINDS | UNSUPPORTED_ARCHIVE_KINDS if path.endswith("." + k)]
    if not matches:
        return None
    kind = max(matches, key=len)
    if kind in UNSUPPORTED_ARCHIVE_KINDS:
        raise ValueError(f"{kind} archives are not supported by this client")
    return kind


def _scheme_of(source: str) -> tuple[str, str]:
    """(getter, rest): a forced ``getter::`` prefix, a URL scheme, or "file"."""
    forced = _FORCED.match(source)
    if forced:
        return forced.group(1).lower(), forced.group(2)
    if source.startswith("git@"):
        return "git", source
    if source.startswith(("github.com/", "bitbucket.org/")):
        return "git", source
    if source.startswith(("/", ".")) or "://" not in source:
        return "file", source
    return urllib.parse.urlsplit(source).scheme.lower(), source


def split_subdir(source: str) -> tuple[str, tuple[str, ...]]:
    """go-getter's ``<source>//<subdir>``: the source without it (query kept) and the
    subdirectory's components; ValueError when the subdirectory climbs out."""
    stop = source.find("?")
    stop = len(source) if stop < 0 else stop
    scheme_end = source.find("://", 0, stop)
    offset = scheme_end + 3 if scheme_end >= 0 else 0
    at = source.find("//", offset, stop)
    if at < 0:
        return source, ()
    subdir, _, query = source[at + 2 :].partition("?")
    if ".." in subdir.replace("\\", "/").split("/"):
        raise ValueError("subdirectory component contain path traversal out of the repository")
    base = source[:at] + (f"?{query}" if query else "")
    return base, tuple(p for p in subdir.split("/") if p not in ("", "."))


def parse_source(spec: ArtifactSpec) -> Source:
    """Read `spec`'s source and options; ValueError naming the problem."""
    getter, rest = _scheme_of(spec.source)
    if getter not in ("http", "https", "file"):
        raise ValueError(f"download not supported for scheme '{getter}'")
    rest, subdir = split_subdir(rest)
    parts = urllib.parse.urlsplit(rest) if "://" in rest else None
    if getter == "file":
        path = parts.path if parts is not None else rest.split("?", 1)[0]
        query = parts.query if parts is not None else rest.partition("?")[2]
        if parts is not None and parts.scheme not in ("", "file"):
            raise ValueError(f"download not supported for scheme '{parts.scheme}'")
    else:
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"source {spec.source!r} is not an http(s) URL")
        path, query = parts.path, parts.query
    pairs = _query_with_options(query, spec.options)
    archive_value, pairs = _take(pairs, "archive")
    checksum_value, pairs = _take(pairs, "checksum")
    filename = ""
    if spec.mode == MODE_ANY:
        filename, pairs = _take(pairs, "filename")
    archive = _archive_kind(archive_value, path)
    checksum = parse_checksum(checksum_value) if checksum_value else None
    if getter == "file":
        local = urllib.parse.unquote(path)
        return Source("file", "", local, archive, checksum, filename, path, subdir)
    assert parts is not None
    url = urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, parts.path, urllib.parse.urlencode(pairs), "")
    )
    return Source(parts.scheme, url, "", archive, checksum, filename, path, subdir)
