"""The watcher and migrator between two real AllocRunners on one node: the replacement
waits for the previous allocation, inherits its sticky data (Nomad's
TestAllocRunner_MoveAllocDir), and is never stuck behind a previous allocation that
was shut down instead of stopped (Nomad #18129)."""

from __future__ import annotations

import time

import attrs
import pytest

from allocrunner.allocwatcher import LocalPrevAlloc, new_prev_watcher
from allocrunner.config import ClientConfig
from allocrunner.drivers import default_drivers
from allocrunner.runner.alloc_runner import AllocRunner
from allocrunner.state import MemDB
from allocrunner.structs import EphemeralDisk, new_allocation
from allocrunner.testing import assert_stays, mock_job, mock_task, wait_for


@pytest.fixture
def runners(tmp_path):
    config = ClientConfig.for_data_dir(tmp_path, max_kill_timeout=5.0, kill_retry_base=0.05)
    drivers = default_drivers()
    db = MemDB()
    made: list[AllocRunner] = []

    def make(alloc, **kwargs):
        ar = AllocRunner(alloc, config, state_db=db, drivers=drivers, **kwargs)
        made.append(ar)
        return ar

    yield make
    for ar in made:
        ar.destroy()
    for ar in made:
        assert ar.wait_destroyed(30), f"{ar} was not destroyed in time"
        assert ar.close(30), f"{ar} left threads running"
    for driver in drivers.values():
        close = getattr(driver, "close", None)
        if close is not None:
            close()


def _job(sticky: bool):
    return mock_job(
        mock_task("web", config={"run_for": "30s"}),
        ephemeral_disk=EphemeralDisk(sticky=sticky),
    )


def _running(ar, task="web"):
    def check():
        state = ar.alloc_state().task_states[task].state
        assert state == "running", f"task {task} is {state}"

    return check


def _stop(alloc):
    return attrs.evolve(
        alloc, desired_status="stop", alloc_modify_index=alloc.alloc_modify_index + 1
    )


def test_replacement_waits_then_inherits_sticky_data(runners):
    job = _job(sticky=True)
    prev = new_allocation(job, "web")
    prev_ar = runners(prev)
    prev_ar.start()
    wait_for(_running(prev_ar), timeout=10)
    (prev_ar.alloc_dir.data_dir / "db.sqlite").write_text("rows")
    local = prev_ar.alloc_dir.path / "web" / "local"
    (local / "cache.bin").write_bytes(b"\x00\x01")

    nxt = new_allocation(job, "web", previous=prev)
    watcher, migrator = new_prev_watcher(nxt, prev_runner=prev_ar)
    assert isinstance(migrator, LocalPrevAlloc) and migrator.sticky
    next_ar = runners(nxt, prev_watcher=watcher, prev_migrator=migrator)
    next_ar.start()

    wait_for(lambda: _check(next_ar.is_waiting(), "replacement is not waiting"), timeout=10)
    assert_stays(lambda: _check(next_ar.is_waiting(), "stopped waiting early"), 0.2)
    assert next_ar.alloc_state().task_states["web"].state == "pending"

    prev_ar.update(_stop(prev))
    wait_for(_running(next_ar), timeout=15)
    assert not next_ar.is_waiting()
    assert (next_ar.alloc_dir.data_dir / "db.sqlite").read_text() == "rows"
    assert (next_ar.alloc_dir.path / "web" / "local" / "cache.bin").read_bytes() == b"\x00\x01"
    # the previous alloc dir stays (its logs) until it is garbage-collected
    assert prev_ar.alloc_dir.logs_dir.is_dir()


def test_replacement_of_a_shut_down_alloc_can_be_destroyed(runners):
    job = _job(sticky=False)
    prev = new_allocation(job, "web")
    prev_ar = runners(prev)
    prev_ar.start()
    wait_for(_running(prev_ar), timeout=10)
    prev_ar.shutdown()  # agent shutdown: tasks left running, alloc never terminal
    assert prev_ar.wait_shutdown(10)

    nxt = new_allocation(job, "web", previous=prev)
    watcher, migrator = new_prev_watcher(nxt, prev_runner=prev_ar)
    next_ar = runners(nxt, prev_watcher=watcher, prev_migrator=migrator)
    next_ar.start()
    wait_for(lambda: _check(next_ar.is_waiting(), "replacement is not waiting"), timeout=10)

    start = time.monotonic()
    next_ar.destroy()
    assert next_ar.wait_destroyed(10), "destroy hung behind the previous-alloc wait"
    assert time.monotonic() - start < 5.0
    assert not next_ar.is_waiting()


def _check(cond: bool, message: str) -> None:
    assert cond, message
