"""Run allocrunner's benchmarks: ``python -m benchmarks [name ...]``.

With no names every ``benchmarks/bench_*.py`` runs; a name may be given as ``locks``,
``bench_locks`` or ``bench_locks.py``. ``--list`` prints the names. Benchmarks measure
production code, so the lock check is forced off before allocrunner is imported.
The exit status is 1 if a benchmark raised, 2 for an unknown name.
"""

from __future__ import annotations

import os

os.environ["ALLOCRUNNER_LOCKCHECK"] = "0"  # before anything imports allocrunner

import importlib
import signal
import sys
import time
import traceback
from pathlib import Path

from benchmarks import machine_note  # the package itself never imports allocrunner

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Module names of every benchmark, sorted."""
    return sorted(path.stem for path in HERE.glob("bench_*.py"))


def resolve(names: list[str]) -> list[str]:
    """Benchmark module names for the names given on the command line."""
    known = available()
    chosen = []
    for name in names:
        stem = name.removesuffix(".py").rsplit("/", 1)[-1]
        if not stem.startswith("bench_"):
            stem = f"bench_{stem}"
        if stem not in known:
            raise SystemExit(f"unknown benchmark {name!r}; known: {', '.join(known)}")
        if stem not in chosen:
            chosen.append(stem)
    return chosen or known


def interrupts_by_default() -> None:
    """Give SIGINT back its default handling if this process started with it ignored.

    A background job of a non-interactive shell, or a command run under ``nohup`` from
    one, starts with SIGINT ignored, and every process it starts inherits that: the
    bare ``sleep`` peers, the relay floor's and supervisord's programs, which the
    benchmarks stop with SIGINT as raw_exec stops its tasks, would never exit, and the
    benchmark would wait for them forever. With Python's own handler installed, a child
    starts with SIGINT at its default action (an exec resets a handled signal)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def main(argv: list[str] | None = None) -> int:
    interrupts_by_default()
    args = list(sys.argv[1:] if argv is None else argv)
    if "--list" in args:
        print("\n".join(available()))
        return 0
    try:
        selected = resolve(args)
    except SystemExit as err:
        print(err, file=sys.stderr)
        return 2
    locking = sys.modules.get("allocrunner._locking")
    if locking is not None and locking.CHECK:
        print(
            "allocrunner was imported with the lock check on; run in a fresh process",
            file=sys.stderr,
        )
        return 2
    print(machine_note(), flush=True)
    failed = []
    for name in selected:
        print(f"\n######## {name}", flush=True)
        start = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            module.main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"######## {name} took {time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        print(f"\nbenchmarks that raised: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
