"""The `allocrunner` command: a client of the agent's HTTP API, in Nomad's shapes.

    allocrunner agent --data-dir DIR [--http-addr HOST:PORT] [--token T]
    allocrunner job run FILE [-var k=v]… [-var-file F]… [-detach]
    allocrunner job status [ID] | job stop [-purge] ID | job dispatch [-meta k=v]… ID [INPUT]
    allocrunner alloc status [-json] ID | alloc logs [-f] [-stderr] [-tail] [-n N] ID [TASK]
    allocrunner alloc fs ID [PATH] | alloc restart ID [TASK] | alloc signal [-s SIG] ID [TASK]
    allocrunner alloc stop ID | node status
    allocrunner run JOBFILE | status [--json] | logs ALLOC TASK | stop [ALLOC] | gc [ALLOC]

Flags take one dash or two. The agent is found through `-address` / `NOMAD_ADDR` or the
data dir (`--data-dir`, `ALLOCRUNNER_DATA_DIR`, the per-user default); `run`, `job run`
and the older commands start one inside the command when the data dir has none.

Exit codes: 0 every task succeeded, 1 a task failed (or the command failed), 2 bad
input or nothing placed, 130 interrupted. A traceback never reaches the user: every
error is one `allocrunner: <message>` line on stderr, and a closed stdout ends the
command quietly.

Threads and locks: none of its own; a command runs on the calling thread (the main
thread for the `allocrunner` script and `python -m allocrunner`). An embedded agent's
threads belong to that agent (see `connect`). Owner: the console script and
`allocrunner.__main__` call `main()`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from allocrunner.cli import allocs, jobs, legacy
from allocrunner.cli.api import ApiError
from allocrunner.cli.args import Handlers, build_parser
from allocrunner.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CliError,
)
from allocrunner.cli.output import Output, say_error, silence_stdout
from allocrunner.errors import AllocRunnerError, JobSpecError

__all__ = ["main"]

HANDLERS: Handlers = {
    "job_run": jobs.job_run,
    "job_status": jobs.job_status,
    "job_stop": jobs.job_stop,
    "job_dispatch": jobs.job_dispatch,
    "alloc_status": allocs.alloc_status,
    "alloc_logs": allocs.alloc_logs,
    "alloc_fs": allocs.alloc_fs,
    "alloc_restart": allocs.alloc_restart,
    "alloc_signal": allocs.alloc_signal,
    "alloc_stop": allocs.alloc_stop,
    "node_status": allocs.node_status,
    "legacy_run": jobs.legacy_run,
    "legacy_status": legacy.legacy_status,
    "legacy_logs": legacy.legacy_logs,
    "legacy_stop": legacy.legacy_stop,
    "legacy_gc": legacy.legacy_gc,
}

BAD_INPUT_STATUSES = frozenset({400, 404, 405, 409, 422})


def _run_agent(argv: list[str]) -> int:
    """`allocrunner agent …` belongs to the agent package."""
    from allocrunner.agent import main as agent_main

    try:
        return int(agent_main(argv) or 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else 1)


def _parse(argv: list[str]) -> argparse.Namespace | int:
    """The parsed command, or the exit code argparse chose (help: 0, misuse: 2)."""
    try:
        return build_parser(HANDLERS).parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code in (0, None) else EXIT_BAD_INPUT


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["agent"]:
        return _run_agent(argv[1:])
    parsed = _parse(argv)
    if isinstance(parsed, int):
        return parsed
    return parsed.handler(parsed, Output())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit code. Nothing escapes but the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        silence_stdout()
        return EXIT_FAILED
    except CliError as err:
        say_error(err.message)
        return err.code
    except ApiError as err:
        say_error(err.message)
        return EXIT_BAD_INPUT if err.status in BAD_INPUT_STATUSES else EXIT_FAILED
    except JobSpecError as err:
        say_error(str(err))
        return EXIT_BAD_INPUT
    except AllocRunnerError as err:
        say_error(str(err))
        return EXIT_FAILED
    except Exception as err:  # the last resort: one line, never a traceback
        say_error(f"internal error: {type(err).__name__}: {err}")
        return EXIT_FAILED
