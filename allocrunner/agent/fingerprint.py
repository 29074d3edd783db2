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

`interpolation_vars` gives the ``node.*``, ``attr.*`` and ``meta.*`` variables a task's
config may reference, and `with_node_vars` puts them in a `ClientConfig`, which hands
them to every task runner (an embedder without the agent may do the same). The host
facts come from the probes in `allocrunner.agent.host_facts`, and `node_json` /
`node_stub_json` (the JSON shapes of Nomad's ``/v1/node/:id`` and ``/v1/nodes``) live in
`allocrunner.agent.node_shapes`; both are re-exported here.

Where this differs from Nomad: ``os.version`` is ``VERSION_ID`` of os-release as is;
``unique.storage.bytesfree`` (dropped by Nomad 1.11) is still reported, while ``DiskMB``
is the filesystem's total size as in current Nomad; a CPU whose frequency cannot be read
is counted at `FALLBACK_CPU_MHZ` per core for ``cpu.totalcompute`` (``cpu.frequency``
is then left out) rather than at zero, which would leave the node no CPU to schedule.
``unique.network.ip-address`` is the address the node hands its ports out on
(`DEFAULT_NETWORK_IP`, loopback, as a Nomad ``-dev`` agent fingerprints ``lo``), not
the first address of the default route's interface, so it agrees with the tasks'
``NOMAD_IP_<label>``.

Threads: none; `fingerprint` runs once on the agent's starting thread. Locks: none
(`NodeInfo` is immutable, so every request thread may read it). Owner: the `Agent`
fingerprints its node on start and puts the result in the API context.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from allocrunner.agent.host_facts import (
    FALLBACK_CPU_MHZ,
    CpuFacts,
    StorageFacts,
    detect_cpu,
    go_arch,
    host_id,
    mem_total_bytes,
    package_version,
    read_os_release,
    signal_names,
    storage_facts,
    unescape_mount_field,
)
from allocrunner.agent.node_shapes import computed_class, node_json, node_stub_json
from allocrunner.config import ClientConfig
from allocrunner.structs.frozen import FrozenDict

__all__ = [
    "DEFAULT_DRIVERS",
    "DEFAULT_NETWORK_IP",
    "FALLBACK_CPU_MHZ",
    "CpuFacts",
    "NodeInfo",
    "NodeResources",
    "StorageFacts",
    "computed_class",
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
    "with_node_vars",
]

NODE_ID_FILE = "node-id"
"""The node id's file, under ``<data_dir>/client``."""
DEFAULT_DRIVERS: tuple[str, ...] = ("mock_driver", "raw_exec")
DEFAULT_NETWORK_IP = "127.0.0.1"
"""The node's ``unique.network.ip-address``: where the port allocator binds by default."""
MIB = 1024 * 1024


# --- the node id ----------------------------------------------------------------------


def load_node_id(data_dir: str | os.PathLike[str]) -> str:
    """This node's id: the UUID in ``<data_dir>/client/node-id``, created there (with
    its directories) when missing, and replaced when the file is empty or corrupt.

    The file is written to a temporary name and then linked (new file) or renamed
    (replacement) into place, so a reader never sees half an id. A missing file is
    created by a link, which never replaces: when processes create it at once, one
    link wins and each returns the id it finds there. Only a file found there and
    unreadable as an id after that is replaced (a file that appeared since the first
    read is another process's new id, not a corrupt one)."""
    directory = os.path.join(os.fspath(data_dir), "client")
    path = os.path.join(directory, NODE_ID_FILE)
    existing = _read_node_id(path)
    if existing is not None:
        return existing
    os.makedirs(directory, exist_ok=True)
    _install_file(path, str(uuid.uuid4()) + "\n", replace=False)
    installed = _read_node_id(path)
    if installed is None:  # there, but empty or corrupt
        _install_file(path, str(uuid.uuid4()) + "\n", replace=True)
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
    node_class: str | None = None,
    node_pool: str | None = None,
    http_addr: str = "",
    drivers: Iterable[str] = DEFAULT_DRIVERS,
    network_ip: str = DEFAULT_NETWORK_IP,
) -> NodeInfo:
    """Fingerprint this host as the node `config` describes.

    The id is `config.node_id` if set, else `load_node_id(config.data_dir)` (which may
    create it). `meta`, `node_class` and `node_pool` default to the config's.
    `http_addr` (``host:port``) is the address the agent serves on, reported
    as ``HTTPAddr`` and ``unique.advertise.address``; `drivers` are the detected task
    drivers, each reported as ``driver.<name>`` = ``"1"``; `network_ip` the address its
    ports are given on, reported as ``unique.network.ip-address`` ("" leaves it out)."""
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
        "nomad.version": package_version(),
        "nomad.revision": "",
        "nomad.service_discovery": "false",
    }
    if memory:
        attributes["memory.totalbytes"] = str(memory)
    if http_addr:
        attributes["unique.advertise.address"] = http_addr
    if network_ip:
        attributes["unique.network.ip-address"] = network_ip
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
        node_class=config.node_class if node_class is None else node_class,
        node_pool=config.node_pool if node_pool is None else node_pool,
        attributes=attributes,
        meta=config.meta if meta is None else meta,
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
        "os.signals": signal_names(),
    }
    if release.get("VERSION_ID"):
        attributes["os.version"] = release["VERSION_ID"]
    machine_id = host_id()
    if machine_id:
        attributes["unique.host_id"] = machine_id
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


def with_node_vars(config: ClientConfig, node: NodeInfo) -> ClientConfig:
    """`config` telling its tasks about `node`: its id, meta, class and pool, and its
    interpolation variables (`interpolation_vars`) as `ClientConfig.node_vars`."""
    return attrs.evolve(
        config,
        node_id=node.id,
        node_class=node.node_class,
        node_pool=node.node_pool,
        meta=node.meta,
        node_vars=interpolation_vars(node),
    )
