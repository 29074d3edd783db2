"""Resource usage of the host and of allocations, read from /proc, in Nomad's JSON shapes.

`host_stats` answers ``/v1/client/stats`` (Nomad's HostStats: memory, per-CPU use,
disks, the alloc dir's filesystem, uptime) and `alloc_stats` answers
``/v1/client/allocation/:id/stats`` (Nomad's AllocResourceUsage: per task and per
process memory and CPU, and the allocation's total).

CPU use is a rate, so each figure needs the previous reading. The agent owns one
`StatsSampler`, which keeps the last reading of the host's CPUs and of each task's
processes and hands it back when a new one replaces it. As in Nomad, the first
reading of a task's process reports 0 %; the first host reading is relative to boot.

A raw_exec task is one process group (see `allocrunner.drivers.raw_exec`): its
processes are those whose group id is the ``pgid`` in the task's driver handle. A
process that left the group (``setsid``) is not counted. mock_driver tasks have no
processes, and tasks that are not running have no handle: both report zeros, with
``Measured`` naming the fields a running raw_exec task would fill, like Nomad's basic
executor (RSS and Swap; System Mode, User Mode and Percent). The allocation's total is
the sum of its running tasks.

Processes come and go while /proc is read: every read tolerates a process that has
just exited (it is then left out, or counted with what was read before it went).

Threads: none of its own; the functions run on the request thread that asks.
Lock: ``StatsSampler._lock`` guards the sampler's readings (a frozen map, replaced);
/proc is read with it released. Owner: the `Agent` creates the one `StatsSampler`
and puts it in the API context; the client endpoints call `host_stats` and
`alloc_stats`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock
from allocrunner.agent.fingerprint import detect_cpu, unescape_mount_field
from allocrunner.drivers._process import (
    PidStat,
    group_processes,
    parse_pid_stat,
    read_pid_stat,
    read_proc,
)
from allocrunner.structs.frozen import FrozenDict

if TYPE_CHECKING:
    from allocrunner.state.base import LocalState
    from allocrunner.structs import Allocation

__all__ = [
    "CPU_MEASURED",
    "MEMORY_MEASURED",
    "PidStat",
    "StatsSampler",
    "alloc_stats",
    "group_processes",
    "host_stats",
    "parse_pid_stat",
    "read_pid_stat",
    "read_proc",
]

MEMORY_MEASURED = ("RSS", "Swap")
CPU_MEASURED = ("System Mode", "User Mode", "Percent")
SAMPLE_MAX_AGE = 600.0
"""Seconds after which a sampler forgets a reading nobody replaced (a gone task)."""

_TICKS = os.sysconf("SC_CLK_TCK")


class TaskRunnerLike(Protocol):
    """What `alloc_stats` reads of a TaskRunner: its driver handle, in its local state."""

    def local_state(self) -> LocalState: ...


class AllocRunnerLike(Protocol):
    """What `alloc_stats` needs of an AllocRunner."""

    def alloc(self) -> Allocation: ...

    def task_names(self) -> list[str]: ...

    def task_runner(self, name: str) -> TaskRunnerLike: ...


# --- reading /proc --------------------------------------------------------------------
# /proc/<pid>/stat is parsed by `allocrunner.drivers._process` (PidStat, read_pid_stat,
# group_processes), the one parser of the package; other /proc files are read here.


def _swap_bytes(pid: int) -> int:
    """``VmSwap`` of a process in bytes; 0 if it is gone or has none."""
    data = read_proc(f"/proc/{pid}/status")
    for line in (data or b"").splitlines():
        if line.startswith(b"VmSwap:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else 0
    return 0


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes, by key."""
    values = {}
    for line in (read_proc("/proc/meminfo") or b"").splitlines():
        key, _, rest = line.partition(b":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == b"kB" else 1
            values[key.decode("ascii", "replace")] = int(parts[0]) * scale
    return values


def _cpu_times() -> dict[str, tuple[int, ...]]:
    """Each CPU's line of /proc/stat (``cpu0`` …): user, nice, system, idle, iowait,
    irq, softirq, steal, in clock ticks."""
    times = {}
    for line in (read_proc("/proc/stat") or b"").splitlines():
        if not line.startswith(b"cpu") or line.startswith(b"cpu "):
            continue
        parts = line.split()
        values = [int(v) for v in parts[1:9]]
        times[parts[0].decode("ascii")] = tuple(values + [0] * (8 - len(values)))
    return times


# --- the sampler ----------------------------------------------------------------------


@attrs.frozen
class _Sample:
    """Immutable. One reading (an immutable value) and when it was taken (monotonic)."""

    value: Any
    at: float


class StatsSampler:
    """Thread-safe. The previous CPU reading of the host and of each task, so that the
    next reading can be turned into percentages; plus the node's compute (MHz across
    all cores, and the core count) that turns percentages into Nomad's ticks.

    A reading is swapped for the next under the lock (`exchange`); everything else,
    /proc included, is read with no lock held."""

    _lock = immutable()
    _total_compute = immutable()
    _num_cores = immutable()
    _max_age = immutable()
    # _lock guards: _samples (key → _Sample, replaced copy-on-write)
    _samples = guarded("_lock")

    def __init__(
        self,
        *,
        total_compute_mhz: int | None = None,
        num_cores: int | None = None,
        max_age: float = SAMPLE_MAX_AGE,
    ) -> None:
        if total_compute_mhz is None or num_cores is None:
            cpu = detect_cpu()
            if total_compute_mhz is None:
                total_compute_mhz = cpu.total_compute
            if num_cores is None:
                num_cores = cpu.cores
        self._lock = make_lock("StatsSampler._lock")
        self._total_compute = int(total_compute_mhz)
        self._num_cores = max(1, int(num_cores))
        self._max_age = float(max_age)
        self._samples: FrozenDict[str, _Sample] = FrozenDict()

    @property
    def total_compute_mhz(self) -> int:
        return self._total_compute

    def ticks_consumed(self, percent: float) -> float:
        """Nomad's TotalTicks: MHz used, given percent of one core."""
        return percent / 100.0 * self._total_compute / self._num_cores

    def exchange(self, key: str, value: Any, now: float) -> tuple[Any, float] | None:
        """Store reading `value` taken at monotonic time `now` under `key`; return the
        reading it replaces and its time, or None. Readings not replaced within
        `max_age` seconds are dropped."""
        with self._lock:
            old = self._samples.get(key)
            kept = {k: s for k, s in self._samples.items() if now - s.at <= self._max_age}
            kept[key] = _Sample(value, now)
            self._samples = FrozenDict(kept)
        return (old.value, old.at) if old is not None else None

    def forget(self, prefix: str) -> None:
        """Drop every reading whose key starts with `prefix`."""
        with self._lock:
            self._samples = FrozenDict(
                {k: s for k, s in self._samples.items() if not k.startswith(prefix)}
            )

    def discard(self, key: str) -> None:
        """Drop the reading under `key`, if any."""
        with self._lock:
            if key in self._samples:
                self._samples = FrozenDict({k: s for k, s in self._samples.items() if k != key})

    def forget_alloc(self, alloc_id: str) -> None:
        """Drop the readings of an allocation's tasks (once it is gone)."""
        self.forget(_alloc_prefix(alloc_id))

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._samples)


def _alloc_prefix(alloc_id: str) -> str:
    return f"task/{alloc_id}/"


# --- host stats -----------------------------------------------------------------------


def _percent(part: float, whole: float) -> float:
    return part / whole * 100.0 if whole > 0 else 0.0


def _cpu_entry(name: str, cur: tuple[int, ...], prev: tuple[int, ...] | None) -> dict[str, Any]:
    """One CPU's use since `prev` (since boot without one), as Nomad computes it."""
    base = prev or (0,) * len(cur)
    delta = [max(0, c - p) for c, p in zip(cur, base, strict=True)]
    user, nice, system, idle, iowait, irq, softirq, steal = delta
    total = sum(delta)
    busy = user + nice + system + iowait + irq + softirq + steal
    return {
        "CPU": name,
        "User": _percent(user, total),
        "System": _percent(system, total),
        "Idle": _percent(idle, total) if total > 0 else 100.0,
        "TotalPercent": _percent(busy, total),
    }


def _cpu_stats(sampler: StatsSampler | None, now: float) -> tuple[list[dict[str, Any]], float]:
    times = _cpu_times()
    prev = None
    if sampler is not None:
        old = sampler.exchange("host/cpu", FrozenDict(times), now)
        prev = old[0] if old is not None else None
    compute = sampler.total_compute_mhz if sampler is not None else detect_cpu().total_compute
    per_cpu = compute / max(1, len(times))
    entries = []
    for name, cur in times.items():
        entry = _cpu_entry(name, cur, prev.get(name) if prev is not None else None)
        entry["TotalTicks"] = entry["TotalPercent"] / 100.0 * per_cpu
        entries.append(entry)
    return entries, sum(e["TotalTicks"] for e in entries)


def _memory_stats() -> dict[str, int]:
    info = _meminfo()
    total, free = info.get("MemTotal", 0), info.get("MemFree", 0)
    cached = info.get("Cached", 0) + info.get("SReclaimable", 0)
    buffers = info.get("Buffers", 0)
    available = info.get("MemAvailable", free + buffers + cached)
    return {
        "Total": total,
        "Available": available,
        "Used": max(0, total - free - buffers - cached),
        "Free": free,
    }


def _disk_usage(path: str, device: str = "", mountpoint: str = "") -> dict[str, Any] | None:
    """Nomad's DiskStats of the filesystem holding `path`; None if it cannot be read."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    available = st.f_bavail * st.f_frsize
    inodes_used = st.f_files - st.f_ffree
    return {
        "Device": device,
        "Mountpoint": mountpoint,
        "Size": st.f_blocks * st.f_frsize,
        "Used": used,
        "Available": available,
        "UsedPercent": _percent(used, used + available),
        "InodesUsedPercent": _percent(inodes_used, st.f_files),
    }


def _physical_mounts() -> list[tuple[str, str]]:
    """(device, mount point) of each mounted block-device filesystem, first mount of
    each mount point (what gopsutil's ``disk.Partitions(false)`` lists)."""
    nodev = set()
    for line in (read_proc("/proc/filesystems") or b"").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == b"nodev":
            nodev.add(parts[1])
    mounts, seen = [], set()
    for line in (read_proc("/proc/self/mounts") or b"").splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[2] in nodev or parts[1] in seen:
            continue
        seen.add(parts[1])
        mounts.append((unescape_mount_field(parts[0]), unescape_mount_field(parts[1])))
    return mounts


def _uptime() -> int:
    data = read_proc("/proc/uptime") or b"0"
    try:
        return int(float(data.split()[0]))
    except (ValueError, IndexError):
        return 0


@calls_out
def host_stats(alloc_dir_root: str, sampler: StatsSampler | None = None) -> dict[str, Any]:
    """Nomad's HostStats of this host. CPU percentages cover the time since `sampler`'s
    previous host reading (since boot on the first, or without a sampler);
    ``AllocDirStats`` is the filesystem holding `alloc_dir_root` (zeros if missing)."""
    now = time.monotonic()
    timestamp = time.time_ns()
    cpus, ticks = _cpu_stats(sampler, now)
    disks = [
        usage
        for device, point in _physical_mounts()
        if (usage := _disk_usage(point, device, point)) is not None
    ]
    alloc_dir = _disk_usage(alloc_dir_root) or {
        "Device": "",
        "Mountpoint": "",
        "Size": 0,
        "Used": 0,
        "Available": 0,
        "UsedPercent": 0.0,
        "InodesUsedPercent": 0.0,
    }
    return {
        "Memory": _memory_stats(),
        "CPU": cpus,
        "DiskStats": disks,
        "AllocDirStats": alloc_dir,
        "DeviceStats": [],
        "Uptime": _uptime(),
        "Timestamp": timestamp,
        "CPUTicksConsumed": ticks,
    }


# --- allocation stats -----------------------------------------------------------------


def _usage(
    *,
    rss: int = 0,
    swap: int = 0,
    system: float = 0.0,
    user: float = 0.0,
    percent: float = 0.0,
    ticks: float = 0.0,
) -> dict[str, Any]:
    """Nomad's ResourceUsage with the fields a process-based task measures."""
    return {
        "MemoryStats": {
            "RSS": rss,
            "Cache": 0,
            "Swap": swap,
            "MappedFile": 0,
            "Usage": 0,
            "MaxUsage": 0,
            "KernelUsage": 0,
            "KernelMaxUsage": 0,
            "Measured": list(MEMORY_MEASURED),
        },
        "CpuStats": {
            "SystemMode": system,
            "UserMode": user,
            "TotalTicks": ticks,
            "ThrottledPeriods": 0,
            "ThrottledTime": 0,
            "Percent": percent,
            "Measured": list(CPU_MEASURED),
        },
        "DeviceStats": [],
    }


def _add_usage(total: dict[str, Any], other: Mapping[str, Any]) -> None:
    """Add `other` into `total` field by field (Nomad's ResourceUsage.Add)."""
    for section in ("MemoryStats", "CpuStats"):
        into, add = total[section], other[section]
        for key, value in add.items():
            if key == "Measured":
                into[key] = into[key] + [m for m in value if m not in into[key]]
            else:
                into[key] += value
    total["DeviceStats"] = total["DeviceStats"] + list(other["DeviceStats"])


@attrs.frozen
class _TaskGroup:
    """Immutable. Where a running task's processes are: its process group, and the
    range the group leader's start time must lie in (against pid reuse)."""

    pgid: int
    start_low: int
    start_high: int


def _task_group(task_runner: TaskRunnerLike) -> _TaskGroup | None:
    """The process group of a running task; None if it is not running or its driver
    runs no process group."""
    handle = task_runner.local_state().task_handle
    if handle is None:
        return None
    state = handle.driver_state
    pgid = state.get("pgid")
    if isinstance(pgid, bool) or not isinstance(pgid, int) or pgid <= 0:
        return None
    ticks = state.get("start_ticks")
    if isinstance(ticks, list | tuple) and len(ticks) == 2 and all(type(t) is int for t in ticks):
        low, high = ticks
    else:
        low, high = 0, 2**63
    return _TaskGroup(pgid=pgid, start_low=low, start_high=high)


def _members(group: _TaskGroup, found: list[PidStat]) -> list[PidStat]:
    """The processes of `group`, or none when its leader's pid now belongs to a newer
    group (the task's group is gone and its id was reused)."""
    for stat in found:
        if stat.pid == group.pgid and not group.start_low <= stat.start_ticks <= group.start_high:
            return []
    return found


def _pid_usage(
    stat: PidStat, prev: tuple[int, int] | None, elapsed: float, sampler: StatsSampler
) -> dict[str, Any]:
    """One process's usage; CPU over `elapsed` seconds since `prev` (0 without one)."""
    system = user = percent = 0.0
    if prev is not None and elapsed > 0:
        d_user = max(0, stat.utime - prev[0]) / _TICKS
        d_system = max(0, stat.stime - prev[1]) / _TICKS
        user = d_user / elapsed * 100.0
        system = d_system / elapsed * 100.0
        percent = (d_user + d_system) / elapsed * 100.0
    return _usage(
        rss=stat.rss_bytes,
        swap=_swap_bytes(stat.pid),
        system=system,
        user=user,
        percent=percent,
        ticks=sampler.ticks_consumed(percent),
    )


def _task_usage(
    key: str, procs: list[PidStat], sampler: StatsSampler, now: float, timestamp: int
) -> dict[str, Any]:
    """Nomad's TaskResourceUsage of one task's processes; the sampler's reading under
    `key` is replaced by this one."""
    reading = FrozenDict({(s.pid, s.start_ticks): (s.utime, s.stime) for s in procs})
    old = sampler.exchange(key, reading, now)
    prev, elapsed = (old[0], now - old[1]) if old is not None else (FrozenDict(), 0.0)
    pids = {
        str(s.pid): _pid_usage(s, prev.get((s.pid, s.start_ticks)), elapsed, sampler) for s in procs
    }
    total = _usage()
    for usage in pids.values():
        _add_usage(total, usage)
    total["CpuStats"]["TotalTicks"] = sampler.ticks_consumed(total["CpuStats"]["Percent"])
    return {"ResourceUsage": total, "Timestamp": timestamp, "Pids": pids}


@calls_out
def alloc_stats(
    runner: AllocRunnerLike, sampler: StatsSampler, *, task: str | None = None
) -> dict[str, Any]:
    """Nomad's AllocResourceUsage of `runner`'s allocation (only task `task` if given;
    UnknownTaskError for a task the allocation does not have).

    A task's CPU use covers the time since `sampler`'s previous reading of it; a
    process seen for the first time reports 0 %. Tasks that are not running report
    zeros; the allocation's total and timestamp come from its running tasks."""
    alloc_id = runner.alloc().id
    names = [task] if task is not None else runner.task_names()
    groups = {name: _task_group(runner.task_runner(name)) for name in names}
    found = group_processes(g.pgid for g in groups.values() if g is not None)
    now, timestamp = time.monotonic(), time.time_ns()
    tasks: dict[str, Any] = {}
    total = _usage()
    latest = 0
    for name, group in groups.items():
        key = f"{_alloc_prefix(alloc_id)}{name}"
        if group is None:
            sampler.discard(key)
            tasks[name] = {"ResourceUsage": _usage(), "Timestamp": timestamp, "Pids": {}}
            continue
        procs = _members(group, found[group.pgid])
        tasks[name] = _task_usage(key, procs, sampler, now, timestamp)
        _add_usage(total, tasks[name]["ResourceUsage"])
        latest = timestamp
    return {"ResourceUsage": total, "Tasks": tasks, "Timestamp": latest}
