"""AllocDir: the directory tree of one allocation, and the safe ways to touch it.

Threads: none of its own; callers' threads do the file work (`block_until_exists` and
`change_events` wait on the caller's thread, on inotify where Linux has it and by
polling elsewhere: `allocdir.inotify`). Locks: "AllocDir._lock", an RWLock, guards
the map of task dirs and the built flag; no file work runs under it. Owner: an
AllocRunner creates and destroys its AllocDir; task runners, migration, the GC and the
agent's file API use it.

The module is over the usual size because it is one concern: every way into one
allocation's tree goes through the class here, so that none can follow a symlink a
task planted (the walking itself is in `fs`, the archive format in `tarstream`).
"""

from __future__ import annotations

import errno
import os
import secrets as _secrets
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, BinaryIO, Final

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_rwlock
from allocrunner._sync import CancelToken
from allocrunner.allocdir import fs, inotify, tarstream
from allocrunner.allocdir.fs import FileChange, FileInfo
from allocrunner.allocdir.roots import root_path
from allocrunner.allocdir.task_dir import TaskDir
from allocrunner.errors import AllocDirError, PathEscapeError
from allocrunner.structs.frozen import FrozenDict

__all__ = ["POLL_INTERVAL", "AllocDir"]

SHARED_DIR: Final = fs.SHARED_DIR_NAME
DATA_DIR: Final = "data"
LOGS_DIR: Final = "logs"
TMP_DIR: Final = "tmp"
ALLOC_DIR_MODE: Final = 0o755
SHARED_DIR_MODE: Final = 0o755
SHARED_SUBDIR_MODE: Final = 0o777
LOCAL_DIR_MODE: Final = 0o777
TASK_DIR_MODE: Final = 0o777
_FRESH_LAYOUT: Final = (
    (SHARED_DIR, SHARED_DIR_MODE),
    *((f"{SHARED_DIR}/{name}", SHARED_SUBDIR_MODE) for name in (DATA_DIR, LOGS_DIR, TMP_DIR)),
)

POLL_INTERVAL: Final = 0.05
"""Seconds between polls in `block_until_exists` and `change_events` where inotify is
unavailable (see `allocdir.inotify`); with inotify they wait on events alone."""


def _check_name(value: object, field: str) -> str:
    """A single path component usable as an alloc id or task name, or ValueError."""
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected str, got {type(value).__name__}")
    if value in ("", ".", ".."):
        raise PathEscapeError(f"{field} {value!r} is not a valid directory name")
    if "/" in value or "\x00" in value:
        raise PathEscapeError(f"{field} {value!r} must not contain '/' or NUL")
    return value


def _task_name(task: object) -> str:
    """The name of `task`: a name, or a task object (anything with a ``name``), which is
    accepted wherever a task name is. Tested by hand: a runtime protocol check costs
    more than building the task dir."""
    raw = task if isinstance(task, str) else getattr(task, "name", task)
    name = _check_name(raw, "task name")
    if name == SHARED_DIR:
        raise ValueError(f"task name {name!r} collides with the shared alloc dir")
    return name


class AllocDir:
    """Thread-safe. The directory tree of one allocation.

    Layout: ``<root>/<alloc_id>/alloc/{data,logs,tmp}`` shared by all tasks, and
    ``<root>/<alloc_id>/<task>/{local,secrets,tmp}`` per task (see `TaskDir`). It is
    used at once by the runner (build, destroy), by migration (move_from, snapshot,
    extract), by readers of the fs API and by the GC; every method is safe for
    concurrent use.

    `_lock` guards only the task-dir map and the built flag; paths never change, and
    no file work ever runs under the lock. The tree itself is not locked: two threads
    that destroy and build at once race as they would on any file system, and the
    loser gets an `AllocDirError`.

    Paths given to the fs API (`list`, `stat`, `read_at`, `open`,
    `block_until_exists`, `change_events`) are relative to the alloc dir: one that
    escapes it (``..``, absolute, or a symlink resolving outside) raises
    `PathEscapeError`; one under a task's ``secrets/`` (any case) raises
    `SecretsAccessError` (a `PermissionError`); a missing one raises
    `PathNotFoundError` (a `FileNotFoundError`). All of them are `AllocDirError`s
    except `PathEscapeError`. The fs API needs no `build()`: it serves whatever is on
    disk, so a tool can read the files of an alloc run by another process.
    """

    alloc_id = immutable()
    root = immutable()
    _path = immutable()  # the alloc dir, as a string (`path` makes the Path)
    # _lock guards: _task_dirs, _built
    _lock = immutable()
    _task_dirs = guarded("_lock")
    _built = guarded("_lock")

    def __init__(self, root: str | os.PathLike[str], alloc_id: str) -> None:
        self.alloc_id: str = _check_name(alloc_id, "alloc_id")
        self.root: Path = root_path(root)
        self._path: str = os.path.join(self.root, alloc_id)
        self._lock = make_rwlock("AllocDir._lock")
        self._task_dirs: FrozenDict[str, TaskDir] = FrozenDict()
        self._built: bool = False

    def __repr__(self) -> str:
        return f"<AllocDir {self.path}>"

    # Derived on each read rather than kept: every running allocation holds its
    # AllocDir, and each kept Path is two more objects for the cyclic garbage collector
    # to walk (its string is none), where a read is rare.

    @property
    def path(self) -> Path:
        return Path(self._path)

    @property
    def shared_dir(self) -> Path:
        return Path(f"{self._path}/{SHARED_DIR}")

    @property
    def logs_dir(self) -> Path:
        """The shared logs dir (every task dir has it)."""
        return Path(f"{self._path}/{SHARED_DIR}/{LOGS_DIR}")

    @property
    def data_dir(self) -> Path:
        return Path(f"{self._path}/{SHARED_DIR}/{DATA_DIR}")

    @property
    def tmp_dir(self) -> Path:
        return Path(f"{self._path}/{SHARED_DIR}/{TMP_DIR}")

    # --- layout --------------------------------------------------------------------

    @calls_out
    def build(self) -> None:
        """Create the alloc dir and ``alloc/{data,logs,tmp}`` with Nomad's modes.

        Idempotent: existing directories keep their contents. A symlink or file where a
        directory belongs raises `AllocDirError` rather than being followed. A fresh
        alloc dir is made private, filled by path and opened up last; an existing one is
        walked by descriptor (`fs.build_layout`). A missing root is made (and its parents).
        """
        try:
            walk = self._build_existing
            fs.build_layout(self._path, _FRESH_LAYOUT, ALLOC_DIR_MODE, walk, make_parent=True)
        except AllocDirError:
            raise
        except OSError as err:
            raise AllocDirError(f"failed to build alloc dir {self.path}: {err}") from err
        with self._lock.write():
            self._built = True

    def _build_existing(self) -> None:
        """Complete an alloc dir that exists (a restart, or a build cut short) and reset
        its modes, through descriptors, never following a symlink."""
        alloc_fd = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(alloc_fd, ALLOC_DIR_MODE)
            shared_fd = fs.ensure_dir(alloc_fd, SHARED_DIR, SHARED_DIR_MODE, str(self.shared_dir))
            try:
                for name in (DATA_DIR, LOGS_DIR, TMP_DIR):
                    os.close(
                        fs.ensure_dir(
                            shared_fd, name, SHARED_SUBDIR_MODE, str(self.shared_dir / name)
                        )
                    )
            finally:
                os.close(shared_fd)
        finally:
            os.close(alloc_fd)

    def is_built(self) -> bool:
        """True after `build()` and until `destroy()`."""
        with self._lock.read():
            return self._built

    def new_task_dir(self, name: str) -> TaskDir:
        """Register task `name` and return its `TaskDir` (nothing is created on disk;
        call `TaskDir.build()`). Idempotent: the same TaskDir for the same name."""
        name = _task_name(name)
        with self._lock.read():
            existing = self._task_dirs.get(name)
        if existing is not None:
            return existing
        shared = f"{self._path}/{SHARED_DIR}"
        task_dir = TaskDir.for_alloc(self._path, shared, f"{shared}/{LOGS_DIR}", name)
        with self._lock.write():
            existing = self._task_dirs.get(name)
            if existing is not None:
                return existing
            self._task_dirs = self._task_dirs.set(name, task_dir)
        return task_dir

    def task_dir(self, name: str) -> TaskDir | None:
        """The registered TaskDir of task `name`, or None."""
        with self._lock.read():
            return self._task_dirs.get(name)

    def task_dirs(self) -> dict[str, TaskDir]:
        """A copy of the registered task dirs, by task name."""
        with self._lock.read():
            return dict(self._task_dirs)

    @calls_out
    def destroy(self) -> None:
        """Remove the whole alloc dir; idempotent and best effort.

        Removes everything it can (symlinks are removed, never followed) and then
        raises `AllocDirDestroyError` (an `AllocDirError`) listing every failure. The
        registered task dirs stay registered, so `build()` can start afresh.
        """
        with self._lock.write():
            self._built = False
        errors = fs.remove_tree(self._path)
        if errors:
            detail = "; ".join(str(e) for e in errors)
            raise fs.AllocDirDestroyError(
                f"failed to destroy alloc dir {self.path} ({len(errors)} errors): {detail}",
                errors,
            )

    @calls_out
    def disk_usage(self) -> int:
        """Bytes of disk used by this alloc dir (0 when it does not exist)."""
        return fs.tree_usage(self._path)

    # --- migration -----------------------------------------------------------------

    @calls_out
    def move_from(self, other: AllocDir, tasks: Iterable[str]) -> None:
        """Move `other`'s ``alloc/data`` and each of `tasks`' ``local/`` into this dir.

        This dir must be built. Missing sources are skipped; an empty destination is
        replaced, a non-empty one raises `AllocDirError`. A rename on one file system,
        copy-then-remove across file systems. If any move fails the ones already done
        are moved back.
        """
        if not isinstance(other, AllocDir):
            raise TypeError(f"other: expected AllocDir, got {type(other).__name__}")
        names = [_task_name(t) for t in tasks]
        if other.path == self.path:
            raise AllocDirError(f"cannot move alloc dir {self.path} into itself")
        self._require_built("move into")
        self._move_roots(other.path, names)

    @calls_out
    def snapshot(self, fileobj: IO[bytes]) -> None:
        """Write a tar stream of ``alloc/data`` and each registered task's ``local/``.

        Entries are named relative to the alloc dir; symlinks are stored as links.
        If the tree cannot be read, an error entry ``NOMAD-<alloc_id>-ERROR.log`` is
        appended and `AllocDirError` is raised.
        """
        with self._lock.read():
            names = sorted(self._task_dirs)
        if not self.path.is_dir():
            raise AllocDirError(f"cannot snapshot alloc dir {self.path}: it does not exist")
        roots = [f"{SHARED_DIR}/{DATA_DIR}"] + [f"{name}/local" for name in names]
        tarstream.write_snapshot(self._path, self.alloc_id, roots, fileobj)

    @calls_out
    def extract(self, fileobj: IO[bytes]) -> None:
        """Receive a snapshot stream into this (built) alloc dir.

        The stream is unpacked into a private temporary directory first; only when all
        of it has been read and checked are its ``alloc/data`` and task ``local/`` dirs
        moved into place, so on any failure this dir is left as it was. Raises
        `PathEscapeError` for an entry or symlink that escapes, `AllocDirError` for the
        sender's error marker, a bad stream or an I/O failure.
        """
        self._require_built("extract into")
        try:
            staging = Path(os.path.join(self.path, f".extract-{_secrets.token_hex(8)}"))
            os.mkdir(staging, 0o700)
        except OSError as err:
            raise AllocDirError(f"cannot extract into {self.path}: {err}") from err
        try:
            roots = tarstream.extract_stream(fileobj, str(staging))
            tasks = [root[0] for root in roots if root[0] != SHARED_DIR]
            self._move_roots(staging, tasks)
        finally:
            fs.remove_tree(str(staging))

    def _require_built(self, what: str) -> None:
        with self._lock.read():
            built = self._built
        if not built:
            raise AllocDirError(f"unable to {what} {self.path}: alloc dir is not built")

    def _move_roots(self, src_alloc: Path, tasks: list[str]) -> None:
        plan: list[tuple[Path, Path, Path | None]] = [
            (src_alloc / SHARED_DIR / DATA_DIR, self.data_dir, None)
        ]
        for name in tasks:
            plan.append((src_alloc / name / "local", self.path / name / "local", self.path / name))
        done: list[_Moved] = []
        try:
            for src, dst, task_path in plan:
                try:
                    st = os.lstat(src)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    raise AllocDirError(f"cannot move {src}: {err}") from err
                if not stat.S_ISDIR(st.st_mode):
                    raise AllocDirError(f"cannot move {src}: it is not a directory")
                done.append(_move_one(src, dst, task_path))
        except BaseException:
            for moved in reversed(done):
                moved.undo()
            raise
        for moved in done:
            moved.commit()

    # --- fs API --------------------------------------------------------------------

    def _resolve(self, path: str | os.PathLike[str]) -> fs.Resolved:
        parts = fs.clean_path(path)
        display = os.fspath(path)
        fs.check_not_secret(parts, display)
        return fs.resolve(self._path, parts, display=display)

    @calls_out
    def list(self, path: str | os.PathLike[str]) -> list[FileInfo]:
        """The entries of directory `path`, sorted by name (symlinks reported as such)."""
        with self._resolve(path) as resolved:
            display = os.fspath(path)
            assert resolved.st is not None
            if not stat.S_ISDIR(resolved.st.st_mode):
                raise AllocDirError(f"path {display!r} is not a directory")
            fd = fs.reopen(resolved, display)
        infos: list[FileInfo] = []
        try:
            with os.scandir(fd) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # removed while listing
                    infos.append(fs.file_info(entry.name, st))
        except OSError as err:
            raise fs.os_error(err, display, self._path) from err
        finally:
            os.close(fd)
        infos.sort(key=lambda info: info.name)
        return infos

    @calls_out
    def stat(self, path: str | os.PathLike[str]) -> FileInfo:
        """The `FileInfo` of `path` (a symlink is followed, inside the alloc dir)."""
        with self._resolve(path) as resolved:
            assert resolved.st is not None
            parts = fs.clean_path(path)
            return fs.file_info(parts[-1] if parts else self.alloc_id, resolved.st)

    @calls_out
    def read_at(self, path: str | os.PathLike[str], offset: int, length: int) -> bytes:
        """Up to `length` bytes of file `path` from `offset` (fewer at end of file)."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        if not isinstance(length, int) or length < 0:
            raise ValueError(f"length must be a non-negative int, got {length!r}")
        display = os.fspath(path)
        fd = self._open_fd(path)
        try:
            chunks: list[bytes] = []
            remaining = length
            pos = offset
            while remaining:
                data = os.pread(fd, min(remaining, 1 << 20), pos)
                if not data:
                    break
                chunks.append(data)
                remaining -= len(data)
                pos += len(data)
        except OSError as err:
            raise fs.os_error(err, display, self._path) from err
        finally:
            os.close(fd)
        return b"".join(chunks)

    @calls_out
    def open(self, path: str | os.PathLike[str]) -> BinaryIO:
        """File `path` opened for binary reading; the caller closes it."""
        return os.fdopen(self._open_fd(path), "rb")

    def _open_fd(self, path: str | os.PathLike[str]) -> int:
        display = os.fspath(path)
        with self._resolve(path) as resolved:
            assert resolved.st is not None
            if stat.S_ISDIR(resolved.st.st_mode):
                raise AllocDirError(f"path {display!r} is a directory")
            return fs.reopen(resolved, display)

    @calls_out
    def block_until_exists(self, path: str | os.PathLike[str], cancel: CancelToken) -> bool:
        """Wait until `path` exists: True once it does, False if `cancel` fires first.

        An escaping path raises `PathEscapeError` at once (or as soon as a symlink on
        the way makes it escape). Woken by inotify on every directory on the way (see
        `_watch`), so a path that appears by creation, by a rename or with the
        directories above it is seen at once.
        """
        parts = fs.clean_path(path)
        display = os.fspath(path)
        fs.check_not_secret(parts, display)
        with self._watch(parts, display, cancel, watch_target=False) as watch:
            while True:
                watch.arm()
                try:
                    fs.resolve(self._path, parts, display=display).close()
                    return True
                except fs.PathNotFoundError:
                    pass
                if not watch.wait():
                    return False

    @calls_out
    def change_events(
        self, path: str | os.PathLike[str], offset: int, cancel: CancelToken
    ) -> Iterator[FileChange]:
        """Follow file `path` for changes after `offset` bytes until `cancel` fires.

        Yields `FileChange` ``modified`` (grew past what was known, or rewritten),
        ``truncated`` (shrank) and finally ``deleted`` (removed or replaced) after
        which the iterator ends. Path errors are raised here, before any iteration.
        """
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        parts = fs.clean_path(path)
        display = os.fspath(path)
        fs.check_not_secret(parts, display)
        with fs.resolve(self._path, parts, display=display) as resolved:
            st = resolved.st
        assert st is not None
        return self._follow_changes(parts, display, _FileMark.of(st, offset), cancel)

    def _follow_changes(
        self, parts: tuple[str, ...], display: str, mark: _FileMark, cancel: CancelToken
    ) -> Iterator[FileChange]:
        """Check the file after each wake-up of its watch and report what changed."""
        with self._watch(parts, display, cancel, watch_target=True) as watch:
            while not cancel.cancelled():
                watch.arm()
                change, mark = self._check_file(parts, display, mark)
                if change is not None:
                    yield change
                    if change.kind == fs.DELETED:
                        return
                if not watch.wait():
                    return

    def _check_file(
        self, parts: tuple[str, ...], display: str, mark: _FileMark
    ) -> tuple[FileChange | None, _FileMark]:
        """What changed in the file since `mark`, and the new mark."""
        try:
            with fs.resolve(self._path, parts, display=display) as resolved:
                st = resolved.st
        except fs.PathNotFoundError:
            return FileChange(kind=fs.DELETED, size=0, offset=mark.size), mark
        assert st is not None
        if (st.st_dev, st.st_ino) != mark.identity:
            return FileChange(kind=fs.DELETED, size=0, offset=mark.size), mark
        change = None
        if st.st_size < mark.size:
            change = FileChange(kind=fs.TRUNCATED, size=st.st_size, offset=mark.size)
        elif st.st_size > mark.size or st.st_mtime_ns != mark.mtime_ns:
            change = FileChange(kind=fs.MODIFIED, size=st.st_size, offset=mark.size)
        return change, _FileMark.of(st, st.st_size)

    def _watch(
        self, parts: tuple[str, ...], display: str, cancel: CancelToken, *, watch_target: bool
    ) -> inotify.PathWatch:
        """A watch over every existing directory on the way to `parts` (and, with
        `watch_target`, over the object itself), each opened by the same escape-safe
        walk as every other fs call: nothing outside the alloc dir is ever watched.
        While the alloc dir itself is missing there is nothing to watch and the wait
        polls every `POLL_INTERVAL`, as it does wherever inotify is unavailable."""

        def walk() -> Iterator[inotify.WatchTarget]:
            for depth in range(len(parts) + (1 if watch_target else 0)):
                try:
                    resolved = fs.resolve(self._path, parts[:depth], display=display)
                except fs.PathNotFoundError:
                    return
                with resolved:
                    assert resolved.st is not None
                    if depth == len(parts):
                        yield resolved.fd, inotify.TARGET_EVENTS, False
                    elif not stat.S_ISDIR(resolved.st.st_mode):
                        return
                    else:
                        yield resolved.fd, inotify.DIR_EVENTS, True

        return inotify.PathWatch(cancel, walk, POLL_INTERVAL)


@attrs.frozen
class _FileMark:
    """Immutable. What `change_events` knows of the file: which one, its size, its mtime."""

    identity: tuple[int, int]
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result, size: int) -> _FileMark:
        return cls((st.st_dev, st.st_ino), size, st.st_mtime_ns)


class _Moved:
    """Not thread-safe; owned by one move. A directory moved into place, undoable."""

    __slots__ = ("copied", "dst", "made_parent", "src")

    def __init__(self, src: Path, dst: Path, *, copied: bool, made_parent: Path | None) -> None:
        self.src = src
        self.dst = dst
        self.copied = copied
        self.made_parent = made_parent

    def undo(self) -> None:
        """Put the source back and leave an empty destination, as before (best effort)."""
        try:
            if self.copied:
                fs.remove_tree(str(self.dst))
            else:
                os.rename(self.dst, self.src)
            if self.made_parent is not None:
                os.rmdir(self.made_parent)
            else:
                os.mkdir(self.dst, LOCAL_DIR_MODE)
                os.chmod(self.dst, LOCAL_DIR_MODE)
        except OSError:
            pass

    def commit(self) -> None:
        """Drop the source of a cross-file-system copy (best effort)."""
        if self.copied:
            fs.remove_tree(str(self.src))


def _move_one(src: Path, dst: Path, task_path: Path | None) -> _Moved:
    made_parent: Path | None = None
    for _attempt in range(2):
        try:
            os.rename(src, dst)
            return _Moved(src, dst, copied=False, made_parent=made_parent)
        except OSError as err:
            if err.errno == errno.ENOENT and task_path is not None and made_parent is None:
                if not os.path.lexists(task_path):
                    made_parent = _make_task_path(task_path)
                    continue
                raise AllocDirError(f"cannot move {src} to {dst}: {err.strerror}") from err
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise AllocDirError(
                    f"cannot move {src} to {dst}: the destination is not empty"
                ) from err
            if err.errno == errno.EXDEV:
                _copy_into(src, dst)
                return _Moved(src, dst, copied=True, made_parent=made_parent)
            raise AllocDirError(f"cannot move {src} to {dst}: {err.strerror}") from err
    raise AllocDirError(f"cannot move {src} to {dst}: destination parent keeps vanishing")


def _make_task_path(task_path: Path) -> Path | None:
    try:
        os.mkdir(task_path, TASK_DIR_MODE)
    except FileExistsError:
        return None
    except OSError as err:
        raise AllocDirError(f"cannot create task dir {task_path}: {err}") from err
    try:
        os.chmod(task_path, TASK_DIR_MODE)
    except OSError as err:
        raise AllocDirError(f"cannot create task dir {task_path}: {err}") from err
    return task_path


def _copy_into(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` across file systems: into a sibling, then one rename."""
    staging = dst.parent / f".{dst.name}.moving-{_secrets.token_hex(6)}"
    try:
        shutil.copytree(src, staging, symlinks=True)
        os.rename(staging, dst)
    except BaseException as err:
        fs.remove_tree(str(staging))
        if isinstance(err, OSError) and err.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise AllocDirError(
                f"cannot move {src} to {dst}: the destination is not empty"
            ) from err
        if isinstance(err, (OSError, shutil.Error)):
            raise AllocDirError(f"cannot copy {src} to {dst}: {err}") from err
        raise
