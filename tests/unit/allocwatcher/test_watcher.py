"""Previous-allocation watchers and migrators: ports of Nomad's allocwatcher tests
(§9 items 14-21) on real broadcasters and real alloc dirs, plus cancellation (#18129),
the never-destroy-the-previous-dir rule (#18034) and the factory."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time

import attrs
import pytest

from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.allocdir import error_marker_name
from allocrunner.allocwatcher import (
    GroupPrevAllocWatcher,
    LocalPrevAlloc,
    NoopPrevAlloc,
    PrevAllocMigrationError,
    PrevAllocWaitCancelled,
    RemotePrevAlloc,
    UnknownAllocationError,
    new_prev_watcher,
)
from allocrunner.errors import AllocRunnerError, PathEscapeError
from allocrunner.structs import (
    CLIENT_COMPLETE,
    CLIENT_FAILED,
    CLIENT_LOST,
    CLIENT_PENDING,
    CLIENT_RUNNING,
)
from allocrunner.testing import assert_stays, mock_alloc, wait_for

from .helpers import (
    TASKS,
    PrevRunner,
    assert_has_no_prev_data,
    assert_has_prev_data,
    build_prev_dir,
    leftovers,
    new_dest,
    prev_and_next,
    run_in_thread,
    snapshot_bytes,
)


@pytest.fixture
def threads():
    group = ThreadGroup("allocwatcher-test")
    yield group
    assert group.join(timeout=10), "a watcher thread did not finish"


def local_watcher(runner: PrevRunner, *, sticky: bool = False) -> LocalPrevAlloc:
    return LocalPrevAlloc(runner._client, runner.alloc_dir, runner.listen, TASKS, sticky)


# --- 14. no previous allocation --------------------------------------------------------


def test_noop_when_there_is_no_previous_alloc(tmp_path):
    alloc = mock_alloc()
    watcher, migrator = new_prev_watcher(alloc)
    assert isinstance(watcher, NoopPrevAlloc)
    assert isinstance(migrator, NoopPrevAlloc)
    cancel = CancelToken()
    start = time.monotonic()
    watcher.wait(cancel)
    migrator.migrate(cancel, new_dest(tmp_path, alloc.id))
    assert time.monotonic() - start < 0.5
    assert not watcher.is_waiting() and not migrator.is_migrating()


# --- 15. local: blocks until a terminal status is broadcast ----------------------------


def test_local_wait_blocks_until_terminal(tmp_path, threads):
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, build_prev_dir(tmp_path, prev.id))
    watcher = local_watcher(runner)
    assert not watcher.is_waiting()

    done = run_in_thread(threads, "waiter", watcher.wait, CancelToken())

    def waiting() -> None:
        assert watcher.is_waiting(), "wait() should be blocked"

    wait_for(waiting, timeout=5)
    # non-terminal updates do not release it
    runner.set_status(CLIENT_PENDING)
    runner.set_status(CLIENT_RUNNING)
    assert_stays(lambda: (waiting(), _not_done(done)), 0.2)

    runner.set_status(CLIENT_COMPLETE)
    assert done.done.wait(5), "wait() did not return after the terminal broadcast"
    assert done.error is None
    assert not watcher.is_waiting()


def _not_done(outcome) -> None:
    assert not outcome.done.is_set(), f"wait() returned early (error={outcome.error!r})"


@pytest.mark.parametrize("status", [CLIENT_COMPLETE, CLIENT_FAILED, CLIENT_LOST])
def test_local_wait_returns_on_each_terminal_status(tmp_path, threads, status):
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, None)
    watcher = local_watcher(runner)
    done = run_in_thread(threads, "waiter", watcher.wait, CancelToken())
    wait_for(lambda: _assert(watcher.is_waiting()), timeout=5)
    runner.set_status(status)
    assert done.done.wait(5) and done.error is None


def _assert(cond: bool) -> None:
    assert cond


def test_local_wait_returns_when_broadcaster_closes(threads):
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, None)
    watcher = local_watcher(runner)
    done = run_in_thread(threads, "waiter", watcher.wait, CancelToken())
    wait_for(lambda: _assert(watcher.is_waiting()), timeout=5)
    runner.broadcaster.close()
    assert done.done.wait(5) and done.error is None


def test_local_wait_sees_terminal_status_sent_before_it_listened():
    # the broadcaster primes a new listener with the last value
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, None)
    watcher = local_watcher(runner)  # built from a running view
    runner.finish()
    watcher.wait(CancelToken())
    assert runner.listens == 1


# --- 16. local: already terminal ---------------------------------------------------------


def test_local_wait_returns_at_once_when_already_terminal():
    prev, _ = prev_and_next()
    terminal = attrs.evolve(prev, client_status=CLIENT_COMPLETE)

    def must_not_listen():
        raise AssertionError("a terminal previous alloc needs no listener")

    watcher = LocalPrevAlloc(terminal, None, must_not_listen, TASKS, sticky=False)
    start = time.monotonic()
    watcher.wait(CancelToken())
    assert time.monotonic() - start < 0.5


# --- cancellation (Nomad #18129) ---------------------------------------------------------


def test_local_wait_is_cancelled_within_a_second(threads):
    # The previous runner was shut down, not stopped: it will never be terminal.
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, None)
    watcher = local_watcher(runner)
    cancel = CancelToken()
    done = run_in_thread(threads, "waiter", watcher.wait, cancel)
    wait_for(lambda: _assert(watcher.is_waiting()), timeout=5)
    start = time.monotonic()
    cancel.cancel("agent shutting down")
    assert done.done.wait(1.0), "a blocked wait did not observe cancellation within 1 s"
    assert time.monotonic() - start < 1.0
    assert isinstance(done.error, PrevAllocWaitCancelled)
    assert isinstance(done.error, AllocRunnerError)
    assert "agent shutting down" in str(done.error)
    assert prev.id in str(done.error)
    assert not watcher.is_waiting()


def test_cancelled_before_wait_raises_at_once():
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, None)
    cancel = CancelToken()
    cancel.cancel("destroyed")
    with pytest.raises(PrevAllocWaitCancelled, match="destroyed"):
        local_watcher(runner).wait(cancel)


def test_listener_is_closed_after_wait(threads):
    prev, _ = prev_and_next()
    runner = PrevRunner(prev, None)
    seen = []

    def factory():
        listener = runner.listen()
        seen.append(listener)
        return listener

    watcher = LocalPrevAlloc(prev, None, factory, TASKS, sticky=False)
    cancel = CancelToken()
    done = run_in_thread(threads, "waiter", watcher.wait, cancel)
    wait_for(lambda: _assert(watcher.is_waiting()), timeout=5)
    cancel.cancel()
    assert done.done.wait(5)
    from allocrunner.errors import BroadcasterClosed

    with pytest.raises(BroadcasterClosed):
        seen[0].get(timeout=0)


# --- local migration -------------------------------------------------------------------


def test_local_migrate_moves_data_and_keeps_previous_dir(tmp_path):
    prev, nxt = prev_and_next(sticky=True)
    prev_dir = build_prev_dir(tmp_path, prev.id)
    dest = new_dest(tmp_path, nxt.id)
    watcher = local_watcher(PrevRunner(prev, prev_dir), sticky=True)
    watcher.migrate(CancelToken(), dest)
    assert_has_prev_data(dest)
    assert not watcher.is_migrating()
    # Nomad #18034: the previous alloc dir (its logs) is left for the GC
    assert prev_dir.path.is_dir()
    assert prev_dir.logs_dir.is_dir()
    assert_has_no_prev_data(prev_dir)  # the data itself moved


def test_local_migrate_is_a_noop_unless_sticky(tmp_path):
    prev, nxt = prev_and_next()
    prev_dir = build_prev_dir(tmp_path, prev.id)
    dest = new_dest(tmp_path, nxt.id)
    local_watcher(PrevRunner(prev, prev_dir), sticky=False).migrate(CancelToken(), dest)
    assert_has_no_prev_data(dest)
    assert_has_prev_data(prev_dir)


def test_local_migrate_with_missing_previous_dir_moves_nothing(tmp_path):
    prev, nxt = prev_and_next(sticky=True)
    prev_dir = build_prev_dir(tmp_path, prev.id)
    prev_dir.destroy()
    dest = new_dest(tmp_path, nxt.id)
    local_watcher(PrevRunner(prev, prev_dir), sticky=True).migrate(CancelToken(), dest)
    assert_has_no_prev_data(dest)


def test_local_migrate_failure_is_a_migration_error(tmp_path):
    prev, nxt = prev_and_next(sticky=True)
    prev_dir = build_prev_dir(tmp_path, prev.id)
    dest = new_dest(tmp_path, nxt.id)
    (dest.data_dir / "already-here").write_text("x")  # a non-empty destination
    watcher = local_watcher(PrevRunner(prev, prev_dir), sticky=True)
    with pytest.raises(PrevAllocMigrationError, match=prev.id):
        watcher.migrate(CancelToken(), dest)
    assert_has_prev_data(prev_dir)
    assert not watcher.is_migrating()


def test_is_migrating_while_moving(tmp_path, threads):
    prev, nxt = prev_and_next(sticky=True)
    prev_dir = build_prev_dir(tmp_path, prev.id)
    dest = new_dest(tmp_path, nxt.id)
    entered, release = threading.Event(), threading.Event()

    class SlowDest:
        root = dest.root

        def move_from(self, other, tasks):
            entered.set()
            release.wait(5)
            dest.move_from(other, tasks)

    watcher = local_watcher(PrevRunner(prev, prev_dir), sticky=True)
    done = run_in_thread(threads, "migrator", watcher.migrate, CancelToken(), SlowDest())
    assert entered.wait(5)
    assert watcher.is_migrating()
    release.set()
    assert done.done.wait(5) and done.error is None
    assert not watcher.is_migrating()
    assert_has_prev_data(dest)


# --- 17-19. remote: the snapshot stream --------------------------------------------------


def remote(prev_id, snapshot, *, migrate=True, fetch_alloc=None, **kw) -> RemotePrevAlloc:
    def fetch_snapshot(alloc_id, cancel):
        assert alloc_id == prev_id
        return io.BytesIO(snapshot) if isinstance(snapshot, bytes) else snapshot

    return RemotePrevAlloc(
        prev_id,
        fetch_alloc or (lambda alloc_id, cancel: None),
        fetch_snapshot,
        tasks=TASKS,
        migrate=migrate,
        **kw,
    )


def test_remote_migrate_reproduces_dirs_files_symlinks_and_modes(tmp_path):
    src_root, dst_root = tmp_path / "other-node", tmp_path / "this-node"
    prev, nxt = prev_and_next(migrate=True)
    snapshot = snapshot_bytes(build_prev_dir(src_root, prev.id))
    dest = new_dest(dst_root, nxt.id)
    migrator = remote(prev.id, snapshot)
    migrator.migrate(CancelToken(), dest)
    assert_has_prev_data(dest)
    assert (dest.path / "web" / "local" / "shared" / "deep.bin").is_file()
    assert leftovers(dst_root) == [], "the staging dir was not removed"
    assert not migrator.is_migrating()


def test_remote_migrate_is_a_noop_unless_migrating(tmp_path):
    prev, nxt = prev_and_next()
    fetched = []

    def fetch_snapshot(alloc_id, cancel):
        fetched.append(alloc_id)
        raise AssertionError("no snapshot should be fetched")

    migrator = RemotePrevAlloc(prev.id, lambda a, c: None, fetch_snapshot, tasks=TASKS)
    migrator.migrate(CancelToken(), new_dest(tmp_path, nxt.id))
    assert fetched == []


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def test_remote_error_marker_aborts_migration_and_writes_nothing(tmp_path):
    prev, nxt = prev_and_next(migrate=True)
    stream = _tar(
        _file("alloc/data/partial.txt", b"half"),
        _file(error_marker_name(prev.id), b"disk went away"),
    )
    dest = new_dest(tmp_path, nxt.id)
    with pytest.raises(PrevAllocMigrationError, match="disk went away"):
        remote(prev.id, stream).migrate(CancelToken(), dest)
    assert list(dest.data_dir.iterdir()) == []
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "members",
    [
        [_file("../escape.txt", b"x")],
        [_file("alloc/data/../../../escape.txt", b"x")],
        [_symlink("alloc/data/out", "../../../../etc")],
        [_symlink("alloc/data/abs", "/etc/passwd")],
        # a link planted first must not be followed by a later write (the write attack)
        [_symlink("web/local/evil", "../../../.."), _file("web/local/evil/escape.txt", b"x")],
    ],
    ids=["dotdot", "nested-dotdot", "symlink-out", "symlink-absolute", "write-through-link"],
)
def test_remote_escaping_entries_are_rejected(tmp_path, members):
    prev, nxt = prev_and_next(migrate=True)
    root = tmp_path / "node"
    dest = new_dest(root, nxt.id)
    with pytest.raises(PrevAllocMigrationError) as info:
        remote(prev.id, _tar(*members)).migrate(CancelToken(), dest)
    assert isinstance(info.value.__cause__, PathEscapeError | AllocRunnerError)
    assert not (tmp_path / "escape.txt").exists()
    assert not (root / "escape.txt").exists()
    assert list(dest.data_dir.iterdir()) == []
    assert not (dest.path / "web" / "local").exists()
    assert leftovers(root) == []


def test_remote_broken_stream_leaves_destination_untouched(tmp_path):
    src_root, dst_root = tmp_path / "other", tmp_path / "here"
    prev, nxt = prev_and_next(migrate=True)
    snapshot = snapshot_bytes(build_prev_dir(src_root, prev.id))

    class Broken(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > len(snapshot) // 2:
                raise ConnectionResetError("peer went away")
            return super().read(size)

        readinto = None  # force read()

    dest = new_dest(dst_root, nxt.id)
    with pytest.raises(PrevAllocMigrationError, match="peer went away"):
        remote(prev.id, Broken(snapshot)).migrate(CancelToken(), dest)
    assert_has_no_prev_data(dest)
    assert leftovers(dst_root) == []


def test_remote_migrate_cancelled_mid_stream(tmp_path):
    src_root, dst_root = tmp_path / "other", tmp_path / "here"
    prev, nxt = prev_and_next(migrate=True)
    snapshot = snapshot_bytes(build_prev_dir(src_root, prev.id))
    cancel = CancelToken()

    class CancelsHalfway(io.BytesIO):
        def readinto(self, buffer):
            if self.tell() > 0:
                cancel.cancel("allocation destroyed")
            return super().readinto(memoryview(buffer)[:512])

    dest = new_dest(dst_root, nxt.id)
    with pytest.raises(PrevAllocWaitCancelled, match="allocation destroyed"):
        remote(prev.id, CancelsHalfway(snapshot)).migrate(cancel, dest)
    assert_has_no_prev_data(dest)
    assert leftovers(dst_root) == []


# --- 20. remote wait ---------------------------------------------------------------------


class FetchAlloc:
    """Thread-safe enough for one waiter: a scripted sequence of fetch results."""

    def __init__(self, *results):
        self.results = list(results)
        self.calls = 0

    def __call__(self, alloc_id, cancel):
        self.calls += 1
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, BaseException):
            raise result
        return result


@pytest.mark.parametrize(
    "error",
    [PermissionError("Permission denied"), UnknownAllocationError("unknown allocation")],
    ids=["permission-denied", "unknown-alloc"],
)
def test_remote_wait_terminal_error_ends_after_one_fetch(tmp_path, error):
    prev, nxt = prev_and_next(migrate=True)
    fetch = FetchAlloc(error)
    migrator = remote(prev.id, b"", fetch_alloc=fetch)
    migrator.wait(CancelToken())
    assert fetch.calls == 1
    # the previous alloc cannot be seen: there is nothing to migrate either
    dest = new_dest(tmp_path, nxt.id)
    migrator.migrate(CancelToken(), dest)
    assert_has_no_prev_data(dest)


def test_remote_wait_polls_until_terminal(threads):
    prev, _ = prev_and_next()
    running = prev
    fetch = FetchAlloc(running, running, running, attrs.evolve(prev, client_status=CLIENT_FAILED))
    migrator = remote(prev.id, b"", fetch_alloc=fetch, poll_interval=0.01)
    migrator.wait(CancelToken())
    assert fetch.calls == 4
    assert not migrator.is_waiting()


def test_remote_wait_returns_when_garbage_collected(tmp_path):
    prev, nxt = prev_and_next(migrate=True)
    fetch = FetchAlloc(prev, None)
    migrator = remote(prev.id, b"never fetched", fetch_alloc=fetch, poll_interval=0.01)
    migrator.wait(CancelToken())
    assert fetch.calls == 2
    dest = new_dest(tmp_path, nxt.id)
    migrator.migrate(CancelToken(), dest)  # gone: warn, nothing to fetch
    assert_has_no_prev_data(dest)


def test_remote_wait_retries_errors_with_backoff():
    prev, _ = prev_and_next()
    fetch = FetchAlloc(
        ConnectionError("no route"),
        TimeoutError("slow"),
        attrs.evolve(prev, client_status=CLIENT_COMPLETE),
    )
    migrator = remote(prev.id, b"", fetch_alloc=fetch, retry_base=0.01, retry_max=0.05)
    migrator.wait(CancelToken())
    assert fetch.calls == 3


def test_remote_wait_is_cancelled_within_a_second(threads):
    prev, _ = prev_and_next()
    for fetch, kw in (
        (FetchAlloc(prev), {"poll_interval": 30.0}),  # polling a running alloc
        (FetchAlloc(ConnectionError("down")), {"retry_base": 30.0}),  # backing off
    ):
        migrator = remote(prev.id, b"", fetch_alloc=fetch, **kw)
        cancel = CancelToken()
        done = run_in_thread(threads, "remote-waiter", migrator.wait, cancel)
        wait_for(lambda m=migrator, f=fetch: _assert(m.is_waiting() and f.calls >= 1), 5)
        start = time.monotonic()
        cancel.cancel("shutdown")
        assert done.done.wait(1.0), "remote wait did not observe cancellation"
        assert time.monotonic() - start < 1.0
        assert isinstance(done.error, PrevAllocWaitCancelled)


def test_remote_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prev_alloc_id"):
        RemotePrevAlloc("", lambda a, c: None)
    with pytest.raises(ValueError, match="poll_interval"):
        RemotePrevAlloc("x", lambda a, c: None, poll_interval=0)
    with pytest.raises(TypeError, match="tasks"):
        RemotePrevAlloc("x", lambda a, c: None, tasks="web")


# --- 21. group -------------------------------------------------------------------------


def test_group_waits_for_every_allocation(threads):
    a, _ = prev_and_next()
    b, _ = prev_and_next()
    ra, rb = PrevRunner(a, None), PrevRunner(b, None)
    group = GroupPrevAllocWatcher([local_watcher(ra), local_watcher(rb)])
    done = run_in_thread(threads, "group-waiter", group.wait, CancelToken())
    wait_for(lambda: _assert(group.is_waiting()), timeout=5)
    rb.finish()
    assert_stays(lambda: _not_done(done), 0.2)
    ra.finish()
    assert done.done.wait(5) and done.error is None
    assert not group.is_waiting()


def test_group_cancellation(threads):
    a, _ = prev_and_next()
    ra = PrevRunner(a, None)
    group = GroupPrevAllocWatcher([local_watcher(ra)])
    cancel = CancelToken()
    done = run_in_thread(threads, "group-waiter", group.wait, cancel)
    wait_for(lambda: _assert(group.is_waiting()), timeout=5)
    cancel.cancel()
    assert done.done.wait(1.0)
    assert isinstance(done.error, PrevAllocWaitCancelled)


def test_group_collects_failures():
    class Failing:
        def wait(self, cancel):
            raise RuntimeError("boom")

        def is_waiting(self):
            return False

    group = GroupPrevAllocWatcher([Failing(), NoopPrevAlloc(), Failing()])
    with pytest.raises(ExceptionGroup) as info:
        group.wait(CancelToken())
    assert len(info.value.exceptions) == 2


# --- the factory -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sticky", "migrate", "expect_sticky"),
    [(False, False, False), (True, False, True), (False, True, True)],
)
def test_factory_local_runner(tmp_path, sticky, migrate, expect_sticky):
    prev, nxt = prev_and_next(sticky=sticky, migrate=migrate)
    runner = PrevRunner(prev, build_prev_dir(tmp_path, prev.id))
    watcher, migrator = new_prev_watcher(nxt, prev_runner=runner)
    assert watcher is migrator
    assert isinstance(migrator, LocalPrevAlloc)
    assert migrator.sticky is expect_sticky  # migrate implies sticky (Nomad #16826)
    dest = new_dest(tmp_path, nxt.id)
    migrator.migrate(CancelToken(), dest)
    (assert_has_prev_data if expect_sticky else assert_has_no_prev_data)(dest)


def test_factory_local_runner_uses_the_runner_state(threads):
    prev, nxt = prev_and_next()
    runner = PrevRunner(prev, None)
    runner.finish()
    watcher, _ = new_prev_watcher(nxt, prev_runner=runner)
    listens = runner.listens
    watcher.wait(CancelToken())  # terminal per alloc_state(): returns without listening
    assert runner.listens == listens


def test_factory_rejects_the_wrong_runner():
    prev, nxt = prev_and_next()
    other, _ = prev_and_next()
    with pytest.raises(ValueError, match=prev.id):
        new_prev_watcher(nxt, prev_runner=PrevRunner(other, None))


@pytest.mark.parametrize(("sticky", "migrate"), [(True, False), (False, True), (True, True)])
def test_factory_remote(tmp_path, sticky, migrate):
    prev, nxt = prev_and_next(sticky=sticky, migrate=migrate)
    snapshot = snapshot_bytes(build_prev_dir(tmp_path / "other", prev.id))
    terminal = attrs.evolve(prev, client_status=CLIENT_COMPLETE)
    watcher, migrator = new_prev_watcher(
        nxt,
        fetch_alloc=lambda alloc_id, cancel: terminal,
        fetch_snapshot=lambda alloc_id, cancel: io.BytesIO(snapshot),
    )
    assert isinstance(migrator, RemotePrevAlloc) and watcher is migrator
    watcher.wait(CancelToken())
    dest = new_dest(tmp_path / "here", nxt.id)
    migrator.migrate(CancelToken(), dest)
    # a remote previous alloc's data moves only when the disk migrates
    (assert_has_prev_data if migrate else assert_has_no_prev_data)(dest)


def test_factory_without_a_way_to_watch_is_noop():
    _, nxt = prev_and_next()
    watcher, migrator = new_prev_watcher(nxt)
    assert isinstance(watcher, NoopPrevAlloc) and isinstance(migrator, NoopPrevAlloc)


def test_factory_with_preempted_runners(threads):
    prev, nxt = prev_and_next()
    victim, _ = prev_and_next()
    rp, rv = PrevRunner(prev, None), PrevRunner(victim, None)
    watcher, migrator = new_prev_watcher(nxt, prev_runner=rp, preempted_runners=[rv])
    assert isinstance(watcher, GroupPrevAllocWatcher)
    assert isinstance(migrator, LocalPrevAlloc)
    done = run_in_thread(threads, "waiter", watcher.wait, CancelToken())
    wait_for(lambda: _assert(watcher.is_waiting()), timeout=5)
    rp.finish()
    assert_stays(lambda: _not_done(done), 0.2)
    rv.set_status(CLIENT_LOST)
    assert done.done.wait(5) and done.error is None


def test_tasks_must_be_a_sequence_of_names():
    prev, _ = prev_and_next()
    with pytest.raises(TypeError, match="tasks"):
        LocalPrevAlloc(prev, None, lambda: None, "web", sticky=True)
    with pytest.raises(TypeError, match="prev_alloc"):
        LocalPrevAlloc(prev.id, None, lambda: None, TASKS, sticky=True)


def test_remote_staging_dir_never_takes_the_previous_alloc_name(tmp_path):
    # A dir named like the previous alloc (say, left by an older run) is not touched
    # by a failed migration.
    prev, nxt = prev_and_next(migrate=True)
    same_name = tmp_path / prev.id
    same_name.mkdir()
    (same_name / "keep").write_text("keep me")
    dest = new_dest(tmp_path, nxt.id)
    with pytest.raises(PrevAllocMigrationError):
        remote(prev.id, b"not a tar stream at all" * 50).migrate(CancelToken(), dest)
    assert (same_name / "keep").read_text() == "keep me"
    assert not os.path.exists(tmp_path / f".migrate-{prev.id}")
