"""The node fingerprint against what the OS itself reports: the node id kept on disk
across calls and processes, attributes under Nomad's names matching uname, the CPU
count, /proc/meminfo, os-release and df, and the node JSON shapes the Nomad CLI and
python-nomad read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import attrs
import pytest

import allocrunner.agent.fingerprint as fingerprint_module
from allocrunner.agent.fingerprint import (
    DEFAULT_DRIVERS,
    NodeInfo,
    fingerprint,
    go_arch,
    interpolation_vars,
    load_node_id,
    node_json,
    node_stub_json,
    read_os_release,
    unescape_mount_field,
)
from allocrunner.config import ClientConfig

# What Nomad's CLI (`node status`) and API structs read of a node.
NODE_KEYS = {
    "ID",
    "Name",
    "Datacenter",
    "HTTPAddr",
    "TLSEnabled",
    "Attributes",
    "NodeResources",
    "ReservedResources",
    "Links",
    "Meta",
    "NodeClass",
    "NodePool",
    "ComputedClass",
    "CgroupParent",
    "Drain",
    "DrainStrategy",
    "SchedulingEligibility",
    "Status",
    "StatusDescription",
    "StatusUpdatedAt",
    "Events",
    "Drivers",
    "HostVolumes",
    "HostNetworks",
    "CSIControllerPlugins",
    "CSINodePlugins",
    "LastDrain",
    "NodeMaxAllocs",
    "CreateIndex",
    "ModifyIndex",
}
STUB_KEYS = {
    "Address",
    "ID",
    "Datacenter",
    "Name",
    "NodeClass",
    "NodePool",
    "Version",
    "Drain",
    "SchedulingEligibility",
    "Status",
    "StatusDescription",
    "Drivers",
    "LastDrain",
    "CreateIndex",
    "ModifyIndex",
}
LOAD_ID_SCRIPT = (
    "import sys; from allocrunner.agent.fingerprint import load_node_id; "
    "print(load_node_id(sys.argv[1]))"
)
DRIVER_INFO_KEYS = {"Attributes", "Detected", "Healthy", "HealthDescription", "UpdateTime"}


@pytest.fixture
def config(tmp_path) -> ClientConfig:
    return ClientConfig.for_data_dir(tmp_path / "data")


@pytest.fixture
def node(config) -> NodeInfo:
    return fingerprint(config, meta={"rack": "r1"}, node_class="batch", http_addr="127.0.0.1:4646")


def _id_file(data_dir) -> str:
    return os.path.join(data_dir, "client", "node-id")


def _meminfo_total() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


# --- node id ----------------------------------------------------------------------------


def test_node_id_is_created_once_with_its_directories(tmp_path):
    data_dir = tmp_path / "fresh" / "data"
    first = load_node_id(data_dir)
    assert str(uuid.UUID(first)) == first
    with open(_id_file(data_dir)) as fh:
        assert fh.read().strip() == first
    assert load_node_id(data_dir) == first
    assert load_node_id(str(data_dir)) == first
    assert os.listdir(data_dir / "client") == ["node-id"], "temporary files left behind"


def test_node_id_is_kept_across_processes(tmp_path):
    mine = load_node_id(tmp_path)
    code = LOAD_ID_SCRIPT
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == mine


def test_processes_creating_the_id_at_once_agree(tmp_path):
    code = LOAD_ID_SCRIPT
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    ids = {proc.communicate(timeout=30)[0].strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert ids == {load_node_id(tmp_path)}


def test_an_id_another_process_creates_after_the_first_look_is_kept(tmp_path, monkeypatch):
    """The window the test above can only hit by chance: the first look finds no file,
    then another process links its id into place. That file is a new id, not a
    corrupt one, and is returned as it is."""
    theirs = str(uuid.uuid4())
    looks: list[str] = []
    real_read = fingerprint_module._read_node_id

    def read(path: str) -> str | None:
        looks.append(path)
        if len(looks) == 1:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(theirs + "\n")
            return None
        return real_read(path)

    monkeypatch.setattr(fingerprint_module, "_read_node_id", read)
    assert load_node_id(tmp_path) == theirs
    with open(_id_file(tmp_path), encoding="utf-8") as fh:
        assert fh.read().strip() == theirs


@pytest.mark.parametrize("content", ["", "\n", "not-a-uuid\n", "\x00\xff garbage"])
def test_corrupt_or_empty_id_file_is_replaced(tmp_path, content):
    path = _id_file(tmp_path)
    os.makedirs(os.path.dirname(path))
    with open(path, "w", encoding="latin-1") as fh:
        fh.write(content)
    new = load_node_id(tmp_path)
    assert str(uuid.UUID(new)) == new
    with open(path) as fh:
        assert fh.read().strip() == new
    assert load_node_id(tmp_path) == new


def test_a_valid_id_is_read_back_canonically(tmp_path):
    known = uuid.uuid4()
    os.makedirs(tmp_path / "client")
    with open(_id_file(tmp_path), "w") as fh:
        fh.write(f"  {str(known).upper()}  \n")
    assert load_node_id(tmp_path) == str(known)


# --- attributes -------------------------------------------------------------------------


def test_config_node_id_wins_over_the_file(tmp_path):
    config = ClientConfig.for_data_dir(tmp_path, node_id="11111111-2222-3333-4444-555555555555")
    assert fingerprint(config).id == "11111111-2222-3333-4444-555555555555"
    assert not os.path.exists(_id_file(tmp_path))


def test_node_identity_fields(config, node):
    assert node.id == load_node_id(config.data_dir)
    assert node.name == os.uname().nodename
    assert node.datacenter == "dc1" and node.region == "global"
    assert node.node_class == "batch" and node.node_pool == "default"
    assert dict(node.meta) == {"rack": "r1"}
    assert node.drivers == tuple(sorted(DEFAULT_DRIVERS))


def test_host_attributes_match_uname_and_os_release(node):
    uname = os.uname()
    attrs_ = node.attributes
    assert attrs_["kernel.name"] == "linux"
    assert attrs_["kernel.version"] == uname.release
    assert attrs_["kernel.arch"] == uname.machine
    assert attrs_["unique.hostname"] == uname.nodename
    release = read_os_release()
    assert attrs_["os.name"] == release.get("ID", "linux")
    if "VERSION_ID" in release:
        assert attrs_["os.version"] == release["VERSION_ID"]
    assert "SIGTERM" in attrs_["os.signals"].split(",")
    assert "unique.id" not in attrs_  # Nomad exposes the id as node.unique.id only


def test_cpu_attributes_match_the_os(node):
    attrs_ = node.attributes
    cores = os.cpu_count()
    assert attrs_["cpu.arch"] == go_arch(os.uname().machine)
    assert attrs_["cpu.numcores"] == str(cores)
    assert attrs_["cpu.reservablecores"] == str(len(os.sched_getaffinity(0)))
    total = int(attrs_["cpu.totalcompute"])
    assert total > 0
    if "cpu.frequency" in attrs_:
        assert total == int(attrs_["cpu.frequency"]) * cores
    with open("/proc/cpuinfo") as fh:
        models = {line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")}
    if models:
        assert attrs_["cpu.modelname"] in models
    assert node.resources.cores == cores
    assert node.resources.cpu_mhz == total


def test_memory_matches_proc_meminfo(node):
    total = _meminfo_total()
    assert node.attributes["memory.totalbytes"] == str(total)
    assert node.resources.memory_mb == total // (1024 * 1024)


def test_storage_matches_df(tmp_path):
    config = ClientConfig.for_data_dir(tmp_path)
    os.makedirs(config.alloc_dir)
    node = fingerprint(config)
    out = (
        subprocess.run(["df", "-kP", config.alloc_dir], capture_output=True, text=True, check=True)
        .stdout.splitlines()[1]
        .split()
    )
    attrs_ = node.attributes
    assert attrs_["unique.storage.volume"] == out[0]
    assert abs(int(attrs_["unique.storage.bytestotal"]) - int(out[1]) * 1024) < 1024
    assert 0 <= int(attrs_["unique.storage.bytesfree"]) <= int(attrs_["unique.storage.bytestotal"])
    assert node.resources.disk_mb == int(attrs_["unique.storage.bytestotal"]) // (1024 * 1024)


def test_missing_alloc_dir_is_measured_at_its_parent_and_not_created(tmp_path):
    config = ClientConfig.for_data_dir(tmp_path / "not" / "yet")
    node = fingerprint(config)
    assert int(node.attributes["unique.storage.bytestotal"]) > 0
    assert not os.path.exists(config.alloc_dir)


def test_driver_and_version_attributes(node):
    import importlib.metadata

    assert node.attributes["driver.raw_exec"] == "1"
    assert node.attributes["driver.mock_driver"] == "1"
    assert node.attributes["nomad.version"] == importlib.metadata.version("allocrunner")
    assert node.attributes["unique.advertise.address"] == "127.0.0.1:4646"


def test_drivers_can_be_narrowed(config):
    node = fingerprint(config, drivers=["raw_exec"])
    assert node.drivers == ("raw_exec",)
    assert "driver.mock_driver" not in node.attributes
    assert set(node_json(node, create_index=1, modify_index=1)["Drivers"]) == {"raw_exec"}


def test_meta_must_map_strings_to_strings(config):
    with pytest.raises(ValueError, match="rack"):
        fingerprint(config, meta={"rack": 3})


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "amd64"),
        ("aarch64", "arm64"),
        ("i686", "386"),
        ("armv7l", "arm"),
        ("ppc64le", "ppc64le"),
        ("s390x", "s390x"),
    ],
)
def test_go_arch_names(machine, arch):
    assert go_arch(machine) == arch


def test_read_os_release_unquotes(tmp_path):
    path = tmp_path / "os-release"
    path.write_text("# comment\nID=debian\nVERSION_ID=\"12\"\nNAME='Debian GNU/Linux'\nbad line\n")
    assert read_os_release(str(path)) == {
        "ID": "debian",
        "VERSION_ID": "12",
        "NAME": "Debian GNU/Linux",
    }
    assert read_os_release(str(tmp_path / "missing")) == {}


def test_mount_fields_are_unescaped():
    assert unescape_mount_field(rb"/mnt/a\040b\134c\011d") == "/mnt/a b\\c\td"
    assert unescape_mount_field("/mnt/é".encode()) == "/mnt/é"


# --- JSON -------------------------------------------------------------------------------


def test_node_json_has_every_key_nomad_reads(node):
    body = node_json(node, create_index=3, modify_index=7)
    assert set(body) >= NODE_KEYS
    json.dumps(body)  # plain JSON values only
    assert body["ID"] == node.id and body["Name"] == node.name
    assert body["HTTPAddr"] == "127.0.0.1:4646"
    assert body["Status"] == "ready" and body["SchedulingEligibility"] == "eligible"
    assert body["Drain"] is False and body["TLSEnabled"] is False
    assert body["Attributes"] == dict(node.attributes)
    assert body["Meta"] == {"rack": "r1"}
    assert (body["CreateIndex"], body["ModifyIndex"]) == (3, 7)
    assert body["ComputedClass"].startswith("v1:")
    assert isinstance(body["StatusUpdatedAt"], int)
    assert [e["Message"] for e in body["Events"]] == ["Node registered"]


def test_node_json_resources(node):
    res = node_json(node, create_index=1, modify_index=1)["NodeResources"]
    assert res["Cpu"]["CpuShares"] == int(node.attributes["cpu.totalcompute"])
    assert res["Cpu"]["TotalCpuCores"] == os.cpu_count()
    assert res["Cpu"]["ReservableCpuCores"] == sorted(os.sched_getaffinity(0))
    assert res["Memory"]["MemoryMB"] == _meminfo_total() // (1024 * 1024)
    assert res["Disk"]["DiskMB"] == node.resources.disk_mb
    assert res["Networks"] == [] and res["Devices"] == []
    reserved = node_json(node, create_index=1, modify_index=1)["ReservedResources"]
    assert reserved["Cpu"]["CpuShares"] == 0 and reserved["Memory"]["MemoryMB"] == 0


def test_node_json_drivers(node):
    drivers = node_json(node, create_index=1, modify_index=1)["Drivers"]
    assert set(drivers) == {"raw_exec", "mock_driver"}
    for name, info in drivers.items():
        assert set(info) == DRIVER_INFO_KEYS
        assert info["Detected"] is True and info["Healthy"] is True
        assert info["Attributes"] == {f"driver.{name}": "true"}
        assert info["UpdateTime"].endswith("Z")


def test_node_json_status_can_be_given(node):
    body = node_json(node, create_index=1, modify_index=2, status="down", status_description="x")
    assert (body["Status"], body["StatusDescription"]) == ("down", "x")


def test_node_stub_json(node):
    stub = node_stub_json(node, create_index=3, modify_index=7)
    assert set(stub) >= STUB_KEYS
    json.dumps(stub)
    assert stub["Address"] == "127.0.0.1"
    assert stub["Version"] == node.attributes["nomad.version"]
    assert "NodeResources" not in stub and "Attributes" not in stub
    full = node_stub_json(node, create_index=3, modify_index=7, resources=True, os_name=True)
    assert full["Attributes"] == {"os.name": node.attributes["os.name"]}
    assert full["NodeResources"] == node_json(node, create_index=3, modify_index=7)["NodeResources"]


def test_node_stub_address_forms(node):
    for addr, host in [("[::1]:4646", "::1"), ("10.0.0.5:80", "10.0.0.5"), ("", "")]:
        stub = node_stub_json(attrs.evolve(node, http_addr=addr), create_index=1, modify_index=1)
        assert stub["Address"] == host


def test_interpolation_vars(node):
    env = interpolation_vars(node)
    assert env["node.unique.id"] == node.id
    assert env["node.unique.name"] == node.name
    assert env["node.datacenter"] == "dc1"
    assert env["node.region"] == "global"
    assert env["node.class"] == "batch"
    assert env["node.pool"] == "default"
    assert env["attr.kernel.name"] == "linux"
    assert env["node.attr.driver.raw_exec"] == "1"
    assert env["meta.rack"] == env["node.meta.rack"] == "r1"
    assert all(isinstance(v, str) for v in env.values())
