"""Client: run_allocs adds / updates / removes by id and index, stale views are
ignored, upstream updates are coalesced, terminal allocations are collected over
gc_max_allocs, restore across an agent restart, shutdown, and replacements that
inherit their previous allocation's sticky disk."""

from __future__ import annotations

import contextlib
import os
import signal

import attrs
import pytest

from allocrunner.client import Client
from allocrunner.drivers._process import pid_alive
from allocrunner.errors import AllocRunnerError
from allocrunner.state import MemDB, SQLiteStateDB
from allocrunner.structs import EVENT_STARTED, EphemeralDisk, new_allocation
from allocrunner.testing import assert_stays, mock_alloc, mock_job, mock_task, wait_for


def _service(run_for: str = "30s", **group_fields):
    return mock_job(mock_task("web", config={"run_for": run_for}), **group_fields)


def _batch(run_for: str = "10ms"):
    return mock_job(mock_task("job", config={"run_for": run_for}), job_type="batch")


def _task_state(client, alloc_id, task, want):
    def check():
        ar = client.runner(alloc_id)
        assert ar is not None, f"{alloc_id} not tracked"
        got = ar.alloc_state().task_states[task].state
        assert got == want, f"{task} of {alloc_id} is {got}, want {want}"

    return check


def _status(client, alloc_id, want):
    def check():
        ar = client.runner(alloc_id)
        assert ar is not None, f"{alloc_id} not tracked"
        got = ar.alloc_state().client_status
        assert got == want, f"{alloc_id} is {got}, want {want}"

    return check


def _bump(alloc, **changes):
    return attrs.evolve(alloc, alloc_modify_index=alloc.alloc_modify_index + 1, **changes)


def _stop(alloc):
    return _bump(alloc, desired_status="stop")


def _started_count(ar, task):
    return [e.type for e in ar.alloc_state().task_states[task].events].count(EVENT_STARTED)


# --- run_allocs ---------------------------------------------------------------------------


def test_run_allocs_adds_runs_and_reports(make_client):
    client = make_client()
    client.start()
    a = new_allocation(_service(), "web")
    b = new_allocation(_service(), "web", index=1)
    client.run_allocs([a, b])
    assert {x.id for x in client.allocs()} == {a.id, b.id}
    for alloc in (a, b):
        wait_for(_task_state(client, alloc.id, "web", "running"))
    assert client.num_allocs() == 2
    views = {v.id: v for v in client.allocs()}
    assert views[a.id].client_status == "running"
    assert views[a.id].task_states["web"].state == "running"
    assert client.runner("unknown") is None


def test_run_allocs_applies_a_newer_update_and_ignores_stale_ones(make_client):
    client = make_client()
    client.start()
    alloc = new_allocation(_service(), "web")
    client.run_allocs([alloc])
    wait_for(_task_state(client, alloc.id, "web", "running"))
    ar = client.runner(alloc.id)

    # A stop with an index not above the one accepted is a stale view: ignored.
    stale = attrs.evolve(alloc, desired_status="stop")
    client.run_allocs([stale])
    assert_stays(_task_state(client, alloc.id, "web", "running"), 0.2)
    assert ar.alloc().desired_status == "run"

    stop = _stop(alloc)
    client.run_allocs([stop])
    wait_for(_status(client, alloc.id, "complete"))
    assert client.runner(alloc.id) is ar, "an update keeps the same runner"
    assert ar.alloc().alloc_modify_index == stop.alloc_modify_index

    older = attrs.evolve(alloc, desired_description="older", alloc_modify_index=1)
    client.run_allocs([older])
    assert ar.alloc().desired_description == ""


def test_run_allocs_removes_and_collects_missing_allocs(make_client):
    client = make_client()
    client.start()
    keep = new_allocation(_service(), "web")
    gone = new_allocation(_service(), "web", index=1)
    client.run_allocs([keep, gone])
    wait_for(_task_state(client, gone.id, "web", "running"))
    ar = client.runner(gone.id)
    gone_dir = ar.alloc_dir.path
    assert gone_dir.is_dir()

    client.run_allocs([keep])
    assert client.runner(gone.id) is None, "removed allocs are untracked at once"
    assert ar.wait_destroyed(10), "a removed alloc is collected"
    assert not gone_dir.exists()
    assert [a.id for a in client.state_db.all_allocations()] == [keep.id]
    assert client.runner(keep.id).alloc_state().client_status == "running"


def test_a_removed_alloc_listed_again_is_not_run_again(make_client):
    client = make_client()
    client.start()
    alloc = new_allocation(_service(), "web")
    client.run_allocs([alloc])
    wait_for(_task_state(client, alloc.id, "web", "running"))
    old = client.runner(alloc.id)
    client.run_allocs([])
    # A stale view lists it again while (or after) it is destroyed: no second runner
    # may share its alloc dir and state.
    client.run_allocs([_bump(alloc)])
    assert client.runner(alloc.id) is None
    assert old.wait_destroyed(10)
    assert not old.alloc_dir.path.exists()


def test_a_stale_desired_set_is_ignored(make_client):
    client = make_client()
    client.start()
    alloc = new_allocation(_service(), "web")
    client.run_allocs([alloc], index=10)
    client.run_allocs([], index=10)
    client.run_allocs([], index=7)
    assert client.runner(alloc.id) is not None, "an older (or equal) view removed an alloc"
    client.run_allocs([], index=11)
    assert client.runner(alloc.id) is None


def test_run_allocs_rejects_bad_input_and_is_refused_before_start(make_client):
    client = make_client()
    alloc = mock_alloc()
    with pytest.raises(AllocRunnerError, match="before start"):
        client.run_allocs([alloc])
    client.start()
    with pytest.raises(TypeError, match=r"allocs\[1\]"):
        client.run_allocs([alloc, "nope"])
    with pytest.raises(ValueError, match=r"allocs\[1\].id"):
        client.run_allocs([alloc, alloc])


def test_an_alloc_that_cannot_run_is_reported_failed(make_client, upstream):
    client = make_client(state_updater=upstream)
    client.start()
    bad = attrs.evolve(mock_alloc(), task_group="missing")
    client.run_allocs([bad])
    assert client.runner(bad.id) is None
    wait_for(lambda: _equal(upstream.last_of(bad.id).client_status, "failed"))
    assert "missing" in upstream.last_of(bad.id).client_description
    assert client.state_db.all_allocations() == []


def _equal(got, want):
    assert got == want, f"got {got!r}, want {want!r}"


# --- upstream updates and GC ---------------------------------------------------------------


def test_upstream_updates_are_coalesced(make_client, upstream, monkeypatch):
    recorded = []
    record = Client._record_update

    def counting(self, view):
        recorded.append(view.id)
        record(self, view)

    # Count the runners' state changes: each client binds the method once, when built.
    monkeypatch.setattr(Client, "_record_update", counting)
    client = make_client(state_updater=upstream, update_interval=0.3)
    client.start()
    allocs = [new_allocation(_batch(), "web", index=n) for n in range(4)]
    client.run_allocs(allocs)
    for alloc in allocs:
        wait_for(lambda alloc=alloc: _equal(upstream.last_of(alloc.id).client_status, "complete"))
    assert len(recorded) >= 8, recorded
    assert upstream.calls() < len(recorded), "no coalescing happened"
    for alloc in allocs:
        last = upstream.last_of(alloc.id)
        assert last.task_states["job"].state == "dead"


def test_terminal_allocs_are_collected_over_max_allocs(make_client, config):
    client = make_client(config=attrs.evolve(config, gc_max_allocs=1))
    client.start()
    live = new_allocation(_service(), "web")
    done = [new_allocation(_batch(), "web", index=n) for n in range(1, 4)]
    client.run_allocs([live, *done])
    wait_for(lambda: _equal(client.num_allocs(), 1), timeout=20)
    assert client.runner(live.id).alloc_state().client_status == "running"
    for alloc in done:
        ar = client.runner(alloc.id)
        assert ar is not None and ar.is_destroyed(), "tracked until the server removes it"
        assert not ar.alloc_dir.path.exists()
    client.run_allocs([live])
    assert [a.id for a in client.allocs()] == [live.id]


def _one_running_and_marked(make_client, done: int):
    """A started client with one service allocation and `done` batch ones, returned
    once every batch one is complete and marked for collection."""
    client = make_client()
    client.start()
    running = new_allocation(_service(), "web")
    finished = [new_allocation(_batch(), "web", index=n) for n in range(1, done + 1)]
    client.run_allocs([running, *finished])
    for alloc in finished:
        wait_for(lambda alloc=alloc: _equal(client.gc.is_marked(alloc.id), True))
    return client, running, finished


def test_collect_and_collect_all(make_client):
    client, running, done = _one_running_and_marked(make_client, 3)
    assert not client.collect(running.id), "a running alloc is not collectable"
    assert client.collect(done[0].id)
    assert client.runner(done[0].id).is_destroyed()
    assert not client.collect(done[0].id), "already garbage collected"
    assert client.collect_all() == 2
    assert client.num_allocs() == 1


def test_num_allocs_follows_destroys_and_removals(make_client):
    client, running, done = _one_running_and_marked(make_client, 2)
    assert client.num_allocs() == 3, "complete is not destroyed"
    assert client.collect(done[0].id)
    assert client.num_allocs() == 2
    client.run_allocs([running, done[1]])
    assert client.num_allocs() == 2, "removing a destroyed runner changes nothing"
    client.run_allocs([running])
    assert client.num_allocs() == 1, "a removed runner is not counted while it is collected"


# --- restore and shutdown -----------------------------------------------------------------


def test_restore_across_a_restart(make_client, config):
    first = make_client(state_db=None)
    first.start()
    service = new_allocation(_service(), "web")
    batch = new_allocation(_batch(), "web", index=1)
    first.run_allocs([service, batch])
    wait_for(_task_state(first, service.id, "web", "running"))
    wait_for(_status(first, batch.id, "complete"))
    batch_events = first.runner(batch.id).alloc_state().task_states["job"].events
    started_at = first.runner(service.id).alloc_state().task_states["web"].started_at
    assert first.shutdown()
    assert first.shutdown(), "shutdown is idempotent"

    # An allocation saved with no task state at all (Nomad #16638).
    orphan = new_allocation(_service(), "web", index=2)
    db = SQLiteStateDB(config.state_db_path())
    db.put_allocation(orphan)
    db.close()

    second = make_client(state_db=None)
    second.start()
    ar = second.runner(service.id)
    assert ar is not None
    wait_for(_task_state(second, service.id, "web", "running"))
    assert _started_count(ar, "web") == 1, "a running task was started again"
    assert ar.alloc_state().task_states["web"].started_at == started_at
    assert ar.task_runner("web").is_running()
    done = second.runner(batch.id)
    assert done.wait(10)
    assert done.alloc_state().client_status == "complete"
    assert done.alloc_state().task_states["job"].events == batch_events, "batch re-run"
    assert second.runner(orphan.id) is None
    assert orphan.id not in {a.id for a in second.state_db.all_allocations()}


def test_a_restarted_client_reports_each_restored_allocation_once(make_client, upstream):
    """The last report before a crash may never have reached the server, and a restored
    runner whose state does not change reports nothing: the client reports it once."""
    db = MemDB()
    first = make_client(state_db=db)
    first.start()
    alloc = new_allocation(_service(), "web")
    first.run_allocs([alloc])
    wait_for(_task_state(first, alloc.id, "web", "running"))
    first.shutdown()

    second = make_client(state_db=db, state_updater=upstream)
    second.start()
    wait_for(lambda: _equal(upstream.last_of(alloc.id).client_status, "running"))
    assert_stays(lambda: _equal(len(upstream.views_of(alloc.id)), 1), 0.2)


def test_a_failed_restore_is_reported_and_destroyed(make_client, upstream):
    db = MemDB()
    first = make_client(state_db=db)
    first.start()
    alloc = new_allocation(_service(), "web")
    first.run_allocs([alloc])
    wait_for(_task_state(first, alloc.id, "web", "running"))
    alloc_dir = first.runner(alloc.id).alloc_dir.path
    first.shutdown()
    for path in sorted(alloc_dir.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    alloc_dir.rmdir()

    second = make_client(state_db=db, state_updater=upstream)
    second.start()
    assert second.runner(alloc.id) is None
    wait_for(lambda: _equal(upstream.last_of(alloc.id).client_status, "failed"))
    wait_for(lambda: _equal(db.all_allocations(), []))


def test_shutdown_leaves_real_processes_running_for_the_next_client(make_client):
    task = mock_task("web", driver="raw_exec", config={"command": "/bin/sleep", "args": ["30"]})
    alloc = new_allocation(mock_job(task), "web")
    first = make_client()
    first.start()
    first.run_allocs([alloc])
    wait_for(_task_state(first, alloc.id, "web", "running"))
    local, _ = first.state_db.task_runner_state(alloc.id, "web")
    pid = local.task_handle.driver_state["pid"]
    assert first.shutdown()
    assert pid_alive(pid), "shutdown killed the task"
    assert first.shutdown()
    first.run_allocs([alloc])  # ignored after shutdown
    assert first.runner(alloc.id).is_destroyed() is False

    second = make_client()
    second.start()
    try:
        wait_for(_task_state(second, alloc.id, "web", "running"))
        assert _started_count(second.runner(alloc.id), "web") == 1
        assert pid_alive(pid)
        second.run_allocs([])
        wait_for(lambda: _equal(pid_alive(pid), False), timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- replacements -------------------------------------------------------------------------


def test_a_replacement_waits_for_and_inherits_its_sticky_previous_alloc(make_client):
    job = _service(ephemeral_disk=EphemeralDisk(sticky=True))
    client = make_client()
    client.start()
    prev = new_allocation(job, "web")
    client.run_allocs([prev])
    wait_for(_task_state(client, prev.id, "web", "running"))
    prev_ar = client.runner(prev.id)
    (prev_ar.alloc_dir.data_dir / "db.sqlite").write_text("rows")

    nxt = new_allocation(job, "web", previous=prev)
    client.run_allocs([prev, nxt])
    nxt_ar = client.runner(nxt.id)
    wait_for(lambda: _equal(nxt_ar.is_waiting(), True))
    assert_stays(lambda: _equal(nxt_ar.alloc_state().task_states["web"].state, "pending"), 0.2)

    client.run_allocs([_stop(prev), nxt])
    wait_for(_task_state(client, nxt.id, "web", "running"), timeout=15)
    assert (nxt_ar.alloc_dir.data_dir / "db.sqlite").read_text() == "rows"
    assert client.runner(prev.id).alloc_state().client_status == "complete"


def test_client_as_context_manager(make_client):
    client = make_client()
    with client:
        alloc = mock_alloc()
        client.run_allocs([alloc])
        wait_for(_task_state(client, alloc.id, "web", "running"))
    assert client.runner(alloc.id).wait_shutdown(0)


def test_start_twice_is_refused(make_client):
    client = make_client()
    client.start()
    with pytest.raises(AllocRunnerError, match="cannot start"):
        client.start()


def test_default_drivers_and_state_db_are_owned(config):
    client = Client(config)
    client.start()
    try:
        alloc = mock_alloc()
        client.run_allocs([alloc])
        wait_for(_task_state(client, alloc.id, "web", "running"))
    finally:
        assert client.shutdown()
    assert config.state_db_path().is_file()


def test_finished_allocations_restored_are_collectable(tmp_path):
    """An allocation that finished before a restart can be collected by the next client."""
    from allocrunner import ClientConfig

    config = ClientConfig.for_data_dir(tmp_path, gc_interval=3600)
    alloc = mock_alloc(mock_task(config={"run_for": "10ms"}), job_type="batch")
    first = Client(config)
    first.start()
    first.run_allocs([alloc])
    wait_for(lambda: _terminal(first, alloc.id), 10)
    first.shutdown()

    second = Client(config)
    second.start()
    try:
        assert second.runner(alloc.id) is not None
        assert second.collect(alloc.id), "a finished, restored allocation is collectable"
        assert second.runner(alloc.id).is_destroyed()
    finally:
        second.shutdown()


def _terminal(client, alloc_id):
    (view,) = [a for a in client.allocs() if a.id == alloc_id]
    assert view.client_terminal(), view.client_status
