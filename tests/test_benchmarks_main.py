"""The benchmark runner's own process setup: ``python -m benchmarks`` started with SIGINT
ignored (a background job of a non-interactive shell) still starts its peer processes
with SIGINT at its default action, so the peers it stops with SIGINT exit.

Threads and locks: none. Owner: pytest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Ignores SIGINT as a background job would, lets the runner's setup run, then starts a
# peer the way the benchmarks do and stops it with SIGINT.
CHILD = """
import signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
if sys.argv[1] == "setup":
    from benchmarks.__main__ import interrupts_by_default
    interrupts_by_default()
peer = subprocess.Popen(["/bin/sleep", "60"], start_new_session=True)
peer.send_signal(signal.SIGINT)
try:
    print(peer.wait(timeout=2))
except subprocess.TimeoutExpired:
    peer.kill()
    peer.wait()
    print("ignored")
"""


def _peer_outcome(mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


def test_a_peer_started_by_the_runner_exits_on_sigint_even_when_it_was_ignored() -> None:
    assert _peer_outcome("setup") == "-2"  # killed by SIGINT


def test_without_the_setup_the_peer_would_ignore_sigint() -> None:
    """The case the setup exists for, so the test above cannot pass by accident."""
    assert _peer_outcome("none") == "ignored"
