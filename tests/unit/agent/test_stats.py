"""Host and allocation stats read from the real /proc: a raw_exec allocation running a
CPU-busy shell loop shows its processes, memory and (from the second reading) CPU use;
finished and mock_driver tasks report zeros; readings survive processes that exit
while /proc is scanned; the sampler is safe to share between threads."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from allocrunner.agent.stats import (
    CPU_MEASURED,
    MEMORY_MEASURED,
    PidStat,
    StatsSampler,
    _members,
    _TaskGroup,
    alloc_stats,
    group_processes,
    host_stats,
    parse_pid_stat,
    read_pid_stat,
    read_proc,
)
from allocrunner.config import ClientConfig
from allocrunner.drivers import default_drivers
from allocrunner.errors import UnknownTaskError
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.state import MemDB
from allocrunner.structs import new_allocation
from allocrunner.testing import mock_job, mock_task, wait_for

HOST_KEYS = {
    "Memory",
    "CPU",
    "DiskStats",
    "AllocDirStats",
    "DeviceStats",
    "Uptime",
    "Timestamp",
    "CPUTicksConsumed",
}
MEMORY_KEYS = {
    "RSS",
    "Cache",
    "Swap",
    "MappedFile",
    "Usage",
    "MaxUsage",
    "KernelUsage",
    "KernelMaxUsage",
    "Measured",
}
CPU_KEYS = {
    "SystemMode",
    "UserMode",
    "TotalTicks",
    "ThrottledPeriods",
    "ThrottledTime",
    "Percent",
    "Measured",
}
DISK_KEYS = {
    "Device",
    "Mountpoint",
    "Size",
    "Used",
    "Available",
    "UsedPercent",
    "InodesUsedPercent",
}


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path) -> ClientConfig:
    return ClientConfig.for_data_dir(tmp_path, max_kill_timeout=5.0, kill_retry_base=0.05)


@pytest.fixture
def make_runner(config) -> Iterator[Callable[..., AllocRunner]]:
    """Builds AllocRunners on real drivers; destroys them, joins their threads and
    closes the drivers at the end of the test."""
    made: list[AllocRunner] = []
    drivers = default_drivers()

    def factory(alloc: Any) -> AllocRunner:
        ar = AllocRunner(alloc, config, state_db=MemDB(), drivers=drivers)
        made.append(ar)
        return ar

    yield factory
    for ar in made:
        ar.destroy()
    for ar in made:
        assert ar.wait_destroyed(30), f"{ar} was not destroyed in time"
        assert ar.close(30), f"{ar} left threads running"
    for driver in drivers.values():
        driver.close()


@pytest.fixture
def session() -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    """Starts shell scripts in their own session (one process group each) and kills
    every group at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(script: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _pgid_members(pgid: int) -> set[int]:
    """The live pids of group `pgid`, found with os.getpgid and the state letter."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.getpgid(int(name)) != pgid:
                continue
            with open(f"/proc/{name}/status") as fh:
                state = next(line for line in fh if line.startswith("State:")).split()[1]
        except (ProcessLookupError, FileNotFoundError, StopIteration):
            continue
        if state not in ("Z", "X"):
            found.add(int(name))
    return found


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _assert_usage_shape(usage: dict[str, Any]) -> None:
    assert set(usage) == {"MemoryStats", "CpuStats", "DeviceStats"}
    assert set(usage["MemoryStats"]) == MEMORY_KEYS
    assert set(usage["CpuStats"]) == CPU_KEYS
    assert usage["MemoryStats"]["Measured"] == list(MEMORY_MEASURED)
    assert usage["CpuStats"]["Measured"] == list(CPU_MEASURED)
    assert usage["DeviceStats"] == []


def _assert_zero(usage: dict[str, Any]) -> None:
    _assert_usage_shape(usage)
    for section in ("MemoryStats", "CpuStats"):
        for key, value in usage[section].items():
            if key != "Measured":
                assert value == 0, f"{section}.{key} = {value}"


# --- /proc parsing ----------------------------------------------------------------------


def test_parse_own_stat_matches_os():
    stat = read_pid_stat(os.getpid())
    assert stat is not None
    assert stat.pid == os.getpid()
    assert stat.ppid == os.getppid()
    assert stat.pgid == os.getpgid(0)
    assert stat.state in ("R", "S")
    assert stat.rss_bytes > 0
    times = os.times()
    ticks = os.sysconf("SC_CLK_TCK")
    assert abs(stat.utime / ticks - times.user) < 1.0
    assert abs(stat.stime / ticks - times.system) < 1.0


def test_parse_a_command_name_with_spaces_and_parens():
    tail = " ".join(["S", "1", "77"] + ["0"] * 8 + ["5", "6"] + ["0"] * 6 + ["999", "0", "3"])
    stat = parse_pid_stat(f"42 (a) b (c)) {tail} 0 0\n".encode())
    assert stat == PidStat(
        pid=42,
        state="S",
        ppid=1,
        pgid=77,
        utime=5,
        stime=6,
        start_ticks=999,
        rss_bytes=3 * os.sysconf("SC_PAGE_SIZE"),
    )


@pytest.mark.parametrize("data", [b"", b"42", b"42 (x) S 1", b"x (y) " + b"z " * 30])
def test_parse_short_or_malformed_stat_is_none(data):
    assert parse_pid_stat(data) is None


def test_reading_a_process_that_exited_is_none():
    proc = subprocess.Popen(["/bin/true"])
    proc.wait(10)
    assert read_proc(f"/proc/{proc.pid}/stat") is None
    assert read_pid_stat(proc.pid) is None


def test_group_processes_lists_a_session_like_proc_does(session):
    proc = session("sleep 30 & sleep 30 & wait")
    wait_for(lambda: _assert_len(_pgid_members(proc.pid), 3))
    groups = group_processes([proc.pid, 999_999_999])
    assert {s.pid for s in groups[proc.pid]} == _pgid_members(proc.pid)
    assert groups[999_999_999] == []
    assert all(s.pgid == proc.pid and s.alive for s in groups[proc.pid])


def _assert_len(items: Any, n: int) -> None:
    assert len(items) == n, f"{len(items)} items, want {n}: {items}"


def test_group_scan_tolerates_processes_exiting_mid_scan(session):
    proc = session("while :; do /bin/true; done")
    for _ in range(30):
        members = group_processes([proc.pid])[proc.pid]
        assert proc.pid in {s.pid for s in members}


def test_members_refuse_a_reused_group_id(session):
    proc = session("exec sleep 30")
    found = group_processes([proc.pid])[proc.pid]
    start = next(s.start_ticks for s in found if s.pid == proc.pid)
    assert _members(_TaskGroup(proc.pid, start, start), found) == found
    assert _members(_TaskGroup(proc.pid, start + 1, start + 5), found) == []


# --- the sampler ------------------------------------------------------------------------


def test_sampler_exchange_returns_the_previous_reading():
    sampler = StatsSampler(total_compute_mhz=4000, num_cores=4)
    assert sampler.exchange("a", 1, 10.0) is None
    assert sampler.exchange("a", 2, 11.0) == (1, 10.0)
    assert sampler.exchange("b", 3, 11.0) is None
    assert sampler.ticks_consumed(50.0) == 500.0
    sampler.discard("a")
    assert sampler.keys() == ["b"]


def test_sampler_forgets_stale_readings_and_allocs():
    sampler = StatsSampler(total_compute_mhz=1000, num_cores=1, max_age=5.0)
    sampler.exchange("task/A/web", 1, 0.0)
    sampler.exchange("task/A/db", 1, 0.0)
    sampler.exchange("task/B/web", 1, 4.0)
    sampler.forget_alloc("A")
    assert sampler.keys() == ["task/B/web"]
    sampler.exchange("host/cpu", 1, 10.0)
    assert sampler.keys() == ["host/cpu"]


def test_sampler_is_safe_to_share_between_threads():
    sampler = StatsSampler(total_compute_mhz=1000, num_cores=1)
    start = threading.Barrier(8)
    seen: list[list[Any]] = [[] for _ in range(8)]

    def work(i: int) -> None:
        start.wait()
        for n in range(200):
            old = sampler.exchange("shared", (i, n), float(n))
            seen[i].append(old)
            sampler.exchange(f"own/{i}", n, float(n))

    threads = [threading.Thread(target=work, args=(i,), name=f"sampler-{i}") for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(sampler.keys()) == sorted(["shared"] + [f"own/{i}" for i in range(8)])
    handed_back = [old for olds in seen for old in olds if old is not None]
    # Every reading but the last is handed back exactly once.
    assert len(handed_back) == len(set(handed_back)) == 8 * 200 - 1


# --- host stats -------------------------------------------------------------------------


def test_host_stats_shape_and_values(tmp_path):
    sampler = StatsSampler()
    stats = host_stats(str(tmp_path), sampler)
    json.dumps(stats)
    assert set(stats) == HOST_KEYS
    memory = stats["Memory"]
    with open("/proc/meminfo") as fh:
        meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
    assert memory["Total"] == meminfo["MemTotal"]
    assert 0 < memory["Used"] <= memory["Total"]
    assert 0 < memory["Free"] <= memory["Total"] and 0 < memory["Available"] <= memory["Total"]
    with open("/proc/stat") as fh:
        cpus = [line.split()[0] for line in fh if line.startswith("cpu") and line[3].isdigit()]
    assert [c["CPU"] for c in stats["CPU"]] == cpus
    for cpu in stats["CPU"]:
        assert set(cpu) == {"CPU", "User", "System", "Idle", "TotalPercent", "TotalTicks"}
        assert 0 <= cpu["User"] + cpu["System"] <= cpu["TotalPercent"] + 1e-9 <= 100 + 1e-9
        assert 0 <= cpu["Idle"] <= 100
    assert stats["CPUTicksConsumed"] == pytest.approx(sum(c["TotalTicks"] for c in stats["CPU"]))
    with open("/proc/uptime") as fh:
        assert abs(stats["Uptime"] - float(fh.read().split()[0])) <= 2
    assert abs(stats["Timestamp"] - time.time_ns()) < 10 * 10**9
    assert stats["DeviceStats"] == []


def test_host_disk_stats_match_statvfs(tmp_path):
    stats = host_stats(str(tmp_path))
    st = os.statvfs(tmp_path)
    alloc_dir = stats["AllocDirStats"]
    assert set(alloc_dir) == DISK_KEYS
    assert alloc_dir["Size"] == st.f_blocks * st.f_frsize
    assert 0 <= alloc_dir["UsedPercent"] <= 100
    assert stats["DiskStats"], "no block-device filesystem found"
    for disk in stats["DiskStats"]:
        assert set(disk) == DISK_KEYS
        assert os.path.isabs(disk["Mountpoint"]) and disk["Device"]
    assert len({d["Mountpoint"] for d in stats["DiskStats"]}) == len(stats["DiskStats"])


def test_host_stats_of_a_missing_alloc_dir_are_zeros(tmp_path):
    stats = host_stats(str(tmp_path / "missing"))
    assert stats["AllocDirStats"]["Size"] == 0


def test_host_cpu_percentages_cover_the_interval_with_a_sampler(session, tmp_path):
    sampler = StatsSampler()
    host_stats(str(tmp_path), sampler)
    session("while :; do :; done")

    def busy() -> None:
        stats = host_stats(str(tmp_path), sampler)
        assert sum(c["TotalPercent"] for c in stats["CPU"]) > 50, stats["CPU"]
        assert stats["CPUTicksConsumed"] > 0

    wait_for(busy, timeout=10, interval=0.2)


# --- allocation stats -------------------------------------------------------------------


def _raw_exec(name: str, script: str) -> Any:
    return mock_task(
        name,
        driver="raw_exec",
        config={"command": "/bin/sh", "args": ["-c", script]},
        kill_timeout=2.0,
    )


def _running_pgid(ar: AllocRunner, task: str) -> int:
    handle = ar.task_runner(task).local_state().task_handle
    assert handle is not None, f"task {task} has no handle yet"
    return int(handle.driver_state["pgid"])


@pytest.fixture
def busy_alloc(make_runner) -> AllocRunner:
    """A batch allocation: a CPU-busy raw_exec loop, a raw_exec task that exits at once
    and a mock_driver task that runs for a while."""
    job = mock_job(
        _raw_exec("busy", "while :; do :; done"),
        _raw_exec("quick", "exit 0"),
        mock_task("mock", config={"run_for": "30s"}),
        job_type="batch",
    )
    ar = make_runner(new_allocation(job, "web"))
    ar.start()

    def started() -> None:
        states = ar.alloc_state().task_states
        assert states["busy"].state == "running"
        assert states["quick"].state == "dead"
        assert states["mock"].state == "running"
        assert ar.task_runner("quick").local_state().task_handle is None
        _running_pgid(ar, "busy")

    wait_for(started, timeout=20)
    return ar


def test_alloc_stats_of_a_busy_raw_exec_task(busy_alloc):
    ar = busy_alloc
    sampler = StatsSampler()
    pgid = _running_pgid(ar, "busy")
    wait_for(lambda: _assert_len(_pgid_members(pgid), 1))  # the shell running the loop
    first = alloc_stats(ar, sampler)
    json.dumps(first)
    assert set(first) == {"ResourceUsage", "Tasks", "Timestamp"}
    assert set(first["Tasks"]) == {"busy", "quick", "mock"}
    busy = first["Tasks"]["busy"]
    assert set(busy) == {"ResourceUsage", "Timestamp", "Pids"}
    assert {int(p) for p in busy["Pids"]} == _pgid_members(pgid)
    assert pgid in {int(p) for p in busy["Pids"]}
    _assert_usage_shape(busy["ResourceUsage"])
    memory = busy["ResourceUsage"]["MemoryStats"]
    assert memory["RSS"] > 0
    assert memory["RSS"] == sum(u["MemoryStats"]["RSS"] for u in busy["Pids"].values())
    for pid, usage in busy["Pids"].items():
        _assert_usage_shape(usage)
        assert abs(usage["MemoryStats"]["RSS"] - _rss_bytes(int(pid))) < 4 * 1024 * 1024
        assert usage["CpuStats"]["Percent"] == 0.0  # first reading of the process
    assert first["Timestamp"] == busy["Timestamp"] > 0

    def second_reading_shows_cpu() -> dict[str, Any]:
        stats = alloc_stats(ar, sampler)
        cpu = stats["Tasks"]["busy"]["ResourceUsage"]["CpuStats"]
        assert cpu["Percent"] > 0, cpu
        return stats

    second = wait_for(second_reading_shows_cpu, timeout=10, interval=0.1)
    cpu = second["Tasks"]["busy"]["ResourceUsage"]["CpuStats"]
    assert cpu["Percent"] == pytest.approx(cpu["UserMode"] + cpu["SystemMode"])
    assert cpu["TotalTicks"] == pytest.approx(sampler.ticks_consumed(cpu["Percent"]))
    assert second["ResourceUsage"] == second["Tasks"]["busy"]["ResourceUsage"]


def test_finished_and_mock_tasks_report_zeros(busy_alloc):
    stats = alloc_stats(busy_alloc, StatsSampler())
    for name in ("quick", "mock"):
        task = stats["Tasks"][name]
        assert task["Pids"] == {}
        _assert_zero(task["ResourceUsage"])


def test_alloc_stats_of_one_task(busy_alloc):
    sampler = StatsSampler()
    stats = alloc_stats(busy_alloc, sampler, task="busy")
    assert set(stats["Tasks"]) == {"busy"}
    assert stats["Tasks"]["busy"]["ResourceUsage"]["MemoryStats"]["RSS"] > 0
    alloc_id = busy_alloc.alloc().id
    assert sampler.keys() == [f"task/{alloc_id}/busy"]
    with pytest.raises(UnknownTaskError):
        alloc_stats(busy_alloc, sampler, task="nope")


def test_a_destroyed_allocation_reports_zeros(busy_alloc):
    ar = busy_alloc
    sampler = StatsSampler()
    pgid = _running_pgid(ar, "busy")
    alloc_stats(ar, sampler)
    ar.destroy()
    assert ar.wait_destroyed(30)
    wait_for(lambda: _assert_len(_pgid_members(pgid), 0))
    stats = alloc_stats(ar, sampler)
    for task in stats["Tasks"].values():
        assert task["Pids"] == {}
        _assert_zero(task["ResourceUsage"])
    _assert_zero(stats["ResourceUsage"])
    assert stats["Timestamp"] == 0
    assert sampler.keys() == []
