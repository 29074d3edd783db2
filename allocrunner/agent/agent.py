"""Agent: the long-running node agent — a Client, its one-node cluster and the HTTP API.

The agent is a thin layer over `Client`, which stays the one composition root (it
builds and owns the drivers, the state DB and the GC). The agent adds what a Nomad
agent is to the outside world:

- one owner per data dir (`DataDirLock`): a second agent on the same dir fails at
  once naming the holder, and never touches the state;
- the server side (`Cluster`): jobs, placement, allocations and their indexes;
- Nomad's HTTP API over both, and ``agent.json`` so the command line finds it.

Start order, and why:

1. lock the data dir (nothing is read before it is ours), and bind the HTTP
   address (a port in use fails the start before anything is restored);
2. load the cluster's saved jobs and allocations, so that no state report of a
   restored allocation is dropped as unknown;
3. start the client: it restores every allocation from its state DB and re-attaches
   running tasks (never a second copy), never re-running finished ones;
4. adopt what the client restored that the saved cluster state missed (a crash can
   lose the last few cluster writes, never the client's), then hand the client the
   desired set;
5. serve HTTP, then record the address in ``agent.json``.

Shutdown runs the other way and leaves every task running for the next agent (as
Nomad's client does): close the cluster (parked blocking queries answer at once),
stop serving (open streams end, request threads are joined), stop the periodic
launcher, shut the client down (task state saved), remove ``agent.json``, unlock.

Threads: ``http-accept`` and one ``http-conn`` per open connection (bounded),
``cluster-persist``, ``periodic-launcher``, plus the client's. Lock: ``Agent._lock``
guards the phase and the parts `start` builds (each set once, then only read). Owner:
``allocrunner agent`` (`allocrunner.agent.command.main`), or the command line, which
embeds an agent when none is running.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock, thread_safe
from allocrunner.agent import api_allocs, api_client, api_events, api_jobs, api_node
from allocrunner.agent.cluster import Cluster
from allocrunner.agent.context import ApiContext
from allocrunner.agent.datadir import DataDirLock, remove_agent_info, write_agent_info
from allocrunner.agent.errors import AgentError
from allocrunner.agent.fingerprint import NodeInfo, fingerprint, load_node_id, with_node_vars
from allocrunner.agent.http import (
    MAX_CONNECTIONS,
    READ_TIMEOUT,
    HttpServer,
    Router,
    is_loopback,
    parse_address,
)
from allocrunner.agent.periodic import PeriodicLauncher, periodic_child
from allocrunner.agent.stats import StatsSampler
from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.structs import Allocation, FrozenDict, Job

__all__ = ["DEFAULT_HTTP_ADDR", "Agent", "AgentConfig"]

log = logging.getLogger("allocrunner.agent")

DEFAULT_HTTP_ADDR = "127.0.0.1:4646"
LOG_FILE = "agent.log"

_NEW = "new"
_RUNNING = "running"
_STOPPED = "stopped"


@attrs.frozen
class AgentConfig:
    """Immutable. How an agent runs: its data dir, address, token and node identity."""

    data_dir: str = attrs.field(converter=os.fspath)
    http_addr: str = DEFAULT_HTTP_ADDR
    token: str | None = None
    datacenter: str = "dc1"
    region: str = "global"
    node_class: str = ""
    node_pool: str = "default"
    meta: FrozenDict[str, str] = attrs.field(factory=FrozenDict, converter=FrozenDict)
    max_connections: int = MAX_CONNECTIONS
    read_timeout: float = READ_TIMEOUT
    update_interval: float = 0.02
    gc_interval: float = 60.0
    gc_max_allocs: int = 50
    artifact_allow_local: bool = False


class Agent:
    """Thread-safe. One node agent on one data dir (module docstring).

    `start()` raises `DataDirLockedError` when another agent owns the dir and
    `AgentError` for a bad address or an unusable dir; `shutdown()` is idempotent.
    """

    _config = immutable()
    _lock_file = immutable()
    _log_handler = immutable()
    _lock = immutable()
    # _lock guards _phase and the parts built by start(): _client, _cluster, _http,
    # _periodic, _node (each set once, before the phase becomes running)
    _phase = guarded("_lock")
    _client = guarded("_lock")
    _cluster = guarded("_lock")
    _http = guarded("_lock")
    _periodic = guarded("_lock")
    _node = guarded("_lock")

    def __init__(self, config: AgentConfig) -> None:
        self._config = config
        self._lock_file = DataDirLock(config.data_dir)
        self._log_handler = _file_handler(Path(config.data_dir) / LOG_FILE)
        self._lock = make_lock("Agent._lock")
        self._phase = _NEW
        self._client: Client | None = None
        self._cluster: Cluster | None = None
        self._http: HttpServer | None = None
        self._periodic: PeriodicLauncher | None = None
        self._node: NodeInfo | None = None

    @property
    def config(self) -> AgentConfig:
        return self._config

    @property
    def address(self) -> str:
        """The HTTP address the agent serves on (``http://host:port``)."""
        with self._lock:
            http = self._http
        if http is None:
            raise AgentError("the agent is not running")
        return http.address

    @property
    def client(self) -> Client:
        with self._lock:
            client = self._client
        if client is None:
            raise AgentError("the agent is not running")
        return client

    @property
    def cluster(self) -> Cluster:
        with self._lock:
            cluster = self._cluster
        if cluster is None:
            raise AgentError("the agent is not running")
        return cluster

    @calls_out
    def start(self) -> None:
        """Take the data dir, restore, serve (module docstring for the order)."""
        host, port = parse_address(self._config.http_addr)
        if not is_loopback(host) and not self._config.token:
            raise AgentError(
                f"--http-addr {self._config.http_addr}: a non-loopback address needs --token"
            )
        with self._lock:
            if self._phase != _NEW:
                raise AgentError(f"the agent cannot start: it is {self._phase}")
            self._phase = _RUNNING
        self._lock_file.acquire()
        _attach(self._log_handler)
        try:
            self._start_parts(host, port)
        except BaseException:
            self._stop_parts()
            raise

    def _start_parts(self, host: str, port: int) -> None:
        cfg = self._config
        node_id = load_node_id(cfg.data_dir)
        config = ClientConfig.for_data_dir(
            cfg.data_dir,
            node_id=node_id,
            region=cfg.region,
            datacenter=cfg.datacenter,
            node_class=cfg.node_class,
            node_pool=cfg.node_pool,
            meta=cfg.meta,
            gc_interval=cfg.gc_interval,
            gc_max_allocs=cfg.gc_max_allocs,
            artifact_allow_local=cfg.artifact_allow_local,
        )
        # Tasks see the node as fingerprinted (${node.unique.id}, ${attr.*}, ${meta.*}).
        node = fingerprint(config, http_addr=f"{host}:{port}")
        config = with_node_vars(config, node)
        client = Client(
            config, state_updater=self._on_client_update, update_interval=cfg.update_interval
        )
        cluster = Cluster(
            cfg.data_dir,
            node_id,
            self._run_allocs,
            self._tracked,
            on_register=self._registered,
            node=node,
        )
        periodic = PeriodicLauncher(self._launch_periodic, self._children_running)
        with self._lock:
            self._client = client
            self._cluster = cluster
            self._periodic = periodic
            self._node = node
        ctx = ApiContext(
            cluster=cluster,
            client=client,
            config=config,
            node=node,
            sampler=StatsSampler(
                total_compute_mhz=node.resources.cpu_mhz, num_cores=node.resources.cores
            ),
            periodic=periodic,
            http_host=host,
            token_required=bool(cfg.token),
            started=time.time(),
        )
        http = HttpServer(
            build_router(ctx),
            (host, port),
            token=cfg.token,
            max_connections=cfg.max_connections,
            read_timeout=cfg.read_timeout,
        )
        with self._lock:
            self._http = http
        # The address is bound above, before anything is restored: a port in use fails
        # the start without touching the allocations.
        cluster.load()
        client.start()
        cluster.adopt(client.allocs())
        cluster.start()
        for job in cluster.state().jobs.values():
            self._registered(job)
        periodic.start()
        http.start()
        write_agent_info(cfg.data_dir, http.address)
        log.info(
            "agent started: data dir %s, node %s, HTTP API on %s",
            cfg.data_dir,
            node_id,
            http.address,
        )

    @calls_out
    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop serving and shut down, leaving every task running. Idempotent."""
        with self._lock:
            if self._phase == _STOPPED:
                return
            started = self._phase == _RUNNING
            self._phase = _STOPPED
        if started:
            log.info("agent shutting down; tasks keep running")
            self._stop_parts(timeout)

    def _stop_parts(self, timeout: float = 30.0) -> None:
        with self._lock:
            client, cluster, http, periodic = (
                self._client,
                self._cluster,
                self._http,
                self._periodic,
            )
        if cluster is not None:
            cluster.close(timeout)
        if http is not None:
            http.shutdown(timeout)
        if periodic is not None:
            periodic.stop(timeout)
        if client is not None:
            client.shutdown(timeout)
        remove_agent_info(self._config.data_dir)
        self._lock_file.release()
        _detach(self._log_handler)

    def __enter__(self) -> Agent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- wiring ---------------------------------------------------------------------

    def _on_client_update(self, views: list[Allocation]) -> None:
        with self._lock:
            cluster = self._cluster
        if cluster is not None:
            cluster.client_updated(views)

    @calls_out
    def _run_allocs(self, allocs: list[Allocation], index: int) -> None:
        self.client.run_allocs(allocs, index=index)

    def _tracked(self, alloc_id: str) -> bool:
        return self.client.runner(alloc_id) is not None

    @calls_out
    def _registered(self, job: Job) -> None:
        with self._lock:
            periodic = self._periodic
        if periodic is None:
            return
        if job.is_periodic_active():
            periodic.add(job)
        else:
            periodic.remove(job.id, job.namespace)

    @calls_out
    def _launch_periodic(self, parent: Job, when: datetime) -> None:
        cluster = self.cluster
        current = cluster.state().jobs.get(f"{parent.namespace}/{parent.id}")
        if current is None or current.stop:
            return
        cluster.register(periodic_child(current, when))

    def _children_running(self, parent_id: str) -> bool:
        state = self.cluster.state()
        return any(
            j.parent_id == parent_id and state.job_status(j) != "dead" for j in state.jobs.values()
        )


def build_router(ctx: ApiContext) -> Router:
    """Every API route of the agent."""
    router = Router()
    for module in (api_jobs, api_allocs, api_client, api_node, api_events):
        module.add_routes(router, ctx)
    return router


@thread_safe
class _QuietFileHandler(logging.FileHandler):
    """Thread-safe (logging's own lock). A log file handler that never raises into the
    agent (a full disk loses lines)."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


def _file_handler(path: Path) -> logging.Handler:
    handler = _QuietFileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    return handler


def _attach(handler: logging.Handler) -> None:
    root = logging.getLogger("allocrunner")
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    root.addHandler(handler)


def _detach(handler: logging.Handler) -> None:
    logging.getLogger("allocrunner").removeHandler(handler)
    handler.close()
