"""Nomad's e2e/alloc_logs TestAllocLogs_MixedFollow on one node: alloc_logs' mixed-output
job writes "stdout" to stdout and "stderr" to stderr in turn; `alloc logs -f ALLOC`,
with no -stdout or -stderr, follows both (Nomad 1.6's default when following), so the
command's combined output holds "stdout\\nstderr". The command is a real process,
stopped once the text is seen; the job is purged by the `node` fixture."""

from __future__ import annotations

import contextlib
import os
import subprocess
from typing import Any

import pytest

from allocrunner.testing import wait_for
from tests.nomad_e2e.helpers import Node, e2e_file
from tests.unit.cli.helpers import cli_process

pytestmark = pytest.mark.timeout(60)


def test_following_logs_shows_stdout_and_stderr_together(node: Node) -> None:
    node.run(e2e_file("alloc_logs/input/mixed-output.nomad"))

    def running(alloc: dict[str, Any]) -> None:
        state = (alloc["TaskStates"] or {}).get("test")
        assert state is not None and state["State"] == "running", alloc["TaskStates"]

    alloc = node.alloc_when("alloc-logs", running)
    follower = cli_process(
        "alloc", "logs", "-f", "-address", node.agent.address, alloc["ID"], stderr=subprocess.STDOUT
    )
    output = follower.stdout
    assert output is not None
    os.set_blocking(output.fileno(), False)
    seen: list[str] = []

    def both_streams() -> None:
        assert follower.poll() is None, f"alloc logs -f exited {follower.returncode}: {seen}"
        with contextlib.suppress(TypeError):  # nothing to read yet
            seen.append(output.read() or "")
        assert "stdout\nstderr" in "".join(seen), "".join(seen)

    try:
        wait_for(both_streams, 20)
    finally:
        follower.kill()
        follower.communicate(timeout=10)
