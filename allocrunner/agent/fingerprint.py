"""The node fingerprint: who this node is and what it has, under Nomad's names.

The agent presents its host as one Nomad node. `fingerprint` gathers the facts once,
from the kernel (``uname``, ``/proc/cpuinfo``, ``/proc/meminfo``, cpufreq in ``/sys``),
``/etc/os-release`` and the filesystem holding the alloc dirs, into a frozen `NodeInfo`.
The attribute keys are the ones Nomad's client fingerprinters set (``cpu.arch``,
``cpu.numcores``, ``kernel.name``, ``unique.storage.volume``, ``nomad.version``, …, and
``driver.<name>`` = ``"1"`` for each detected driver), so constraints and ``${attr.*}``
interpolation written for Nomad see the same keys and value formats.

The node id is a UUID created on first start and kept in ``<data_dir>/client/node-id``
(`load_node_id`), so a restarted agent is the same node. Nomad exposes it to tasks as
``node.unique.id``; there is no ``unique.id`` attribute.

`node_json` and `node_stub_json` render a `NodeInfo` in the JSON shapes of Nomad's
``/v1/node/:id`` and ``/v1/nodes``; `interpolation_vars` gives the ``node.*``,
``attr.*`` and ``meta.*`` variables a task's config may reference.

Where this differs from Nomad: ``os.version`` is ``VERSION_ID`` of os-release as is;
``unique.storage.bytesfree`` (dropped by Nomad 1.11) is still reported, while ``DiskMB``
is the filesystem's total size as in current Nomad; a CPU whose frequency cannot be read
is counted at `FALLBACK_CPU_MHZ` per core for ``cpu.totalcompute`` (``cpu.frequency``
is then left out) rather than at zero, which would leave the node no CPU to schedule.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import re
import signal
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from allocrunner.config import ClientConfig
from allocrunner.jobspec._kinds import format_rfc3339
from allocrunner.structs.frozen import FrozenDict

__all__ = [
    "DEFAULT_DRIVERS",
    "FALLBACK_CPU_MHZ",
    "CpuFacts",
    "NodeInfo",
    "NodeResources",
    "StorageFacts",
    "detect_cpu",
    "fingerprint",
    "go_arch",
    "interpolation_vars",
    "load_node_id",
    "mem_total_bytes",
    "node_json",
    "node_stub_json",
    "read_os_release",
    "storage_facts",
    "unescape_mount_field",
]

NODE_ID_FILE = "node-id"
"""The node id's file, under ``<data_dir>/client``."""
DEFAULT_DRIVERS: tuple[str, ...] = ("mock_driver", "raw_exec")
FALLBACK_CPU_MHZ = 1000
"""MHz per core assumed when the kernel reports no CPU frequency (e.g. some ARM VMs)."""
MIB = 1024 * 1024
# Nomad's default dynamic port range, reported in NodeResources.
MIN_DYNAMIC_PORT = 20000
MAX_DYNAMIC_PORT = 32000

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


# --- the node id ----------------------------------------------------------------------


def load_node_id(data_dir: str | os.PathLike[str]) -> str:
    """This node's id: the UUID in ``<data_dir>/client/node-id``, created there (with
    its directories) when missing, and replaced when the file is empty or corrupt.

    The file is written to a temporary name and then linked (new file) or renamed
    (replacement) into place, so a reader never sees half an id; when two processes
    create it at once, both return the id that won."""
    directory = os.path.join(os.fspath(data_dir), "client")
    path = os.path.join(directory, NODE_ID_FILE)
    existing = _read_node_id(path)
    if existing is not None:
        return existing
    os.makedirs(directory, exist_ok=True)
    corrupt = os.path.lexists(path)
    _install_file(path, str(uuid.uuid4()) + "\n", replace=corrupt)
    installed = _read_node_id(path)
    if installed is None:
        raise OSError(f"node id file {path} could not be written")
    return installed


def _read_node_id(path: str) -> str | None:
    """The canonical UUID stored at `path`; None when missing, unreadable or corrupt."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read(128).strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _install_file(path: str, text: str, *, replace: bool) -> None:
    """Write `text` to a temporary file beside `path`, then move it into place: a rename
    over `path` when `replace`, else a link that leaves an existing file alone."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# --- host facts -----------------------------------------------------------------------


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


def mount_source(path: str) -> str:
    """The device (mount source) of the mount that holds `path`, from
    /proc/self/mountinfo; "" if it cannot be told."""
    real = os.path.realpath(path)
    best_point, best_source = "", ""
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return ""
    for line in lines:
        left, sep, right = line.partition(b" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        point = unescape_mount_field(fields[4])
        if _within(real, point) and len(point) >= len(best_point):
            best_point, best_source = point, unescape_mount_field(tail[1])
    return best_source


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


def _host_id() -> str:
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


def _signal_names() -> str:
    names = {
        s.name
        for s in signal.Signals
        if s.name.startswith("SIG") and "_" not in s.name and not s.name.startswith("SIGRT")
    }
    return ",".join(sorted(names))


def _package_version() -> str:
    try:
        return importlib.metadata.version("allocrunner")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


# --- the node -------------------------------------------------------------------------


def _str_map(value: Mapping[str, Any] | None) -> FrozenDict[str, str]:
    """A frozen str → str mapping; ValueError for a key or value that is not a string."""
    items = dict(value or {})
    for key, val in items.items():
        if not isinstance(key, str) or not isinstance(val, str):
            raise ValueError(f"node attributes and meta map strings to strings: {key!r}: {val!r}")
    return FrozenDict(items)


@attrs.frozen
class NodeResources:
    """Immutable. What the node offers: CPU (MHz over all cores), memory and disk."""

    cpu_mhz: int
    cores: int
    memory_mb: int
    disk_mb: int
    reservable_cores: tuple[int, ...] = ()


@attrs.frozen
class NodeInfo:
    """Immutable. One fingerprint of this node; change with `attrs.evolve`."""

    id: str
    name: str
    datacenter: str
    region: str
    node_class: str
    node_pool: str
    attributes: FrozenDict[str, str] = attrs.field(converter=_str_map)
    meta: FrozenDict[str, str] = attrs.field(converter=_str_map)
    resources: NodeResources
    drivers: tuple[str, ...] = DEFAULT_DRIVERS
    http_addr: str = ""
    fingerprinted_at: datetime = attrs.field(factory=lambda: datetime.now(UTC))

    @property
    def version(self) -> str:
        return self.attributes.get("nomad.version", "")


def fingerprint(
    config: ClientConfig,
    *,
    meta: Mapping[str, str] | None = None,
    node_class: str = "",
    node_pool: str = "default",
    http_addr: str = "",
    drivers: Iterable[str] = DEFAULT_DRIVERS,
) -> NodeInfo:
    """Fingerprint this host as the node `config` describes.

    The id is `config.node_id` if set, else `load_node_id(config.data_dir)` (which may
    create it). `http_addr` (``host:port``) is the address the agent serves on, reported
    as ``HTTPAddr`` and ``unique.advertise.address``; `drivers` are the detected task
    drivers, each reported as ``driver.<name>`` = ``"1"``."""
    node_id = config.node_id or load_node_id(config.data_dir)
    uname = os.uname()
    cpu = detect_cpu()
    memory = mem_total_bytes()
    storage = storage_facts(config.alloc_dir)
    driver_names = tuple(sorted(set(drivers)))
    attributes = {
        **_host_attributes(uname),
        **_cpu_attributes(cpu, uname.machine),
        **_storage_attributes(storage),
        **{f"driver.{name}": "1" for name in driver_names},
        "nomad.version": _package_version(),
        "nomad.revision": "",
        "nomad.service_discovery": "false",
    }
    if memory:
        attributes["memory.totalbytes"] = str(memory)
    if http_addr:
        attributes["unique.advertise.address"] = http_addr
    resources = NodeResources(
        cpu_mhz=cpu.total_compute,
        cores=cpu.cores,
        memory_mb=memory // MIB,
        disk_mb=storage.bytes_total // MIB,
        reservable_cores=cpu.reservable,
    )
    return NodeInfo(
        id=node_id,
        name=uname.nodename,
        datacenter=config.datacenter,
        region=config.region,
        node_class=node_class,
        node_pool=node_pool,
        attributes=attributes,
        meta=meta or {},
        resources=resources,
        drivers=driver_names,
        http_addr=http_addr,
    )


def _host_attributes(uname: os.uname_result) -> dict[str, str]:
    release = read_os_release()
    attributes = {
        "kernel.name": uname.sysname.lower(),
        "kernel.version": uname.release,
        "kernel.arch": uname.machine,
        "unique.hostname": uname.nodename,
        "os.name": release.get("ID", uname.sysname.lower()),
        "os.signals": _signal_names(),
    }
    if release.get("VERSION_ID"):
        attributes["os.version"] = release["VERSION_ID"]
    host_id = _host_id()
    if host_id:
        attributes["unique.host_id"] = host_id
    return attributes


def _cpu_attributes(cpu: CpuFacts, machine: str) -> dict[str, str]:
    attributes = {
        "cpu.arch": go_arch(machine),
        "cpu.numcores": str(cpu.cores),
        "cpu.reservablecores": str(len(cpu.reservable)),
        "cpu.totalcompute": str(cpu.total_compute),
        "cpu.usablecompute": str(cpu.usable_compute),
    }
    if cpu.mhz:
        attributes["cpu.frequency"] = str(cpu.mhz)
    if cpu.model:
        attributes["cpu.modelname"] = cpu.model
    return attributes


def _storage_attributes(storage: StorageFacts) -> dict[str, str]:
    return {
        "unique.storage.volume": storage.volume,
        "unique.storage.bytestotal": str(storage.bytes_total),
        "unique.storage.bytesfree": str(storage.bytes_free),
    }


# --- JSON -----------------------------------------------------------------------------


def _drivers_json(node: NodeInfo) -> dict[str, Any]:
    """Nomad's DriverInfo per detected driver (healthy, fingerprinted with the node)."""
    updated = format_rfc3339(node.fingerprinted_at)
    return {
        name: {
            "Attributes": {f"driver.{name}": "true"},
            "Detected": True,
            "Healthy": True,
            "HealthDescription": "Healthy",
            "UpdateTime": updated,
        }
        for name in node.drivers
    }


def _resources_json(node: NodeInfo) -> dict[str, Any]:
    res = node.resources
    return {
        "Cpu": {
            "CpuShares": res.cpu_mhz,
            "TotalCpuCores": res.cores,
            "ReservableCpuCores": list(res.reservable_cores),
        },
        "Memory": {"MemoryMB": res.memory_mb},
        "Disk": {"DiskMB": res.disk_mb},
        "Networks": [],
        "NodeNetworks": [],
        "Devices": [],
        "MinDynamicPort": MIN_DYNAMIC_PORT,
        "MaxDynamicPort": MAX_DYNAMIC_PORT,
    }


def _reserved_json() -> dict[str, Any]:
    return {
        "Cpu": {"CpuShares": 0, "ReservedCpuCores": []},
        "Memory": {"MemoryMB": 0},
        "Disk": {"DiskMB": 0},
        "Networks": {"ReservedHostPorts": ""},
    }


def computed_class(node: NodeInfo) -> str:
    """A hash of what makes nodes interchangeable for scheduling (datacenter, class,
    pool, non-unique attributes and meta), in Nomad's ``v1:<number>`` form."""
    parts = [node.datacenter, node.node_class, node.node_pool]
    parts += [f"a:{k}={v}" for k, v in sorted(node.attributes.items()) if "unique." not in k]
    parts += [f"m:{k}={v}" for k, v in sorted(node.meta.items()) if "unique." not in k]
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return f"v1:{int.from_bytes(digest[:8], 'big')}"


def node_json(
    node: NodeInfo,
    *,
    create_index: int,
    modify_index: int,
    status: str = "ready",
    status_description: str = "",
) -> dict[str, Any]:
    """`node` in the JSON shape of Nomad's ``GET /v1/node/:id`` (its secret id left out)."""
    registered = format_rfc3339(node.fingerprinted_at)
    return {
        "ID": node.id,
        "Name": node.name,
        "Datacenter": node.datacenter,
        "HTTPAddr": node.http_addr,
        "TLSEnabled": False,
        "Attributes": dict(node.attributes),
        "NodeResources": _resources_json(node),
        "ReservedResources": _reserved_json(),
        "Links": {},
        "Meta": dict(node.meta),
        "NodeClass": node.node_class,
        "NodePool": node.node_pool,
        "ComputedClass": computed_class(node),
        "CgroupParent": "",
        "Drain": False,
        "DrainStrategy": None,
        "SchedulingEligibility": "eligible",
        "Status": status,
        "StatusDescription": status_description,
        "StatusUpdatedAt": int(node.fingerprinted_at.timestamp()),
        "Events": [
            {
                "Message": "Node registered",
                "Subsystem": "Cluster",
                "Details": None,
                "Timestamp": registered,
                "CreateIndex": create_index,
            }
        ],
        "Drivers": _drivers_json(node),
        "HostVolumes": {},
        "HostNetworks": {},
        "CSIControllerPlugins": None,
        "CSINodePlugins": None,
        "GCVolumesOnNodeGC": False,
        "LastDrain": None,
        "NodeMaxAllocs": 0,
        "LastMissedHeartbeatIndex": 0,
        "LastAllocUpdateIndex": 0,
        "CreateIndex": create_index,
        "ModifyIndex": modify_index,
    }


def node_stub_json(
    node: NodeInfo,
    *,
    create_index: int,
    modify_index: int,
    status: str = "ready",
    status_description: str = "",
    resources: bool = False,
    os_name: bool = False,
) -> dict[str, Any]:
    """`node` in the JSON shape of one entry of Nomad's ``GET /v1/nodes`` (NodeListStub).

    `resources` and `os_name` add what the ``resources=true`` and ``os=true`` query
    parameters add: NodeResources and ReservedResources, and ``Attributes`` holding
    only ``os.name``."""
    stub: dict[str, Any] = {
        "Address": _host_of(node.http_addr),
        "ID": node.id,
        "Datacenter": node.datacenter,
        "Name": node.name,
        "NodeClass": node.node_class,
        "NodePool": node.node_pool,
        "Version": node.version,
        "Drain": False,
        "SchedulingEligibility": "eligible",
        "Status": status,
        "StatusDescription": status_description,
        "Drivers": _drivers_json(node),
        "HostVolumes": {},
        "LastDrain": None,
        "CreateIndex": create_index,
        "ModifyIndex": modify_index,
    }
    if os_name:
        stub["Attributes"] = {"os.name": node.attributes.get("os.name", "")}
    if resources:
        stub["NodeResources"] = _resources_json(node)
        stub["ReservedResources"] = _reserved_json()
    return stub


def _host_of(addr: str) -> str:
    """The host part of ``host:port`` (``[v6]:port`` too); "" when there is none."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return ""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def interpolation_vars(node: NodeInfo) -> dict[str, str]:
    """The node variables a task's config may reference: ``node.unique.id``,
    ``node.unique.name``, ``node.datacenter``, ``node.region``, ``node.class``,
    ``node.pool``, ``attr.<key>`` and ``meta.<key>`` (and their ``node.attr.`` /
    ``node.meta.`` spellings)."""
    env = {
        "node.unique.id": node.id,
        "node.unique.name": node.name,
        "node.datacenter": node.datacenter,
        "node.region": node.region,
        "node.class": node.node_class,
        "node.pool": node.node_pool,
    }
    for key, value in node.attributes.items():
        env[f"attr.{key}"] = value
        env[f"node.attr.{key}"] = value
    for key, value in node.meta.items():
        env[f"meta.{key}"] = value
        env[f"node.meta.{key}"] = value
    return env
