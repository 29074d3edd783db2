"""Task log files with rotation: ``<logs_dir>/<task>.<stream>.N``.

N counts up from 0 and the highest index is the file being written. A file holds at
most `max_bytes` bytes: a write that does not fit fills the current file and goes on
in the next index, so every file but the newest is exactly `max_bytes` long (Nomad's
file rotator does the same). At most `max_files` files are kept per stream; the
oldest are deleted as new ones are opened. A writer opened on a directory that
already holds files of its stream continues in the newest one, so a restarted or
re-attached task appends to its existing logs instead of overwriting them.

No threads and no locks of its own: a writer is owned and called by one thread (raw_exec's
log pump, or mock_driver's timer under its driver lock).
"""

from __future__ import annotations

import contextlib
import os

from allocrunner._locking import confined

MB = 1024 * 1024


def log_path(logs_dir: str, task: str, stream: str, index: int) -> str:
    """Path of log file `index` of `stream` ("stdout"/"stderr") of `task`."""
    return os.path.join(logs_dir, f"{task}.{stream}.{index}")


def log_indices(logs_dir: str, task: str, stream: str) -> list[int]:
    """Indices of the existing log files of a stream, oldest first."""
    try:
        names = os.listdir(logs_dir)
    except FileNotFoundError:
        return []
    return _indices_among(names, task, stream)


def _indices_among(names: list[str], task: str, stream: str) -> list[int]:
    """The indices of a stream's log files among directory entries `names`, sorted. A
    prefix test per name, not a pattern compiled per call: every task start looks for
    both streams' files, and a pattern naming the task misses `re`'s cache once tasks
    are many."""
    prefix = f"{task}.{stream}."
    skip = len(prefix)
    return sorted(
        int(name[skip:]) for name in names if name.startswith(prefix) and name[skip:].isdecimal()
    )


def ensure_first_log_files(logs_dir: str, task: str, streams: tuple[str, ...]) -> None:
    """Create file 0 of each of `streams` that has no file yet (best effort), as Nomad
    does when a task starts: a reader then finds an empty log, not a missing one. A
    stream whose file 0 exists costs one stat; the others share one listing."""
    missing = [s for s in streams if not os.path.exists(log_path(logs_dir, task, s, 0))]
    if not missing:
        return
    try:
        names = os.listdir(logs_dir)
    except OSError:
        return
    for stream in missing:
        if _indices_among(names, task, stream):
            continue
        with contextlib.suppress(OSError):
            os.close(
                os.open(
                    log_path(logs_dir, task, stream, 0),
                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                    0o644,
                )
            )


def read_logs(logs_dir: str, task: str, stream: str) -> bytes:
    """Everything the kept log files of a stream hold, oldest first."""
    chunks = []
    for index in log_indices(logs_dir, task, stream):
        try:
            with open(log_path(logs_dir, task, stream, index), "rb") as fh:
                chunks.append(fh.read())
        except FileNotFoundError:
            continue
    return b"".join(chunks)


class RotatingLogWriter:
    """Not thread-safe; owned by one writer thread (a driver's log pump).

    Appends a stream's bytes to its numbered log files, rotating by size and keeping
    at most `max_files` of them (see the module docstring).
    """

    _kept = confined("log writer")
    _index = confined("log writer")
    _fd = confined("log writer")
    _size = confined("log writer")

    def __init__(
        self, logs_dir: str, task: str, stream: str, *, max_files: int, max_bytes: int
    ) -> None:
        if max_files < 1:
            raise ValueError(f"log max_files must be at least 1, not {max_files}")
        if max_bytes < 1:
            raise ValueError(f"log max file size must be at least 1 byte, not {max_bytes}")
        self.logs_dir = logs_dir
        self.task = task
        self.stream = stream
        self.max_files = max_files
        self.max_bytes = max_bytes
        indices = log_indices(logs_dir, task, stream)
        self._kept = indices
        self._index = indices[-1] if indices else 0
        self._fd: int | None = None
        self._size = 0
        self._purge()

    @property
    def index(self) -> int:
        """Index of the file currently written."""
        return self._index

    def path(self, index: int | None = None) -> str:
        return log_path(
            self.logs_dir, self.task, self.stream, self._index if index is None else index
        )

    def write(self, data: bytes) -> None:
        """Append `data`, rotating as often as needed. OSError if the disk refuses."""
        view = memoryview(data)
        while view:
            if self._fd is None:
                self._open()
            room = self.max_bytes - self._size
            if room <= 0:
                self._rotate()
                continue
            written = os.write(self._fd, view[:room])  # type: ignore[arg-type]
            self._size += written
            view = view[written:]

    def close(self) -> None:
        """Close the current file (a later write reopens it). Idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path(), flags, 0o644)
        self._size = os.fstat(self._fd).st_size
        if not self._kept or self._kept[-1] != self._index:
            self._kept = [*self._kept, self._index]

    def _rotate(self) -> None:
        self.close()
        self._index += 1
        self._open()
        self._purge()

    def _purge(self) -> None:
        while len(self._kept) > self.max_files:
            oldest, self._kept = self._kept[0], self._kept[1:]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path(oldest))
