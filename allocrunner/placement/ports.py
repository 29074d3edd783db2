"""Host ports of the allocations on this node: reservation, release and task env.

A group's ``network`` block asks for ports by label: static ones
(``port "http" { static = 8080 }``) and dynamic ones (``port "db" {}``), each with an
optional ``to`` (the port inside the task's network namespace; ``-1`` means "the same
as the host port"). `PortAllocator` is this node's table of them, as Nomad's
NetworkIndex is a node's (nomad/structs/network.go at v1.6.0):

- A static port held by another live allocation, reserved by the node's
  configuration, or busy on the host is refused with a `PortPlacementError` naming it
  (``reserved port collision http=8080``). Ports are 1-65535.
- A dynamic port is picked at random in ``[min_dynamic_port, max_dynamic_port]``
  (Nomad's default 20000-32000) among the ports no allocation holds, then, after a few
  misses, from the list of the free ones; ``dynamic port selection failed`` when none
  is left. Since processes outside Nomad also bind ports, every chosen port must also
  bind on the host right now: TCP on 0.0.0.0 and 127.0.0.1 and UDP on 0.0.0.0. A
  dynamic port that does not is replaced by another pick.
- The node has one host network, ``default``: an ask for another one cannot be placed
  (``no addresses available for <name> network``).
- `reserve` is all-or-nothing: either every ask of the allocation gets a port, or
  none is held afterwards. `release` frees them; `adopt` restores the ports of an
  allocation read back from the state database after a restart (no bind test: its
  task may be running and bound to them).

`port_env` gives the ``NOMAD_*`` variables Nomad's task environment derives from the
allocated ports (client/taskenv/env.go `addPorts`) and `ports_json` the JSON of
``AllocatedResources.Shared.Ports``.

Threads: none of its own; any thread may call the allocator (the client's runners
reserve and release concurrently). Locks: ``PortAllocator._lock`` (a leaf, taken with
no other lock) guards the table of ports (port -> holder: an allocation id, or the
pending mark of a reservation under way) and the table of allocations (id -> its
ports); both are checked dicts changed in place under it. The bind tests run with no
lock held: candidates are chosen and marked pending under the lock, tested outside
it, then committed or unmarked under it again. Owner: the agent's cluster
(`allocrunner.agent.cluster.Cluster`) builds one allocator per node and reserves the
ports of each allocation it places.
"""

from __future__ import annotations

import errno
import random
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from allocrunner._guarded import guarded_dict
from allocrunner._locking import calls_out, immutable, make_lock, requires
from allocrunner.errors import AllocRunnerError, JobSpecError
from allocrunner.structs.alloc import AllocatedPort

__all__ = [
    "DEFAULT_MAX_DYNAMIC_PORT",
    "DEFAULT_MIN_DYNAMIC_PORT",
    "AllocatedPort",
    "PortAllocator",
    "PortAsk",
    "PortPlacementError",
    "port_asks_from_json",
    "port_env",
    "port_is_free",
    "ports_from_json",
    "ports_json",
]

DEFAULT_MIN_DYNAMIC_PORT = 20000
DEFAULT_MAX_DYNAMIC_PORT = 32000
MAX_PORT = 65535
# Random picks before falling back to a scan of the free ports (Nomad uses 20).
_RANDOM_PICKS = 20
# Rounds of picking again after dynamic ports turned out busy on the host.
_BIND_ROUNDS = 20


class PortPlacementError(AllocRunnerError):
    """The ports an allocation asks for cannot be given on this node; `label` and
    `port` name the ask at fault when one is."""

    def __init__(self, message: str, *, label: str = "", port: int = 0) -> None:
        super().__init__(message)
        self.label = label
        self.port = port


@attrs.frozen
class PortAsk:
    """Immutable. One ``port`` of a network block: static when `value` > 0."""

    label: str
    value: int = 0
    to: int = 0
    host_network: str = "default"

    @property
    def static(self) -> bool:
        return self.value > 0


# --- the host --------------------------------------------------------------------------


def _binds(family: int, kind: int, address: str, port: int) -> bool:
    with socket.socket(family, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


@calls_out
def port_is_free(port: int) -> bool:
    """Whether `port` binds on this host now: TCP on 0.0.0.0 and 127.0.0.1 (a listener
    on either blocks it; a socket in TIME_WAIT does not) and UDP on 0.0.0.0."""
    return (
        _binds(socket.AF_INET, socket.SOCK_STREAM, "0.0.0.0", port)
        and _binds(socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", port)
        and _binds(socket.AF_INET, socket.SOCK_DGRAM, "0.0.0.0", port)
    )


# --- the allocator ---------------------------------------------------------------------

_PENDING = "pending:"


def _check_asks(asks: Sequence[PortAsk]) -> None:
    labels: set[str] = set()
    statics: dict[int, str] = {}
    for ask in asks:
        if not ask.label:
            raise PortPlacementError("a port needs a label")
        if ask.label in labels:
            raise PortPlacementError(f"Port label {ask.label} already in use", label=ask.label)
        labels.add(ask.label)
        if ask.value < 0 or ask.value > MAX_PORT:
            raise PortPlacementError(
                f"invalid port {ask.value} (out of range)", label=ask.label, port=ask.value
            )
        if ask.static and ask.value in statics:
            raise PortPlacementError(
                f"Static port {ask.value} already reserved by {statics[ask.value]}",
                label=ask.label,
                port=ask.value,
            )
        if ask.static:
            statics[ask.value] = ask.label
        if ask.host_network not in ("", "default"):
            raise PortPlacementError(
                f"no addresses available for {ask.host_network} network", label=ask.label
            )
        if ask.to < -1 or ask.to > MAX_PORT:
            raise PortPlacementError(
                f"Port {ask.label!r} cannot be mapped to {ask.to}", label=ask.label
            )


class PortAllocator:
    """Thread-safe. The host ports held by the allocations of this node."""

    _lock = immutable()
    # _lock guards _holders (port -> alloc id or pending mark) and _allocs (alloc id ->
    # its ports), checked dicts changed in place
    _holders = immutable()
    _allocs = immutable()
    _min = immutable()
    _max = immutable()
    _reserved = immutable()
    _host_ip = immutable()
    _bind_test = immutable()
    _random = immutable()  # used under _lock only

    def __init__(
        self,
        *,
        host_ip: str = "127.0.0.1",
        min_dynamic_port: int = DEFAULT_MIN_DYNAMIC_PORT,
        max_dynamic_port: int = DEFAULT_MAX_DYNAMIC_PORT,
        reserved_ports: Iterable[int] = (),
        bind_test: Callable[[int], bool] = port_is_free,
        seed: int | None = None,
    ) -> None:
        if not 0 < min_dynamic_port <= max_dynamic_port <= MAX_PORT:
            raise ValueError(
                f"dynamic port range {min_dynamic_port}-{max_dynamic_port} is not within"
                f" 1-{MAX_PORT} with min <= max"
            )
        self._lock = make_lock("PortAllocator._lock")
        self._holders: dict[int, str] = guarded_dict(self._lock)
        self._allocs: dict[str, tuple[AllocatedPort, ...]] = guarded_dict(self._lock)
        self._min = min_dynamic_port
        self._max = max_dynamic_port
        self._reserved = frozenset(reserved_ports)
        self._host_ip = host_ip
        self._bind_test = bind_test
        self._random = random.Random(seed)

    @property
    def host_ip(self) -> str:
        return self._host_ip

    @calls_out
    def reserve(self, alloc_id: str, asks: Sequence[PortAsk]) -> list[AllocatedPort]:
        """Give `alloc_id` a port for each of `asks`, all or none; `PortPlacementError`
        when a static port is taken (naming it) or no dynamic port is left. An
        allocation that already holds ports must be released first (ValueError)."""
        asks = tuple(asks)
        _check_asks(asks)
        mark = f"{_PENDING}{uuid.uuid4().hex}"
        busy: frozenset[int] = frozenset()
        for _ in range(_BIND_ROUNDS):
            chosen = self._choose(alloc_id, asks, mark, busy)
            try:
                newly_busy = self._bind_tests(chosen)
            except BaseException:
                self._unmark(mark, chosen)
                raise
            if not newly_busy:
                return list(self._commit(alloc_id, chosen))
            self._unmark(mark, chosen)
            self._refuse_busy_static(asks, chosen, newly_busy)
            busy |= newly_busy
        raise PortPlacementError("dynamic port selection failed: every pick was busy on the host")

    def _choose(
        self, alloc_id: str, asks: tuple[PortAsk, ...], mark: str, busy: frozenset[int]
    ) -> tuple[AllocatedPort, ...]:
        with self._lock:
            if alloc_id in self._allocs:
                raise ValueError(f"allocation {alloc_id} already holds ports; release them first")
            for ask in asks:
                if ask.static:
                    self._check_static_locked(ask)
            chosen: list[AllocatedPort] = []
            try:
                for ask in asks:
                    value = ask.value if ask.static else self._pick_locked(busy)
                    to = value if ask.to == -1 else ask.to
                    self._holders[value] = mark
                    chosen.append(AllocatedPort(ask.label, value, to, self._host_ip))
            except PortPlacementError:
                for port in chosen:
                    del self._holders[port.value]
                raise
            return tuple(chosen)

    @requires("_lock")
    def _check_static_locked(self, ask: PortAsk) -> None:
        holder = self._holders.get(ask.value)
        if holder is not None or ask.value in self._reserved:
            where = "reserved by the node" if holder is None else "held by another allocation"
            raise PortPlacementError(
                f"reserved port collision {ask.label}={ask.value}: {where}",
                label=ask.label,
                port=ask.value,
            )

    @requires("_lock")
    def _pick_locked(self, busy: frozenset[int]) -> int:
        def taken(port: int) -> bool:
            return port in self._holders or port in self._reserved or port in busy

        for _ in range(_RANDOM_PICKS):
            port = self._random.randint(self._min, self._max)
            if not taken(port):
                return port
        free = [p for p in range(self._min, self._max + 1) if not taken(p)]
        if not free:
            raise PortPlacementError("dynamic port selection failed")
        return self._random.choice(free)

    @calls_out
    def _bind_tests(self, chosen: tuple[AllocatedPort, ...]) -> frozenset[int]:
        """The chosen ports that do not bind on the host (no lock held)."""
        return frozenset(port.value for port in chosen if not self._bind_test(port.value))

    def _unmark(self, mark: str, chosen: tuple[AllocatedPort, ...]) -> None:
        with self._lock:
            for port in chosen:
                if self._holders.get(port.value) == mark:
                    del self._holders[port.value]

    def _refuse_busy_static(
        self, asks: tuple[PortAsk, ...], chosen: tuple[AllocatedPort, ...], busy: frozenset[int]
    ) -> None:
        for ask, port in zip(asks, chosen, strict=True):
            if ask.static and port.value in busy:
                raise PortPlacementError(
                    f"reserved port collision {ask.label}={ask.value}: in use on the host",
                    label=ask.label,
                    port=ask.value,
                )

    def _commit(
        self, alloc_id: str, chosen: tuple[AllocatedPort, ...]
    ) -> tuple[AllocatedPort, ...]:
        with self._lock:
            if alloc_id in self._allocs:
                for port in chosen:
                    del self._holders[port.value]
                raise ValueError(f"allocation {alloc_id} reserved ports twice at once")
            for port in chosen:
                self._holders[port.value] = alloc_id
            self._allocs[alloc_id] = chosen
        return chosen

    def release(self, alloc_id: str) -> tuple[AllocatedPort, ...]:
        """Free the ports of `alloc_id` (none held is fine); returns what was held."""
        with self._lock:
            ports = self._allocs.pop(alloc_id, ())
            for port in ports:
                if self._holders.get(port.value) == alloc_id:
                    del self._holders[port.value]
        return ports

    def adopt(self, alloc_id: str, ports: Iterable[AllocatedPort]) -> None:
        """Hold `ports` for `alloc_id` again (restore after a restart); no bind test.
        `PortPlacementError` when one is held by another allocation."""
        ports = tuple(ports)
        with self._lock:
            for port in ports:
                holder = self._holders.get(port.value)
                if holder is not None and holder != alloc_id:
                    raise PortPlacementError(
                        f"reserved port collision {port.label}={port.value}:"
                        f" held by allocation {holder}",
                        label=port.label,
                        port=port.value,
                    )
            for port in self._allocs.pop(alloc_id, ()):
                self._holders.pop(port.value, None)
            for port in ports:
                self._holders[port.value] = alloc_id
            self._allocs[alloc_id] = ports

    def ports_of(self, alloc_id: str) -> tuple[AllocatedPort, ...]:
        """The ports `alloc_id` holds (empty when none)."""
        with self._lock:
            return self._allocs.get(alloc_id, ())

    def holders(self) -> frozenset[str]:
        """The allocations that hold ports (reservations under way not included)."""
        with self._lock:
            return frozenset(self._allocs)

    def held(self) -> frozenset[int]:
        """Every port held by an allocation or pending in a reservation."""
        with self._lock:
            return frozenset(self._holders)


# --- JSON and env ----------------------------------------------------------------------


def _int_field(doc: Mapping[str, object], key: str, path: str, default: int = 0) -> int:
    value = doc.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobSpecError(f"{path}.{key}", f"expected an integer, got {value!r}")
    return value


def _str_field(doc: Mapping[str, object], key: str, path: str) -> str:
    value = doc.get(key) or ""
    if not isinstance(value, str):
        raise JobSpecError(f"{path}.{key}", f"expected a string, got {value!r}")
    return value


def port_asks_from_json(network: object, path: str = "Networks[0]") -> tuple[PortAsk, ...]:
    """The asks of a NetworkResource JSON (``ReservedPorts`` then ``DynamicPorts``)."""
    if not isinstance(network, Mapping):
        raise JobSpecError(path, f"expected an object, got {type(network).__name__}")
    asks: list[PortAsk] = []
    for key in ("ReservedPorts", "DynamicPorts"):
        docs = network.get(key) or []
        if not isinstance(docs, list):
            raise JobSpecError(f"{path}.{key}", "expected a list")
        for i, doc in enumerate(docs):
            where = f"{path}.{key}[{i}]"
            if not isinstance(doc, Mapping):
                raise JobSpecError(where, "expected an object")
            value = _int_field(doc, "Value", where) if key == "ReservedPorts" else 0
            asks.append(
                PortAsk(
                    label=_str_field(doc, "Label", where),
                    value=value,
                    to=_int_field(doc, "To", where),
                    host_network=_str_field(doc, "HostNetwork", where) or "default",
                )
            )
    return tuple(asks)


def ports_json(ports: Iterable[AllocatedPort]) -> list[dict[str, object]]:
    """``AllocatedResources.Shared.Ports`` as Nomad's JSON."""
    return [{"Label": p.label, "Value": p.value, "To": p.to, "HostIP": p.host_ip} for p in ports]


def ports_from_json(docs: object, path: str = "Ports") -> tuple[AllocatedPort, ...]:
    """The inverse of `ports_json` (None is no port)."""
    if docs is None:
        return ()
    if not isinstance(docs, list):
        raise JobSpecError(path, "expected a list")
    ports: list[AllocatedPort] = []
    for i, doc in enumerate(docs):
        where = f"{path}[{i}]"
        if not isinstance(doc, Mapping):
            raise JobSpecError(where, "expected an object")
        ports.append(
            AllocatedPort(
                label=_str_field(doc, "Label", where),
                value=_int_field(doc, "Value", where),
                to=_int_field(doc, "To", where),
                host_ip=_str_field(doc, "HostIP", where),
            )
        )
    return tuple(ports)


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _clean_env_key(key: str) -> str:
    """Nomad's CleanEnvVar: anything but letters, ``_``, ``.`` and (past the first
    character) digits becomes ``_``."""
    return "".join(
        c
        if (c in "_." or ("a" <= c <= "z") or ("A" <= c <= "Z") or (i and "0" <= c <= "9"))
        else "_"
        for i, c in enumerate(key)
    )


# The prefixes whose keys Nomad's task env cleans (NOMAD_ADDR_, NOMAD_IP_, NOMAD_PORT_,
# NOMAD_HOST_PORT_); NOMAD_HOST_ADDR_, NOMAD_HOST_IP_ and NOMAD_ALLOC_PORT_ keep the
# label as it is.
_CLEANED_PREFIXES = ("NOMAD_ADDR_", "NOMAD_IP_", "NOMAD_PORT_", "NOMAD_HOST_PORT_")


def port_env(ports: Iterable[AllocatedPort], host_ip: str = "") -> dict[str, str]:
    """The ``NOMAD_*`` variables of the allocation's ports: ``NOMAD_ADDR_<label>`` and
    ``NOMAD_HOST_ADDR_<label>`` (host ip:port), ``NOMAD_IP_<label>`` and
    ``NOMAD_HOST_IP_<label>``, ``NOMAD_PORT_<label>`` and ``NOMAD_ALLOC_PORT_<label>``
    (the ``to`` port when above 0, else the host port) and ``NOMAD_HOST_PORT_<label>``.
    `host_ip` stands in for a port that carries none."""
    env: dict[str, str] = {}
    for port in ports:
        ip = port.host_ip or host_ip
        value = str(port.value)
        inside = str(port.to) if port.to > 0 else value
        values = {
            "NOMAD_ADDR_": _join_host_port(ip, value),
            "NOMAD_HOST_ADDR_": _join_host_port(ip, value),
            "NOMAD_IP_": ip,
            "NOMAD_HOST_IP_": ip,
            "NOMAD_PORT_": inside,
            "NOMAD_ALLOC_PORT_": inside,
            "NOMAD_HOST_PORT_": value,
        }
        for prefix, text in values.items():
            key = prefix + port.label
            if prefix in _CLEANED_PREFIXES:
                key = _clean_env_key(key)
            env[key] = text
    return env
