"""ApiClient against a small real HTTP server that answers in Nomad's shapes."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from allocrunner.cli.api import (
    AgentUnreachable,
    ApiClient,
    ApiError,
    Reply,
    normalize_address,
)


class _Handler(BaseHTTPRequestHandler):
    """Echoes what it received, or answers the status a path asks for."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/v1/missing":
            self._send(404, b"alloc not found", "text/plain")
            return
        if url.path == "/v1/stream":
            self._chunked([b"one\n", b"two\n", b"three\n"])
            return
        if url.path == "/v1/garbage":
            self._send(200, b"{not json", "application/json")
            return
        echo = {
            "Method": self.command,
            "Path": url.path,
            "Query": query,
            "Body": json.loads(body) if body else None,
            "Token": self.headers.get("X-Nomad-Token"),
        }
        self._send(200, json.dumps(echo).encode(), "application/json", index="42")

    def _send(self, status: int, data: bytes, kind: str, index: str | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        if index:
            self.send_header("X-Nomad-Index", index)
        self.end_headers()
        self.wfile.write(data)

    def _chunked(self, chunks: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_PUT = do_POST = do_DELETE = _answer


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def test_get_decodes_json_and_the_index(server):
    api = ApiClient(server)
    reply = api.get("/v1/jobs", {"prefix": "ab", "skip": None})
    assert reply.index == 42
    assert reply.data["Method"] == "GET"
    assert reply.data["Query"] == {"prefix": "ab"}
    data, index = reply  # a reply unpacks as (data, index)
    assert index == 42 and data["Token"] is None


def test_a_reply_is_a_frozen_pair() -> None:
    reply = Reply({"ID": "x"}, 7)
    data, index = reply
    assert (data, index) == ({"ID": "x"}, 7) == (reply.data, reply.index)
    assert reply == Reply({"ID": "x"}, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        reply.index = 8  # type: ignore[misc]


def test_blocking_query_sends_index_and_wait(server):
    data, _ = ApiClient(server).get("/v1/job/x/allocations", index=7, wait=2.5)
    assert data["Query"] == {"index": "7", "wait": "2500ms"}
    data, _ = ApiClient(server).get("/v1/job/x/allocations", index=0, wait=2.5)
    assert data["Query"] == {}


def test_bodies_methods_and_token(server, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # must be ignored
    api = ApiClient("http://" + server + "/", token="secret")
    data, _ = api.put("/v1/jobs", {"Job": {"ID": "x"}})
    assert (data["Method"], data["Body"], data["Token"]) == ("PUT", {"Job": {"ID": "x"}}, "secret")
    assert api.post("/v1/job/x/dispatch", {"Meta": {}}).data["Method"] == "POST"
    data, _ = api.delete("/v1/job/x", {"purge": True})
    assert (data["Method"], data["Query"]) == ("DELETE", {"purge": "true"})


def test_http_errors_carry_status_and_message(server):
    with pytest.raises(ApiError) as caught:
        ApiClient(server).get("/v1/missing")
    assert (caught.value.status, caught.value.message) == (404, "alloc not found")
    with pytest.raises(ApiError, match="invalid JSON"):
        ApiClient(server).get("/v1/garbage")


def test_stream_yields_until_the_end(server):
    api = ApiClient(server)
    assert b"".join(api.stream("/v1/stream", timeout=10)) == b"one\ntwo\nthree\n"
    assert api.get_bytes("/v1/stream") == b"one\ntwo\nthree\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_reads_no_agent_at():
    address = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(AgentUnreachable) as caught:
        ApiClient(address).get("/v1/jobs")
    assert caught.value.status == 0
    assert str(caught.value) == f"no agent at http://{address}"
    with pytest.raises(AgentUnreachable):
        list(ApiClient(address).stream("/v1/client/fs/logs/x"))


def test_addresses_are_normalized():
    assert normalize_address("127.0.0.1:4646") == "http://127.0.0.1:4646"
    assert normalize_address(" https://h:1/ ") == "https://h:1"
