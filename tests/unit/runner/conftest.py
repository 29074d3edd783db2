"""Fixtures for AllocRunner tests: a client config under tmp_path, shared drivers,
and a runner factory that destroys and joins every runner it made."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from allocrunner.config import ClientConfig
from allocrunner.drivers import default_drivers
from allocrunner.drivers.base import Driver
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.state import MemDB
from allocrunner.structs import Allocation


@pytest.fixture
def config(tmp_path) -> ClientConfig:
    return ClientConfig.for_data_dir(tmp_path, max_kill_timeout=5.0, kill_retry_base=0.05)


@pytest.fixture
def drivers() -> Iterator[dict[str, Driver]]:
    made = default_drivers()
    yield made
    for driver in made.values():
        driver.close()


@pytest.fixture
def state_db() -> MemDB:
    return MemDB()


class Updates:
    """Not thread-safe on purpose: records every client view the runner reports."""

    def __init__(self) -> None:
        self.seen: list[Allocation] = []

    def __call__(self, alloc: Allocation) -> None:
        self.seen.append(alloc)

    def last(self) -> Allocation:
        assert self.seen, "state_updater was never called"
        return self.seen[-1]


@pytest.fixture
def make_runner(config, drivers, state_db) -> Iterator[Callable[..., AllocRunner]]:
    made: list[AllocRunner] = []

    def factory(alloc: Allocation, **kwargs: Any) -> AllocRunner:
        kwargs.setdefault("state_db", state_db)
        kwargs.setdefault("drivers", drivers)
        ar = AllocRunner(alloc, kwargs.pop("config", config), **kwargs)
        made.append(ar)
        return ar

    yield factory
    for ar in made:
        ar.destroy()
    for ar in made:
        assert ar.wait_destroyed(30), f"{ar} was not destroyed in time"
        assert ar.close(30), f"{ar} left threads running"
