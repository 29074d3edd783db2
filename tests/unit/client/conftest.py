"""Fixtures for Client tests: a config under tmp_path, a mock driver that can rebuild
tasks from their persisted handles (as after an agent restart), and a factory whose
clients are always shut down."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from allocrunner.client import Client
from allocrunner.config import ClientConfig
from allocrunner.drivers import MockDriver, RawExecDriver
from allocrunner.structs import Allocation


@pytest.fixture
def config(tmp_path) -> ClientConfig:
    return ClientConfig.for_data_dir(
        tmp_path, max_kill_timeout=5.0, kill_retry_base=0.05, gc_interval=3600.0
    )


class Upstream:
    """Thread-safe. Records every batch the client sends upstream."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self.batches: list[list[Allocation]] = []

    def __call__(self, views: list[Allocation]) -> None:
        with self._mutex:
            self.batches.append(list(views))

    def calls(self) -> int:
        with self._mutex:
            return len(self.batches)

    def views_of(self, alloc_id: str) -> list[Allocation]:
        with self._mutex:
            return [v for batch in self.batches for v in batch if v.id == alloc_id]

    def last_of(self, alloc_id: str) -> Allocation:
        views = self.views_of(alloc_id)
        assert views, f"no update sent for {alloc_id}"
        return views[-1]


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def make_drivers() -> Iterator[Callable[[], dict[str, Any]]]:
    """A fresh set of drivers per call (one per simulated agent process)."""
    made: list[Any] = []

    def factory() -> dict[str, Any]:
        drivers = {"mock_driver": MockDriver(recover_from_state=True), "raw_exec": RawExecDriver()}
        made.extend(drivers.values())
        return drivers

    yield factory
    for driver in made:
        driver.close()


@pytest.fixture
def make_client(config, make_drivers) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def factory(**kwargs: Any) -> Client:
        kwargs.setdefault("drivers", make_drivers())
        kwargs.setdefault("update_interval", 0.05)
        client = Client(kwargs.pop("config", config), **kwargs)
        made.append(client)
        return client

    yield factory
    for client in made:
        assert client.shutdown(30), f"{client} did not shut down in time"
