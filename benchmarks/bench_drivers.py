"""Driver benchmarks.

1. raw_exec start → command exec'd (from the ``start`` call to the moment the spawner's
   ``posix_spawn`` returned, which is after the exec; the spawner reports it on the
   monotonic clock) against a bare ``subprocess.Popen`` of the same command (Popen
   returns after the exec), measured interleaved in the same run. Goal: within 1.5x.
   Also shown: ``start`` until it returns (the driver's bookkeeping, the log files).
2. raw_exec stop → reaped (``stop`` with SIGINT until it returns: the spawner has
   reaped the task and recorded its status, the driver has published it) against
   ``Popen.send_signal(SIGINT)`` + ``Popen.wait()``. Goal: within 1.5x.
3. raw_exec whole life of a task that exits at once (start → wait) against
   ``Popen`` + ``wait`` (informative).
4. mock_driver start → exit overhead per task (start, wait, destroy of a task with
   run_for 0). Goal: under 1 ms; also shown against a bare baseline of the
   bookkeeping any driver needs (a lock, a dict entry and an Event per task).

Runs with the lock check off; task dirs go under a temporary directory.
"""

from __future__ import annotations

import os

os.environ["ALLOCRUNNER_LOCKCHECK"] = "0"

import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from allocrunner import _locking
from allocrunner._sync import CancelToken
from allocrunner.drivers import MockDriver, RawExecDriver, TaskConfig
from allocrunner.drivers.spawner_client import Reply, SpawnerClient

COMMAND = ["/bin/sleep", "30"]
BATCH = 20
BATCHES = 8
MOCK_TASKS = 20_000


def _config(root: Path, i: int, driver_config: dict) -> TaskConfig:
    task_dir = root / f"task{i}"
    logs_dir = task_dir / "logs"  # one alloc dir per task, as for one-task allocs
    task_dir.mkdir(exist_ok=True)
    logs_dir.mkdir(exist_ok=True)
    return TaskConfig(
        id=f"bench/{i}",
        alloc_id="bench",
        name=f"task{i}",
        driver_config=driver_config,
        env={"PATH": "/usr/bin:/bin"},
        task_dir=str(task_dir),
        logs_dir=str(logs_dir),
    )


_EXECD: list[int] = []
"""The spawner's exec times (monotonic ns) of the starts measured, in order."""


def _record_exec_times() -> None:
    """Have every spawner start reply's exec time appended to `_EXECD`."""
    original = SpawnerClient.start

    def start(self: SpawnerClient, **kwargs: object) -> Reply:
        reply = original(self, **kwargs)  # type: ignore[arg-type]
        _EXECD.append(int(reply.fields["execd_ns"]))
        return reply

    SpawnerClient.start = start  # type: ignore[method-assign]


def _round(driver: RawExecDriver, root: Path, base: int, out: dict[str, list[float]]) -> None:
    """One batch, raw_exec and bare Popen interleaved sample by sample so that both
    see the same machine load."""
    configs = [
        _config(root, base + i, {"command": COMMAND[0], "args": COMMAND[1:]}) for i in range(BATCH)
    ]
    procs = []
    for config in configs:
        t0 = time.monotonic_ns()
        driver.start(config)
        out["start_returned"].append((time.monotonic_ns() - t0) / 1e9)
        out["start"].append((_EXECD[-1] - t0) / 1e9)
        t0 = time.monotonic_ns()
        procs.append(subprocess.Popen(COMMAND, start_new_session=True))
        out["popen_start"].append((time.monotonic_ns() - t0) / 1e9)
    for config, proc in zip(configs, procs, strict=True):
        t0 = time.perf_counter()
        driver.stop(config.id, 5.0)
        out["kill"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait()
        out["popen_kill"].append(time.perf_counter() - t0)
        driver.destroy(config.id)


def _lifecycle(driver: RawExecDriver, root: Path, n: int = 60) -> tuple[float, float]:
    """Medians of start -> exit of /bin/true: raw_exec vs Popen + wait, interleaved."""
    ours, bare = [], []
    for i in range(n):
        config = _config(root, 10_000 + i, {"command": "/bin/true"})
        t0 = time.perf_counter()
        driver.start(config)
        driver.wait(config.id, CancelToken())
        ours.append(time.perf_counter() - t0)
        driver.destroy(config.id)
        t0 = time.perf_counter()
        subprocess.Popen(["/bin/true"]).wait()
        bare.append(time.perf_counter() - t0)
    return statistics.median(ours), statistics.median(bare)


def _mock_overhead() -> tuple[float, float]:
    driver = MockDriver()
    try:
        configs = [
            TaskConfig(id=f"m{i}", alloc_id="bench", name="m", driver_config={})
            for i in range(MOCK_TASKS)
        ]
        never = CancelToken()
        t0 = time.perf_counter()
        for config in configs:
            driver.start(config)
            driver.wait(config.id, never)
            driver.destroy(config.id)
        ours = (time.perf_counter() - t0) / MOCK_TASKS
    finally:
        driver.close()
    # Baseline: the least bookkeeping a driver needs per task.
    lock = threading.Lock()
    table: dict[str, threading.Event] = {}
    t0 = time.perf_counter()
    for config in configs:
        event = threading.Event()
        with lock:
            table[config.id] = event
        event.set()
        event.wait()
        with lock:
            del table[config.id]
    bare = (time.perf_counter() - t0) / MOCK_TASKS
    return ours, bare


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def main() -> None:
    assert not _locking.CHECK, "benchmarks run with the lock check off"
    _record_exec_times()
    with tempfile.TemporaryDirectory(prefix="bench-drivers-") as tmp:
        root = Path(tmp)
        driver = RawExecDriver(state_dir=str(root / "spawner"))
        try:
            # Warm up (imports, page cache, the driver's I/O thread), then measure.
            keys = ("start", "start_returned", "popen_start", "kill", "popen_kill")
            _round(driver, root, 0, {k: [] for k in keys})
            out: dict[str, list[float]] = {k: [] for k in keys}
            for b in range(BATCHES):
                _round(driver, root, (b + 1) * BATCH, out)
            life_ours, life_bare = _lifecycle(driver, root)
        finally:
            driver.close()
    mock_ours, mock_bare = _mock_overhead()

    n = BATCH * BATCHES
    print(f"drivers: raw_exec vs bare subprocess.Popen of {' '.join(COMMAND)}, {n} samples each")
    for label, ours, bare, goal in (
        ("start->exec'd ", out["start"], out["popen_start"], "  (goal <= 1.5x)"),
        ("start->returns", out["start_returned"], out["popen_start"], ""),
        ("stop->reaped  ", out["kill"], out["popen_kill"], "  (goal <= 1.5x)"),
    ):
        med, bmed = statistics.median(ours), statistics.median(bare)
        low, blow = min(ours), min(bare)
        print(
            f"  raw_exec {label}  median {_ms(med)} vs {_ms(bmed)} = {med / bmed:.2f}x{goal};"
            f"  best {_ms(low)} vs {_ms(blow)} = {low / blow:.2f}x"
        )
    print(
        f"  raw_exec start->exit   median {_ms(life_ours)} vs {_ms(life_bare)} = "
        f"{life_ours / life_bare:.2f}x  (/bin/true; includes the status record and the pump)"
    )
    print(f"drivers: mock_driver start->exit per task ({MOCK_TASKS} tasks, run_for 0)")
    print(
        f"  mock_driver overhead   {mock_ours * 1e6:.1f} µs vs bare bookkeeping "
        f"{mock_bare * 1e6:.1f} µs = {mock_ours / mock_bare:.1f}x;"
        f" {mock_ours / 1e-3:.3f}x of the 1 ms goal"
    )


if __name__ == "__main__":
    main()
