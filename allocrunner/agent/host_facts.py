"""Host facts for the node fingerprint, one probe per source, under Nomad's formats.

Each probe reads one source and returns plain values: `go_arch` (``uname -m`` to
Go's GOARCH), `read_os_release` (``/etc/os-release``), `detect_cpu` (``/proc/cpuinfo``,
cpufreq in ``/sys``, the process's CPU affinity), `mem_total_bytes`
(``/proc/meminfo``), `storage_facts` (``statvfs`` and the mount in
``/proc/self/mountinfo``), `host_id` (DMI product UUID, machine-id or boot id),
`signal_names` and `package_version`. A source that cannot be read gives an empty or
zero value, never an error: a fingerprint is best effort, as Nomad's is.

Threads: none; the probes run on the caller's thread. Locks: none. Owner: plain
functions, called by `allocrunner.agent.fingerprint.fingerprint` once per agent start
(and `detect_cpu` by the stats sampler).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import signal
from collections.abc import Iterable

import attrs

__all__ = [
    "FALLBACK_CPU_MHZ",
    "CpuFacts",
    "Mount",
    "StorageFacts",
    "detect_cpu",
    "go_arch",
    "host_id",
    "mem_total_bytes",
    "mount_of",
    "mount_source",
    "package_version",
    "read_os_release",
    "signal_names",
    "storage_facts",
    "unescape_mount_field",
]

FALLBACK_CPU_MHZ = 1000
"""MHz per core assumed when the kernel reports no CPU frequency (e.g. some ARM VMs)."""

# Python's platform.machine() names (uname -m) to Go's GOARCH names, as Nomad reports them.
_GO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i486": "386",
    "i586": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "mips64": "mips64",
    "loongarch64": "loong64",
}


def go_arch(machine: str) -> str:
    """Go's GOARCH name for a ``uname -m`` machine name (``x86_64`` → ``amd64``)."""
    if machine in _GO_ARCH:
        return _GO_ARCH[machine]
    if machine.startswith("arm"):
        return "arm"
    return machine


def read_os_release(path: str = "/etc/os-release") -> dict[str, str]:
    """The KEY=value pairs of an os-release file (quotes removed); {} if it is absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    values = {}
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#"):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    return values


@attrs.frozen
class CpuFacts:
    """Immutable. The CPU as Nomad's cpu fingerprinter sees it.

    `mhz` is the speed of one core (0 when unknown); `cores` counts every online core,
    `reservable` the ones this process may run on."""

    model: str
    mhz: int
    cores: int
    reservable: tuple[int, ...]

    @property
    def total_compute(self) -> int:
        """MHz across all cores (``cpu.totalcompute``), `FALLBACK_CPU_MHZ` per core if
        the frequency is unknown."""
        return (self.mhz or FALLBACK_CPU_MHZ) * self.cores

    @property
    def usable_compute(self) -> int:
        """MHz across the reservable cores (``cpu.usablecompute``)."""
        return (self.mhz or FALLBACK_CPU_MHZ) * len(self.reservable)


def detect_cpu() -> CpuFacts:
    """The host's CPU model, per-core MHz and cores, from ``/proc`` and ``/sys``."""
    info = _cpuinfo_fields()
    cores = os.cpu_count() or 1
    try:
        reservable = tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        reservable = tuple(range(cores))
    mhz = _cpufreq_mhz() or _cpuinfo_mhz(info)
    model = next((v for k, v in info if k in ("model name", "Model", "cpu model")), "")
    return CpuFacts(model=model, mhz=mhz, cores=cores, reservable=reservable)


def _cpuinfo_fields() -> list[tuple[str, str]]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    fields = []
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            fields.append((key.strip(), value.strip()))
    return fields


def _cpufreq_mhz() -> int:
    """The highest maximum frequency cpufreq reports for any core, in MHz; 0 if none."""
    base = "/sys/devices/system/cpu"
    best = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        try:
            with open(f"{base}/{name}/cpufreq/cpuinfo_max_freq", encoding="ascii") as fh:
                best = max(best, int(fh.read().strip()) // 1000)
        except (OSError, ValueError):
            continue
    return best


def _cpuinfo_mhz(info: Iterable[tuple[str, str]]) -> int:
    """The highest ``cpu MHz`` in /proc/cpuinfo; 0 if none."""
    best = 0.0
    for key, value in info:
        if key == "cpu MHz":
            with contextlib.suppress(ValueError):
                best = max(best, float(value))
    return int(best)


def mem_total_bytes() -> int:
    """``MemTotal`` of /proc/meminfo in bytes; 0 if it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


@attrs.frozen
class StorageFacts:
    """Immutable. The filesystem holding a path: its device, size and free bytes (the
    ``df`` columns Nomad's storage fingerprinter reads)."""

    volume: str
    bytes_total: int
    bytes_free: int


def storage_facts(path: str | os.PathLike[str]) -> StorageFacts:
    """The filesystem holding `path`, or its nearest existing ancestor when `path` does
    not exist yet (nothing is created)."""
    target = _existing_ancestor(os.path.abspath(os.fspath(path)))
    st = os.statvfs(target)
    return StorageFacts(
        volume=mount_source(target),
        bytes_total=st.f_blocks * st.f_frsize,
        bytes_free=st.f_bavail * st.f_frsize,
    )


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


@attrs.frozen
class Mount:
    """Immutable. A mount as /proc/self/mountinfo lists it."""

    point: str
    fstype: str
    source: str
    device: str  # major:minor


def mount_of(path: str | os.PathLike[str]) -> Mount | None:
    """The mount that holds `path`, from /proc/self/mountinfo; None if it cannot be
    told."""
    real = os.path.realpath(path)
    best: Mount | None = None
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(b" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        point = unescape_mount_field(fields[4])
        if _within(real, point) and (best is None or len(point) >= len(best.point)):
            best = Mount(
                point=point,
                fstype=unescape_mount_field(tail[0]),
                source=unescape_mount_field(tail[1]),
                device=fields[2].decode("ascii", "replace"),
            )
    return best


def mount_source(path: str) -> str:
    """The device (mount source) of the mount that holds `path`, from
    /proc/self/mountinfo; "" if it cannot be told."""
    mount = mount_of(path)
    return "" if mount is None else mount.source


def _within(path: str, mount_point: str) -> bool:
    if mount_point == "/":
        return True
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def unescape_mount_field(raw: bytes) -> str:
    """A field of /proc/self/mountinfo or /proc/self/mounts with the kernel's octal
    escapes (``\\040`` for a space) undone, decoded as UTF-8."""
    return _OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), raw).decode(
        "utf-8", "replace"
    )


def host_id() -> str:
    """A stable id of the machine, as gopsutil finds it: the DMI product UUID, else the
    machine-id, else this boot's id; "" if none is readable."""
    for path in (
        "/sys/class/dmi/id/product_uuid",
        "/etc/machine-id",
        "/proc/sys/kernel/random/boot_id",
    ):
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                text = fh.read().strip().lower()
        except OSError:
            continue
        if len(text) == 32 and "-" not in text:
            text = f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
        if text:
            return text
    return ""


def signal_names() -> str:
    names = {
        s.name
        for s in signal.Signals
        if s.name.startswith("SIG") and "_" not in s.name and not s.name.startswith("SIGRT")
    }
    return ",".join(sorted(names))


def package_version() -> str:
    try:
        return importlib.metadata.version("allocrunner")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
