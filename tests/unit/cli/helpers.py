"""Helpers for the command-line tests: an agent in its own process, the CLI run in
this process or as `python -m allocrunner`, and a sweep that kills every process a
test started (agents and the tasks they ran)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import attrs

from allocrunner.cli import main
from allocrunner.drivers._process import pid_alive
from allocrunner.testing import wait_for

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
AGENT_START_TIMEOUT = 20.0


def run_cli(*argv: str) -> tuple[int, str, str]:
    """`main(argv)` in this process; its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(list(argv))
    finally:
        sys.stdout, sys.stderr = old
    return code, out.getvalue(), err.getvalue()


def cli_env() -> dict[str, str]:
    """The environment of a CLI or agent process: no agent address inherited."""
    env = {k: v for k, v in os.environ.items() if k not in ("NOMAD_ADDR", "NOMAD_TOKEN")}
    env.pop("ALLOCRUNNER_DATA_DIR", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def cli_process(
    *argv: str, env_extra: dict[str, str] | None = None, **kwargs: object
) -> subprocess.Popen:
    """`python -m allocrunner argv…`, started; pipes for stdout and stderr by default."""
    return subprocess.Popen(
        [sys.executable, "-m", "allocrunner", *argv],
        env={**cli_env(), **(env_extra or {})},
        stdout=kwargs.pop("stdout", subprocess.PIPE),
        stderr=kwargs.pop("stderr", subprocess.PIPE),
        text=True,
        **kwargs,
    )


def run_process(*argv: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """`python -m allocrunner argv…` to the end; its exit code, stdout and stderr."""
    proc = cli_process(*argv)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def processes_using(data_dir: Path) -> list[int]:
    """Pids (other than ours) whose environment or command line names `data_dir`:
    the tasks an agent started there, and the agent itself."""
    needle = str(data_dir).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for name in ("environ", "cmdline"):
            try:
                data = Path("/proc", entry, name).read_bytes()
            except OSError:
                continue
            if needle in data:
                found.append(int(entry))
                break
    return found


def kill_everything_under(data_dir: Path) -> None:
    for pid in processes_using(data_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid != os.getpgrp():  # a task leading its own group
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def gone() -> None:
        assert not [p for p in processes_using(data_dir) if pid_alive(p)], "processes survive"

    wait_for(gone, timeout=10)


@attrs.define
class AgentProcess:
    """An `allocrunner agent` subprocess on `data_dir`, listening at `address`."""

    proc: subprocess.Popen
    data_dir: Path
    address: str


def start_agent(data_dir: Path) -> AgentProcess:
    log = open(data_dir.parent / f"{data_dir.name}-agent.out", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "allocrunner",
            "agent",
            "--data-dir",
            str(data_dir),
            "--http-addr",
            "127.0.0.1:0",
        ],
        env=cli_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()

    def listening() -> str:
        assert proc.poll() is None, f"agent exited with {proc.returncode}"
        info = json.loads((data_dir / "agent.json").read_text())
        return info["address"]

    def published() -> str:
        try:
            return listening()
        except (OSError, ValueError, KeyError) as err:
            raise AssertionError(f"no agent.json yet: {err}") from None

    try:
        address = wait_for(published, timeout=AGENT_START_TIMEOUT, interval=0.02)
    except AssertionError:
        proc.kill()
        proc.wait(10)
        raise
    return AgentProcess(proc, data_dir, address)


def stop_agent(agent: AgentProcess) -> None:
    if agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGTERM)
        try:
            agent.proc.wait(15)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait(10)
