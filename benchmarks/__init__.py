"""allocrunner benchmarks: ``python -m benchmarks [name ...]``.

Each ``bench_<topic>.py`` exposes ``main() -> None``, runs with the lock check off,
measures its baseline in the same run and prints every figure beside it. This package
module holds only the shared helpers for timing and for printing result tables; it
does not import allocrunner (the runner must switch the lock check off first).
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "Row",
    "Table",
    "format_value",
    "interleaved_ns_per_op",
    "machine_note",
    "percentile",
]


def machine_note() -> str:
    """CPUs and load average: latency tails depend on what else the machine runs."""
    try:
        load = "/".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = "unknown"
    return f"machine: {os.cpu_count()} CPUs, load average {load} (1/5/15 min)"


def format_value(value: float | None, unit: str) -> str:
    """`value` in `unit` ("ns", "s", "/s", "%", "calls", "" ...), scaled to stay readable."""
    if value is None:
        return "-"
    if unit == "ns":
        if value >= 1e6:
            return f"{value / 1e6:.2f} ms"
        if value >= 1e3:
            return f"{value / 1e3:.2f} us"
        return f"{value:.0f} ns"
    if unit == "s":
        if value >= 1:
            return f"{value:.2f} s"
        if value >= 1e-3:
            return f"{value * 1e3:.2f} ms"
        return f"{value * 1e6:.0f} us"
    if unit == "/s":
        if value >= 1e6:
            return f"{value / 1e6:.2f} M/s"
        if value >= 1e3:
            return f"{value / 1e3:.1f} k/s"
        return f"{value:.0f} /s"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "calls":
        return f"{value:,.0f} calls"
    return f"{value:.3g}{(' ' + unit) if unit else ''}"


@dataclass
class Row:
    """Immutable once added. One figure: what was measured against what, and the goal."""

    name: str
    measured: float | None
    baseline: float | None = None
    unit: str = "ns"
    ratio: float | None = None  # defaults to measured / baseline
    goal: str = ""
    ok: bool | None = None  # None: reported for information, no goal
    baseline_name: str = ""

    def ratio_value(self) -> float | None:
        if self.ratio is not None:
            return self.ratio
        if self.measured is None or not self.baseline:
            return None
        return self.measured / self.baseline


@dataclass
class Table:
    """Not thread-safe; owned by one benchmark. Rows printed as one aligned table."""

    title: str
    rows: list[Row] = field(default_factory=list)

    def add(self, *args: object, **kwargs: object) -> Row:
        row = Row(*args, **kwargs)  # type: ignore[arg-type]
        self.rows.append(row)
        return row

    def print(self) -> None:
        header = ("name", "measured", "baseline", "ratio", "goal", "result")
        cells = [header]
        for row in self.rows:
            ratio = row.ratio_value()
            baseline = format_value(row.baseline, row.unit)
            if row.baseline_name and row.baseline is not None:
                baseline = f"{baseline} ({row.baseline_name})"
            cells.append(
                (
                    row.name,
                    format_value(row.measured, row.unit),
                    baseline,
                    "-" if ratio is None else f"{ratio:.2f}x",
                    row.goal or "-",
                    "info" if row.ok is None else ("PASS" if row.ok else "MISS"),
                )
            )
        widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
        print(f"\n== {self.title}")
        for n, line in enumerate(cells):
            print(
                "  "
                + "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True))
            )
            if n == 0:
                print("  " + "  ".join("-" * width for width in widths))

    def misses(self) -> int:
        return sum(1 for row in self.rows if row.ok is False)


def interleaved_ns_per_op(
    candidates: dict[str, Callable[[int], None]],
    n: int,
    rounds: int,
    overhead: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Best ns per operation of each `candidate(n)` (which runs n operations).

    Rounds are interleaved so that a noisy neighbour or a clock change hurts every
    candidate alike, the garbage collector is paused while timing (as `timeit` does),
    and the best time of `overhead(n)` (the bare loop) is subtracted."""
    best = dict.fromkeys(candidates, float("inf"))
    loop = float("inf")
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            if overhead is not None:
                start = time.perf_counter_ns()
                overhead(n)
                loop = min(loop, (time.perf_counter_ns() - start) / n)
            for name, fn in candidates.items():
                start = time.perf_counter_ns()
                fn(n)
                best[name] = min(best[name], (time.perf_counter_ns() - start) / n)
    finally:
        if gc_was_enabled:
            gc.enable()
    if overhead is None:
        loop = 0.0
    return {name: max(value - loop, 0.0) for name, value in best.items()}


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) of `values` by nearest rank; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(rank, 1)) - 1]
