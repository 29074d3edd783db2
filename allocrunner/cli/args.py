"""The command line's grammar: Nomad's command shapes on argparse.

Nomad's flags are Go flags, written with one dash or two (`-detach`, `--detach`,
`-var=k=v`); every flag here is registered under both spellings. Each command carries
the flags that find the agent (`-address`, `-token`, `-data-dir`). Each parser's
`handler` default names the function that runs it; the handlers live in the command
modules and are attached by `build_parser`.

Threads and locks: none; builds argparse parsers, once per command. Owner: `main`
calls `build_parser` with the handlers of the command modules.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["Handlers", "build_parser", "flag", "key_value"]

Handler = Callable[..., int]
Handlers = dict[str, Handler]

EPILOG = "Exit codes: 0 ok, 1 a task failed, 2 bad input or not placed, 130 interrupted."


def flag(parser: argparse.ArgumentParser | Any, name: str, **kwargs: Any) -> None:
    """Register `-name` and `--name` for one option."""
    parser.add_argument(f"-{name}", f"--{name}", **kwargs)


def key_value(text: str) -> tuple[str, str]:
    """`k=v` (the value may hold more `=`); argparse reports a bad one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _agent_flags() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("finding the agent")
    flag(group, "address", metavar="ADDR", help="the agent's HTTP address (env NOMAD_ADDR)")
    flag(group, "token", metavar="TOKEN", help="ACL token (env NOMAD_TOKEN)")
    flag(
        group,
        "data-dir",
        metavar="DIR",
        help="use the agent of this data dir (env ALLOCRUNNER_DATA_DIR, "
        "default ~/.local/share/allocrunner)",
    )
    return common


class _Builder:
    """Not thread-safe; used once by build_parser. Adds commands with shared settings."""

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.common = _agent_flags()

    def command(
        self, sub: Any, name: str, handler: str, help_text: str, **kwargs: Any
    ) -> argparse.ArgumentParser:
        parser = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            parents=[self.common],
            allow_abbrev=False,
            epilog=EPILOG,
            **kwargs,
        )
        parser.set_defaults(handler=self.handlers[handler])
        return parser


def _job_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("jobfile", metavar="FILE", help="a .json, .hcl, .nomad or .nomad.hcl job")
    flag(
        parser,
        "var",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="an HCL2 input variable (repeatable)",
    )
    flag(
        parser,
        "var-file",
        action="append",
        default=[],
        metavar="FILE",
        help="a file of HCL2 input variables (repeatable)",
    )
    flag(parser, "detach", action="store_true", help="register the job and return at once")


def _add_job(b: _Builder, top: Any) -> None:
    job = top.add_parser("job", help="run, inspect and stop jobs", allow_abbrev=False)
    sub = job.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    run = b.command(sub, "run", "job_run", "register a job and watch its allocations run")
    _job_run_flags(run)
    status = b.command(sub, "status", "job_status", "list jobs, or show one job")
    status.add_argument("job", nargs="?", metavar="ID", help="a job id (or a unique prefix)")
    stop = b.command(sub, "stop", "job_stop", "stop a job's allocations (deregister it)")
    stop.add_argument("job", metavar="ID")
    flag(stop, "purge", action="store_true", help="forget the job entirely")
    flag(stop, "detach", action="store_true", help="return without waiting for tasks to die")
    dispatch = b.command(sub, "dispatch", "job_dispatch", "dispatch a parameterized job")
    dispatch.add_argument("job", metavar="ID")
    dispatch.add_argument("input", nargs="?", metavar="INPUT", help="payload file, or - for stdin")
    flag(
        dispatch,
        "meta",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="dispatch metadata (repeatable)",
    )
    flag(dispatch, "detach", action="store_true", help="return once dispatched")


def _alloc_target(parser: argparse.ArgumentParser, task_help: str) -> None:
    parser.add_argument("alloc", metavar="ALLOC", help="an allocation id or a unique prefix")
    parser.add_argument("task", nargs="?", metavar="TASK", help=task_help)


def _add_alloc(b: _Builder, top: Any) -> None:
    alloc = top.add_parser("alloc", help="inspect and act on allocations", allow_abbrev=False)
    sub = alloc.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    status = b.command(sub, "status", "alloc_status", "show an allocation and its task events")
    status.add_argument("alloc", metavar="ALLOC", help="an allocation id or a unique prefix")
    flag(status, "json", action="store_true", help="the allocation as API JSON")
    logs = b.command(sub, "logs", "alloc_logs", "print a task's stdout or stderr")
    _alloc_target(logs, "the task (optional when the group has one task)")
    flag(logs, "f", action="store_true", dest="follow", help="follow the log")
    flag(logs, "stdout", action="store_true", help="stdout only (with -f: not stderr too)")
    flag(logs, "stderr", action="store_true", help="stderr instead of stdout")
    flag(logs, "tail", action="store_true", help="only the end of the log")
    flag(logs, "n", type=int, default=None, metavar="N", dest="lines", help="lines with -tail")
    fs = b.command(sub, "fs", "alloc_fs", "list a directory or print a file of an alloc dir")
    fs.add_argument("alloc", metavar="ALLOC", help="an allocation id or a unique prefix")
    fs.add_argument("path", nargs="?", default="/", metavar="PATH")
    flag(fs, "stat", action="store_true", help="show the file's metadata only")
    restart = b.command(sub, "restart", "alloc_restart", "restart an allocation's tasks")
    _alloc_target(restart, "restart only this task")
    flag(restart, "all-tasks", action="store_true", help="restart every task, dead ones too")
    flag(restart, "task", dest="task_flag", metavar="TASK", help="same as the TASK argument")
    signal = b.command(sub, "signal", "alloc_signal", "send a signal to tasks")
    _alloc_target(signal, "signal only this task")
    flag(signal, "s", dest="signal", default="SIGKILL", metavar="SIGNAL", help="signal name")
    flag(signal, "task", dest="task_flag", metavar="TASK", help="same as the TASK argument")
    stop = b.command(sub, "stop", "alloc_stop", "stop an allocation")
    stop.add_argument("alloc", metavar="ALLOC", help="an allocation id or a unique prefix")
    flag(stop, "detach", action="store_true", help="print the evaluation id and return")


def _add_node(b: _Builder, top: Any) -> None:
    node = top.add_parser("node", help="this node", allow_abbrev=False)
    sub = node.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    status = b.command(sub, "status", "node_status", "list nodes, or show one")
    status.add_argument("node", nargs="?", metavar="ID")


def _add_legacy(b: _Builder, top: Any) -> None:
    run = b.command(top, "run", "legacy_run", "run a job file here and show live task status")
    _job_run_flags(run)
    status = b.command(top, "status", "legacy_status", "list the allocations of a data dir")
    flag(status, "json", action="store_true", help="Nomad API JSON, sorted by Name")
    logs = b.command(top, "logs", "legacy_logs", "print a task's logs")
    logs.add_argument("alloc", metavar="ALLOC", help="an allocation id or a unique prefix")
    logs.add_argument("task", metavar="TASK")
    flag(logs, "stderr", action="store_true", help="stderr instead of stdout")
    stop = b.command(top, "stop", "legacy_stop", "stop allocations (all, or those matching)")
    stop.add_argument("alloc", nargs="?", metavar="ALLOC", help="an id or a unique prefix")
    flag(stop, "timeout", type=float, default=60.0, metavar="SECONDS", help="how long to wait")
    gc = b.command(top, "gc", "legacy_gc", "remove finished allocations and their files")
    gc.add_argument("alloc", nargs="?", metavar="ALLOC", help="an id or a unique prefix")


def build_parser(handlers: Handlers) -> argparse.ArgumentParser:
    """The whole grammar; `handlers` maps the names used above to functions."""
    parser = argparse.ArgumentParser(
        prog="allocrunner",
        description="Run Nomad jobs on this machine through the allocrunner agent.",
        epilog=EPILOG,
        allow_abbrev=False,
    )
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = _Builder(handlers)
    _add_job(b, top)
    _add_alloc(b, top)
    _add_node(b, top)
    top.add_parser(
        "agent",
        help="run the agent: agent --data-dir DIR [--http-addr HOST:PORT] [--token T]",
        add_help=False,
    )
    _add_legacy(b, top)
    return parser
