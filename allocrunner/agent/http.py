"""The agent's HTTP server: the stdlib threading server, bounded, with a small router.

Why the stdlib server: the API's hard cases are long-lived requests — hundreds of
parked blocking queries and open log streams. A thread per connection parks them at
no CPU cost, streaming is plain writes, and nothing new is installed. What the stdlib
server lacks is added here:

- a bound on concurrent connections (`max_connections`); one over the bound gets an
  immediate 503 instead of a thread;
- read timeouts (a slow or silent client loses its connection, never a thread);
- a request body cap (413);
- a shutdown that ends every connection: parked queries are woken through the
  agent's cancel token, idle keep-alive sockets are shut, and every request thread
  is joined.

Handlers receive an immutable `Request` and return a `Response` whose body is bytes
or an iterator of chunks (sent with chunked transfer encoding, so a stream ends when
the iterator does). They signal errors by raising `ApiError`; anything else is
logged and answered with a 500, and the connection and the agent live on.

Threads: ``http-accept`` runs the accept loop, asleep in ``select`` on the listening
socket and a wake-up socket pair (no timeout: an idle agent never wakes; `shutdown`
writes to the pair, joins the thread, and only then closes the sockets); each admitted
connection gets an ``http-conn`` thread from the server's `ThreadGroup`, which
`HttpServer.shutdown` joins. Lock: ``HttpServer._lock`` guards the set of open sockets
(a frozenset, replaced). Owner: the `Agent` builds the server in its start and shuts it down.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import re
import select
import selectors
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock, thread_safe
from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.agent.errors import AgentError, ApiError
from allocrunner.structs import FrozenDict

__all__ = ["HttpServer", "Request", "Response", "Router", "json_response", "parse_address"]

log = logging.getLogger("allocrunner.agent.http")

MAX_BODY = 16 * 1024 * 1024
MAX_CONNECTIONS = 1024
READ_TIMEOUT = 30.0


@attrs.frozen
class Request:
    """Immutable. One HTTP request as a handler sees it."""

    method: str
    path: str
    query: FrozenDict[str, tuple[str, ...]]
    headers: FrozenDict[str, str]
    body: bytes = b""
    args: tuple[str, ...] = ()
    cancel: CancelToken = attrs.field(factory=CancelToken, eq=False)

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.param(name)
        if value is None:
            return default
        if value.lower() in ("", "true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ApiError(400, f"query parameter {name!r}: expected true or false, got {value!r}")

    def int_param(self, name: str, default: int = 0) -> int:
        value = self.param(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise ApiError(
                400, f"query parameter {name!r}: expected an integer, got {value!r}"
            ) from None

    def json(self) -> Any:
        """The body as JSON (400 naming the problem when it is not)."""
        if not self.body:
            raise ApiError(400, "request body: empty, expected JSON")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as err:
            raise ApiError(400, f"request body: malformed JSON: {err}") from None


@attrs.frozen
class Response:
    """Immutable. A handler's answer; `body` is bytes or an iterator of chunks."""

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = "application/json"
    index: int | None = None
    headers: tuple[tuple[str, str], ...] = ()


def json_response(obj: Any, *, index: int | None = None, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(obj).encode(), index=index)


Handler = Callable[[Request], Response]


Route = tuple[frozenset[str], "re.Pattern[str]", Handler]


class Router:
    """Not thread-safe; owned by the thread that builds the routes. `table()` is the
    immutable routing table a server shares between its connection threads."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, methods: str, pattern: str, handler: Handler) -> None:
        """`pattern` is a path with ``:name`` parts (one segment each) or ``*rest``."""
        regex = re.sub(r":\w+", r"([^/]+)", pattern)
        regex = re.sub(r"\*\w+", r"(.*)", regex)
        self._routes.append((frozenset(methods.split()), re.compile(f"^{regex}$"), handler))

    def table(self) -> RouteTable:
        """The routes added so far, frozen."""
        return RouteTable(tuple(self._routes))

    def match(self, method: str, path: str) -> tuple[Handler, tuple[str, ...]]:
        return self.table().match(method, path)


@attrs.frozen
class RouteTable:
    """Immutable. Routes in the order they were added; the first match wins."""

    routes: tuple[Route, ...]

    def match(self, method: str, path: str) -> tuple[Handler, tuple[str, ...]]:
        """The handler of `path` and its captured parts; ApiError 404, or 405 when
        the path is known but not for `method`."""
        allowed = False
        for methods, regex, handler in self.routes:
            found = regex.match(path)
            if found is None:
                continue
            if method in methods:
                return handler, tuple(unquote(g) for g in found.groups())
            allowed = True
        if allowed:
            raise ApiError(405, f"method {method} not allowed on {path}")
        raise ApiError(404, f"no handler for {path}")


def parse_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) to a (host, port) pair; AgentError if bad."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise AgentError(f"--http-addr {addr!r}: expected HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        number = int(port)
    except ValueError:
        raise AgentError(f"--http-addr {addr!r}: port {port!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise AgentError(f"--http-addr {addr!r}: port {number} out of range")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@thread_safe
class _Server(ThreadingHTTPServer):
    """Thread-safe as the stdlib server is: its fields are set once, here."""

    # Connection threads are started and joined by the owner's ThreadGroup (daemons,
    # joined with a deadline), not by the stdlib's unbounded join in server_close.
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, owner: HttpServer, address: tuple[str, int], read_timeout: float) -> None:
        self.owner = owner
        self.read_timeout = read_timeout
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, _Handler)

    def serve_until_woken(self, wake: socket.socket) -> None:
        """Accept connections until `wake` becomes readable. The thread sleeps in
        ``select`` with no timeout, so an idle server never wakes (the stdlib's
        ``serve_forever`` wakes every `poll_interval` to look for its shutdown flag)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                ready = [key.fileobj for key, _ in selector.select()]
                if wake in ready:
                    return
                if ready:
                    self._accept_one()

    def _accept_one(self) -> None:
        """Accept the connection waiting on the listening socket and hand it on."""
        try:
            request, client_address = self.get_request()
        except OSError:  # the peer gave up before the accept
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.owner._admit(request):
            with contextlib.suppress(OSError):
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 27\r\n"
                    b"Connection: close\r\n\r\ntoo many open connections\r\n"
                )
            self.shutdown_request(request)
            return
        self.owner._threads.spawn("http-conn", self.process_request_thread, request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.owner._forget(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("HTTP connection from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "allocrunner"
    # Headers and body go out as separate writes: with Nagle's algorithm the body would
    # wait for the client's delayed ACK of the headers (about 40 ms a response).
    disable_nagle_algorithm = True
    # No class-wide timeout: setup() applies the owning server's read timeout.
    timeout = None

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _server(self) -> _Server:
        """The server that made this handler (always a `_Server`: it passes the class)."""
        server = self.server
        assert isinstance(server, _Server)
        return server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self._server().read_timeout)

    def _dispatch(self) -> None:
        self._server().owner._serve(self)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _dispatch


class HttpServer:
    """Thread-safe. Serves `router` on `address` until `shutdown()` (module docstring)."""

    _router = immutable()
    _token = immutable()
    _cancel = immutable()
    _server = immutable()
    _max_connections = immutable()
    _thread = immutable()
    _threads = immutable()
    _wake_reader = immutable()
    _wake_writer = immutable()
    _lock = immutable()
    _sockets = guarded("_lock")

    def __init__(
        self,
        router: Router,
        address: tuple[str, int],
        *,
        token: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self._router = router.table()
        self._token = token
        self._cancel = CancelToken()
        self._max_connections = max_connections
        self._lock = make_lock("HttpServer._lock")
        self._sockets: frozenset[socket.socket] = frozenset()
        self._threads = ThreadGroup("http")
        try:
            self._server = _Server(self, address, read_timeout)
        except OSError as err:
            raise AgentError(
                f"cannot listen on {address[0]}:{address[1]}: {err.strerror or err}"
            ) from err
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._thread = threading.Thread(
            target=self._server.serve_until_woken, args=(self._wake_reader,), name="http-accept"
        )

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}"

    @property
    def cancel(self) -> CancelToken:
        """Fires when the server shuts down: long-lived handlers end on it."""
        return self._cancel

    def start(self) -> None:
        self._thread.start()

    @calls_out
    def shutdown(self, timeout: float = 10.0) -> bool:
        """Stop accepting, end every open request and connection, join the threads;
        True if they all ended within `timeout` (else the stuck ones are logged with
        their stacks)."""
        deadline = time.monotonic() + timeout
        self._cancel.cancel("agent shutting down")
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")
            self._thread.join(timeout)
        with self._lock:
            sockets = self._sockets
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._wake_writer.close()
        self._wake_reader.close()
        if self._threads.join(max(0.0, deadline - time.monotonic())):
            return True
        frames = sys._current_frames()
        for thread in self._threads.alive():
            frame = frames.get(thread.ident or -1)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "?"
            log.error("HTTP request thread still running at shutdown:\n%s", stack)
        return False

    # --- connection accounting -----------------------------------------------------

    def _admit(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._cancel.cancelled() or len(self._sockets) >= self._max_connections:
                return False
            self._sockets = self._sockets | {sock}
            return True

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets = self._sockets - {sock}

    # --- one request ---------------------------------------------------------------

    @calls_out
    def _serve(self, handler: _Handler) -> None:
        try:
            response = self._respond(handler)
        except ApiError as err:
            response = _error(err.status, err.message)
        except Exception:
            log.exception("%s %s failed", handler.command, handler.path)
            response = _error(500, "internal error")
        self._send(handler, response)

    def _respond(self, handler: _Handler) -> Response:
        if self._cancel.cancelled():
            raise ApiError(503, "agent is shutting down")
        length = handler.headers.get("Content-Length")
        if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            handler.close_connection = True
            raise ApiError(411, "chunked request bodies are not accepted; send Content-Length")
        try:
            size = int(length) if length else 0
        except ValueError:
            handler.close_connection = True
            raise ApiError(400, f"Content-Length {length!r} is not a number") from None
        if size > MAX_BODY or size < 0:
            handler.close_connection = True
            raise ApiError(413, f"request body of {size} bytes exceeds {MAX_BODY} bytes")
        body = handler.rfile.read(size) if size else b""
        if len(body) < size:
            handler.close_connection = True
            raise ApiError(400, "request body shorter than its Content-Length")
        self._authorize(handler)
        parts = urlsplit(handler.path)
        route, args = self._router.match(handler.command, parts.path)
        query = {k: tuple(v) for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        request = Request(
            method=handler.command,
            path=parts.path,
            query=FrozenDict(query),
            headers=FrozenDict({k.lower(): v for k, v in handler.headers.items()}),
            body=body,
            args=args,
            cancel=self._cancel,
        )
        return route(request)

    def _authorize(self, handler: _Handler) -> None:
        if self._token is None:
            return
        given = handler.headers.get("X-Nomad-Token", "")
        if not hmac.compare_digest(given.encode(), self._token.encode()):
            raise ApiError(403, "Permission denied")

    @calls_out
    def _send(self, handler: _Handler, response: Response) -> None:
        try:
            handler.send_response(response.status)
            handler.send_header("Content-Type", response.content_type)
            if response.index is not None:
                handler.send_header("X-Nomad-Index", str(response.index))
                handler.send_header("X-Nomad-KnownLeader", "true")
                handler.send_header("X-Nomad-LastContact", "0")
            for name, value in response.headers:
                handler.send_header(name, value)
            if isinstance(response.body, bytes | bytearray):
                handler.send_header("Content-Length", str(len(response.body)))
                handler.end_headers()
                if handler.command != "HEAD":
                    handler.wfile.write(response.body)
                return
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            self._stream(handler, iter(response.body))
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            handler.close_connection = True
            _close(response.body)

    def _stream(self, handler: _Handler, chunks: Iterator[bytes]) -> None:
        """Write each chunk as it comes; an empty chunk (a stream's heartbeat) writes
        nothing but ends the stream when the client has hung up."""
        try:
            for chunk in chunks:
                if not chunk:
                    if _hung_up(handler.connection):
                        handler.close_connection = True
                        return
                    continue
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                handler.wfile.flush()
            handler.wfile.write(b"0\r\n\r\n")
        finally:
            _close(chunks)


def _hung_up(sock: socket.socket) -> bool:
    """True when the peer closed its side (readable, and a peek reads end of file)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _close(body: object) -> None:
    """End a streamed body early (its generator's cleanup stops what it started)."""
    if isinstance(body, Generator):
        with contextlib.suppress(Exception):
            body.close()


def _error(status: int, message: str) -> Response:
    return Response(status=status, body=message.encode(), content_type="text/plain")
