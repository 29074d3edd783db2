"""A small client of the agent's HTTP API (Nomad's API shapes), built on urllib.

The command line needs only a handful of calls, so this stays dependency-free:

    api = ApiClient("http://127.0.0.1:4646", token=None)
    jobs, index = api.get("/v1/jobs")
    allocs, index = api.get("/v1/job/web/allocations", index=index, wait=5.0)  # blocking
    reply = api.put("/v1/jobs", {"Job": {...}})
    for chunk in api.stream("/v1/client/fs/logs/<id>", {"task": "web", "plain": "true"}):
        ...

Every failure is an `ApiError(status, message)`: the HTTP status and Nomad's plain-text
error body, or status 0 when the agent could not be reached at all (a refused
connection reads "no agent at ADDRESS"). Proxies from the environment are ignored:
the agent is almost always on loopback, and a proxy there only breaks things.

Threads and locks: none; an `ApiClient` holds no mutable state and each call opens
its own connection, so threads may share one. Owner: `connect.open_session` creates
one per command; the command modules call it.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AgentUnreachable", "ApiClient", "ApiError", "Reply", "normalize_address"]

DEFAULT_TIMEOUT = 30.0
STREAM_CHUNK = 64 * 1024
INDEX_HEADER = "X-Nomad-Index"
TOKEN_HEADER = "X-Nomad-Token"

Params = Mapping[str, str | int | float | bool | None]


class ApiError(Exception):
    """An API call failed: `status` is the HTTP status (0: no HTTP answer at all)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message


class AgentUnreachable(ApiError):
    """Nothing answered at the agent's address."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


@dataclass(frozen=True, slots=True)
class Reply:
    """Immutable. A decoded JSON body and the response's X-Nomad-Index (0 when absent).

    It unpacks as the pair it is: `data, index = api.get(...)`.
    """

    data: Any
    index: int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.data, self.index))


def normalize_address(address: str) -> str:
    """`host:port` or a URL, as a base URL without a trailing slash."""
    address = address.strip()
    if "://" not in address:
        address = "http://" + address
    return address.rstrip("/")


def _query_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _wait_param(seconds: float) -> str:
    """A blocking query's `wait` in Go's duration syntax (whole milliseconds)."""
    return f"{max(1, round(seconds * 1000))}ms"


class ApiClient:
    """Immutable; safe to share. Talks to one agent at `address`."""

    def __init__(
        self, address: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.address = normalize_address(address)
        self.token = token or None
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def url(self, path: str, params: Params | None = None) -> str:
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        url = self.address + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        return url

    def get(
        self,
        path: str,
        params: Params | None = None,
        *,
        index: int | None = None,
        wait: float | None = None,
    ) -> Reply:
        """GET `path`. With `index` (> 0) this is a blocking query: the agent answers
        when its index passes `index`, or after `wait` seconds."""
        query = dict(params or {})
        timeout = self.timeout
        if index:
            query["index"] = index
            if wait is not None:
                query["wait"] = _wait_param(wait)
                timeout += wait
        return self._json("GET", path, query, None, timeout)

    def put(self, path: str, body: Any = None, params: Params | None = None) -> Reply:
        return self._json("PUT", path, params, body, self.timeout)

    def post(self, path: str, body: Any = None, params: Params | None = None) -> Reply:
        return self._json("POST", path, params, body, self.timeout)

    def delete(self, path: str, params: Params | None = None) -> Reply:
        return self._json("DELETE", path, params, None, self.timeout)

    def get_bytes(self, path: str, params: Params | None = None) -> bytes:
        """GET `path` and return the raw body (file contents, plain logs)."""
        with self._open("GET", path, params, None, self.timeout) as resp:
            return self._read(resp)

    def stream(
        self, path: str, params: Params | None = None, *, timeout: float | None = None
    ) -> Generator[bytes, None, None]:
        """GET `path` and yield the body as it arrives, until the agent ends it.

        `timeout` bounds each wait for more data (None: wait forever, as a follow
        needs). Closing the generator closes the connection.
        """
        resp = self._open("GET", path, params, None, timeout)
        try:
            while True:
                try:
                    chunk = resp.read1(STREAM_CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise self._transport_error(err) from None
                if not chunk:
                    return
                yield chunk
        finally:
            resp.close()

    def _json(
        self, method: str, path: str, params: Params | None, body: Any, timeout: float
    ) -> Reply:
        with self._open(method, path, params, body, timeout) as resp:
            raw = self._read(resp)
            index = _parse_index(resp.headers.get(INDEX_HEADER))
        if not raw.strip():
            return Reply(None, index)
        try:
            return Reply(json.loads(raw), index)
        except ValueError:
            raise ApiError(resp.status, f"the agent sent invalid JSON for {path}") from None

    def _read(self, resp: http.client.HTTPResponse) -> bytes:
        try:
            return resp.read()
        except (OSError, http.client.HTTPException) as err:
            raise self._transport_error(err) from None

    def _open(
        self,
        method: str,
        path: str,
        params: Params | None,
        body: Any,
        timeout: float | None,
    ) -> http.client.HTTPResponse:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url(path, params), data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header(TOKEN_HEADER, self.token)
        try:
            return self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            with err:
                raise _http_error(err) from None
        except urllib.error.URLError as err:
            raise self._transport_error(err.reason) from None
        except (OSError, http.client.HTTPException) as err:
            raise self._transport_error(err) from None

    def _transport_error(self, reason: object) -> ApiError:
        if isinstance(reason, ConnectionRefusedError | FileNotFoundError):
            return AgentUnreachable(f"no agent at {self.address}")
        if isinstance(reason, TimeoutError | socket.timeout):
            return ApiError(0, f"the agent at {self.address} did not answer in time")
        if isinstance(reason, http.client.RemoteDisconnected | ConnectionResetError):
            return ApiError(0, f"the agent at {self.address} closed the connection")
        if isinstance(reason, socket.gaierror):
            return AgentUnreachable(f"no agent at {self.address}: {reason.strerror or reason}")
        text = getattr(reason, "strerror", None) or str(reason)
        return ApiError(0, f"cannot reach the agent at {self.address}: {text}")


def _parse_index(value: str | None) -> int:
    try:
        return int(value) if value else 0
    except ValueError:
        return 0


def _http_error(err: urllib.error.HTTPError) -> ApiError:
    """Nomad answers an error with its status and the message as plain text."""
    try:
        text = err.read().decode("utf-8", errors="replace").strip()
    except (OSError, http.client.HTTPException):
        text = ""
    if text.startswith("{"):
        text = _json_message(text)
    return ApiError(err.code, text or str(err.reason or "request failed"))


def _json_message(text: str) -> str:
    try:
        obj = json.loads(text)
    except ValueError:
        return text
    if isinstance(obj, dict):
        for key in ("message", "Message", "error", "Error"):
            if isinstance(obj.get(key), str):
                return obj[key]
    return text
