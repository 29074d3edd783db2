"""Errors of the agent and its HTTP API.

`ApiError` carries the HTTP status a handler wants the client to see; the server
turns it into Nomad's plain-text error body (`<status> <message>` style bodies are
not used: Nomad answers errors with the message alone and the status code).

Threads: none. Locks: none. Owner: raised by the agent's modules; `HttpServer`
answers an `ApiError` with its status.
"""

from __future__ import annotations

from allocrunner.errors import AllocRunnerError


class AgentError(AllocRunnerError):
    """The agent cannot start or run (bad address, data dir unusable, …)."""


class DataDirLockedError(AgentError):
    """Another agent holds the data dir's lock; `pid` is that agent's pid (0 if unknown)."""

    def __init__(self, data_dir: str, pid: int) -> None:
        self.data_dir = data_dir
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"data dir {data_dir} is in use by another agent ({holder})")


class ApiError(AllocRunnerError):
    """An HTTP API request failed; `status` is the HTTP status code to answer with."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def forbidden(message: str) -> ApiError:
    return ApiError(403, message)
