"""A real HTTP server on 127.0.0.1 for the artifact tests, and archive builders."""

from __future__ import annotations

import contextlib
import http.server
import io
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import attrs
import pytest


@attrs.define
class Served:
    """One path's answer: a status, a body, and optionally a stall before the body's end."""

    body: bytes = b""
    status: int = 200
    stall: threading.Event | None = None  # set by the test to let the body finish
    location: str = ""  # a redirect's target


class ArtifactServer:
    """Not thread-safe; owned by one test. Serves `routes` and records each request."""

    def __init__(self) -> None:
        self.routes: dict[str, Served] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.body_started = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the standard library's name
                server.requests.append((self.path, dict(self.headers.items())))
                served = server.routes.get(self.path.split("?")[0])
                if served is None:
                    self.send_error(404)
                    return
                self.send_response(served.status)
                if served.location:
                    self.send_header("Location", served.location)
                self.send_header("Content-Length", str(len(served.body)))
                self.end_headers()
                if served.stall is None:
                    self.wfile.write(served.body)
                    return
                half = len(served.body) // 2
                self.wfile.write(served.body[:half])
                self.wfile.flush()
                server.body_started.set()
                served.stall.wait(10)
                with contextlib.suppress(OSError):  # the client went away
                    self.wfile.write(served.body[half:])

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="artifact-http"
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server() -> Iterator[ArtifactServer]:
    srv = ArtifactServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        for served in srv.routes.values():
            if served.stall is not None:
                served.stall.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(10)


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    task = tmp_path / "alloc" / "web"
    (task / "local").mkdir(parents=True)
    (task / "secrets").mkdir()
    return task


@attrs.frozen
class Member:
    """One archive entry: a file (data), a dir, a symlink or a hard link (link)."""

    name: str
    data: bytes = b""
    kind: str = "file"
    link: str = ""
    mode: int = 0o644


_TAR_WRITE_MODES: dict[str, Literal["w:", "w:gz", "w:bz2", "w:xz"]] = {
    "": "w:",
    "gz": "w:gz",
    "bz2": "w:bz2",
    "xz": "w:xz",
}


def make_tar(members: list[Member], compression: str = "gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=_TAR_WRITE_MODES[compression]) as archive:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.mode = member.mode
            info.mtime = int(time.time())
            if member.kind == "dir":
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            elif member.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = member.link
                archive.addfile(info)
            elif member.kind == "fifo":
                info.type = tarfile.FIFOTYPE
                archive.addfile(info)
            elif member.kind == "hardlink":
                info.type = tarfile.LNKTYPE
                info.linkname = member.link
                archive.addfile(info)
            else:
                info.size = len(member.data)
                archive.addfile(info, io.BytesIO(member.data))
    return buffer.getvalue()


def make_zip(members: list[Member]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member in members:
            if member.kind == "dir":
                info = zipfile.ZipInfo(member.name.rstrip("/") + "/")
                info.external_attr = (0o40000 | member.mode | 0o755) << 16
                archive.writestr(info, b"")
            elif member.kind == "symlink":
                info = zipfile.ZipInfo(member.name)
                info.external_attr = (0o120000 | 0o777) << 16
                archive.writestr(info, member.link.encode())
            else:
                info = zipfile.ZipInfo(member.name)
                info.external_attr = (0o100000 | member.mode) << 16
                archive.writestr(info, member.data)
    return buffer.getvalue()
