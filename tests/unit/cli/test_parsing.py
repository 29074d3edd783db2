"""The command line's grammar and its error handling, with no agent involved."""

from __future__ import annotations

import io
import socket
import sys

import pytest

from allocrunner.cli import HANDLERS, main
from allocrunner.cli.args import build_parser


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(list(argv))
    finally:
        sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


def parse(*argv: str):
    return build_parser(HANDLERS).parse_args(list(argv))


def test_flags_take_one_dash_or_two():
    one = parse("job", "run", "-detach", "-var", "a=1", "-var=b=x=y", "-var-file", "f", "j.hcl")
    two = parse("job", "run", "--detach", "--var", "a=1", "--var=b=x=y", "--var-file=f", "j.hcl")
    for args in (one, two):
        assert args.detach and args.jobfile == "j.hcl"
        assert args.var == [("a", "1"), ("b", "x=y")] and args.var_file == ["f"]
    logs = parse("alloc", "logs", "-f", "-stderr", "-tail", "-n", "5", "abcd", "web")
    assert (logs.follow, logs.stderr, logs.tail, logs.lines) == (True, True, True, 5)
    assert (logs.alloc, logs.task) == ("abcd", "web")
    sig = parse("alloc", "signal", "-s", "SIGHUP", "--address", "h:1", "ab12")
    assert (sig.signal, sig.address, sig.task) == ("SIGHUP", "h:1", None)
    stop = parse("job", "stop", "-purge", "web")
    assert stop.purge and stop.job == "web"
    dispatch = parse("job", "dispatch", "-meta", "k=v", "batch", "-")
    assert (dispatch.meta, dispatch.input) == ([("k", "v")], "-")


def test_older_forms_still_parse():
    assert parse("run", "job.hcl", "--data-dir", "d").data_dir == "d"
    assert parse("status", "--json", "--data-dir", "d").json
    logs = parse("logs", "--data-dir", "d", "ab12", "web", "--stderr")
    assert (logs.alloc, logs.task, logs.stderr) == ("ab12", "web", True)
    assert parse("stop", "--data-dir", "d").alloc is None
    assert parse("gc", "--data-dir", "d", "ab12").alloc == "ab12"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["job", "run", "-h"],
        ["job", "status", "-h"],
        ["job", "stop", "-h"],
        ["job", "dispatch", "-h"],
        ["alloc", "status", "-h"],
        ["alloc", "logs", "-h"],
        ["alloc", "fs", "-h"],
        ["alloc", "restart", "-h"],
        ["alloc", "signal", "-h"],
        ["alloc", "stop", "-h"],
        ["node", "status", "-h"],
        ["run", "-h"],
        ["status", "-h"],
        ["logs", "-h"],
        ["stop", "-h"],
        ["gc", "-h"],
    ],
)
def test_help_works_for_every_command(argv):
    code, out, _ = run_cli(*argv, "-h") if not argv else run_cli(*argv)
    assert code == 0
    assert out.startswith("usage: allocrunner")


def test_misuse_exits_2():
    assert run_cli("nonsense")[0] == 2
    assert run_cli("job", "run")[0] == 2
    code, _, err = run_cli("job", "dispatch", "-meta", "novalue", "j")
    assert code == 2 and "KEY=VALUE" in err


def test_a_bad_job_file_is_bad_input_before_any_agent(tmp_path):
    code, out, err = run_cli("job", "run", str(tmp_path / "missing.nomad.hcl"))
    assert (code, out) == (2, "")
    assert err.startswith("allocrunner: ") and err.count("\n") == 1
    broken = tmp_path / "broken.nomad.hcl"
    broken.write_text('job "x" { group "g" { task "t" { driver = 3 } } }')
    code, _, err = run_cli("run", str(broken))
    assert code == 2 and "driver" in err and "Traceback" not in err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_agent_is_one_line_and_exit_1(monkeypatch):
    monkeypatch.delenv("NOMAD_ADDR", raising=False)
    address = f"127.0.0.1:{_closed_port()}"
    code, out, err = run_cli("alloc", "status", "-address", address, "ab12")
    assert (code, out) == (1, "")
    assert err == f"allocrunner: no agent at http://{address}\n"
    monkeypatch.setenv("NOMAD_ADDR", address)
    assert run_cli("job", "status")[0] == 1


def test_commands_without_an_agent_name_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("NOMAD_ADDR", raising=False)
    code, _, err = run_cli("job", "status", "--data-dir", str(tmp_path))
    assert code == 1
    assert f"no agent is running on data dir {tmp_path}" in err


def test_a_negative_line_count_is_refused():
    address = f"127.0.0.1:{_closed_port()}"
    code, _, err = run_cli("alloc", "logs", "-address", address, "-n", "-1", "ab")
    assert code == 2 and "-n" in err
