"""Unpacking a downloaded archive into a private staging directory, trusting nothing.

The kinds are go-getter's (tar, tar.gz/tgz, tar.bz2/tbz2, tar.xz/txz, zip, and the
single-file gz, bz2, xz). `unpack_tree` writes a whole archive beneath a fresh
directory; `unpack_single` writes the one file of an archive (or of a compressed
stream) to a new file, for ``mode = "file"``. Either way:

- a member whose name has a ``..`` component (split on ``/`` and ``\\``, as
  go-getter does) or a NUL byte is refused (``entry contains '..': <name>``); leading
  slashes are dropped, so an absolute name lands beneath the directory, as with
  go-getter's path join;
- no symlink exists while files are written: symlinks are made last, each must be
  relative, its parents must be real directories, and once all exist each must
  resolve inside the directory (`allocrunner.allocdir.fs.resolve`, chains followed);
  files are created with ``O_EXCL | O_NOFOLLOW``;
- a hard link may only name a regular file unpacked before it; devices and fifos are
  refused;
- setuid and setgid bits are dropped (Nomad's getter umask); the count of entries and
  the bytes written are limited (Nomad's decompression limits), the bytes as they are
  really written, whatever the headers claim; the cancel token is checked between
  chunks and entries.

Threads: none; an unpack runs on its caller's thread. Locks: none (the staging
directory is private to the call until it returns). Owner:
`allocrunner.artifacts.fetch`; each `_Tree` belongs to one call.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import lzma
import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Literal

import attrs

from allocrunner._locking import calls_out, confined
from allocrunner._sync import CancelToken
from allocrunner.allocdir import fs
from allocrunner.artifacts.download import TooLarge, check_cancel, copy_stream
from allocrunner.errors import AllocDirError, PathEscapeError

__all__ = ["Limits", "UnpackError", "unpack_single", "unpack_tree"]

_TAR_MODES: dict[str, Literal["r:", "r:gz", "r:bz2", "r:xz"]] = {
    "tar": "r:",
    "tar.gz": "r:gz",
    "tgz": "r:gz",
    "tar.bz2": "r:bz2",
    "tbz2": "r:bz2",
    "tar.xz": "r:xz",
    "txz": "r:xz",
}
_STREAM_NAMES = {"gz": "gzip", "bz2": "bzip2", "xz": "xz"}
_MAX_LINK_TARGET = 4096
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    RuntimeError,  # an encrypted zip member
)


class UnpackError(Exception):
    """The archive cannot be unpacked; the message is the reason."""


@attrs.frozen
class Limits:
    """Immutable. At most `files` entries and `size` bytes unpacked (0: no limit)."""

    files: int = 4096
    size: int = 100 * 1000**3


def _parts(name: str) -> tuple[str, ...]:
    """A member name's components beneath the directory; UnpackError if it escapes."""
    if "\x00" in name:
        raise UnpackError(f"entry contains a NUL byte: {name!r}")
    if ".." in name.replace("\\", "/").split("/"):
        raise UnpackError(f"entry contains '..': {name}")
    return tuple(part for part in name.split("/") if part not in ("", "."))


def _file_mode(mode: int, default: int = 0o644) -> int:
    mode &= 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)
    return mode if mode & 0o777 else default


class _Tree:
    """Not thread-safe; owned by one unpack call. Writes beneath `root`, a private
    directory: until `finish` no symlink exists in it, so paths are followed safely."""

    _written = confined("unpacking")
    _entries = confined("unpacking")
    _files = confined("unpacking")

    def __init__(self, root: str, limits: Limits, cancel: CancelToken | None, kind: str) -> None:
        self.root = root
        self.limits = limits
        self.cancel = cancel
        self.kind = kind
        self.dirs: dict[tuple[str, ...], int] = {}
        self.implicit: set[tuple[str, ...]] = set()
        self.links: list[tuple[tuple[str, ...], str, str]] = []
        self._files = 0
        self._written = 0
        self._entries = 0

    def path(self, parts: tuple[str, ...]) -> str:
        return os.path.join(self.root, *parts)

    def count(self) -> None:
        check_cancel(self.cancel)
        self._entries += 1
        if self.limits.files and self._entries > self.limits.files:
            raise UnpackError(
                f"{self.kind} archive contains too many files: "
                f"{self._entries} > {self.limits.files}"
            )

    def ensure_dir(self, parts: tuple[str, ...], name: str) -> None:
        for i in range(1, len(parts) + 1):
            path = self.path(parts[:i])
            try:
                os.mkdir(path, 0o700)
                self.implicit.add(parts[:i])
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    raise UnpackError(
                        f"entry {name} goes through {'/'.join(parts[:i])}, which is not a directory"
                    ) from None

    def clear(self, parts: tuple[str, ...], name: str) -> None:
        path = self.path(parts)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise UnpackError(f"entry {name} would replace a directory")
        os.unlink(path)

    def add_dir(self, parts: tuple[str, ...], mode: int, name: str) -> None:
        if parts:
            self.ensure_dir(parts, name)
            self.implicit.discard(parts)
            self.dirs[parts] = _file_mode(mode, 0o755)

    @calls_out
    def add_file(self, parts: tuple[str, ...], reader: IO[bytes], mode: int, name: str) -> None:
        if not parts:
            raise UnpackError(f"entry {name!r} names the directory itself")
        self.ensure_dir(parts[:-1], name)
        self.clear(parts, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(self.path(parts), flags, 0o600), "wb") as out:
            self._written += self._copy(reader, out)
            os.fchmod(out.fileno(), _file_mode(mode))
        self._files += 1

    def _copy(self, reader: IO[bytes], out: IO[bytes]) -> int:
        remaining = self.limits.size - self._written if self.limits.size else 2**63
        try:
            return copy_stream(reader.read, out, digest=None, cancel=self.cancel, limit=remaining)
        except TooLarge:
            raise UnpackError(
                f"{self.kind} archive larger than limit: {self.limits.size}"
            ) from None

    def add_symlink(self, parts: tuple[str, ...], target: str, name: str) -> None:
        if not parts:
            raise UnpackError(f"entry {name!r} names the directory itself")
        if not target or "\x00" in target:
            raise UnpackError(f"symlink {name} has an invalid target")
        if target.startswith("/"):
            raise UnpackError(f"symlink {name} -> {target} is absolute")
        self.ensure_dir(parts[:-1], name)
        self.links.append((parts, target, name))
        self._files += 1

    def add_hardlink(self, parts: tuple[str, ...], target: str, name: str) -> None:
        source = _parts(target)
        try:
            is_file = stat.S_ISREG(os.lstat(self.path(source)).st_mode) if source else False
        except FileNotFoundError:
            is_file = False
        if not is_file:
            raise UnpackError(f"hard link {name} -> {target} names no file unpacked before it")
        self.ensure_dir(parts[:-1], name)
        self.clear(parts, name)
        os.link(self.path(source), self.path(parts), follow_symlinks=False)
        self._files += 1

    def finish(self) -> None:
        """Make the symlinks, check that each stays inside, settle directory modes."""
        if not self._files:
            raise UnpackError("empty archive")
        for parts, target, name in self.links:
            self.ensure_dir(parts[:-1], name)
            self.clear(parts, name)
            os.symlink(target, self.path(parts))
        for parts, target, name in self.links:
            check_link_inside(self.root, parts, target, name)
        modes = {p: 0o755 for p in self.implicit}
        modes.update(self.dirs)
        for parts in sorted(modes, key=len, reverse=True):
            os.chmod(self.path(parts), modes[parts])


def check_link_inside(root: str, parts: tuple[str, ...], target: str, name: str) -> None:
    """Refuse the symlink at `parts` under `root` (shown as `name`, pointing at
    `target`) if it resolves outside `root`; a loop leads nowhere, so it passes."""
    try:
        fs.resolve(
            root,
            parts,
            display=name,
            lexical_when_missing=True,
            refuse_secrets=False,
        ).close()
    except PathEscapeError:
        raise UnpackError(f"symlink {name} -> {target} escapes the destination") from None
    except fs.SymlinkLoopError:
        return  # a loop resolves nowhere, so it cannot lead out either
    except AllocDirError as err:
        raise UnpackError(f"symlink {name} -> {target}: {err}") from None


def _unpack_tar(path: str, kind: str, tree: _Tree) -> None:
    with tarfile.open(path, _TAR_MODES[kind]) as archive:
        for member in archive:
            tree.count()
            parts = _parts(member.name)
            if member.isdir():
                tree.add_dir(parts, member.mode, member.name)
            elif member.isreg():
                reader = archive.extractfile(member)
                assert reader is not None
                with reader:
                    tree.add_file(parts, reader, member.mode, member.name)
            elif member.issym():
                tree.add_symlink(parts, member.linkname, member.name)
            elif member.islnk():
                tree.add_hardlink(parts, member.linkname, member.name)
            else:
                raise UnpackError(f"entry {member.name} has an unsupported type")


def _zip_kind(info: zipfile.ZipInfo) -> int:
    return stat.S_IFMT(info.external_attr >> 16)


def _unpack_zip(path: str, tree: _Tree) -> None:
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        if tree.limits.files and len(infos) > tree.limits.files:
            raise UnpackError(
                f"zip archive contains too many files: {len(infos)} > {tree.limits.files}"
            )
        for info in infos:
            tree.count()
            parts = _parts(info.filename)
            mode = info.external_attr >> 16
            if info.is_dir():
                tree.add_dir(parts, mode, info.filename)
            elif _zip_kind(info) == stat.S_IFLNK:
                with archive.open(info) as reader:
                    target = reader.read(_MAX_LINK_TARGET + 1)
                if len(target) > _MAX_LINK_TARGET:
                    raise UnpackError(f"symlink {info.filename} has a target too long")
                tree.add_symlink(parts, os.fsdecode(target), info.filename)
            elif _zip_kind(info) in (0, stat.S_IFREG):
                with archive.open(info) as reader:
                    tree.add_file(parts, reader, mode, info.filename)
            else:
                raise UnpackError(f"entry {info.filename} has an unsupported type")


@calls_out
def unpack_tree(
    archive: str, kind: str, dest: str, *, limits: Limits, cancel: CancelToken | None
) -> None:
    """Unpack `archive` of `kind` beneath the new, empty, private directory `dest`."""
    if kind in _STREAM_NAMES:
        raise UnpackError(
            f"{_STREAM_NAMES[kind]}-compressed files can only unarchive to a single file"
        )
    tree = _Tree(dest, limits, cancel, "zip" if kind == "zip" else "tar")
    try:
        if kind == "zip":
            _unpack_zip(archive, tree)
        else:
            _unpack_tar(archive, kind, tree)
        tree.finish()
    except _ARCHIVE_ERRORS as err:
        raise UnpackError(f"{kind}: {err}") from err


# --- one file --------------------------------------------------------------------------


def _open_stream(kind: str, path: str) -> gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile:
    if kind == "gz":
        return gzip.GzipFile(path, "rb")
    if kind == "bz2":
        return bz2.BZ2File(path, "rb")
    return lzma.LZMAFile(path, "rb")


def _single_zip_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo:
    infos = archive.infolist()
    if not infos:
        raise UnpackError("empty archive")
    if len(infos) > 1 or infos[0].is_dir() or _zip_kind(infos[0]) not in (0, stat.S_IFREG):
        raise UnpackError("expected a single file")
    return infos[0]


def _single_tar_member(archive: tarfile.TarFile) -> tarfile.TarInfo:
    members = archive.getmembers()
    if not members:
        raise UnpackError("empty archive")
    if len(members) > 1:
        raise UnpackError("expected a single file, got multiple")
    if not members[0].isreg():
        raise UnpackError("expected a single file")
    return members[0]


@calls_out
def _write_single(
    read: Callable[[int], bytes],
    out: str,
    mode: int,
    *,
    kind: str,
    limits: Limits,
    cancel: CancelToken | None,
) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(out, flags, 0o600), "wb") as sink:
        try:
            copy_stream(
                read,
                sink,
                digest=None,
                cancel=cancel,
                limit=limits.size or 2**63,
                what="decompressed file",
            )
        except TooLarge:
            raise UnpackError(f"{kind} file larger than limit: {limits.size}") from None
        os.fchmod(sink.fileno(), _file_mode(mode))


@calls_out
def unpack_single(
    archive: str, kind: str, out: str, *, limits: Limits, cancel: CancelToken | None
) -> None:
    """Write the one file of `archive` (or its decompressed stream) to the new file
    `out`, keeping an archived file's mode (less setuid/setgid)."""
    write = functools.partial(_write_single, out=out, kind=kind, limits=limits, cancel=cancel)
    try:
        if kind in _STREAM_NAMES:
            with _open_stream(kind, archive) as reader:
                write(reader.read, mode=0o644)
        elif kind == "zip":
            with zipfile.ZipFile(archive) as zipped:
                info = _single_zip_member(zipped)
                with zipped.open(info) as reader:
                    write(reader.read, mode=info.external_attr >> 16)
        else:
            with tarfile.open(archive, _TAR_MODES[kind]) as tarred:
                member = _single_tar_member(tarred)
                extracted = tarred.extractfile(member)
                assert extracted is not None
                with extracted as reader:
                    write(reader.read, mode=member.mode)
    except _ARCHIVE_ERRORS as err:
        raise UnpackError(f"{kind}: {err}") from err
