"""PortAllocator: static and dynamic host ports, bind tests, all-or-nothing, env."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from allocrunner.errors import JobSpecError
from allocrunner.placement import (
    AllocatedPort,
    PortAllocator,
    PortAsk,
    PortPlacementError,
    port_asks_from_json,
    port_env,
    port_is_free,
    ports_from_json,
    ports_json,
)


@pytest.fixture
def bound_port() -> Iterator[int]:
    """A TCP port held by a real listening socket on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_static_and_dynamic_ports_with_to_mapping() -> None:
    allocator = PortAllocator(host_ip="10.0.0.5", seed=1)
    ports = allocator.reserve(
        "a1",
        [
            PortAsk("db"),
            PortAsk("web", to=8080),
            PortAsk("same", to=-1),
        ],
    )
    by_label = {p.label: p for p in ports}
    assert [p.label for p in ports] == ["db", "web", "same"]
    for port in ports:
        assert 20000 <= port.value <= 32000
        assert port.host_ip == "10.0.0.5"
    assert by_label["db"].to == 0
    assert by_label["web"].to == 8080
    assert by_label["same"].to == by_label["same"].value  # -1 means the host port
    assert len({p.value for p in ports}) == 3
    assert allocator.ports_of("a1") == tuple(ports)


def test_a_static_port_held_by_a_real_socket_is_refused(bound_port: int) -> None:
    assert not port_is_free(bound_port)
    allocator = PortAllocator()
    with pytest.raises(
        PortPlacementError, match=rf"reserved port collision http={bound_port}"
    ) as err:
        allocator.reserve("a1", [PortAsk("http", value=bound_port)])
    assert err.value.port == bound_port and err.value.label == "http"
    assert allocator.held() == frozenset()
    assert allocator.ports_of("a1") == ()


@pytest.fixture
def busy_port_with_free_neighbour() -> Iterator[int]:
    """A TCP port held by a listening socket on 127.0.0.1 whose next port is free: the
    kernel hands out ports until one has a free neighbour (all are held meanwhile, so
    none repeats)."""
    held: list[socket.socket] = []
    try:
        for _ in range(100):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
            port = sock.getsockname()[1]
            if port < 65535 and port_is_free(port + 1):
                yield port
                return
        raise AssertionError("no port with a free neighbour in 100 tries")
    finally:
        for sock in held:
            sock.close()


def test_a_dynamic_port_busy_on_the_host_is_picked_again(
    busy_port_with_free_neighbour: int,
) -> None:
    busy = busy_port_with_free_neighbour
    allocator = PortAllocator(min_dynamic_port=busy, max_dynamic_port=busy + 1)
    [port] = allocator.reserve("a1", [PortAsk("db")])
    assert port.value == busy + 1


def test_a_static_port_of_another_alloc_is_refused_until_released() -> None:
    allocator = PortAllocator()
    [dynamic] = allocator.reserve("a1", [PortAsk("db")])
    with pytest.raises(PortPlacementError, match=f"db2={dynamic.value}"):
        allocator.reserve("a2", [PortAsk("db2", value=dynamic.value)])
    assert allocator.release("a1") == (dynamic,)
    assert allocator.release("a1") == ()
    [again] = allocator.reserve("a2", [PortAsk("db2", value=dynamic.value)])
    assert again.value == dynamic.value
    assert allocator.held() == frozenset({dynamic.value})


def test_all_or_nothing_when_one_static_port_fails(bound_port: int) -> None:
    allocator = PortAllocator()
    free_static = _free_port()
    with pytest.raises(PortPlacementError, match=f"b={bound_port}"):
        allocator.reserve(
            "a1",
            [PortAsk("a", value=free_static), PortAsk("d"), PortAsk("b", value=bound_port)],
        )
    assert allocator.held() == frozenset()
    # everything is free for the next one
    ports = allocator.reserve("a2", [PortAsk("a", value=free_static), PortAsk("d")])
    assert ports[0].value == free_static


def test_all_or_nothing_when_the_dynamic_range_runs_out() -> None:
    allocator = PortAllocator(
        min_dynamic_port=30100, max_dynamic_port=30101, bind_test=lambda p: True
    )
    allocator.reserve("a1", [PortAsk("x")])
    with pytest.raises(PortPlacementError, match="dynamic port selection failed"):
        allocator.reserve("a2", [PortAsk("y"), PortAsk("z")])
    assert len(allocator.held()) == 1
    allocator.reserve("a3", [PortAsk("y")])
    assert allocator.held() == frozenset({30100, 30101})


def test_node_reserved_ports_are_never_given() -> None:
    allocator = PortAllocator(
        min_dynamic_port=30200,
        max_dynamic_port=30201,
        reserved_ports=[30200, 22],
        bind_test=lambda p: True,
    )
    with pytest.raises(PortPlacementError, match="ssh=22: reserved by the node"):
        allocator.reserve("a1", [PortAsk("ssh", value=22)])
    for _ in range(5):
        [port] = allocator.reserve("a1", [PortAsk("db")])
        assert port.value == 30201
        allocator.release("a1")


@pytest.mark.usefixtures("fast_switching")
def test_fifty_threads_reserve_distinct_free_ports() -> None:
    allocator = PortAllocator()
    results: dict[int, list[AllocatedPort]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(50)

    def reserve(i: int) -> None:
        try:
            start.wait()
            results[i] = allocator.reserve(f"alloc-{i}", [PortAsk("a"), PortAsk("b")])
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=reserve, args=(i,), name=f"reserve-{i}") for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    values = [p.value for ports in results.values() for p in ports]
    assert len(values) == 100
    assert len(set(values)) == 100
    assert allocator.held() == frozenset(values)
    for value in values:
        assert port_is_free(value)  # free on the host: nothing bound them meanwhile
    for i in range(50):
        allocator.release(f"alloc-{i}")
    assert allocator.held() == frozenset()


@pytest.mark.usefixtures("fast_switching")
def test_concurrent_static_asks_for_one_port_give_it_once() -> None:
    allocator = PortAllocator()
    port = _free_port()
    won: list[str] = []
    lost: list[str] = []
    start = threading.Barrier(20)

    def reserve(i: int) -> None:
        start.wait()
        try:
            allocator.reserve(f"alloc-{i}", [PortAsk("http", value=port)])
            won.append(f"alloc-{i}")
        except PortPlacementError:
            lost.append(f"alloc-{i}")

    threads = [threading.Thread(target=reserve, args=(i,), name=f"static-{i}") for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(won) == 1 and len(lost) == 19
    assert allocator.ports_of(won[0])[0].value == port


def test_bind_test_errors_leave_nothing_pending() -> None:
    def broken(port: int) -> bool:
        raise OSError("too many open files")

    allocator = PortAllocator(bind_test=broken)
    with pytest.raises(OSError, match="too many open files"):
        allocator.reserve("a1", [PortAsk("db")])
    assert allocator.held() == frozenset()


def test_adopt_restores_ports_without_a_bind_test(bound_port: int) -> None:
    allocator = PortAllocator()
    restored = (AllocatedPort("http", bound_port, 0, "127.0.0.1"),)
    allocator.adopt("a1", restored)  # its task holds the port: no bind test
    assert allocator.ports_of("a1") == restored
    with pytest.raises(PortPlacementError, match=f"http={bound_port}: held by allocation a1"):
        allocator.adopt("a2", restored)
    with pytest.raises(PortPlacementError, match=f"http={bound_port}"):
        allocator.reserve("a2", [PortAsk("http", value=bound_port)])
    allocator.release("a1")
    assert allocator.held() == frozenset()


def test_reserving_twice_for_one_alloc_is_refused() -> None:
    allocator = PortAllocator(bind_test=lambda p: True)
    allocator.reserve("a1", [PortAsk("db")])
    with pytest.raises(ValueError, match="already holds ports"):
        allocator.reserve("a1", [PortAsk("db")])


@pytest.mark.parametrize(
    ("asks", "message"),
    [
        ([PortAsk("a"), PortAsk("a")], "Port label a already in use"),
        ([PortAsk("a", value=70000)], r"invalid port 70000 \(out of range\)"),
        (
            [PortAsk("a", value=8080), PortAsk("b", value=8080)],
            "Static port 8080 already reserved by a",
        ),
        ([PortAsk("a", to=-2)], "cannot be mapped to -2"),
        ([PortAsk("")], "needs a label"),
        ([PortAsk("a", host_network="public")], "no addresses available for public network"),
    ],
)
def test_bad_asks_are_refused_before_anything_is_held(asks: list[PortAsk], message: str) -> None:
    allocator = PortAllocator(bind_test=lambda p: True)
    with pytest.raises(PortPlacementError, match=message):
        allocator.reserve("a1", asks)
    assert allocator.held() == frozenset()


def test_bad_range_is_refused() -> None:
    with pytest.raises(ValueError, match="dynamic port range"):
        PortAllocator(min_dynamic_port=32000, max_dynamic_port=20000)


def test_port_env_as_nomads_task_env() -> None:
    ports = [
        AllocatedPort("http", 8080, 0, "10.0.0.5"),
        AllocatedPort("db", 23456, 5432, "10.0.0.5"),
        AllocatedPort("my-port", 24000, 0, ""),
        AllocatedPort("v6", 25000, 0, "::1"),
    ]
    env = port_env(ports, host_ip="192.168.1.2")
    assert env["NOMAD_PORT_http"] == "8080"
    assert env["NOMAD_ALLOC_PORT_http"] == "8080"
    assert env["NOMAD_HOST_PORT_http"] == "8080"
    assert env["NOMAD_IP_http"] == "10.0.0.5"
    assert env["NOMAD_HOST_IP_http"] == "10.0.0.5"
    assert env["NOMAD_ADDR_http"] == "10.0.0.5:8080"
    assert env["NOMAD_HOST_ADDR_http"] == "10.0.0.5:8080"
    # with a `to`, the task's port is the mapped one; the host's stays the allocated one
    assert env["NOMAD_PORT_db"] == "5432"
    assert env["NOMAD_ALLOC_PORT_db"] == "5432"
    assert env["NOMAD_HOST_PORT_db"] == "23456"
    assert env["NOMAD_ADDR_db"] == "10.0.0.5:23456"
    # the stand-in ip; labels cleaned only under the prefixes Nomad cleans
    assert env["NOMAD_ADDR_my_port"] == "192.168.1.2:24000"
    assert env["NOMAD_PORT_my_port"] == "24000"
    assert env["NOMAD_HOST_PORT_my_port"] == "24000"
    assert env["NOMAD_IP_my_port"] == "192.168.1.2"
    assert env["NOMAD_HOST_ADDR_my-port"] == "192.168.1.2:24000"
    assert env["NOMAD_ALLOC_PORT_my-port"] == "24000"
    assert env["NOMAD_ADDR_v6"] == "[::1]:25000"
    assert len(env) == 4 * 7
    assert not any(key.startswith(("NOMAD_ALLOC_IP_", "NOMAD_ALLOC_ADDR_")) for key in env)


def test_ports_json_round_trip_and_network_asks() -> None:
    ports = (AllocatedPort("http", 8080, 80, "10.0.0.5"), AllocatedPort("db", 23456))
    doc = ports_json(ports)
    assert doc == [
        {"Label": "http", "Value": 8080, "To": 80, "HostIP": "10.0.0.5"},
        {"Label": "db", "Value": 23456, "To": 0, "HostIP": ""},
    ]
    assert ports_from_json(doc) == ports
    assert ports_from_json(None) == ()
    network = {
        "Mode": "host",
        "ReservedPorts": [{"Label": "http", "Value": 8080, "To": 80, "HostNetwork": "default"}],
        "DynamicPorts": [{"Label": "db", "Value": 0, "To": -1, "HostNetwork": ""}],
    }
    assert port_asks_from_json(network) == (
        PortAsk("http", 8080, 80),
        PortAsk("db", 0, -1),
    )
    with pytest.raises(JobSpecError, match=r"Networks\[0\]\.ReservedPorts\[0\]\.Value"):
        port_asks_from_json({"ReservedPorts": [{"Label": "x", "Value": "80"}]})
    with pytest.raises(JobSpecError, match=r"Ports\[0\]\.Label"):
        ports_from_json([{"Label": 3}])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
