"""Scale benchmark: a node running many allocations, against floors and peers measured in
the same run.

Figures (each printed with its ratio and its goal, PASS or MISS):

- Per-allocation cost of start, stop and destroy at N=1000 against N=100: a `Client` with
  single-task mock_driver allocations. Start is `run_allocs` until every alloc's client
  status is running (the call itself may return earlier), stop is a desired-stop update
  until every alloc is complete, destroy is `collect_all` until every runner is
  destroyed. Goal: at most 1.3x each.
- How long `run_allocs` of 1,000 new allocations takes to return (goal: 0.5 s), beside
  the bare-thread floor below.
- Start-all at N=1000 against a bare-thread floor: one plain thread per allocation that
  makes a directory and sets an Event (goal: at most 8x). Beside it, for the record, a
  second floor whose threads each make the allocation's real directory layout (the alloc
  dir and a task dir, eight directories, as every start does), and start-all against
  that; and a third whose threads also store what a crash-safe start must before its
  task reads running (the allocation, the task's driver handle, committed, and its
  running state, in a `SQLiteStateDB`), and start-all against that; a fourth whose
  threads also start the task with the Client's driver; and a fifth whose threads
  instead store everything Nomad's client stores on such a start (thirteen writes: each
  emitted task event and the local state after each prestart hook are stored), and
  start-all against that; and a sixth whose threads do, in a straight line, all that the
  public contract has such a start do (the driver floor's writes with the task's
  Received, Task Setup and Started events, its state published under an RWLock,
  broadcast and handed to a coalescing updater thread, and its task started with the
  environment and interpolated config a runner gives the driver: `start_as_contract`),
  the best figure any runner that keeps the contract can reach with a thread each, and
  start-all against that; and a seventh, the sixth's starts made instead by `BUILDERS`
  long-lived threads, each starting an allocation's thread, only to wait, once its start
  is made: the Client's own shape (its builders launch, a thread per allocation waits),
  so the best figure a runner of that shape can reach, and start-all against that. For
  the stop's growth, a floor without any runner: N bare threads, each blocked
  on its own Event, woken at once, each running a Python loop that takes 1 ms when run
  alone; its time per thread at N=1000 against N=100. Notes before the table say where
  the fastest start-all's time went at N=100 and N=1000, beside the records, driver,
  contract and pooled contract floors' and the bare threads' (`CostMeter`): CPU per
  allocation in user and system mode, voluntary context switches per allocation, and
  the time the cyclic garbage collector ran; and every round's start-all, both contract
  floors and bare threads, and its start, stop and destroy per allocation at both sizes
  (`round_notes`).
- `put_task_state` of a changed value against encode + a raw sqlite insert, rounds
  interleaved; each batch of puts ends with the store's `flush()`, so a store that
  queues its writes pays for them (goal: at most 1.5x).
- raw_exec start until the command is exec'd against a bare `Popen`: the command
  (``tee FIFO``) opens a FIFO the benchmark polls, so both end at the same event.
- raw_exec stop until reaped (stop + wait) against `Popen` SIGINT + wait (goal: at most
  1.5x each) and against the floor of any design that keeps exit codes across agent
  restarts (`RELAY`: a process other than the agent reaps the task, records its status
  and tells the agent), sample by sample, the three started and settled (asleep)
  before any is timed, in rotating order, after `STOP_WARMUP` untimed stops of each.
  Both raw_exec figures take 200 samples: a median of 40, taken without the warm-up,
  spread about twice as wide from run to run.
- Stopping 100 raw_exec tasks on one driver with one `RawExecDriver.stop_many` call
  against a real supervisord's ``stopAllProcesses`` over XML-RPC on a unix socket,
  timed until supervisord has reaped every program (`SupervisordPeer.stop_all` says
  why not until its answer) (goal: at most 1.0x; reported unavailable, with the
  reason, when supervisord cannot run). Beside it, the floor of a stop from one
  thread (SIGINT to 100 bare ``sleep`` children in turn, then a wait for each); and
  the same 100 tasks stopped as 100 task runners would, a thread each calling `stop`
  and `wait`, with the floor of that way: 100 bare threads woken at once, each
  signalling its own ``sleep`` child and waiting for it.
- RSS per running mock allocation at N=1000 (VmRSS delta / N) beside the floor's
  (goal: 60 KB), and idle CPU with N allocations running: process CPU time
  (`time.process_time`) over wall time across a window (30 s by default; goal: 0.1 %),
  once the state DB has flushed and its write counters stay put for 1 s (runners keep
  writing for a while after they read running); an idle floor is zero, so that ratio
  is to the goal.

Every figure is the best of its interleaved rounds (medians for the per-process
samples). Where the temp dir is on ext4 without a journal the run says so first
(`deleted_inode_note`): there a mkdir costs more the more inodes the host freed in the
last minutes, which moves the start figures and the directory floors from run to run.
The raw_exec sections run before the Client cycles for that reason: the cycles free
tens of thousands of inodes, which a raw_exec start's log files, created while its
Popen peer creates none, would otherwise pay for. For the same reason the Client
section's floors keep their directories until the section ends, so that a floor's
deletions do not land on the phases after it (`client_figures`). The table keeps its
order.

One module of this size because it has one concern, the scale figures of one run: the
Client cycle, the floors and the supervisord peer are read together.

``BENCH_QUICK=1`` shrinks everything for a smoke test; ``BENCH_SCALE_IDLE_S`` sets the
idle window. Threads: the benchmark's own (floor threads, stop workers), plus whatever
the Clients and drivers it builds own; every Client, driver, process (supervisord
included) and temp dir is closed in ``finally`` blocks. Locks: the contract floor's
(`ContractCell`, `ViewUpdates`), which stand for a runner's and the Client's; it runs
with the lock check off. Owner: ``python -m benchmarks scale``.
"""

from __future__ import annotations

import os

os.environ["ALLOCRUNNER_LOCKCHECK"] = "0"  # before anything imports allocrunner

import contextlib
import dataclasses
import functools
import gc
import http.client
import inspect
import json
import resource
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xmlrpc.client
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs

from allocrunner import _locking
from allocrunner._sync import CancelToken
from allocrunner.agent.host_facts import mount_of
from allocrunner.allocdir import AllocDir, TaskPaths
from allocrunner.broadcaster import AllocBroadcaster
from allocrunner.client import BUILDERS, Client
from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver, RawExecDriver, TaskConfig, TaskHandle
from allocrunner.errors import DriverError
from allocrunner.jobspec import encode_task_state
from allocrunner.runner.client_state import client_view, compute_state
from allocrunner.state import HookState, LocalState, SQLiteStateDB
from allocrunner.structs import Allocation, AllocState, TaskEvent, TaskState, new_allocation
from allocrunner.structs.task_state import (
    EVENT_RECEIVED,
    EVENT_SETUP,
    EVENT_STARTED,
    MSG_BUILDING_TASK_DIR,
)
from allocrunner.taskrunner.env import nomad_env, task_env
from allocrunner.taskrunner.hook_phases import driver_task_config
from allocrunner.taskrunner.lifecycle import MSG_STARTED
from allocrunner.taskrunner.runner import MSG_RECEIVED
from allocrunner.testing import mock_job, mock_task
from benchmarks import format_value, interleaved_ns_per_op
from benchmarks.call_count import CallCounter

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")


@dataclass(frozen=True)
class Params:
    """Immutable. Sizes of one run (full or quick)."""

    n_big: int
    n_small: int
    rounds: int
    idle_s: float
    exec_samples: int
    stop_all_tasks: int
    stop_all_rounds: int
    statedb_ops: int


def params() -> Params:
    idle = float(os.environ.get("BENCH_SCALE_IDLE_S", "1" if QUICK else "30"))
    if QUICK:
        return Params(40, 10, 1, idle, 5, 10, 1, 300)
    return Params(1000, 100, 2, idle, 200, 100, 3, 3000)


# --- figures --------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """Immutable. One printed line: measured vs baseline, ratio, goal, verdict."""

    name: str
    measured: float | None
    baseline: float | None
    baseline_name: str
    unit: str
    goal: str
    ok: bool | None
    unavailable: str = ""

    def ratio(self) -> float | None:
        if self.measured is None or not self.baseline:
            return None
        return self.measured / self.baseline


def ratio_figure(
    name: str, measured: float, baseline: float, baseline_name: str, unit: str, limit: float
) -> Figure:
    """A figure whose goal is its ratio to the baseline: at most `limit`x."""
    ok = baseline > 0 and measured / baseline <= limit
    return Figure(name, measured, baseline, baseline_name, unit, f"<= {limit:g}x", ok)


def unavailable(name: str, goal: str, reason: str) -> Figure:
    return Figure(name, None, None, "", "", goal, None, reason)


def print_figures(figures: list[Figure]) -> None:
    """One line per figure: name, measured, vs baseline (what), ratio, goal, PASS/MISS."""
    name_w = max(len(f.name) for f in figures)
    bases = [f"{format_value(f.baseline, f.unit)} ({f.baseline_name})" for f in figures]
    base_w = max(len(text) for text in bases)
    print("\n== scale: every figure against a floor or peer measured in this run")
    for f, base in zip(figures, bases, strict=True):
        if f.unavailable:
            print(f"  {f.name:<{name_w}}  unavailable: {f.unavailable}  goal {f.goal}")
            continue
        ratio = f.ratio()
        ratio_text = "-" if ratio is None else f"{ratio:.2f}x"
        print(
            f"  {f.name:<{name_w}}  {format_value(f.measured, f.unit):>10}  vs {base:<{base_w}}"
            f"  ratio {ratio_text:>7}  goal {f.goal:<8}  {_verdict(f.ok)}"
        )


def _verdict(ok: bool | None) -> str:
    """PASS / MISS, or "info" for a figure with no goal of its own (a floor)."""
    return "info" if ok is None else "PASS" if ok else "MISS"


# --- process figures ------------------------------------------------------------------


def vm_rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass(frozen=True)
class Cost:
    """Immutable. What a stretch of the run cost the whole process: CPU time in user
    and system mode, voluntary context switches (a thread that blocks: on the GIL
    after a system call released it, on a lock, on I/O) and the time the cyclic
    garbage collector ran, with its full (generation 2) collections."""

    user_s: float
    system_s: float
    vcsw: int
    gc_s: float
    full_gcs: int

    def per(self, n: int) -> str:
        """The cost per allocation, as one note line's worth of text."""
        return (
            f"CPU {(self.user_s + self.system_s) / n * 1e3:.2f} ms/alloc (user "
            f"{self.user_s / n * 1e3:.2f}, system {self.system_s / n * 1e3:.2f}), "
            f"{self.vcsw / n:.0f} voluntary context switches/alloc, cyclic GC "
            f"{self.gc_s / n * 1e3:.2f} ms/alloc ({self.full_gcs} full collections)"
        )


class CostMeter:
    """Not thread-safe; one per measured stretch, used as a context manager. Reads
    getrusage before and after, and times the collector through `gc.callbacks` (run
    by whichever thread triggers a collection, with the GIL held, so no lock)."""

    def __init__(self) -> None:
        self._before = resource.getrusage(resource.RUSAGE_SELF)  # taken again on entry
        self._gc_s = 0.0
        self._full = 0
        self._gc_began = 0.0
        self.cost: Cost | None = None

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_began = time.perf_counter()
            return
        self._gc_s += time.perf_counter() - self._gc_began
        if info["generation"] == 2:
            self._full += 1

    def __enter__(self) -> CostMeter:
        self._before = resource.getrusage(resource.RUSAGE_SELF)
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)
        after = resource.getrusage(resource.RUSAGE_SELF)
        self.cost = Cost(
            after.ru_utime - self._before.ru_utime,
            after.ru_stime - self._before.ru_stime,
            after.ru_nvcsw - self._before.ru_nvcsw,
            self._gc_s,
            self._full,
        )


def cpu_seconds() -> float:
    """Process CPU time (user + system, every thread) at nanosecond resolution; os.times()
    counts 10 ms ticks, too coarse for a 0.1 % goal."""
    return time.process_time()


@dataclass(frozen=True)
class FloorRun:
    """Immutable. The bare-thread floor: start-all time and RSS per thread, and the
    function calls its start made when counted (`CallCounter`), else None."""

    start_all_s: float
    rss_kb_per_alloc: float
    cost: Cost
    calls: int | None = None


def bare_thread_floor(
    n: int,
    root: Path,
    *,
    layout: bool = False,
    records: bool = False,
    driver: bool = False,
    as_nomad: bool = False,
    contract: bool = False,
    pool: int = 0,
    counter: CallCounter | None = None,
) -> FloorRun:
    """One plain thread per allocation that makes a directory and sets an Event; with
    `layout`, the directory is the allocation's whole alloc dir and task dir (Nomad's
    layout, `AllocDir.build` and `TaskDir.build`: eight directories), which every start
    must make; with `records` too, each thread then stores what a crash-safe start must
    have stored before its task reads running (`persist_start`); with `driver` too, the
    task is started by the Client cycle's driver (a `MockDriver`) and the handle stored
    is the one it returned. That floor is the least a start does for its task to run and
    survive an agent restart: no hook, event, state pass or health watch. With
    `as_nomad` too, each thread stores everything Nomad's client stores on a start
    instead (`persist_start_as_nomad`), still with no hook, state pass or health watch.
    With `contract` instead, each thread does in a straight line all that the public
    contract has a start do (`start_as_contract`): the driver floor's writes, with the
    task's events, its state published as a runner publishes it, and the task started
    with the config a runner builds (`contract_task_config`). With `pool`, the same
    work is done by that many long-lived threads instead, each taking every `pool`-th
    allocation, and each allocation's thread is started by its builder once its start is
    made, only to wait: the Client's own shape (its builders launch, a thread per
    allocation waits), so with `contract` it is the best any runner of that shape that
    keeps the contract can reach. The directories stay for the caller to delete once
    every phase it compares has run (see `client_figures`). With `counter`, the calls of
    the timed stretch are counted: this thread's and its threads' until every one has
    started."""
    release = threading.Event()
    started = [threading.Event() for _ in range(n)]
    db: SQLiteStateDB | None = None
    mock: MockDriver | None = MockDriver() if driver else None
    allocs: list[Allocation] = []
    cells: list[ContractCell] = []
    updates: ViewUpdates | None = None
    if records:  # made before the clock starts, as the Client cycle's are
        db = SQLiteStateDB(root.parent / f"{root.name}.db")
        job = mock_job(mock_task("t", config={"run_for": "24h"}))
        allocs = [new_allocation(job, "web", index=i) for i in range(n)]

    def work(i: int) -> None:
        if layout:
            alloc_dir = AllocDir(str(root), f"alloc{i}")
            alloc_dir.build()
            task_dir = alloc_dir.new_task_dir("t")
            task_dir.build()
            if db is not None and updates is not None:
                assert mock is not None
                start_as_contract(db, allocs[i], task_dir.paths(), mock, cells[i], updates)
            elif db is not None:
                persist = persist_start_as_nomad if as_nomad else persist_start
                persist(db, allocs[i], str(task_dir.dir), mock)
        else:
            (root / f"alloc{i}").mkdir()

    def alloc(i: int) -> None:
        try:
            work(i)
        finally:
            started[i].set()
        release.wait()

    def wait_released(i: int) -> None:
        started[i].set()
        release.wait()

    failures: list[BaseException] = []

    def build(first: int) -> None:
        """One of the `pool` builders: the start of every `pool`-th allocation, each
        followed by the start of that allocation's waiting thread (started even after a
        failure, which is kept for the caller to raise, so that the wait below ends)."""
        for i in range(first, n, pool):
            try:
                work(i)
            except BaseException as err:
                failures.append(err)
            try:
                threads[i].start()
            except BaseException as err:
                failures.append(err)
                started[i].set()

    root.mkdir(parents=True)
    gc.collect()
    rss_before = vm_rss_kb()
    target = wait_released if pool else alloc
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    builders = [threading.Thread(target=build, args=(k,), daemon=True) for k in range(pool)]
    meter = CostMeter()
    counting = contextlib.nullcontext() if counter is None else counter.installed()
    calls = None
    if contract:  # made before the clock starts, as a Client's runners are built first;
        # the updater's thread last, so that nothing before the `finally` can leave it
        cells = [ContractCell() for _ in range(n)]
        updates = ViewUpdates()
    t0 = time.perf_counter()
    try:
        with meter, counting:
            for thread in builders or threads:
                thread.start()
            for event in started:
                event.wait()
            if counter is not None:
                calls = counter.total()
        elapsed = time.perf_counter() - t0
        rss = (vm_rss_kb() - rss_before) / n
        if failures:
            raise failures[0]
    finally:
        release.set()
        for thread in builders + threads:
            if thread.ident is not None:
                thread.join()
        if updates is not None:
            updates.close()
        for cell in cells:
            cell.close()
        if db is not None:
            db.close()
        if mock is not None:
            mock.close()
    assert meter.cost is not None
    return FloorRun(elapsed, rss, meter.cost, calls)


def spin(loops: int) -> int:
    """Pure Python work: `loops` turns of arithmetic."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def spin_loops_per_ms() -> int:
    """How many `spin` turns take about 1 ms of this interpreter's time, alone."""
    loops = 10_000
    best = min(_timed(lambda: spin(loops)) for _ in range(5))
    return max(1, int(loops * 0.001 / best))


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def wake_floor(n: int, loops: int) -> float:
    """Seconds per thread to wake n bare threads at once (each blocked on its own
    Event, as stopped task threads are), each running `loops` of `spin` and exiting:
    the CPython cost of waking many threads with work to do, without any runner."""
    events = [threading.Event() for _ in range(n)]
    done = threading.Semaphore(0)

    def woken(i: int) -> None:
        events[i].wait()
        spin(loops)
        done.release()

    threads = [threading.Thread(target=woken, args=(i,), daemon=True) for i in range(n)]
    try:
        for thread in threads:
            thread.start()
        t0 = time.perf_counter()
        for event in events:
            event.set()
        for _ in range(n):
            done.acquire()
        return (time.perf_counter() - t0) / n
    finally:
        for event in events:
            event.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join()


def _started_handle(alloc: Allocation, task_dir: str, driver: MockDriver | None) -> TaskHandle:
    """The handle of the allocation's task "t": started by `driver`, or a made-up one
    when there is none."""
    config = TaskConfig(
        id=f"{alloc.id}/t",
        alloc_id=alloc.id,
        name="t",
        driver_config={"run_for": "24h"},
        task_dir=task_dir,
    )
    if driver is None:
        return TaskHandle(driver="mock_driver", config=config)
    return driver.start(config)


def persist_start(
    db: SQLiteStateDB, alloc: Allocation, task_dir: str, driver: MockDriver | None = None
) -> None:
    """What a start must have stored before its task may read running, so that an
    agent restart neither loses nor duplicates it: the allocation, the task's driver
    handle (the put returns once committed) and its running state. With `driver`, the
    task is started there first and the handle is the one the driver returned."""
    db.put_allocation(alloc)
    handle = _started_handle(alloc, task_dir, driver)
    db.put_task_local_state(alloc.id, "t", LocalState(task_handle=handle))
    db.put_task_state(alloc.id, "t", TaskState(state="running"))


NOMAD_PRESTART_HOOKS: tuple[tuple[str, HookState], ...] = (
    ("validate", HookState(prestart_done=True)),
    ("task_dir", HookState(data={"is_done": "true"})),
    ("identity", HookState()),
    (
        "logmon",
        HookState(
            data={
                "reattach_config": (
                    '{"Protocol":"grpc","Network":"unix",'
                    '"Addr":"/tmp/plugin3270113640","Pid":41207}'
                )
            }
        ),
    ),
    ("dispatch_payload", HookState(prestart_done=True)),
    ("volumes", HookState()),
    ("artifacts", HookState(prestart_done=True)),
    ("devices", HookState(prestart_done=True)),
    ("script_checks", HookState()),
)
"""The prestart hooks of a Nomad 1.6 raw_exec task with no vault, template, artifact,
payload, device or Connect block, in Nomad's order, each with the state it records on a
first start. Nomad's task runner stores its local state after every prestart hook whose
new state differs from the one recorded before it, and on a first start nothing is
recorded before any hook, so every one of them is followed by a write, an empty state
included."""


def pending_at_setup() -> TaskState:
    """A fresh task's state at its Task Setup event: pending, with its Received and Task
    Setup events."""
    received = TaskEvent(EVENT_RECEIVED, message=MSG_RECEIVED, display_message=MSG_RECEIVED)
    setup = TaskEvent(
        EVENT_SETUP, message=MSG_BUILDING_TASK_DIR, display_message=MSG_BUILDING_TASK_DIR
    )
    return TaskState(state="pending").with_event(received).with_event(setup)


def running_after(pending: TaskState) -> TaskState:
    """The task's state at its Started event, after `pending`: running."""
    started = TaskEvent(EVENT_STARTED, message=MSG_STARTED, display_message=MSG_STARTED)
    return pending.with_event(started).with_state("running")


def persist_start_as_nomad(
    db: SQLiteStateDB, alloc: Allocation, task_dir: str, driver: MockDriver | None
) -> None:
    """Every write Nomad's client (1.6) makes to its state DB while it starts a
    single-task allocation with no artifact, payload or device, in its order: the
    allocation; the task's state at its Task Setup event (an emitted event is stored);
    its local state after each hook of `NOMAD_PRESTART_HOOKS`; after the driver's start
    its local state with the handle (returns once committed); its state at Started, now
    running. Thirteen writes where `persist_start` makes three."""
    db.put_allocation(alloc)
    pending = pending_at_setup()
    db.put_task_state(alloc.id, "t", pending)
    local = LocalState()
    for hook, state in NOMAD_PRESTART_HOOKS:
        local = local.with_hook(hook, state)
        db.put_task_local_state(alloc.id, "t", local)
    handle = _started_handle(alloc, task_dir, driver)
    db.put_task_local_state(alloc.id, "t", local.with_task_handle(handle))
    db.put_task_state(alloc.id, "t", running_after(pending))


class ContractCell:
    """Thread-safe. What a runner keeps of one allocation's state for its readers, as the
    public contract has it (DESIGN.md §5.2): an `AllocState` replaced whole under the
    write side of an `RWLock` made as the runner's state lock is, and read under its read
    side (`state`, as `alloc_state()` reads), and a broadcaster sent each new client view
    (`AllocRunner.listen`)."""

    def __init__(self) -> None:
        self._lock = _locking.make_rwlock("AllocRunner._state_lock")
        self._state = AllocState()
        self._broadcaster = AllocBroadcaster()

    def publish(self, alloc: Allocation, task_state: TaskState, updates: ViewUpdates) -> None:
        """Publish the state of the allocation's one task "t": the allocation's state
        computed as a runner's state pass computes it (`compute_state`), stored,
        broadcast and handed to `updates`."""
        state = compute_state(alloc, {"t": task_state}, "", None)
        with self._lock.write():
            self._state = state
        view = client_view(alloc, state)
        self._broadcaster.send(view)
        updates.record(view)

    def state(self) -> AllocState:
        with self._lock.read():
            return self._state

    def last_view(self) -> Allocation | None:
        """The newest client view broadcast, or None before the first."""
        with self._broadcaster.listen() as listener:
            try:
                return listener.get(timeout=0)
            except TimeoutError:
                return None

    def close(self) -> None:
        self._broadcaster.close()


class ViewUpdates:
    """Thread-safe. The Client's coalescing of runners' client views for its state
    updater, as its ``client-updates`` thread does it: the newest view per allocation
    kept under one lock, a wake-up, and one thread that takes them all at each wake-up
    (what it took is kept for the tests: `delivered`, read after `close`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Allocation] = {}
        self._closed = False
        self._wake = threading.Event()
        self._delivered: dict[str, Allocation] = {}  # written by the updates thread only
        self._thread = threading.Thread(target=self._send, name="floor-updates", daemon=True)
        self._thread.start()

    def record(self, view: Allocation) -> None:
        with self._lock:
            self._pending[view.id] = view
        self._wake.set()

    def _send(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch = list(self._pending.values())
                self._pending.clear()
                closed = self._closed
            for view in batch:
                self._delivered[view.id] = view
            if closed:
                return

    def close(self) -> None:
        """Deliver what is pending and end the thread."""
        with self._lock:
            self._closed = True
        self._wake.set()
        self._thread.join()

    def delivered(self) -> dict[str, Allocation]:
        """The newest view delivered per allocation id (after `close`)."""
        return dict(self._delivered)


def contract_task_config(alloc: Allocation, paths: TaskPaths) -> TaskConfig:
    """What the driver is given for the allocation's task "t", built as a runner builds
    it (DESIGN.md §5.5): the task's environment (Nomad's NOMAD_* variables, then its own
    ``env`` interpolated against them), its config interpolated against that
    environment, and its directories, log settings and resources
    (`driver_task_config`, as the runner's `TaskHookPhases.task_config` gives them)."""
    group = alloc.group()
    assert group is not None
    task = group.tasks[0]
    env = nomad_env(
        alloc,
        task,
        alloc_dir=paths.alloc_dir,
        local_dir=paths.local_dir,
        secrets_dir=paths.secrets_dir,
    )
    env.update(task_env(task, env))
    return driver_task_config(f"{alloc.id}/{task.name}", alloc, task, paths, env, env)


def start_as_contract(
    db: SQLiteStateDB,
    alloc: Allocation,
    paths: TaskPaths,
    driver: MockDriver,
    cell: ContractCell,
    updates: ViewUpdates,
) -> None:
    """All that the public contract has a start of a fresh single-task allocation do once
    its directories are made, in a straight line, with no hook, lifecycle gate, state
    pass or health watch: the driver floor's three writes (`persist_start`), its task's
    Received, Task Setup and Started events (stored with its running state), its state
    published (`ContractCell.publish`) as pending and then as running, and its task
    started with the config a runner gives the driver (`contract_task_config`), which
    the driver validates first. The least any runner that keeps the contract does, and
    so the best figure a start-all can reach here."""
    db.put_allocation(alloc)
    pending = pending_at_setup()
    cell.publish(alloc, pending, updates)
    config = contract_task_config(alloc, paths)
    driver.validate_config(config)
    handle = driver.start(config)
    db.put_task_local_state(alloc.id, "t", LocalState(task_handle=handle))
    running = running_after(pending)
    db.put_task_state(alloc.id, "t", running)
    cell.publish(alloc, running, updates)


# --- the Client cycle -------------------------------------------------------------------


@dataclass(frozen=True)
class CycleRun:
    """Immutable. One Client cycle of n allocations."""

    n: int
    run_allocs_s: float
    start_s: float
    stop_s: float
    destroy_s: float
    rss_kb_per_alloc: float
    idle_cpu_percent: float | None
    start_cost: Cost


def scale_config(data_dir: Path) -> ClientConfig:
    """Product defaults, except that the collector never acts on its own: destroy is
    measured through `collect_all` only."""
    return ClientConfig.for_data_dir(
        data_dir,
        gc_interval=3600.0,
        gc_max_allocs=1_000_000,
        gc_disk_usage_threshold=100.0,
        gc_inode_usage_threshold=100.0,
    )


RUNNING = frozenset({"running"})
TERMINAL = frozenset({"complete", "failed", "lost"})


def wait_all(client: Client, ids: list[str], statuses: frozenset[str], what: str) -> None:
    """Poll each alloc's `alloc_state()` until its client status is one of `statuses`,
    checking only the ones not there yet (run_allocs may return before they run)."""
    deadline = time.monotonic() + (120.0 if QUICK else 600.0)
    remaining = list(ids)
    while remaining:
        ar = client.runner(remaining[-1])
        if ar is not None and ar.alloc_state().client_status in statuses:
            remaining.pop()
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(remaining)} of {len(ids)} allocations never {what}")
        time.sleep(0.002)


def _stopped(alloc: Allocation) -> Allocation:
    return attrs.evolve(
        alloc, desired_status="stop", alloc_modify_index=alloc.alloc_modify_index + 1
    )


def client_cycle(n: int, root: Path, idle_s: float) -> CycleRun:
    """Start, stop and destroy n single-task mock allocations on a fresh Client."""
    job = mock_job(mock_task("t", config={"run_for": "24h"}))
    allocs = [new_allocation(job, "web", index=i) for i in range(n)]
    ids = [a.id for a in allocs]
    driver = MockDriver()
    client = Client(scale_config(root), drivers={"mock_driver": driver})
    try:
        client.start()
        gc.collect()
        rss_before = vm_rss_kb()
        meter = CostMeter()
        t0 = time.perf_counter()
        with meter:
            client.run_allocs(allocs)
            returned = time.perf_counter() - t0
            wait_all(client, ids, RUNNING, "ran")
        start_s = time.perf_counter() - t0
        rss = (vm_rss_kb() - rss_before) / n
        idle = None
        if idle_s > 0:
            t_settle = time.perf_counter()
            wait_all_health_known(client, ids)
            settle_state_writes(client)
            print(
                f"  note: N={n}: deployment health was known and state DB writes had "
                f"settled {time.perf_counter() - t_settle:.1f} s after every alloc read "
                "running (a service's health needs min_healthy_time, 10 s); the idle "
                "window starts then",
                flush=True,
            )
            idle = idle_cpu_percent(idle_s)

        t0 = time.perf_counter()
        client.run_allocs([_stopped(a) for a in allocs])
        wait_all(client, ids, TERMINAL, "completed")
        stop_s = time.perf_counter() - t0

        wait_for_marks(client, ids)
        t0 = time.perf_counter()
        client.collect_all()
        wait_all_destroyed(client, ids)
        destroy_s = time.perf_counter() - t0
        client.run_allocs([])
    finally:
        client.shutdown()
        driver.close()
        shutil.rmtree(root, ignore_errors=True)
    assert meter.cost is not None
    return CycleRun(n, returned, start_s, stop_s, destroy_s, rss, idle, meter.cost)


def start_all_calls(n: int, root: Path) -> float:
    """Function calls per allocation of a start-all of n single-task mock allocations on
    a fresh Client (`CallCounter`): run_allocs on this thread, and whatever the Client's
    threads do until every allocation reads running; not this thread's polling for
    that."""
    job = mock_job(mock_task("t", config={"run_for": "24h"}))
    allocs = [new_allocation(job, "web", index=i) for i in range(n)]
    ids = [a.id for a in allocs]
    driver = MockDriver()
    counter = CallCounter()
    try:
        with counter.installed():
            client = Client(scale_config(root), drivers={"mock_driver": driver})
            try:
                client.start()
                before = counter.total()
                client.run_allocs(allocs)
                counter.stop_here()
                wait_all(client, ids, RUNNING, "ran")
                calls = counter.total() - before
            finally:
                client.shutdown()
    finally:
        driver.close()
        shutil.rmtree(root, ignore_errors=True)
    return calls / n


def wait_all_health_known(client: Client, ids: list[str]) -> None:
    """Until every alloc's deployment health is set: before then its health watch is
    still working, which is not idle."""
    deadline = time.monotonic() + 120.0
    remaining = list(ids)
    while remaining:
        ar = client.runner(remaining[-1])
        status = None if ar is None else ar.alloc_state().deployment_status
        if status is not None and status.healthy is not None:
            remaining.pop()
        elif time.monotonic() > deadline:
            raise TimeoutError(f"{len(remaining)} allocations never reported their health")
        else:
            time.sleep(0.05)


def settle_state_writes(client: Client, quiet_s: float = 1.0, limit_s: float = 60.0) -> None:
    """Idle means nothing left to do: wait until the state DB has flushed and its write
    counters (when it keeps any) stay put for `quiet_s`, at most `limit_s`. Runners keep
    writing for a while after their client status reads running."""
    db = client.state_db
    flush: Callable[[], None] = getattr(db, "flush", lambda: None)
    stats: Callable[[], object] = getattr(db, "stats", lambda: None)
    deadline = time.monotonic() + limit_s
    flush()
    before = repr(stats())
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        flush()
        now = repr(stats())
        if now == before:
            return
        before = now


def idle_cpu_percent(window_s: float) -> float:
    """Process CPU time over wall time across `window_s`."""
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    time.sleep(window_s)
    return 100.0 * (cpu_seconds() - cpu0) / (time.perf_counter() - wall0)


def wait_for_marks(client: Client, ids: list[str]) -> None:
    """Untimed: the terminal views reach the collector through the update thread."""
    deadline = time.monotonic() + 60.0
    remaining = list(ids)
    while remaining:
        if client.gc.is_marked(remaining[-1]):
            remaining.pop()
        elif time.monotonic() > deadline:
            raise TimeoutError(f"{len(remaining)} terminal allocations never marked")
        else:
            time.sleep(0.002)


def wait_all_destroyed(client: Client, ids: list[str]) -> None:
    for alloc_id in ids:
        ar = client.runner(alloc_id)
        if ar is not None and not ar.wait_destroyed(600.0):
            raise TimeoutError(f"allocation {alloc_id} never destroyed")


# --- raw_exec vs Popen ------------------------------------------------------------------


def task_config(root: Path, name: str, command: list[str]) -> TaskConfig:
    task_dir = root / name
    logs_dir = root / "logs"
    task_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(exist_ok=True)
    return TaskConfig(
        id=f"scale/{name}",
        alloc_id="scale",
        name=name,
        driver_config={"command": command[0], "args": command[1:]},
        env={"PATH": "/usr/bin:/bin"},
        task_dir=str(task_dir),
        logs_dir=str(logs_dir),
    )


@contextlib.contextmanager
def fifo_reader(path: Path) -> Iterator[int]:
    """A FIFO's read end, open before its writer: POLLHUP once a writer came and went."""
    os.mkfifo(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        yield fd
    finally:
        os.close(fd)
        path.unlink()


def wait_writer_gone(fd: int, timeout: float = 10.0) -> None:
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    if not poller.poll(timeout * 1000):
        raise TimeoutError("the command never opened its FIFO")


class Leftovers:
    """Not thread-safe; owned by one figure. The tasks and processes it started: on
    `close()` each still running is killed and reaped, each task destroyed."""

    def __init__(self, driver: RawExecDriver) -> None:
        self._driver = driver
        self._tasks: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, config: TaskConfig) -> int:
        """Start the task; its pid."""
        self._tasks.append(config.id)
        handle = self._driver.start(config)
        return int(handle.driver_state["pid"])

    def popen(self, command: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for task_id in self._tasks:
            with contextlib.suppress(DriverError):  # destroyed already
                self._driver.destroy(task_id, force=True)


def exec_samples(run: Leftovers, root: Path, n: int) -> tuple[list[float], list[float]]:
    """Start → command exec'd: raw_exec and bare Popen interleaved sample by sample."""
    ours: list[float] = []
    bare: list[float] = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fifo = root / f"exec{i}.fifo"
        command = ["/usr/bin/tee", str(fifo)]
        with fifo_reader(fifo) as fd:
            config = task_config(root, f"exec{i}", command)
            t0 = time.perf_counter()
            run.start(config)
            wait_writer_gone(fd)
            ours.append(time.perf_counter() - t0)
        with fifo_reader(fifo) as fd:
            t0 = time.perf_counter()
            proc = run.popen(command)
            wait_writer_gone(fd)
            bare.append(time.perf_counter() - t0)
        proc.wait()
    return ours, bare


def stop_samples(
    driver: RawExecDriver, run: Leftovers, relay: Relay, root: Path, n: int
) -> tuple[list[float], list[float], list[float]]:
    """Stop → reaped: raw_exec stop + wait, `Popen` SIGINT + wait, and the relay floor's
    kill → exit relayed (`Relay`), interleaved sample by sample. The three processes
    are started and settled (asleep in their ``sleep``) before any is timed, and which
    goes first rotates, so none is timed while another is still starting up on the
    other CPU."""
    ours: list[float] = []
    bare: list[float] = []
    relayed: list[float] = []

    def stop_ours(task_id: str) -> None:
        t0 = time.perf_counter()
        driver.stop(task_id, 5.0)
        driver.wait(task_id, CancelToken())
        ours.append(time.perf_counter() - t0)

    def stop_bare(proc: subprocess.Popen[bytes]) -> None:
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait()
        bare.append(time.perf_counter() - t0)

    def stop_relayed(pid: int) -> None:
        relayed.append(relay.stop(pid))

    for i in range(n):
        config = task_config(root, f"stop{i}", ["/bin/sleep", "3600"])
        pid = run.start(config)
        proc = run.popen(["/bin/sleep", "3600"])
        relayed_pid = relay.spawn()
        for settling in (pid, proc.pid, relayed_pid):
            wait_settled(settling)
        stops: list[Callable[[], None]] = [
            functools.partial(stop_ours, config.id),
            functools.partial(stop_bare, proc),
            functools.partial(stop_relayed, relayed_pid),
        ]
        for k in range(3):
            stops[(i + k) % 3]()
    return ours, bare, relayed


def wait_settled(pid: int, timeout: float = 5.0) -> None:
    """Until `pid` sleeps (state S in /proc/<pid>/stat, as ``sleep`` does once it has
    started up), so that timing it is not timing its start-up too."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return  # gone: nothing to settle
        if state == b"S":
            return
        time.sleep(0.0002)
    raise TimeoutError(f"process {pid} never settled")


def new_raw_exec(root: Path) -> RawExecDriver:
    """A raw_exec driver whose helper state (if the driver keeps any) lives under `root`."""
    if "state_dir" in inspect.signature(RawExecDriver).parameters:
        root.mkdir(parents=True, exist_ok=True)
        return RawExecDriver(state_dir=str(root))  # type: ignore[call-arg]
    return RawExecDriver()


STOP_WARMUP = 10
"""Stops of each kind made, untimed, before the timed ones, as the starts have theirs:
the first stops in a process can run half as long again, ours the most (its stop path
runs for the first time there), and they would tilt a median of the timed samples."""

EXEC_FIGURE = "raw_exec start -> exec'd (median)"
REAP_FIGURE = "raw_exec stop -> reaped (median)"
RELAY_FIGURE = "floor: kill -> exit recorded and relayed (median)"

# The least any design that keeps exit codes across agent restarts can do on the stop
# path: a parent other than the agent (a relay, as the spawner is) wakes on the task's
# pidfd, reaps it, writes its status line and tells the agent over a pipe. It runs in
# CPython started with -I -S, as the spawner does; argv: status file, then the fds of
# the "spawn one" pipe and of the notice pipe.
RELAY = r"""
import os, select, sys
status = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
requests, notices = int(sys.argv[2]), int(sys.argv[3])
poller = select.epoll()
while os.read(requests, 64):
    pid = os.posix_spawn("/bin/sleep", ["sleep", "3600"], os.environ, setsid=True)
    os.write(notices, b"%d\n" % pid)
    pidfd = os.pidfd_open(pid)
    poller.register(pidfd, select.EPOLLIN)
    poller.poll()
    poller.unregister(pidfd)
    os.close(pidfd)
    _, wait_status = os.waitpid(pid, 0)
    os.pwrite(status, b"%d %d\n" % (wait_status, pid), 0)
    os.write(notices, b"%d\n" % wait_status)
"""


class Relay:
    """Not thread-safe; owned by the raw_exec figures. The relay floor's process
    (module RELAY), which starts one ``sleep`` at a time; `close()` ends it."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        req_r, self._requests = os.pipe()
        self._notices, note_w = os.pipe()
        argv = [sys.executable, "-I", "-S", "-c", RELAY, str(root / "status")]
        self._proc = subprocess.Popen([*argv, str(req_r), str(note_w)], pass_fds=(req_r, note_w))
        os.close(req_r)
        os.close(note_w)
        self._live: int | None = None  # the relay's sleep, until stopped

    def spawn(self) -> int:
        """Have the relay start a ``sleep``; its pid."""
        os.write(self._requests, b"go")
        self._live = int(os.read(self._notices, 64))
        return self._live

    def stop(self, pid: int) -> float:
        """Seconds from the kill of the relay's `pid` until the relay has reaped it,
        recorded its status and told us."""
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGINT)
        os.read(self._notices, 64)
        elapsed = time.perf_counter() - t0
        self._live = None
        return elapsed

    def close(self) -> None:
        """Kill the sleep it runs, if any, and end it."""
        if self._live is not None:  # the relay's unreaped child: its pid is still its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._live, signal.SIGKILL)
        os.close(self._requests)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        os.close(self._notices)


def raw_exec_figures(root: Path, samples: int) -> list[Figure]:
    driver = new_raw_exec(root / "state")
    run = Leftovers(driver)
    try:
        exec_samples(run, root / "warm", 2)
        ours, bare = exec_samples(run, root / "exec", samples)
        relay = Relay(root / "relay")
        try:
            stop_samples(driver, run, relay, root / "warm-stop", min(STOP_WARMUP, samples))
            kill, popen_kill, relayed = stop_samples(driver, run, relay, root / "stop", samples)
        finally:
            relay.close()
    finally:
        run.close()
        driver.close()
    return [
        ratio_figure(
            EXEC_FIGURE,
            statistics.median(ours),
            statistics.median(bare),
            "Popen",
            "s",
            1.5,
        ),
        ratio_figure(
            REAP_FIGURE,
            statistics.median(kill),
            statistics.median(popen_kill),
            "Popen kill+wait",
            "s",
            1.5,
        ),
        Figure(
            RELAY_FIGURE,
            statistics.median(relayed),
            statistics.median(popen_kill),
            "Popen kill+wait",
            "s",
            "floor",
            None,
        ),
        Figure(
            "raw_exec stop -> reaped vs that floor (median)",
            statistics.median(kill),
            statistics.median(relayed),
            "relay floor",
            "s",
            "floor",
            None,
        ),
    ]


# --- state DB -----------------------------------------------------------------------------

RAW_INSERT = "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)"


def changing_task_states(n: int) -> list[TaskState]:
    """n task states, each different from the one before (so no write is de-duplicated)."""
    base = TaskState().with_state("running")
    for i in range(5):
        base = base.with_event(TaskEvent("Started", message=f"event {i}"))
    return [attrs.evolve(base, restarts=i) for i in range(n)]


def encode(state: TaskState) -> str:
    return json.dumps(encode_task_state(state), separators=(",", ":"))


def raw_sqlite(path: Path) -> sqlite3.Connection:
    """A bare table with SQLiteStateDB's file settings (WAL, synchronous=NORMAL)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE entries (alloc_id TEXT, task TEXT, kind TEXT, value TEXT, "
        "PRIMARY KEY (alloc_id, task, kind)) WITHOUT ROWID"
    )
    return conn


STATEDB_FIGURE = "put_task_state (changed) vs encode + raw insert"


def put_task_state_figure(root: Path, ops: int) -> Figure:
    """SQLiteStateDB.put_task_state of a changed value vs encode + a raw insert, rounds
    interleaved (`benchmarks.interleaved_ns_per_op`)."""
    root.mkdir(parents=True)
    states = changing_task_states(ops)
    encoded = [encode(s) for s in states]
    conn = raw_sqlite(root / "raw.db")
    db = SQLiteStateDB(root / "state.db")

    def raw(n: int) -> None:
        for i in range(n):
            conn.execute(RAW_INSERT, ("alloc", "web", "task_state", encoded[i]))

    def encode_only(n: int) -> None:
        for i in range(n):
            encode(states[i])

    flush: Callable[[], None] = getattr(db, "flush", lambda: None)

    def put(n: int) -> None:
        for i in range(n):
            db.put_task_state("alloc", "web", states[i])
        flush()  # a store that queues its writes has done them only once flushed

    try:
        best = interleaved_ns_per_op({"raw": raw, "encode": encode_only, "put": put}, ops, rounds=5)
    finally:
        conn.close()
        db.close()
    return ratio_figure(
        STATEDB_FIGURE,
        best["put"],
        best["encode"] + best["raw"],
        "encode+sqlite",
        "ns",
        1.5,
    )


# --- stop-all vs supervisord --------------------------------------------------------------

SUPERVISED_SLEEP = ("/bin/sleep", "3599.5")  # an unusual argument marks our programs

SUPERVISORD_CONFIG = """\
[unix_http_server]
file={root}/supervisor.sock

[supervisord]
nodaemon=true
logfile={root}/supervisord.log
pidfile={root}/supervisord.pid
childlogdir={root}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:sleep]
command={command}
process_name=%(program_name)s_%(process_num)03d
numprocs={n}
autostart=true
autorestart=false
startsecs=0
startretries=0
stopsignal=INT
stopwaitsecs=5
redirect_stderr=true
"""


RPC_ERRORS = (OSError, xmlrpc.client.Error, http.client.HTTPException)


class SupervisorUnavailable(Exception):
    """supervisord cannot run here; the message says why."""


class SupervisordPeer:
    """Not thread-safe; owned by the stop-all figure. A real supervisord running n
    `sleep` programs from a generated config in `root`, driven over XML-RPC on a unix
    socket. Leaving the `with` block shuts it down and kills any program it left."""

    def __init__(self, root: Path, n: int) -> None:
        self._root = root
        self._n = n
        self._proc: subprocess.Popen[bytes] | None = None
        self._new_proxy: Callable[[], Any] = lambda: None
        self._pids: set[int] = set()

    def __enter__(self) -> SupervisordPeer:
        try:
            from supervisor.xmlrpc import SupervisorTransport
        except ImportError as err:
            raise SupervisorUnavailable(f"supervisor is not installed ({err})") from err
        self._root.mkdir(parents=True)
        conf = self._root / "supervisord.conf"
        command = " ".join(SUPERVISED_SLEEP)
        conf.write_text(SUPERVISORD_CONFIG.format(root=self._root, command=command, n=self._n))
        sock = f"unix://{self._root}/supervisor.sock"
        self._new_proxy = lambda: xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, sock)
        )
        with open(self._root / "stdout", "wb") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_ready()
            self._wait_all_running()
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def stop_all(self) -> float:
        """Seconds from the call of `stopAllProcesses` until supervisord has reaped
        every program (each pid gone), the event raw_exec's figure ends at too. Not the
        answer of ``stopAllProcesses(wait=True)``: supervisord re-checks a deferred
        answer only on a turn of its main loop, which polls with a 1 s timeout, so that
        answer mostly comes a whole timeout (1 to 6 s here) after the programs are gone
        and would time supervisord's polling, not its stop. Every program is seen
        stopped after."""
        pids = self._wait_all_running()
        rpc = self._new_proxy()
        t0 = time.perf_counter()
        self._call(lambda: rpc.supervisor.stopAllProcesses(False))
        deadline = time.monotonic() + 30.0
        while pids:
            pids = [pid for pid in pids if _exists(pid)]
            if pids and time.monotonic() > deadline:
                raise SupervisorUnavailable(f"{len(pids)} programs not reaped within 30 s")
            if pids:
                time.sleep(0.0002)
        elapsed = time.perf_counter() - t0
        self._wait_all_stopped()
        return elapsed

    def start_all(self) -> None:
        rpc = self._new_proxy()
        self._call(lambda: rpc.supervisor.startAllProcesses(True))
        self._wait_all_running()

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RPC_ERRORS as err:
            raise SupervisorUnavailable(f"XML-RPC to supervisord failed: {err!r}") from err

    def _check_alive(self) -> None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            tail = (self._root / "stdout").read_text(errors="replace").strip()[-300:]
            raise SupervisorUnavailable(f"supervisord exited ({self._proc.returncode}): {tail}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30.0
        while True:
            self._check_alive()
            try:
                if self._new_proxy().supervisor.getState()["statename"] == "RUNNING":
                    return
            except RPC_ERRORS as err:
                if time.monotonic() > deadline:
                    raise SupervisorUnavailable(f"supervisord never answered: {err!r}") from err
            time.sleep(0.05)

    def _wait_all_running(self) -> list[int]:
        """The pids of the programs, once all of them run."""
        info = self._wait_for_info(
            lambda info: sum(p["statename"] == "RUNNING" for p in info) == self._n,
            60.0,
            f"not all {self._n} programs started",
        )
        return [p["pid"] for p in info]

    def _wait_all_stopped(self) -> None:
        self._wait_for_info(
            lambda info: not {p["statename"] for p in info} & {"RUNNING", "STOPPING"},
            10.0,
            "programs still running after stopAllProcesses",
        )

    def _wait_for_info(
        self, done: Callable[[list[dict[str, Any]]], bool], timeout: float, failure: str
    ) -> list[dict[str, Any]]:
        """Poll `getAllProcessInfo` until `done` holds for it (every pid seen is kept for
        the cleanup); SupervisorUnavailable with `failure` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            info = self._call(self._new_proxy().supervisor.getAllProcessInfo)
            self._pids.update(p["pid"] for p in info if p["pid"])
            if done(info):
                return info
            if time.monotonic() > deadline:
                states = sorted({p["statename"] for p in info})
                raise SupervisorUnavailable(f"{failure} (states: {', '.join(states)})")
            time.sleep(0.05)

    def _close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                self._new_proxy().supervisor.shutdown()
            except RPC_ERRORS:
                proc.terminate()
            try:
                proc.wait(20.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pid in self._pids:
            kill_if_ours(pid)


def _exists(pid: int) -> bool:
    """True until `pid` is reaped (a zombie still exists)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return True


def kill_if_ours(pid: int) -> None:
    """SIGKILL `pid` if it is still one of the supervised sleeps (never a reused pid)."""
    want = ("\0".join(SUPERVISED_SLEEP) + "\0").encode()
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if cmdline.read() != want:
                return
        os.kill(pid, signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError):
        return


def stop_together(stops: list[Callable[[], None]], what: str) -> float:
    """Run each of `stops` on a thread of its own (started beforehand), all released at
    once; seconds from the release until the last has returned."""
    go = threading.Event()
    left = [len(stops)]
    left_lock = threading.Lock()
    all_done = threading.Event()

    def run(stop: Callable[[], None]) -> None:
        go.wait()
        stop()
        with left_lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            all_done.set()

    workers = [threading.Thread(target=run, args=(stop,), daemon=True) for stop in stops]
    try:
        for worker in workers:
            worker.start()
        t0 = time.perf_counter()
        go.set()
        if not all_done.wait(60.0):
            raise TimeoutError(f"{what} not reaped within 60 s")
        return time.perf_counter() - t0
    finally:
        go.set()
        for worker in workers:
            if worker.ident is not None:
                worker.join(30.0)


def with_sleep_tasks(
    driver: RawExecDriver, root: Path, names: str, n: int, stop: Callable[[list[str]], float]
) -> float:
    """Start n sleep tasks (`names` numbered), then return what `stop` of their ids
    returns; every task still running afterwards is killed and each is destroyed."""
    configs = [task_config(root, f"{names}-t{i}", ["/bin/sleep", "3600"]) for i in range(n)]
    run = Leftovers(driver)
    try:
        for config in configs:
            run.start(config)
        return stop([config.id for config in configs])
    finally:
        run.close()


def raw_exec_stop_all(driver: RawExecDriver, root: Path, n: int, round_no: int) -> float:
    """Start n sleep tasks, then stop them all with one `RawExecDriver.stop_many` call;
    seconds until it has returned (every task reaped)."""

    def stop_many(ids: list[str]) -> float:
        t0 = time.perf_counter()
        driver.stop_many(ids, 5.0)
        return time.perf_counter() - t0

    return with_sleep_tasks(driver, root, f"m{round_no}", n, stop_many)


def raw_exec_stop_each(driver: RawExecDriver, root: Path, n: int, round_no: int) -> float:
    """Start n sleep tasks, then stop them all at once with a `stop` + `wait` each, on a
    thread each (started beforehand), as n task runners do; seconds until every one
    is reaped."""

    def stop(task_id: str) -> None:
        driver.stop(task_id, 5.0)
        driver.wait(task_id, CancelToken())

    def stop_each(ids: list[str]) -> float:
        return stop_together([functools.partial(stop, i) for i in ids], "raw_exec tasks")

    return with_sleep_tasks(driver, root, f"e{round_no}", n, stop_each)


def sleeping_children(n: int) -> list[subprocess.Popen[bytes]]:
    """n ``sleep`` children, each in a session of its own, settled (asleep)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    ["/bin/sleep", "3600"], stdin=subprocess.DEVNULL, start_new_session=True
                )
            )
        for proc in procs:
            wait_settled(proc.pid)
    except BaseException:
        end_children(procs)
        raise
    return procs


def end_children(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def bare_stop_all(n: int) -> float:
    """The floor of a stop that takes a thread per task, as `raw_exec_stop_each` does: n
    bare threads each signal their own ``sleep`` child (SIGINT, as raw_exec's stop)
    and wait for it; seconds from the release until every one is reaped."""

    def stop(proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGINT)
        proc.wait()

    procs = sleeping_children(n)
    try:
        return stop_together([functools.partial(stop, p) for p in procs], "bare sleeps")
    finally:
        end_children(procs)


def bare_stop_batch(n: int) -> float:
    """The floor of a stop of n tasks from one thread, as `stop_many`'s: SIGINT to each
    ``sleep`` child in turn, then a wait for each; seconds until every one is reaped."""
    procs = sleeping_children(n)
    try:
        t0 = time.perf_counter()
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.wait()
        return time.perf_counter() - t0
    finally:
        end_children(procs)


def stop_all_name(n: int) -> str:
    return f"stop {n} raw_exec tasks vs supervisord stopAll"


def stop_all_specs(n: int) -> list[tuple[str, str]]:
    """The names and goals of the stop-all figures: raw_exec's `stop_many` vs
    supervisord, the one-thread floor vs supervisord, `stop_many` vs that floor; then a
    thread per task's `stop` vs supervisord, the thread-per-stop floor vs supervisord,
    the former vs the latter."""
    return [
        (stop_all_name(n), "<= 1x"),
        (f"floor: one thread kills {n} children, then waits each, vs supervisord", "floor"),
        (f"stop {n} raw_exec tasks vs that floor", "floor"),
        (f"stop {n} raw_exec tasks, a thread each, vs supervisord stopAll", "-"),
        (f"floor: {n} bare threads each kill + wait a child, vs supervisord", "floor"),
        (f"stop {n} raw_exec tasks, a thread each, vs that floor", "floor"),
    ]


def stop_all_figures(root: Path, n: int, rounds: int) -> list[Figure]:
    """raw_exec's stop of n tasks, by one `stop_many` call and by a thread per task,
    against supervisord's and against the floor of each way, the five interleaved
    round by round."""
    specs = stop_all_specs(n)
    names = [name for name, _ in specs]
    batch: list[float] = []
    each: list[float] = []
    peer_times: list[float] = []
    batch_floor: list[float] = []
    each_floor: list[float] = []
    driver = new_raw_exec(root / "state")
    try:
        with SupervisordPeer(root / "supervisord", n) as peer:
            for r in range(rounds):
                if r:
                    peer.start_all()
                peer_times.append(peer.stop_all())
                batch.append(raw_exec_stop_all(driver, root / "raw", n, r))
                batch_floor.append(bare_stop_batch(n))
                each.append(raw_exec_stop_each(driver, root / "raw", n, r))
                each_floor.append(bare_stop_all(n))
    except SupervisorUnavailable as err:
        return [unavailable(spec, goal, str(err)) for spec, goal in specs]
    finally:
        driver.close()
    peer_best = min(peer_times)
    return [
        ratio_figure(names[0], min(batch), peer_best, "supervisord", "s", 1.0),
        Figure(names[1], min(batch_floor), peer_best, "supervisord", "s", "floor", None),
        Figure(names[2], min(batch), min(batch_floor), "one-thread floor", "s", "floor", None),
        Figure(names[3], min(each), peer_best, "supervisord", "s", "-", None),
        Figure(names[4], min(each_floor), peer_best, "supervisord", "s", "floor", None),
        Figure(names[5], min(each), min(each_floor), "thread-per-stop floor", "s", "floor", None),
    ]


# --- main -------------------------------------------------------------------------------


def client_names(p: Params) -> list[str]:
    versus = f"vs N={p.n_small}"
    return [
        f"start per alloc, N={p.n_big} {versus}",
        f"stop per alloc, N={p.n_big} {versus}",
        f"destroy per alloc, N={p.n_big} {versus}",
        f"run_allocs({p.n_big} new) returns",
        f"start-all N={p.n_big} vs bare threads",
        f"RSS per running alloc, N={p.n_big}",
        f"idle CPU, {p.n_big} allocs, {p.idle_s:g} s",
        f"floor: bare threads + alloc dir layout, N={p.n_big}",
        f"start-all N={p.n_big} vs that floor",
        f"floor: layout + crash-safe start records, N={p.n_big}",
        f"start-all N={p.n_big} vs the records floor",
        f"floor: wake per thread (a 1 ms loop), N={p.n_big} {versus}",
        f"floor: records + the driver's start, N={p.n_big}",
        f"start-all N={p.n_big} vs the driver floor",
        f"calls per alloc: start-all N={p.n_small} vs the driver floor",
        f"floor: the driver floor storing what Nomad stores, N={p.n_big}",
        f"start-all N={p.n_big} vs the Nomad-writes floor",
        f"floor: a straight-line start of all the contract asks, N={p.n_big}",
        f"start-all N={p.n_big} vs the contract floor",
        f"floor: the contract's starts on {BUILDERS} threads, a thread each waits, N={p.n_big}",
        f"start-all N={p.n_big} vs the pooled contract floor",
    ]


CLIENT_GOALS = [
    *("<= 1.3x", "<= 1.3x", "<= 1.3x", "<= 0.5 s", "<= 8x", "<= 60 KB", "<= 0.1 %"),
    *("floor", "floor", "floor", "floor", "floor", "floor", "floor", "floor"),
    *("floor", "floor", "floor", "floor", "floor", "floor"),
]


def client_figures(p: Params, root: Path) -> list[Figure]:
    """The Client section. The floors' directories are deleted only once every round
    has run: on ext4 without a journal a mkdir costs more for each inode freed in the
    last minutes (`deleted_inode_note`), so a floor that deleted its 8,000 directories
    at once would raise the cost of every phase after it, the Client cycles (which run
    last in each round) most. Kept, the only deletions the section makes while it
    measures are the Client cycles' own destroys."""
    floors_root = root / "floors"
    try:
        return _client_figures(p, root, floors_root)
    finally:
        shutil.rmtree(floors_root, ignore_errors=True)


def _client_figures(p: Params, root: Path, floors_root: Path) -> list[Figure]:
    client_cycle(p.n_small, root / "warm", 0.0)
    floors: list[FloorRun] = []
    layouts: list[FloorRun] = []
    recorded: list[FloorRun] = []
    driven: list[FloorRun] = []
    as_nomad: list[FloorRun] = []
    contract: list[FloorRun] = []
    pooled: list[FloorRun] = []
    small: list[CycleRun] = []
    big: list[CycleRun] = []
    loops = spin_loops_per_ms()
    wakes_small: list[float] = []
    wakes_big: list[float] = []
    for r in range(p.rounds):
        wakes_small.append(wake_floor(p.n_small, loops))
        wakes_big.append(wake_floor(p.n_big, loops))
        kept = floors_root / str(r)
        floors.append(bare_thread_floor(p.n_big, kept / "bare"))
        layouts.append(bare_thread_floor(p.n_big, kept / "layout", layout=True))
        recorded.append(bare_thread_floor(p.n_big, kept / "records", layout=True, records=True))
        driven.append(
            bare_thread_floor(p.n_big, kept / "driver", layout=True, records=True, driver=True)
        )
        as_nomad.append(
            bare_thread_floor(
                p.n_big, kept / "nomad", layout=True, records=True, driver=True, as_nomad=True
            )
        )
        contract.append(
            bare_thread_floor(
                p.n_big, kept / "contract", layout=True, records=True, driver=True, contract=True
            )
        )
        pooled.append(
            bare_thread_floor(
                p.n_big,
                kept / "pooled",
                layout=True,
                records=True,
                driver=True,
                contract=True,
                pool=BUILDERS,
            )
        )
        small.append(client_cycle(p.n_small, root / f"small{r}", 0.0))
        big.append(client_cycle(p.n_big, root / f"big{r}", p.idle_s if r == 0 else 0.0))
    names = client_names(p)
    figures: list[Figure] = []
    for name, phase in zip(names, ("start", "stop", "destroy"), strict=False):
        per_big = min(getattr(c, f"{phase}_s") for c in big) / p.n_big
        per_small = min(getattr(c, f"{phase}_s") for c in small) / p.n_small
        figures.append(ratio_figure(name, per_big, per_small, f"N={p.n_small}", "s", 1.3))
    floor_start = min(f.start_all_s for f in floors)
    returned = min(c.run_allocs_s for c in big)
    figures.append(
        Figure(
            names[3], returned, floor_start, "bare threads", "s", CLIENT_GOALS[3], returned <= 0.5
        )
    )
    start_all = min(c.start_s for c in big)
    print(start_cost_notes(small, big, recorded, driven, contract, pooled, floors), flush=True)
    print(round_notes(small, big, contract, pooled, floors), flush=True)
    figures.append(ratio_figure(names[4], start_all, floor_start, "bare threads", "s", 8.0))
    # Each floor against the bare threads, then the start-all against that floor: the
    # floor's figure name and the next one.
    for floor_at, runs, label in (
        (7, layouts, "layout floor"),
        (9, recorded, "records floor"),
        (12, driven, "driver floor"),
        (15, as_nomad, "Nomad-writes floor"),
        (17, contract, "contract floor"),
        (19, pooled, "pooled contract floor"),
    ):
        best = min(f.start_all_s for f in runs)
        figures.append(
            Figure(names[floor_at], best, floor_start, "bare threads", "s", "floor", None)
        )
        figures.append(Figure(names[floor_at + 1], start_all, best, label, "s", "floor", None))
    figures.append(
        Figure(names[11], min(wakes_big), min(wakes_small), f"N={p.n_small}", "s", "floor", None)
    )
    floor_calls = bare_thread_floor(
        p.n_small,
        floors_root / "calls",
        layout=True,
        records=True,
        driver=True,
        counter=CallCounter(),
    ).calls
    assert floor_calls is not None
    start_calls = start_all_calls(p.n_small, root / "calls")
    figures.append(
        Figure(
            names[14], start_calls, floor_calls / p.n_small, "driver floor", "calls", "floor", None
        )
    )
    rss = big[0].rss_kb_per_alloc
    floor_rss = statistics.median(f.rss_kb_per_alloc for f in floors)
    figures.append(
        Figure(names[5], rss, floor_rss, "bare thread", "KB", CLIENT_GOALS[5], rss <= 60)
    )
    idle = big[0].idle_cpu_percent
    if idle is None:
        figures.append(unavailable(names[6], CLIENT_GOALS[6], "the idle window is 0 s"))
    else:
        figures.append(Figure(names[6], idle, 0.1, "goal", "%CPU", CLIENT_GOALS[6], idle <= 0.1))
    return figures


def start_cost_notes(
    small: list[CycleRun],
    big: list[CycleRun],
    recorded: list[FloorRun],
    driven: list[FloorRun],
    contract: list[FloorRun],
    pooled: list[FloorRun],
    bare: list[FloorRun],
) -> str:
    """Where the fastest start-all's time went at both sizes, beside the fastest records,
    driver, contract, pooled contract and bare-thread floors' (at the large size)."""
    fastest_small = min(small, key=lambda c: c.start_s)
    fastest_big = min(big, key=lambda c: c.start_s)
    n = fastest_big.n
    records = min(recorded, key=lambda f: f.start_all_s).cost
    driver = min(driven, key=lambda f: f.start_all_s).cost
    straight = min(contract, key=lambda f: f.start_all_s).cost
    on_pool = min(pooled, key=lambda f: f.start_all_s).cost
    threads = min(bare, key=lambda f: f.start_all_s).cost
    return (
        f"  note: start-all N={fastest_small.n}, fastest round: "
        f"{fastest_small.start_cost.per(fastest_small.n)}\n"
        f"  note: start-all N={n}, fastest round: {fastest_big.start_cost.per(n)}\n"
        f"  note: records floor N={n}, fastest round: {records.per(n)}\n"
        f"  note: driver floor N={n}, fastest round: {driver.per(n)}\n"
        f"  note: contract floor N={n}, fastest round: {straight.per(n)}\n"
        f"  note: pooled contract floor N={n}, fastest round: {on_pool.per(n)}\n"
        f"  note: bare threads N={n}, fastest round: {threads.per(n)}"
    )


def round_notes(
    small: list[CycleRun],
    big: list[CycleRun],
    contract: list[FloorRun],
    pooled: list[FloorRun],
    bare: list[FloorRun],
) -> str:
    """Every round's figure, in the order run, where the table gives only the fastest:
    how far the rounds of one run spread, and which round each fastest figure came
    from."""

    def spread(values: Iterable[float], scale: float) -> str:
        return " / ".join(f"{v * scale:.1f}" for v in values)

    n_big, n_small = big[0].n, small[0].n
    lines = [
        f"start-all N={n_big} {spread((c.start_s for c in big), 1e3)} ms",
        f"contract floor {spread((f.start_all_s for f in contract), 1e3)} ms",
        f"pooled contract floor {spread((f.start_all_s for f in pooled), 1e3)} ms",
        f"bare threads {spread((f.start_all_s for f in bare), 1e3)} ms",
    ]
    for phase in ("start", "stop", "destroy"):
        per_big = spread((getattr(c, f"{phase}_s") / n_big for c in big), 1e6)
        per_small = spread((getattr(c, f"{phase}_s") / n_small for c in small), 1e6)
        lines.append(f"{phase} per alloc N={n_big} {per_big} us, N={n_small} {per_small} us")
    return "\n".join(f"  note: each round: {line}" for line in lines)


def section(specs: list[tuple[str, str]], measure: Callable[[], list[Figure]]) -> list[Figure]:
    """The figures `measure` returns; if it raises, each figure is printed unavailable
    with the error (and its traceback goes to stderr), and the next section runs."""
    try:
        return measure()
    except Exception as err:
        traceback.print_exc()
        return [unavailable(name, goal, f"{type(err).__name__}: {err}") for name, goal in specs]


def deleted_inode_note(path: Path) -> str | None:
    """A note when `path` is on ext4 without a journal. There the kernel will not reuse
    an inode freed in the last 60 s (360 s while its inode table block is dirty): each
    new inode is found by skipping every such one in its group, so a mkdir costs more
    the more the host deleted in the last minutes. The start figures and the layout
    and records floors then move with the host's recent deletions (this run's own
    destroys included), which no ordering of the phases avoids."""
    mount = mount_of(path)
    if mount is None or mount.fstype != "ext4" or not os.path.isdir("/proc/fs/jbd2"):
        return None
    # A journal shows as /proc/fs/jbd2/<kernel name of the device>-<journal inode>;
    # the kernel name (dm-0, not /dev/mapper/...) comes from the device number.
    by_number = f"/sys/dev/block/{mount.device}"
    named = os.path.realpath(by_number) if os.path.exists(by_number) else mount.source
    device = os.path.basename(named)
    if any(name.startswith(f"{device}-") for name in os.listdir("/proc/fs/jbd2")):
        return None
    return (
        f"  note: {path} is on ext4 without a journal ({mount.source}): there each mkdir skips "
        "every inode the host freed in the last 1-6 minutes, so the start figures and "
        "the layout and records floors rise with the host's recent deletions"
    )


def main(idle_s: float | None = None) -> None:
    """Run every figure and print them; `idle_s` overrides the idle window (30 s)."""
    assert not _locking.CHECK, "benchmarks run with the lock check off"
    p = params()
    if idle_s is not None:
        p = dataclasses.replace(p, idle_s=idle_s)
    print(
        f"scale: N={p.n_big} vs {p.n_small}, idle window {p.idle_s:g} s"
        f"{' (BENCH_QUICK)' if QUICK else ''}",
        flush=True,
    )
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    note = deleted_inode_note(root)
    if note is not None:
        print(note, flush=True)
    try:
        # The raw_exec sections run before the Client cycles (module docstring).
        raw_exec = section(
            [
                (EXEC_FIGURE, "<= 1.5x"),
                (REAP_FIGURE, "<= 1.5x"),
                (RELAY_FIGURE, "floor"),
                ("raw_exec stop -> reaped vs that floor (median)", "floor"),
            ],
            lambda: raw_exec_figures(root / "raw_exec", p.exec_samples),
        )
        stop_all = section(
            stop_all_specs(p.stop_all_tasks),
            lambda: stop_all_figures(root / "stop_all", p.stop_all_tasks, p.stop_all_rounds),
        )
        statedb = section(
            [(STATEDB_FIGURE, "<= 1.5x")],
            lambda: [put_task_state_figure(root / "statedb", p.statedb_ops)],
        )
        client = section(
            list(zip(client_names(p), CLIENT_GOALS, strict=True)),
            lambda: client_figures(p, root / "client"),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_figures(client + statedb + raw_exec + stop_all)


if __name__ == "__main__":
    main()
