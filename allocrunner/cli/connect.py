"""Finding the agent a command talks to, or starting one inside the command.

Where the agent is, first match wins:
1. `-address` on the command line;
2. `--data-dir DIR` on the command line: the live agent that owns DIR;
3. `NOMAD_ADDR` in the environment;
4. the agent owning `ALLOCRUNNER_DATA_DIR`, or the per-user data dir
   (`$XDG_DATA_HOME/allocrunner`, by default `~/.local/share/allocrunner`).

A data dir names its agent through `allocrunner.agent.datadir.find_agent`, which
trusts the record only while its process holds the dir's lock.

Commands that cannot work without an agent and are meant to work on a bare machine
(`run`, `job run` and the older `status`, `logs`, `stop`, `gc`) start an *embedded*
agent in this process when the data dir has none, on a loopback port, and shut it
down when the command ends. Shutting down leaves tasks running, exactly as the
standalone agent does; the next agent on the same data dir re-attaches them.

Threads and locks: none of its own; a `Session` is owned by one command. An embedded
agent runs its own threads (HTTP server, runners) in this process; the session that
started it shuts it down when the command ends. Owner: each command handler opens one
session with `open_session`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from allocrunner.cli.api import ApiClient
from allocrunner.cli.common import CliError
from allocrunner.cli.output import Output

__all__ = ["Session", "default_data_dir", "open_session"]

ENV_ADDR = "NOMAD_ADDR"
ENV_TOKEN = "NOMAD_TOKEN"
ENV_DATA_DIR = "ALLOCRUNNER_DATA_DIR"
LOCKED_GRACE = 10.0  # seconds to wait for a just-started agent to publish its address
LOCKED_BACKOFF = (0.01, 0.2)  # first and longest pause between looks at a locked data dir
EMBEDDED_HTTP_ADDR = "127.0.0.1:0"


@attrs.define
class Session:
    """Not thread-safe; owned by one command. The agent a command talks to.

    `agent` is the embedded agent this command started (None when it talks to one that
    was already running); `data_dir` is the data dir in use, when known.
    """

    api: ApiClient
    agent: Any = None
    data_dir: Path | None = None

    @property
    def embedded(self) -> bool:
        return self.agent is not None


def default_data_dir() -> Path:
    """`ALLOCRUNNER_DATA_DIR`, else the per-user data dir."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    home_share = os.path.join(os.path.expanduser("~"), ".local", "share")
    base = os.environ.get("XDG_DATA_HOME") or home_share
    return Path(base) / "allocrunner"


def _token(args: argparse.Namespace) -> str | None:
    return getattr(args, "token", None) or os.environ.get(ENV_TOKEN) or None


def _find_agent(data_dir: Path) -> str | None:
    from allocrunner.agent.datadir import find_agent

    return find_agent(data_dir)


def _no_agent(data_dir: Path) -> CliError:
    return CliError(
        f"no agent is running on data dir {data_dir}: start one with "
        f"`allocrunner agent --data-dir {data_dir}`, or pass -address"
    )


@contextlib.contextmanager
def open_session(
    args: argparse.Namespace,
    out: Output,
    *,
    embed: bool = False,
    temporary: bool = False,
) -> Iterator[Session]:
    """The session for `args`, as the module docstring orders the choices.

    With `embed`, a data dir without an agent gets an embedded one. With `temporary`
    (the older `run` without a data dir), that data dir is a new temporary one, printed
    and kept afterwards so its logs can still be read.
    """
    token = _token(args)
    address = getattr(args, "address", None)
    if address:
        yield Session(ApiClient(address, token))
        return
    explicit = getattr(args, "data_dir", None)
    if not explicit and os.environ.get(ENV_ADDR):
        yield Session(ApiClient(os.environ[ENV_ADDR], token))
        return
    if explicit:
        data_dir = Path(explicit).expanduser()
    elif temporary and not os.environ.get(ENV_DATA_DIR):
        data_dir = Path(tempfile.mkdtemp(prefix="allocrunner-"))
        out.line(f"==> data dir: {data_dir}")
    else:
        data_dir = default_data_dir()
    found = _find_agent(data_dir)
    if found:
        yield Session(ApiClient(found, token), data_dir=data_dir)
        return
    if not embed:
        raise _no_agent(data_dir)
    with _embedded_agent(data_dir, token) as session:
        yield session


@contextlib.contextmanager
def _embedded_agent(data_dir: Path, token: str | None) -> Iterator[Session]:
    """An agent started here on `data_dir`; or, when another process holds the dir,
    that agent once it publishes its address (or this one, once that one has gone).

    Waiting on the other process is the one timed wait of the command line, and it is
    bounded: it happens once, at start, for at most `LOCKED_GRACE` seconds, with a
    doubling pause. It is not turned into an event wait because the two things it
    waits for live in another process: the address record (a file an inotify watch
    could see) and the release of the ``flock`` (no event a waiter can select on; its
    descriptor's close looks the same as this command's own failed attempt to lock).
    """
    deadline = time.monotonic() + LOCKED_GRACE
    pause, longest = LOCKED_BACKOFF
    while True:
        agent = _start_agent(data_dir)
        if agent is not None:
            break
        found = _find_agent(data_dir)
        if found:
            yield Session(ApiClient(found, token), data_dir=data_dir)
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CliError(f"data dir {data_dir} is locked by an agent that publishes no address")
        time.sleep(min(pause, remaining))
        pause = min(2 * pause, longest)
    try:
        yield Session(ApiClient(agent.address, token), agent=agent, data_dir=data_dir)
    finally:
        agent.shutdown()


def _start_agent(data_dir: Path) -> Any:
    """A started embedded agent on `data_dir`, or None if another agent holds it."""
    from allocrunner.agent import Agent, AgentConfig
    from allocrunner.agent.errors import AgentError, DataDirLockedError

    agent = Agent(AgentConfig(data_dir=str(data_dir), http_addr=EMBEDDED_HTTP_ADDR))
    try:
        agent.start()
    except DataDirLockedError:
        return None
    except AgentError as err:
        raise CliError(f"cannot start an agent on {data_dir}: {err}") from None
    return agent
