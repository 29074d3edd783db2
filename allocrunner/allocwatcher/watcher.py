"""Waiting for a previous allocation to finish, and migrating its ephemeral disk.

A replacement allocation (one whose `previous_allocation` is set) must not start
before the allocation it replaces is terminal, and with a sticky (or migrating)
ephemeral disk it inherits that allocation's `alloc/data` and each task's `local/`.
This module holds the two roles and their implementations, as Nomad's client does:

- `PrevAllocWatcher.wait(cancel)` returns once the previous allocation is terminal
  (or gone); `PrevAllocMigrator.migrate(cancel, dest)` moves its data into `dest`.
- `NoopPrevAlloc`: there is nothing to wait for.
- `LocalPrevAlloc`: the previous allocation runs on this node; wait follows its
  runner's broadcaster, migrate moves its alloc dir. The previous directory is never
  destroyed here: the garbage collector owns it (Nomad #18034).
- `RemotePrevAlloc`: the previous allocation ran elsewhere; wait polls a pluggable
  `fetch_alloc`, migrate streams a tar snapshot from a pluggable `fetch_snapshot`
  into a temporary alloc dir and moves it in, so a failed migration leaves the
  destination untouched.
- `GroupPrevAllocWatcher`: waits for several allocations (the previous one and any
  preempted ones).

Every blocking wait observes its `CancelToken` within `POLL_INTERVAL` seconds and
then raises `PrevAllocWaitCancelled`, so an allocation runner being shut down or
destroyed is never stuck behind a previous allocation that will never finish
(Nomad #18129).
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

import attrs

from allocrunner._locking import calls_out, guarded, immutable, make_lock
from allocrunner._sync import CancelToken
from allocrunner.allocdir import AllocDir
from allocrunner.errors import AllocRunnerError, BroadcasterClosed
from allocrunner.structs import Allocation

if TYPE_CHECKING:
    from allocrunner.broadcaster import AllocListener

__all__ = [
    "POLL_INTERVAL",
    "GroupPrevAllocWatcher",
    "LocalPrevAlloc",
    "NoopPrevAlloc",
    "PrevAllocMigrationError",
    "PrevAllocMigrator",
    "PrevAllocWaitCancelled",
    "PrevAllocWatcher",
    "RemotePrevAlloc",
    "UnknownAllocationError",
    "new_prev_watcher",
]

log = logging.getLogger("allocrunner.allocwatcher")

POLL_INTERVAL = 0.05
"""Longest time a blocked wait goes without checking its cancel token (seconds)."""


class PrevAllocWaitCancelled(AllocRunnerError):
    """Waiting for (or migrating from) the previous allocation was cancelled."""

    def __init__(self, prev_alloc_id: str, reason: str | None) -> None:
        super().__init__(
            f"waiting for previous allocation {prev_alloc_id} cancelled: {reason or 'cancelled'}"
        )
        self.prev_alloc_id = prev_alloc_id
        self.reason = reason


class PrevAllocMigrationError(AllocRunnerError):
    """The previous allocation's data could not be migrated; the destination is unchanged."""


class UnknownAllocationError(AllocRunnerError, LookupError):
    """A fetch found no such allocation (or may not see it): there is nothing to wait for."""


# --- protocols ---------------------------------------------------------------------------


@runtime_checkable
class PrevAllocWatcher(Protocol):
    """Thread-safe. Blocks until a previous allocation is terminal."""

    def wait(self, cancel: CancelToken) -> None:
        """Return once the previous allocation is terminal or gone (or there is none).
        Raises PrevAllocWaitCancelled soon after `cancel` is cancelled."""
        ...

    def is_waiting(self) -> bool:
        """True while a `wait` is blocked."""
        ...


@runtime_checkable
class PrevAllocMigrator(PrevAllocWatcher, Protocol):
    """Thread-safe. A watcher that can also move the previous allocation's data."""

    def migrate(self, cancel: CancelToken, dest: AllocDir) -> None:
        """Move the previous allocation's `alloc/data` and tasks' `local/` into `dest`
        (nothing when the disk is neither sticky nor migrating). Raises
        PrevAllocWaitCancelled when cancelled and PrevAllocMigrationError on failure."""
        ...

    def is_migrating(self) -> bool:
        """True while a `migrate` is moving data."""
        ...


# --- shared flags ------------------------------------------------------------------------


class _Flags:
    """Thread-safe. The waiting / migrating counters behind is_waiting / is_migrating."""

    # _lock guards: _waiting, _migrating
    _lock = immutable()
    _waiting = guarded("_lock")
    _migrating = guarded("_lock")

    def __init__(self) -> None:
        self._lock = make_lock("PrevAllocWatcher._lock")
        self._waiting = 0
        self._migrating = 0

    def is_waiting(self) -> bool:
        """True while a `wait` is blocked."""
        with self._lock:
            return self._waiting > 0

    def is_migrating(self) -> bool:
        """True while a `migrate` is moving data."""
        with self._lock:
            return self._migrating > 0

    @contextlib.contextmanager
    def _marking(self, flag: str) -> Iterator[None]:
        with self._lock:
            setattr(self, flag, getattr(self, flag) + 1)
        try:
            yield
        finally:
            with self._lock:
                setattr(self, flag, getattr(self, flag) - 1)


def _check_cancel(cancel: CancelToken, prev_alloc_id: str) -> None:
    if cancel.cancelled():
        raise PrevAllocWaitCancelled(prev_alloc_id, cancel.reason)


# --- noop --------------------------------------------------------------------------------


class NoopPrevAlloc:
    """Thread-safe. Nothing to wait for and nothing to migrate (stateless)."""

    def wait(self, cancel: CancelToken) -> None:
        """Return at once."""

    def is_waiting(self) -> bool:
        return False

    def migrate(self, cancel: CancelToken, dest: AllocDir) -> None:
        """Return at once."""

    def is_migrating(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<NoopPrevAlloc>"


# --- local -------------------------------------------------------------------------------


class LocalPrevAlloc(_Flags):
    """Thread-safe. The previous allocation runs on this node.

    `prev_alloc` is its client view when the watcher was made; `listener_factory`
    opens a listener on its runner's broadcaster; `tasks` names the tasks whose
    `local/` directories move; `sticky` is `ephemeral_disk.sticky or migrate`.
    """

    _prev_alloc = immutable()
    _prev_alloc_dir = immutable()
    _listener_factory = immutable()
    _tasks = immutable()
    _sticky = immutable()

    def __init__(
        self,
        prev_alloc: Allocation,
        prev_alloc_dir: AllocDir,
        listener_factory: Callable[[], AllocListener],
        tasks: Sequence[str],
        sticky: bool,
    ) -> None:
        super().__init__()
        if not isinstance(prev_alloc, Allocation):
            raise TypeError(f"prev_alloc: expected Allocation, got {type(prev_alloc).__name__}")
        if isinstance(tasks, str):
            raise TypeError("tasks: expected a sequence of task names, got a str")
        self._prev_alloc = prev_alloc
        self._prev_alloc_dir = prev_alloc_dir
        self._listener_factory = listener_factory
        self._tasks = tuple(tasks)
        self._sticky = bool(sticky)

    @property
    def prev_alloc_id(self) -> str:
        return self._prev_alloc.id

    @property
    def sticky(self) -> bool:
        return self._sticky

    @calls_out
    def wait(self, cancel: CancelToken) -> None:
        """Return once the previous runner broadcasts a terminal client status, or its
        broadcaster closes; at once if the client view was already terminal."""
        prev_id = self._prev_alloc.id
        _check_cancel(cancel, prev_id)
        if self._prev_alloc.client_terminal():
            return
        with self._marking("_waiting"):
            try:
                listener = self._listener_factory()
            except BroadcasterClosed:
                return
            with listener:
                self._follow(listener, cancel)

    def _follow(self, listener: AllocListener, cancel: CancelToken) -> None:
        prev_id = self._prev_alloc.id
        while True:
            _check_cancel(cancel, prev_id)
            try:
                alloc = listener.get(timeout=POLL_INTERVAL)
            except TimeoutError:
                continue
            except BroadcasterClosed:
                return
            if alloc.client_terminal():
                log.debug("previous allocation %s is %s", prev_id, alloc.client_status)
                return

    @calls_out
    def migrate(self, cancel: CancelToken, dest: AllocDir) -> None:
        """Move the previous alloc dir's data into `dest` when sticky. The previous
        directory itself is left for the garbage collector."""
        if not self._sticky:
            return
        _check_cancel(cancel, self._prev_alloc.id)
        with self._marking("_migrating"):
            try:
                dest.move_from(self._prev_alloc_dir, list(self._tasks))
            except Exception as err:
                raise PrevAllocMigrationError(
                    f"moving data of previous allocation {self._prev_alloc.id}: {err}"
                ) from err

    def __repr__(self) -> str:
        return f"<LocalPrevAlloc {self._prev_alloc.id} sticky={self._sticky}>"


# --- remote ------------------------------------------------------------------------------

FetchAlloc = Callable[[str, CancelToken], "Allocation | None"]
FetchSnapshot = Callable[[str, CancelToken], BinaryIO]

_UNKNOWN = "unknown"  # not waited for yet
_GONE = "gone"  # garbage-collected, unknown or not visible: nothing to migrate
_TERMINAL = "terminal"


class _CancellableReader:
    """Not thread-safe; owned by one migrate call. A read-only stream that raises
    PrevAllocWaitCancelled from `read` once cancelled, so a long extraction stops."""

    def __init__(self, raw: IO[bytes], cancel: CancelToken, prev_alloc_id: str) -> None:
        self._raw = raw
        self._cancel = cancel
        self._prev_alloc_id = prev_alloc_id

    def read(self, size: int = -1) -> bytes:
        _check_cancel(self._cancel, self._prev_alloc_id)
        return self._raw.read(size)

    def readinto(self, buffer: Any) -> int | None:
        _check_cancel(self._cancel, self._prev_alloc_id)
        readinto = getattr(self._raw, "readinto", None)
        if readinto is not None:
            return readinto(buffer)
        data = self._raw.read(len(buffer))
        if data is None:
            return None
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class RemotePrevAlloc(_Flags):
    """Thread-safe. The previous allocation ran on another node (or its runner is gone).

    `fetch_alloc(id, cancel)` returns the allocation as the cluster knows it, None if
    it was garbage-collected, or raises `PermissionError` / `UnknownAllocationError`
    when it cannot be seen (both end the wait: there is nothing to wait for); any other
    error is retried with exponential backoff. `fetch_snapshot(id, cancel)` returns a
    readable tar stream of its alloc dir (see `AllocDir.snapshot`).
    """

    _prev_alloc_id = immutable()
    _fetch_alloc = immutable()
    _fetch_snapshot = immutable()
    _tasks = immutable()
    _migrate = immutable()
    _poll_interval = immutable()
    _retry_base = immutable()
    _retry_max = immutable()
    _temp_root = immutable()
    # _lock also guards: _outcome
    _outcome = guarded("_lock")

    def __init__(
        self,
        prev_alloc_id: str,
        fetch_alloc: FetchAlloc,
        fetch_snapshot: FetchSnapshot | None = None,
        *,
        tasks: Sequence[str] = (),
        migrate: bool = False,
        poll_interval: float = 1.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        temp_root: str | None = None,
    ) -> None:
        super().__init__()
        if not prev_alloc_id or not isinstance(prev_alloc_id, str):
            raise ValueError("prev_alloc_id: must be a non-empty allocation id")
        if isinstance(tasks, str):
            raise TypeError("tasks: expected a sequence of task names, got a str")
        for name, value in (
            ("poll_interval", poll_interval),
            ("retry_base", retry_base),
            ("retry_max", retry_max),
        ):
            if value <= 0:
                raise ValueError(f"{name}: must be positive, got {value!r}")
        self._prev_alloc_id = prev_alloc_id
        self._fetch_alloc = fetch_alloc
        self._fetch_snapshot = fetch_snapshot
        self._tasks = tuple(tasks)
        self._migrate = bool(migrate)
        self._poll_interval = float(poll_interval)
        self._retry_base = float(retry_base)
        self._retry_max = max(float(retry_max), float(retry_base))
        self._temp_root = temp_root
        self._outcome = _UNKNOWN

    @property
    def prev_alloc_id(self) -> str:
        return self._prev_alloc_id

    @calls_out
    def wait(self, cancel: CancelToken) -> None:
        """Poll until the previous allocation is terminal, garbage-collected or not
        visible. Fetch errors are retried with backoff; cancellation ends the wait."""
        prev_id = self._prev_alloc_id
        failures = 0
        with self._marking("_waiting"):
            while True:
                _check_cancel(cancel, prev_id)
                try:
                    alloc = self._fetch_alloc(prev_id, cancel)
                except (PermissionError, UnknownAllocationError) as err:
                    log.info("previous allocation %s cannot be watched: %s", prev_id, err)
                    self._set_outcome(_GONE)
                    return
                except PrevAllocWaitCancelled:
                    raise
                except Exception as err:
                    failures += 1
                    delay = self._backoff(failures)
                    log.warning(
                        "fetching previous allocation %s failed (retry in %.2fs): %s",
                        prev_id,
                        delay,
                        err,
                    )
                    self._sleep(cancel, delay)
                    continue
                failures = 0
                if alloc is None:
                    log.debug("previous allocation %s was garbage-collected", prev_id)
                    self._set_outcome(_GONE)
                    return
                if alloc.client_terminal():
                    self._set_outcome(_TERMINAL)
                    return
                self._sleep(cancel, self._poll_interval)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._retry_max, self._retry_base * (2 ** min(failures - 1, 30)))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _sleep(self, cancel: CancelToken, seconds: float) -> None:
        if cancel.wait(seconds):
            raise PrevAllocWaitCancelled(self._prev_alloc_id, cancel.reason)

    def _set_outcome(self, outcome: str) -> None:
        with self._lock:
            self._outcome = outcome

    @calls_out
    def migrate(self, cancel: CancelToken, dest: AllocDir) -> None:
        """Stream the previous alloc dir into a temporary alloc dir, then move its data
        into `dest` and remove the temporary one. Nothing happens unless the disk
        migrates, and nothing can be fetched once the previous allocation is gone. On
        any failure the temporary dir is removed and `dest` is left as it was."""
        if not self._migrate:
            return
        prev_id = self._prev_alloc_id
        with self._lock:
            outcome = self._outcome
        if outcome == _GONE:
            log.warning("previous allocation %s is gone: no data to migrate", prev_id)
            return
        if self._fetch_snapshot is None:
            log.warning("no snapshot source for previous allocation %s: not migrating", prev_id)
            return
        _check_cancel(cancel, prev_id)
        with self._marking("_migrating"):
            self._migrate_into(cancel, dest)

    def _migrate_into(self, cancel: CancelToken, dest: AllocDir) -> None:
        prev_id = self._prev_alloc_id
        root = self._temp_root or _alloc_dir_root(dest)
        # A name no allocation can have, so a failure never removes a real alloc dir.
        temp = AllocDir(root, f".migrate-{prev_id}-{secrets.token_hex(4)}")
        try:
            temp.build()
            stream = self._fetch_snapshot(prev_id, cancel)  # type: ignore[misc]
            try:
                temp.extract(_CancellableReader(stream, cancel, prev_id))  # type: ignore[arg-type]
            finally:
                stream.close()
            _check_cancel(cancel, prev_id)
            dest.move_from(temp, list(self._tasks))
        except PrevAllocWaitCancelled:
            raise
        except Exception as err:
            raise PrevAllocMigrationError(
                f"migrating data of previous allocation {prev_id}: {err}"
            ) from err
        finally:
            _discard(temp)

    def __repr__(self) -> str:
        return f"<RemotePrevAlloc {self._prev_alloc_id} migrate={self._migrate}>"


def _discard(temp: AllocDir) -> None:
    """Remove a staging alloc dir; a failure is logged, never raised over the outcome."""
    try:
        temp.destroy()
    except Exception as err:
        log.warning("removing migration staging dir %s failed: %s", temp.path, err)


def _alloc_dir_root(dest: Any) -> str:
    root = getattr(dest, "root", None)
    if root is None:
        raise PrevAllocMigrationError("destination alloc dir has no root to stage a migration")
    return str(root)


# --- group -------------------------------------------------------------------------------


class GroupPrevAllocWatcher(_Flags):
    """Thread-safe. Waits for every one of several allocations (the previous one and
    those it preempted) to be terminal."""

    _watchers = immutable()

    def __init__(self, watchers: Sequence[PrevAllocWatcher]) -> None:
        super().__init__()
        self._watchers = tuple(watchers)

    @calls_out
    def wait(self, cancel: CancelToken) -> None:
        """Wait for each allocation in turn (waiting for all is the same whatever the
        order). Failures are collected and raised together; cancellation at once."""
        errors: list[Exception] = []
        with self._marking("_waiting"):
            for watcher in self._watchers:
                try:
                    watcher.wait(cancel)
                except PrevAllocWaitCancelled:
                    raise
                except Exception as err:
                    errors.append(err)
        if errors:
            raise ExceptionGroup("waiting for previous allocations failed", errors)

    def __repr__(self) -> str:
        return f"<GroupPrevAllocWatcher of {len(self._watchers)}>"


# --- factory -----------------------------------------------------------------------------


@attrs.frozen
class _RunnerView:
    """Immutable. What a local watcher needs from a previous runner."""

    alloc: Allocation
    alloc_dir: Any
    listen: Callable[[], Any]


def _runner_view(runner: Any) -> _RunnerView:
    alloc = runner.alloc()
    state = runner.alloc_state()
    client = attrs.evolve(
        alloc,
        client_status=state.client_status,
        client_description=state.client_description,
        task_states=state.task_states,
        deployment_status=state.deployment_status,
    )
    return _RunnerView(alloc=client, alloc_dir=runner.alloc_dir, listen=runner.listen)


def new_prev_watcher(
    alloc: Allocation,
    *,
    prev_runner: Any = None,
    fetch_alloc: FetchAlloc | None = None,
    fetch_snapshot: FetchSnapshot | None = None,
    preempted_runners: Sequence[Any] = (),
    **remote_options: Any,
) -> tuple[PrevAllocWatcher, PrevAllocMigrator]:
    """Pick the watcher and migrator for `alloc`, as Nomad's client does.

    - No previous allocation (and none preempted): `NoopPrevAlloc` for both.
    - `prev_runner` (the previous allocation's runner on this node; anything with
      `alloc()`, `alloc_state()`, `listen()` and `alloc_dir`): `LocalPrevAlloc`,
      sticky when the group's ephemeral disk is sticky or migrates.
    - Otherwise, with `fetch_alloc`: `RemotePrevAlloc`, migrating only when the disk
      migrates (`remote_options` go to its constructor).
    - Otherwise the previous allocation cannot be observed: `NoopPrevAlloc`.

    A replacement always waits for its previous allocation; data moves only with a
    sticky or migrating disk. Preempted runners are waited for too (not migrated).
    """
    group = alloc.group()
    tasks = [t.name for t in group.tasks] if group is not None else []
    disk = group.ephemeral_disk if group is not None else None
    noop = NoopPrevAlloc()
    migrator: PrevAllocMigrator = noop
    prev_id = alloc.previous_allocation
    if prev_id:
        if prev_runner is not None:
            view = _runner_view(prev_runner)
            if view.alloc.id != prev_id:
                raise ValueError(
                    f"prev_runner runs allocation {view.alloc.id}, "
                    f"but {alloc.id} replaces {prev_id}"
                )
            migrator = LocalPrevAlloc(
                view.alloc,
                view.alloc_dir,
                view.listen,
                tasks,
                sticky=disk is not None and disk.carries_data(),
            )
        elif fetch_alloc is not None:
            migrator = RemotePrevAlloc(
                prev_id,
                fetch_alloc,
                fetch_snapshot,
                tasks=tasks,
                migrate=disk is not None and disk.migrate,
                **remote_options,
            )
        else:
            log.debug("previous allocation %s is not observable: not waiting", prev_id)
    preempted = [
        LocalPrevAlloc(v.alloc, v.alloc_dir, v.listen, (), sticky=False)
        for v in map(_runner_view, preempted_runners)
    ]
    if not preempted:
        return migrator, migrator
    watchers: list[PrevAllocWatcher] = [] if migrator is noop else [migrator]
    return GroupPrevAllocWatcher([*watchers, *preempted]), migrator
