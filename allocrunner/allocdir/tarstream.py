"""The migration stream: a tar of ``alloc/data`` and each task's ``local/``.

When an allocation replaces one on another node, the previous alloc dir's migrated
roots travel as one tar stream. The two sides live in their own modules:

- `write_snapshot` (`allocrunner.allocdir.tar_writer`) sends: entries named relative
  to the alloc dir, directories before their contents, symlinks stored and never
  followed, only directories, regular files and symlinks carried; a tree that cannot
  be read ends the stream with the error marker ``NOMAD-<alloc_id>-ERROR.log``.
- `extract_stream` (`allocrunner.allocdir.tar_extract`, over the member parser in
  `allocrunner.allocdir.tar_reader`) receives into a fresh directory and trusts
  nothing: escaping names and links are refused, nothing is written through a
  symlink, setuid/setgid bits are dropped, and the marker aborts with the sender's
  message.
- `allocrunner.allocdir.tar_format` holds what both sides share: block size, chunk,
  encoding, limits and the marker's name and date (`ERROR_MARKER_MTIME`).

File bodies move in 1 MiB chunks or inside the kernel (``sendfile`` out, ``splice`` /
``copy_file_range`` in) when the stream is a plain descriptor, which keeps a snapshot
piped into an extraction on par with ``tar -c | tar -x``.

This module names the stream's public entry points for `AllocDir` and the package.
Threads: none. Locks: none. Owner: `AllocDir.snapshot` and `AllocDir.extract`.
"""

from __future__ import annotations

from allocrunner.allocdir.tar_extract import extract_stream
from allocrunner.allocdir.tar_format import ERROR_MARKER_MTIME, error_marker_name
from allocrunner.allocdir.tar_writer import write_snapshot

__all__ = ["ERROR_MARKER_MTIME", "error_marker_name", "extract_stream", "write_snapshot"]
