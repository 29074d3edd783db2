"""``allocrunner agent``: run the node agent in the foreground until a signal.

- SIGTERM, SIGINT and SIGHUP shut the agent down and leave every task running for
  the next agent (Nomad's client does the same); the exit code is 0. A second signal
  during the shutdown exits at once (code 1), quietly.
- SIGPIPE and a closed stdout or stderr change nothing: the agent logs through
  `logging` to stderr and to ``<data-dir>/agent.log``, and a dead terminal only
  loses the terminal's copy.
- A data dir owned by another agent, a bad address or bad flags exit 2 with one
  line; nothing else is touched.

Flags take one dash or two (``-data-dir`` or ``--data-dir``), as Nomad's do.

Threads: the main thread, which waits for a signal in ``select``; every other thread
is the `Agent`'s. Locks: none (the signal handler only writes a byte to a pipe, so it
takes no lock). Owner: ``allocrunner agent`` and ``python -m allocrunner.agent`` call
`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from allocrunner._locking import confined
from allocrunner.agent.agent import DEFAULT_HTTP_ADDR, Agent, AgentConfig
from allocrunner.agent.errors import AgentError, DataDirLockedError

__all__ = ["default_data_dir", "main", "normalize_flags"]

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_BAD_INPUT = 2

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def default_data_dir() -> Path:
    """``$ALLOCRUNNER_DATA_DIR``, else a per-user dir (``$XDG_DATA_HOME/allocrunner``)."""
    env = os.environ.get("ALLOCRUNNER_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "allocrunner"


def normalize_flags(argv: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """Nomad's single-dash long flags (``-data-dir=x``) as argparse's ``--data-dir=x``."""
    long_flags = {
        opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")
    }
    out: list[str] = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            name = "-" + arg.split("=", 1)[0]
            if name in long_flags:
                arg = "-" + arg
        out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allocrunner agent",
        description="Run the node agent: restore this data dir's allocations and serve "
        "Nomad's HTTP API.",
    )
    parser.add_argument("--data-dir", help="state, alloc dirs and logs (default: a per-user dir)")
    parser.add_argument(
        "--http-addr",
        default=DEFAULT_HTTP_ADDR,
        help=f"HOST:PORT to serve on (default {DEFAULT_HTTP_ADDR}; port 0 picks a free one)",
    )
    parser.add_argument("--token", help="require this X-Nomad-Token (needed off loopback)")
    parser.add_argument("--dc", "--datacenter", dest="datacenter", default="dc1")
    parser.add_argument("--region", default="global")
    parser.add_argument("--node-class", default="")
    parser.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="node metadata"
    )
    parser.add_argument(
        "--artifact-allow-local",
        action="store_true",
        help="let artifacts come from local files (absolute paths, file://); off by default",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARN", "ERROR"))
    return parser


class _TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Logs to stderr until stderr dies; then it goes quiet (the log file keeps all)."""

    def handleError(self, record: logging.LogRecord) -> None:
        self.setLevel(logging.CRITICAL + 1)


class _NoTraceback(logging.Formatter):
    """One line per record on the terminal; tracebacks go to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _say(text: str) -> None:
    """A line on stdout that a closed stdout cannot turn into an error."""
    try:
        print(text, flush=True)
    except (BrokenPipeError, OSError, ValueError):
        _silence_stdout()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


class _SignalPipe:
    """Not thread-safe; owned by the main thread. Shutdown signals, through a pipe.

    The handler only writes a byte (async-signal-safe: it takes no lock, so it cannot
    deadlock with whatever the main thread was doing when the signal came); the main
    thread waits for it in `select`. A second signal exits at once, quietly.
    """

    # signal handlers run on the main thread, between two of its bytecodes
    _count = confined("main", prefix="MainThread")

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._count = 0
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in SHUTDOWN_SIGNALS}
        # A signal the kernel hands to another thread interrupts no select of the main
        # thread, and the Python handler waits for the main thread to run: the C-level
        # handler's wake-up byte is what ends the wait, whichever thread took the signal.
        self._previous_wakeup = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._count += 1
        if self._count > 1:
            os._exit(EXIT_FATAL)
        with contextlib.suppress(OSError):  # a full pipe already holds a signal
            os.write(self._write, bytes([signum]))

    def wait(self) -> int:
        """Block until a shutdown signal arrives; its number."""
        while True:
            readable, _, _ = select.select([self._read], [], [])
            if readable:
                signum = os.read(self._read, 1)[0]
                if signum in SHUTDOWN_SIGNALS:
                    return signum

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._read)
        os.close(self._write)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(normalize_flags(raw, parser))
    except SystemExit as exc:
        return EXIT_BAD_INPUT if exc.code else EXIT_OK
    meta: dict[str, str] = {}
    for pair in args.meta:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            print(f"allocrunner agent: --meta {pair!r}: expected KEY=VALUE", file=sys.stderr)
            return EXIT_BAD_INPUT
        meta[key] = value
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    config = AgentConfig(
        data_dir=str(data_dir),
        http_addr=args.http_addr,
        token=args.token,
        datacenter=args.datacenter,
        region=args.region,
        node_class=args.node_class,
        meta=meta,
        artifact_allow_local=args.artifact_allow_local,
    )
    terminal = _TerminalHandler(sys.stderr)
    terminal.setFormatter(_NoTraceback("    %(asctime)s [%(levelname)s] %(message)s"))
    root = logging.getLogger("allocrunner")
    root.setLevel(logging.WARNING if args.log_level == "WARN" else args.log_level)
    root.addHandler(terminal)
    try:
        return _run(config)
    finally:
        root.removeHandler(terminal)


def _run(config: AgentConfig) -> int:
    signals_in = _SignalPipe()
    agent = Agent(config)
    try:
        try:
            agent.start()
        except DataDirLockedError as err:
            print(f"allocrunner agent: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except AgentError as err:
            print(f"allocrunner agent: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        _say(f"==> allocrunner agent started on {agent.address} (data dir {config.data_dir})")
        signum = signals_in.wait()
        _say(f"==> caught {signal.Signals(signum).name}; shutting down, tasks keep running")
        agent.shutdown()
        _say("==> agent stopped")
        return EXIT_OK
    except Exception as err:  # the last line of defence: one line, never a traceback
        logging.getLogger("allocrunner.agent").exception("agent failed")
        print(f"allocrunner agent: {err}", file=sys.stderr)
        agent.shutdown()
        return EXIT_FATAL
    finally:
        signals_in.close()
