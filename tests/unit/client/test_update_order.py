"""Client.run_allocs never forwards to a runner an update whose alloc_modify_index is
not above one it already forwarded, whatever order the server's views come in, from
one thread or several. The runner would drop such an update itself and hide the
mistake, so these tests spy on the runner's update calls and check the client's own
contract."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import attrs
import pytest

from allocrunner.client import Client
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.state import MemDB
from allocrunner.structs import Allocation, new_allocation
from allocrunner.testing import mock_job, mock_task

BOUND = 30.0


class UpdateSpy:
    """Thread-safe. Records, in call order, every update a runner is given."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._mutex = threading.Lock()
        self._calls: list[tuple[str, int]] = []
        original = AllocRunner.update

        def spy(runner: AllocRunner, alloc: Allocation) -> None:
            with self._mutex:
                self._calls.append((alloc.id, alloc.alloc_modify_index))
            original(runner, alloc)

        monkeypatch.setattr(AllocRunner, "update", spy)

    def indexes(self, alloc_id: str) -> list[int]:
        with self._mutex:
            return [index for i, index in self._calls if i == alloc_id]

    def check_never_lower(self) -> None:
        with self._mutex:
            calls = list(self._calls)
        last: dict[str, int] = {}
        for alloc_id, index in calls:
            before = last.get(alloc_id)
            assert before is None or index > before, (
                f"{alloc_id[:8]}: update {index} forwarded after {before}"
            )
            last[alloc_id] = index


def _at(alloc: Allocation, index: int) -> Allocation:
    return attrs.evolve(alloc, alloc_modify_index=index)


def _long_running(n: int) -> Allocation:
    return new_allocation(mock_job(mock_task("web", config={"run_for": "30s"})), "web", index=n)


def views_in_any_order(client: Client, spy: UpdateSpy) -> None:
    """One thread sends views of one allocation with indexes going up and down."""
    alloc = _at(_long_running(0), 10)
    client.run_allocs([alloc])
    assert client.runner(alloc.id) is not None  # built: every update is forwarded
    for index in (12, 11, 5, 12, 13, 10, 14, 13):
        client.run_allocs([_at(alloc, index)])
    assert spy.indexes(alloc.id) == [12, 13, 14]
    spy.check_never_lower()


def views_from_many_threads(client: Client, spy: UpdateSpy) -> None:
    """Four threads send desired sets of three allocations with random indexes."""
    allocs = [_at(_long_running(n), 10) for n in range(3)]
    client.run_allocs(allocs)
    assert len(client.runners()) == len(allocs)
    errors: list[BaseException] = []

    def sender(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                client.run_allocs([_at(a, rng.randint(8, 40)) for a in allocs])
        except BaseException as err:  # reported by the test thread
            errors.append(err)

    threads = [threading.Thread(target=sender, args=(s,), name=f"send-{s}") for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND)
        assert not t.is_alive(), f"{t.name} is stuck"
    assert not errors, errors
    assert any(spy.indexes(a.id) for a in allocs), "no update was forwarded at all"
    spy.check_never_lower()


SCENARIOS: list[Callable[[Client, UpdateSpy], None]] = [views_in_any_order, views_from_many_threads]


def test_updates_of_an_allocation_not_built_yet_are_folded_into_its_build(
    make_client, monkeypatch
) -> None:
    """The runner is built from the newest view queued, so it never sees an older one."""
    spy = UpdateSpy(monkeypatch)
    client = make_client(state_db=MemDB())
    client.start()
    alloc = _at(_long_running(0), 10)
    for index in (10, 12, 11, 14, 13):
        client.run_allocs([_at(alloc, index)])
    ar = client.runner(alloc.id)
    assert ar is not None
    assert ar.alloc().alloc_modify_index == 14 or spy.indexes(alloc.id)[-1:] == [14]
    spy.check_never_lower()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_no_update_is_forwarded_below_one_already_forwarded(
    make_client, monkeypatch, scenario
) -> None:
    spy = UpdateSpy(monkeypatch)
    client = make_client(state_db=MemDB())
    client.start()
    scenario(client, spy)
