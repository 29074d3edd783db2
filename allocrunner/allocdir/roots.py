"""The root an alloc dir lives under, resolved once: a node keeps every alloc dir
under one root, and resolving it again (an absolute path, then a `Path`) costs a score
of calls for each allocation started.

Threads: any. Locks: none; the cache of resolved roots is a dict written without a
lock (an item assignment is atomic, and racing threads store equal Paths), cleared
when it grows past `_ROOTS_MAX` (tests make a root per test). Used by `AllocDir`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["root_path"]

_ROOTS: dict[str, Path] = {}
_ROOTS_MAX = 64


def root_path(root: str | os.PathLike[str]) -> Path:
    """`root` as an absolute Path. A relative root depends on the working directory,
    so it is resolved every time and never kept."""
    text = os.fspath(root)
    path = _ROOTS.get(text)
    if path is None:
        path = Path(os.path.abspath(text))
        if os.path.isabs(text):
            if len(_ROOTS) >= _ROOTS_MAX:
                _ROOTS.clear()
            _ROOTS[text] = path
    return path
