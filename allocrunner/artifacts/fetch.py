"""Fetching one ``artifact`` block into a task's directory (Nomad's artifact hook).

`fetch_artifact` does what Nomad's client does for each artifact before a task
starts (client/allocrunner/taskrunner/artifact_hook.go and getter/ at v1.6.0, with
go-getter v1.7.0 semantics):

1. read the source: options become query parameters, ``archive``, ``checksum`` and
   ``filename`` are taken out (`allocrunner.artifacts.spec`); ``http``/``https`` are
   fetched with urllib and the block's headers; a local path (absolute, or
   ``file://``) only when the client allows local sources; a git source
   (``git::<url>``, ``github.com/<owner>/<repo>``, ``git@<host>:<path>``:
   `allocrunner.artifacts.git_source`) is cloned with the system git
   (`allocrunner.artifacts.git`) into the staging directory and installed as a tree
   (its symlinks checked as an archive's; mode file is refused); any other getter
   (s3, gcs, hg) is refused;
2. resolve the destination beneath the task dir (or the given confinement root),
   refusing one that escapes it (`allocrunner.artifacts.install`);
3. download into a private staging directory made inside the destination directory
   (so the final moves are renames on one filesystem), then verify the checksum
   before anything else happens;
4. unpack an archive into the staging directory (`allocrunner.artifacts.unpack`),
   or take the file as it is;
5. install: a file is renamed into place; a tree is merged into the destination
   directory entry by entry. The staging directory is removed in every case.

In ``any`` mode a plain file lands in the destination directory under the URL
path's base name (or ``?filename=``); in ``file`` mode the destination names the
file; in ``dir`` mode the source must be an archive or a local directory. A failure
raises `ArtifactError`: ``failed to download artifact "<source>": <reason>``,
recoverable (the restart policy may retry) unless retrying cannot help (a bad
source, destination or mode, a refused local path) or the fetch was cancelled
(`ArtifactCancelled`). A crash mid-fetch leaves at most a ``.artifact-*`` staging
directory in the destination directory; nothing half-written is ever installed.

Threads: none of its own; a fetch runs on its caller's thread (Nomad's hook runs up
to three at once, each on its own thread: they share nothing but the destination,
where each install is a rename). Locks: none. Owner: the task runner's artifact hook
calls `fetch_artifact` once per block, in the task's prestart.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tempfile
from typing import IO

from allocrunner._locking import calls_out
from allocrunner._sync import CancelToken
from allocrunner.artifacts.download import (
    Cancelled,
    DownloadError,
    copy_local,
    copy_local_tree,
    download_http,
    new_digest,
)
from allocrunner.artifacts.git import check_links, clone
from allocrunner.artifacts.git_source import is_git_source, parse_git_source
from allocrunner.artifacts.install import (
    InstallError,
    install_file,
    merge_tree,
    open_dir,
    resolve_destination,
)
from allocrunner.artifacts.spec import (
    MODE_ANY,
    MODE_DIR,
    MODE_FILE,
    MODES,
    ArtifactCancelled,
    ArtifactConfig,
    ArtifactError,
    ArtifactSpec,
    Source,
    default_destination,
    parse_source,
)
from allocrunner.artifacts.unpack import Limits, UnpackError, unpack_single, unpack_tree

__all__ = ["fetch_artifact"]

_STAGING_PREFIX = ".artifact-"
DEFAULT_CONFIG = ArtifactConfig()


class _Refused(Exception):
    """A problem of the block itself: retrying cannot help."""


@calls_out
def fetch_artifact(
    spec: ArtifactSpec,
    task_dir: str | os.PathLike[str],
    *,
    allow_local: bool,
    cancel: CancelToken | None = None,
    root: str | os.PathLike[str] | None = None,
    config: ArtifactConfig = DEFAULT_CONFIG,
) -> None:
    """Fetch `spec` into `task_dir` (see the module docstring); `root` confines the
    destination (default: the task dir itself; pass the alloc dir for Nomad's rule)."""
    task = os.path.abspath(os.fspath(task_dir))
    confine = os.path.abspath(os.fspath(root)) if root is not None else task
    try:
        _fetch(spec, task, confine, allow_local=allow_local, cancel=cancel, config=config)
    except Cancelled as err:
        raise ArtifactCancelled(spec.source, str(err), recoverable=False) from None
    except (_Refused, ValueError) as err:  # PathEscapeError and parse errors included
        raise ArtifactError(spec.source, str(err), recoverable=False) from None
    except (DownloadError, UnpackError, InstallError) as err:
        raise ArtifactError(spec.source, str(err)) from None
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        raise ArtifactError(spec.source, f"{err.strerror or err}{where}") from err


def _fetch(
    spec: ArtifactSpec,
    task_dir: str,
    root: str,
    *,
    allow_local: bool,
    cancel: CancelToken | None,
    config: ArtifactConfig,
) -> None:
    if spec.mode not in MODES:
        raise _Refused(f"invalid artifact mode {spec.mode!r}; must be one of: any, file, dir")
    if is_git_source(spec.source):
        _fetch_git(spec, task_dir, root, allow_local=allow_local, cancel=cancel, config=config)
        return
    source = parse_source(spec)
    local_dir = _check_local(source, allow_local)
    tree = _installs_a_tree(spec.mode, source, local_dir)
    if source.subdir and not tree:
        raise _Refused("a //subdir needs an archive or a local directory as its source")
    if tree and source.checksum is not None and source.archive is None:
        raise _Refused("checksum cannot be specified for directory download")
    dest = resolve_destination(default_destination(spec), task_dir, root)
    if tree:
        dir_parts, leaf = dest.parts, ""
    else:
        target = dest.parts + _file_name(spec.mode, source)
        if not target:
            raise _Refused("artifact destination names the task directory, not a file")
        dir_parts, leaf = target[:-1], target[-1]
    display = posixpath.join(*dir_parts, leaf) if dir_parts or leaf else "."
    dir_fd = open_dir(dest.root, dir_parts)
    try:
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=os.path.join(dest.root, *dir_parts))
        try:
            staged = _stage(source, staging, tree, local_dir, spec, cancel, config)
            if source.subdir:
                staged = _subdir(staged, source.subdir)
            if tree:
                _install_tree(staged, dir_fd, display)
            else:
                install_file(staged, dir_fd, leaf, display)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(dir_fd)


def _fetch_git(
    spec: ArtifactSpec,
    task_dir: str,
    root: str,
    *,
    allow_local: bool,
    cancel: CancelToken | None,
    config: ArtifactConfig,
) -> None:
    """Clone a git source into staging, then install its tree (or subdir) as a
    directory; git's checkout is a tree, so mode file is refused."""
    if spec.mode == MODE_FILE:
        raise _Refused("mode file is not supported for a git source; use mode dir")
    source = parse_git_source(spec)
    if source.scheme == "file" and not allow_local:
        raise _Refused("local artifact sources are not allowed on this client (use http or https)")
    dest = resolve_destination(default_destination(spec), task_dir, root)
    display = posixpath.join(*dest.parts) if dest.parts else "."
    dir_fd = open_dir(dest.root, dest.parts)
    try:
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=dest.path)
        try:
            tree = os.path.join(staging, "tree")
            clone(
                source,
                tree,
                work_dir=staging,
                cancel=cancel,
                timeout=config.git_timeout,
                allow_local=allow_local,
            )
            staged = _subdir(tree, source.subdir) if source.subdir else tree
            check_links(staged)
            _install_tree(staged, dir_fd, display)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        os.close(dir_fd)


def _install_tree(staged: str, dir_fd: int, display: str) -> None:
    staged_fd = os.open(staged, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        merge_tree(staged_fd, dir_fd, display)
    finally:
        os.close(staged_fd)


def _check_local(source: Source, allow_local: bool) -> bool:
    """For a local source: refuse it unless allowed; whether it is a directory."""
    if source.scheme != "file":
        return False
    if not allow_local:
        raise _Refused("local artifact sources are not allowed on this client (use http or https)")
    if not os.path.isabs(source.local_path):
        raise _Refused(f"a local artifact source must be an absolute path: {source.local_path}")
    is_dir = os.path.isdir(source.local_path)
    if is_dir and source.archive is not None:
        raise _Refused(f"source {source.local_path} is a directory, not an archive")
    return is_dir


def _installs_a_tree(mode: str, source: Source, local_dir: bool) -> bool:
    if mode == MODE_FILE:
        if local_dir:
            raise _Refused(f"source {source.local_path} is a directory; mode file needs a file")
        return False
    if source.archive is not None or local_dir:
        return True
    if mode == MODE_DIR:
        raise _Refused("mode dir needs an archive or a local directory as its source")
    if source.url_path.endswith("/"):
        raise _Refused("directory downloads over http are not supported; fetch an archive")
    return False


def _subdir(tree: str, subdir: tuple[str, ...]) -> str:
    """The staged subdirectory to install; it must be a real directory in the tree."""
    path = tree
    for part in subdir:
        path = os.path.join(path, part)
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            is_dir = False
        if not is_dir:
            raise _Refused(f"subdirectory {'/'.join(subdir)} is not a directory of the source")
    return path


def _file_name(mode: str, source: Source) -> tuple[str, ...]:
    """In any mode, the file's name beneath the destination directory."""
    if mode != MODE_ANY:
        return ()
    name = source.filename or posixpath.basename(source.url_path)
    if ".." in name.replace("\\", "/").split("/"):
        raise _Refused("filename query parameter contain path traversal")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts:
        raise _Refused("the source URL names no file (add ?filename=)")
    return parts


def _stage(
    source: Source,
    staging: str,
    tree: bool,
    local_dir: bool,
    spec: ArtifactSpec,
    cancel: CancelToken | None,
    config: ArtifactConfig,
) -> str:
    """Fetch (and unpack) into `staging`; the path of the file or tree to install."""
    if local_dir:
        staged = os.path.join(staging, "tree")
        copy_local_tree(source.local_path, staged, cancel=cancel, limit=config.http_max_bytes)
        return staged
    download = os.path.join(staging, "download")
    with open(download, "xb") as out:
        _download(source, out, spec, cancel, config)
    limits = Limits(config.decompression_file_count_limit, config.decompression_size_limit)
    if source.archive is None:
        os.chmod(download, 0o644)
        return download
    staged = os.path.join(staging, "tree" if tree else "file")
    if tree:
        os.mkdir(staged, 0o700)
        unpack_tree(download, source.archive, staged, limits=limits, cancel=cancel)
    else:
        unpack_single(download, source.archive, staged, limits=limits, cancel=cancel)
    return staged


def _download(
    source: Source,
    out: IO[bytes],
    spec: ArtifactSpec,
    cancel: CancelToken | None,
    config: ArtifactConfig,
) -> None:
    digest = new_digest(source.checksum.kind if source.checksum else None)
    if source.scheme == "file":
        copy_local(
            source.local_path, out, digest=digest, cancel=cancel, limit=config.http_max_bytes
        )
    else:
        download_http(
            source.url,
            out,
            headers=spec.headers,
            digest=digest,
            cancel=cancel,
            read_timeout=config.http_read_timeout,
            socket_timeout=config.http_socket_timeout,
            max_bytes=config.http_max_bytes,
        )
    if source.checksum is not None and digest is not None:
        got = digest.digest()
        if got != source.checksum.digest:
            name = posixpath.basename(source.url_path) or source.url_path
            raise DownloadError(
                f"checksums did not match for {name}: expected {source.checksum.kind}"
                f" {source.checksum.digest.hex()}, got {got.hex()}"
            )
