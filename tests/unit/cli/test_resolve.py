"""Allocation ids by prefix: unique, unknown and ambiguous, against a small real HTTP
server that answers `GET /v1/allocations?prefix=` and `GET /v1/allocation/:id`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from allocrunner.cli.allocs import resolve_alloc, resolve_task
from allocrunner.cli.api import ApiClient
from allocrunner.cli.common import EXIT_BAD_INPUT, CliError

IDS = ("ab12cd34-0000", "ab12ff00-0000", "cd000000-0000")


def _alloc(alloc_id: str) -> dict:
    tasks = (
        [{"Name": "web"}, {"Name": "sidecar"}] if alloc_id.startswith("cd") else [{"Name": "web"}]
    )
    return {
        "ID": alloc_id,
        "Name": f"job.g[{IDS.index(alloc_id)}]",
        "TaskGroup": "g",
        "Job": {"TaskGroups": [{"Name": "g", "Tasks": tasks}]},
    }


class _Allocations(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/v1/allocations":
            prefix = parse_qs(url.query).get("prefix", [""])[0]
            body = [{"ID": i, "Name": _alloc(i)["Name"]} for i in IDS if i.startswith(prefix)]
        elif url.path.startswith("/v1/allocation/") and url.path[15:] in IDS:
            body = _alloc(url.path[15:])
        else:
            self.send_error(404, "alloc not found")
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def api() -> Iterator[ApiClient]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Allocations)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="test-allocs-http", daemon=True)
    thread.start()
    try:
        yield ApiClient(f"127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def _refused(api: ApiClient, prefix: str) -> str:
    with pytest.raises(CliError) as caught:
        resolve_alloc(api, prefix)
    assert caught.value.code == EXIT_BAD_INPUT
    return caught.value.message


def test_prefixes(api):
    assert resolve_alloc(api, "ab12c")["ID"] == "ab12cd34-0000"  # odd length: asks for "ab12"
    assert resolve_alloc(api, "cd000000-0000")["Name"] == "job.g[2]"
    assert "matched multiple allocations: ab12cd34 (job.g[0]), ab12ff00" in _refused(api, "ab1")
    assert "No allocation(s) with prefix or id 'ee'" in _refused(api, "ee")
    assert "two characters" in _refused(api, "a")


def test_tasks(api):
    single, double = resolve_alloc(api, "ab12cd"), resolve_alloc(api, "cd")
    assert resolve_task(single, None) == "web"
    assert resolve_task(double, "sidecar") == "sidecar"
    with pytest.raises(CliError, match="name one of: web, sidecar"):
        resolve_task(double, None)
    with pytest.raises(CliError, match="Could not find task named: db"):
        resolve_task(single, "db")
