"""Bringing an artifact's bytes onto the node: HTTP(S) with urllib, or a local copy.

Each function writes into a file (or directory) the caller created inside its private
staging directory, hashing as it goes, and honours a `CancelToken`:

- the token is checked between chunks of 64 KiB;
- a cancel also shuts down the HTTP connection's socket (registered through a
  callback that only calls ``shutdown``, which never blocks), so a read stalled on a
  silent server returns at once instead of after its timeout.

HTTP follows go-getter's HttpGetter as Nomad configures it: a GET with the block's
headers (no HEAD first, no resume), only 200 and 206 accepted
(``bad response code: 404``), a whole-download deadline (``http_read_timeout``), a
per-read socket timeout and a byte limit (``http_max_bytes``).

Threads: none of its own; a download runs on its caller's thread (the cancel callback
runs on the cancelling thread). Locks: none; the connections to shut down are handed
over through a `allocrunner._sync.Fifo`, whose private mutex is its own. Owner:
`allocrunner.artifacts.fetch`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import IO, Any

from allocrunner._locking import calls_out
from allocrunner._sync import CancelToken, Fifo

__all__ = [
    "CHUNK",
    "Cancelled",
    "DownloadError",
    "TooLarge",
    "copy_local",
    "copy_local_tree",
    "download_http",
]

CHUNK = 64 * 1024


class DownloadError(Exception):
    """A download failed; the message is the reason (the caller names the source)."""


class Cancelled(DownloadError):
    """The cancel token fired during the download."""


class TooLarge(DownloadError):
    """More bytes came than the limit allows."""


def check_cancel(cancel: CancelToken | None) -> None:
    if cancel is not None and cancel.cancelled():
        raise Cancelled(f"cancelled: {cancel.reason}")


@calls_out
def copy_stream(
    reader: Callable[[int], bytes],
    out: IO[bytes],
    *,
    digest: Any | None,
    cancel: CancelToken | None,
    limit: int,
    deadline: float | None = None,
    what: str = "download",
) -> int:
    """Copy until `reader` returns b""; the number of bytes. DownloadError past
    `limit` bytes or the monotonic `deadline`; Cancelled when `cancel` fires."""
    total = 0
    while True:
        check_cancel(cancel)
        if deadline is not None and time.monotonic() > deadline:
            raise DownloadError(f"{what} timed out")
        chunk = reader(CHUNK)
        if not chunk:
            return total
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"{what} exceeds the limit of {limit} bytes")
        if digest is not None:
            digest.update(chunk)
        out.write(chunk)


# --- HTTP ------------------------------------------------------------------------------


def _shutdown_all(sockets: Fifo[socket.socket]) -> None:
    for sock in sockets.drain():
        with contextlib.suppress(OSError):  # already closed: nothing to wake
            sock.shutdown(socket.SHUT_RDWR)


class _HTTPOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http and https only (urllib would also follow ftp)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(f"redirect to {scheme}: is not followed: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(
    sockets: Fifo[socket.socket], cancel: CancelToken | None
) -> urllib.request.OpenerDirector:
    """An opener whose connections register their sockets for a cancel to shut down."""

    def registered(sock: socket.socket) -> None:
        sockets.put(sock)
        if cancel is not None and cancel.cancelled():
            _shutdown_all(sockets)

    class _HTTP(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            registered(self.sock)

    class _HTTPS(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            registered(self.sock)

    class _HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(_HTTP, req)

    context = ssl.create_default_context()

    class _HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(_HTTPS, req, context=context)

    return urllib.request.build_opener(
        _HTTPHandler(), _HTTPSHandler(context=context), _HTTPOnlyRedirects()
    )


@calls_out
def download_http(
    url: str,
    out: IO[bytes],
    *,
    headers: Mapping[str, str],
    digest: Any | None,
    cancel: CancelToken | None,
    read_timeout: float,
    socket_timeout: float,
    max_bytes: int,
) -> int:
    """GET `url` into `out`; the number of bytes. DownloadError with the reason."""
    check_cancel(cancel)
    sockets: Fifo[socket.socket] = Fifo()
    withdraw = cancel.on_cancel(lambda: _shutdown_all(sockets)) if cancel is not None else None
    deadline = time.monotonic() + read_timeout
    request = urllib.request.Request(url, headers=dict(headers), method="GET")
    try:
        with _opener(sockets, cancel).open(request, timeout=socket_timeout) as response:
            if response.status not in (200, 206):
                raise DownloadError(f"bad response code: {response.status}")
            if response.length is not None and response.length > max_bytes:
                raise TooLarge(
                    f"download of {response.length} bytes exceeds the limit of {max_bytes} bytes"
                )
            size = copy_stream(
                response.read1,
                out,
                digest=digest,
                cancel=cancel,
                limit=max_bytes,
                deadline=deadline,
            )
            check_cancel(cancel)
            if response.length:
                raise DownloadError(
                    f"connection closed with {response.length} bytes of the body missing"
                )
            return size
    except urllib.error.HTTPError as err:
        err.close()
        check_cancel(cancel)
        raise DownloadError(f"bad response code: {err.code}") from err
    except urllib.error.URLError as err:
        check_cancel(cancel)
        raise DownloadError(f"error downloading: {err.reason}") from err
    except (OSError, http.client.HTTPException) as err:
        check_cancel(cancel)
        raise DownloadError(f"error downloading: {err}") from err
    finally:
        if withdraw is not None:
            withdraw()


# --- local sources ---------------------------------------------------------------------


@calls_out
def copy_local(
    path: str, out: IO[bytes], *, digest: Any | None, cancel: CancelToken | None, limit: int
) -> int:
    """Copy the local file `path` into `out`; DownloadError when it cannot be read."""
    try:
        with open(path, "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise DownloadError(f"source path {path} is not a regular file")
            return copy_stream(source.read, out, digest=digest, cancel=cancel, limit=limit)
    except OSError as err:
        raise DownloadError(f"reading {path}: {err.strerror or err}") from err


@calls_out
def copy_local_tree(source: str, dest: str, *, cancel: CancelToken | None, limit: int) -> None:
    """Copy the local directory `source` into the new directory `dest`; a symlink in it
    is refused (go-getter's DisableSymlinks, as Nomad sets it)."""
    copied = 0

    def copy_file(src: str, dst: str) -> None:
        nonlocal copied
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            copied += copy_stream(fin.read, fout, digest=None, cancel=cancel, limit=limit - copied)
        shutil.copymode(src, dst)

    for current, dirs, files in os.walk(source):
        check_cancel(cancel)
        rel = os.path.relpath(current, source)
        target = os.path.normpath(os.path.join(dest, rel))
        os.makedirs(target, mode=0o755, exist_ok=True)
        for name in [*dirs, *files]:
            if os.path.islink(os.path.join(current, name)):
                raise DownloadError(
                    f"copying of symlinks has been disabled: {os.path.join(current, name)}"
                )
        for name in files:
            copy_file(os.path.join(current, name), os.path.join(target, name))


def new_digest(kind: str | None) -> Any | None:
    return hashlib.new(kind) if kind else None
