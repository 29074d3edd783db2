"""The migration stream's format: tar blocks, names, limits and the error marker.

Shared by the two sides of the stream (`allocrunner.allocdir.tar_writer` sends it,
`allocrunner.allocdir.tar_reader` and `allocrunner.allocdir.tar_extract` receive it):
the block size, the chunk in which bodies move, the text encoding of names, the limits
on metadata a receiver accepts, and the entry a sender appends when the tree cannot be
read (``NOMAD-<alloc_id>-ERROR.log``, dated `ERROR_MARKER_MTIME` as in Nomad).

Threads: none. Locks: none. Owner: constants and pure helpers for the tar modules.
"""

from __future__ import annotations

import errno
import re
import tarfile
from typing import Final

__all__ = [
    "BLOCK",
    "CHUNK",
    "ENCODING",
    "ENCODING_ERRORS",
    "ERROR_MARKER_MTIME",
    "KERNEL_COPY_MIN",
    "MARKER_RE",
    "MAX_MARKER_BYTES",
    "MAX_META_BYTES",
    "NO_KERNEL_COPY",
    "error_marker_name",
    "pad",
    "stream_fd",
]

BLOCK: Final = tarfile.BLOCKSIZE
CHUNK: Final = 1 << 20
"""Bodies move in chunks of this many bytes when they go through Python."""
ERROR_MARKER_MTIME: Final = 946684800  # 2000-01-01T00:00:00Z, Nomad's sentinel
MARKER_RE: Final = re.compile(r"NOMAD-.+-ERROR\.log")
MAX_MARKER_BYTES: Final = 1 << 16
MAX_META_BYTES: Final = 1 << 20  # PAX records and GNU long names
ENCODING: Final = "utf-8"
ENCODING_ERRORS: Final = "surrogateescape"
KERNEL_COPY_MIN: Final = 64 * 1024  # smaller bodies are cheaper to copy by hand
NO_KERNEL_COPY: Final = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EBADF}
)
"""Errors meaning "this pair of descriptors cannot copy in the kernel": copy by hand."""


def error_marker_name(alloc_id: str) -> str:
    """The name of the entry that reports a failed snapshot of `alloc_id`."""
    return f"NOMAD-{alloc_id}-ERROR.log"


def pad(size: int) -> int:
    """The zero bytes that follow a body of `size` bytes up to a block boundary."""
    return -size % BLOCK


def stream_fd(fileobj: object) -> int | None:
    """The OS descriptor behind a file object, or None if it has none."""
    fileno = getattr(fileobj, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None
