"""Smoke test of the scale benchmark: ``python -m benchmarks scale`` in quick mode runs
to the end in a subprocess (lock check off, small N, a 1 s idle window) and prints every
figure with a ratio and a PASS/MISS verdict. Speed itself is never asserted.

Threads and locks: none (the benchmark runs in its own process). Owner: pytest.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FIGURES = [
    r"start per alloc, N=\d+ vs N=\d+",
    r"stop per alloc, N=\d+ vs N=\d+",
    r"destroy per alloc, N=\d+ vs N=\d+",
    r"run_allocs\(\d+ new\) returns",
    r"start-all N=\d+ vs bare threads",
    r"RSS per running alloc, N=\d+",
    r"idle CPU, \d+ allocs, [\d.]+ s",
    r"put_task_state \(changed\) vs encode \+ raw insert",
    r"raw_exec start -> exec'd \(median\)",
    r"raw_exec stop -> reaped \(median\)",
    r"stop \d+ raw_exec tasks vs supervisord stopAll",
]
SUPERVISORD_FIGURE = FIGURES[-1]
WITH_RATIO = r"\s+.*\s+ratio\s+\d+\.\d\dx\s+goal\s+<=\s+\S+(?: \S+)?\s+(PASS|MISS)$"
CALLS_FIGURE = r"calls per alloc: start-all N=\d+ vs the driver floor"
NOMAD_FLOOR = r"floor: the driver floor storing what Nomad stores, N=\d+"
CONTRACT_FLOOR = r"floor: a straight-line start of all the contract asks, N=\d+"
VS_CONTRACT = r"start-all N=\d+ vs the contract floor"
POOLED_FLOOR = r"floor: the contract's starts on \d+ threads, a thread each waits, N=\d+"
VS_POOLED = r"start-all N=\d+ vs the pooled contract floor"


def figure_lines(output: str, pattern: str) -> list[str]:
    return [line for line in output.splitlines() if re.match(rf"\s+{pattern}\s", line)]


@pytest.mark.timeout(120)
def test_scale_benchmark_prints_every_figure_with_a_ratio() -> None:
    env = dict(os.environ, ALLOCRUNNER_LOCKCHECK="0", BENCH_QUICK="1", BENCH_SCALE_IDLE_S="1")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "scale"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    supervisor_installed = importlib.util.find_spec("supervisor") is not None
    for pattern in FIGURES:
        lines = figure_lines(done.stdout, pattern)
        assert len(lines) == 1, f"figure {pattern!r} printed {len(lines)} times\n{report}"
        if pattern == SUPERVISORD_FIGURE and not supervisor_installed:
            assert "unavailable: supervisor is not installed" in lines[0], report
            continue
        assert re.match(rf"\s+{pattern}{WITH_RATIO}", lines[0]), f"no ratio: {lines[0]}"
    for floor in (NOMAD_FLOOR, CONTRACT_FLOOR, VS_CONTRACT, POOLED_FLOOR, VS_POOLED):
        lines = figure_lines(done.stdout, floor)
        assert len(lines) == 1, f"figure {floor!r} printed {len(lines)} times\n{report}"
        assert re.search(r"ratio\s+\d+\.\d\dx\s+goal floor", lines[0]), report
    assert "note: contract floor N=" in done.stdout, report
    assert "note: pooled contract floor N=" in done.stdout, report
    assert re.search(r"note: each round: pooled contract floor [\d.]+ ms", done.stdout), report
    rounds = re.findall(r"note: each round: start-all N=\d+ ([\d.]+(?: / [\d.]+)*) ms", done.stdout)
    assert len(rounds) == 1, report
    for phase in ("start", "stop", "destroy"):
        assert re.search(
            rf"note: each round: {phase} per alloc N=\d+ [\d. /]+ us, N=\d+ [\d. /]+ us",
            done.stdout,
        ), report
    calls = figure_lines(done.stdout, CALLS_FIGURE)
    assert len(calls) == 1, report
    counted = re.match(
        rf"\s+{CALLS_FIGURE}\s+([\d,]+) calls\s+vs ([\d,]+) calls \(driver floor\)"
        r"\s+ratio\s+\d+\.\d\dx\s+goal floor\s+info$",
        calls[0],
    )
    assert counted is not None, f"no counts: {calls[0]}"
    assert int(counted[2].replace(",", "")) > 0, calls[0]
