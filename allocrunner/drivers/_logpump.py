"""The log pump: one thread that copies processes' output pipes into log sinks and
notices when the processes exit, so a task costs no thread of its own.

A process is handed over as a `Watch`: its pipes (each with the `LogSink` its bytes go
to) and how to see it exit, either a pidfd (readable once the process has exited) or,
where there is none, a `poll_exit` function the pump calls every `poll_interval`
seconds. When a process has exited the pump drains its pipes and only then calls its
`on_exit`, so whoever waits for the exit finds everything the process wrote in the
logs; the exits one turn of the pump finds are all reported at the end of the turn.
A pipe is watched until it reaches end of file (whatever of the process group still
holds it may write on) or until the watch is forgotten.

The pump's thread is started by the first `add` and runs one epoll over every pipe
and pidfd, plus a wake pipe. Descriptors are registered with the epoll by the thread
that hands them over (the start path wakes no thread). The epoll and the wake pipe
live as long as the pump object, so a registration or wake-up racing `close()` can
never reach a recycled descriptor.

An exit descriptor its owner keeps (`Watch.read_exit`) may be waited on by one of the
owner's threads as well: `hold` stops the pump waking for the owner meanwhile (its exit
descriptor is muted and its pipes are taken out of the epoll, since a pipe's end of
file, which the process's exit brings, would wake the pump even muted), so the exit
wakes that thread alone. `take_exit` then hands the exit's report to that thread if
the pump has nothing of the process's output left to copy: each pipe is closed by the
pump already, or is empty at end of file (the thread takes it off the pump's watch and
queues it for the pump to close, with its sink, at its next turn; no wake-up on the
stop path). Otherwise, or if the thread gives up, `release` gives the owner back to the
pump, which copies what remains and reports the exit. While an owner is held the pump
neither reads its pipes nor reports its exit, and `hold` refuses an owner the pump is
reading at that moment (``_busy``), so a held owner's pipes are read by no one.

Threads: the pump thread (named by the owner, e.g. ``raw_exec-io``) reads pipes,
writes sinks, closes pipes and calls `on_exit` / `poll_exit` with no lock held; the
sinks are confined to it. Any thread may call `add`, `forget`, `close`, `hold`,
`release` and `take_exit`.

Locks: ``LogPump._lock``, a leaf, guards what the pump watches (`_watched` and its
index by owner `_by_owner`, checked maps changed in place, so that a hundred exits at
once cost linear time; `_polled`), the held owners (`_held`) and the one the pump
reads now (`_busy`), the pipes queued for closing (`_closings`), the queued forget
requests (`_forgets`) and the `_started` / `_closed` flags. No other declared lock is
taken under it, and no I/O or callback runs under it; `hold` and `release` update the
epoll's table under it (epoll_ctl, which neither blocks nor does I/O), so a held
owner's descriptors are never found ready by the pump, which would spin on them.

Owner: a driver creates one pump (raw_exec does) and calls `close()` when it closes;
running processes keep running and keep their pipes' other read ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import weakref
from collections.abc import Callable
from typing import NamedTuple, Protocol

import attrs

from allocrunner._guarded import guarded_dict
from allocrunner._locking import calls_out, confined, guarded, immutable, make_lock, requires
from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.drivers.base import TaskConfig
from allocrunner.drivers.logs import MB, RotatingLogWriter

_log = logging.getLogger("allocrunner.drivers.logpump")

_READ_SIZE = 65536
_BOUNDED_READS = 16
"""Reads per pipe per wake-up, so one chatty process cannot starve the others."""
_UNBOUNDED_READS = 1 << 30
_CLOSINGS_WAKE = 16
"""Pipes taken by `take_exit` queue up to this many before the pump is woken to close
them (else they are closed at its next turn, e.g. a `forget`)."""


class LogSink(Protocol):
    """Where the bytes of one pipe go. Called only from the pump thread."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


@attrs.frozen
class Exited:
    """Immutable. A process has exited; its wait status when the poller reaped it."""

    wait_status: int | None = None


@attrs.frozen(eq=False)
class Watch:
    """Immutable. One process as the pump watches it.

    `owner` is the key `forget` takes (e.g. the driver's record of the task). `pipes`
    are (read end, sink) pairs; `pidfd` is a descriptor that turns readable once the
    process has exited (a pidfd, or the read end of a pipe whose writer reports the
    exit), or None: then `poll_exit` (if given) is polled and returns `Exited` once
    the process has exited. With `status_pipe`, `pidfd` is a non-blocking pipe on
    which the exit arrives as the wait status in decimal (nothing, at end of file, if
    the writer died first). `on_exit(wait_status)` is called once, on the pump thread,
    after the pipes are drained. With `read_exit`, `pidfd` stays the owner's, open as
    long as it lives (the pump unregisters it, never closes it), and the exit's wait
    status is what `read_exit` returns (None: unknown); the owner's threads may then
    wait on `pidfd` too (`mute_exit`, `take_exit`)."""

    owner: object
    pipes: tuple[tuple[int, LogSink], ...]
    on_exit: Callable[[int | None], None]
    pidfd: int | None = None
    poll_exit: Callable[[], Exited | None] | None = None
    status_pipe: bool = False
    read_exit: Callable[[], int | None] | None = None


@attrs.frozen(eq=False)
class _Pipe:
    """Immutable. One watched output pipe and where its bytes go."""

    watch: Watch
    fd: int
    sink: LogSink


@attrs.frozen(eq=False)
class _Forget:
    """Immutable. A request to the pump thread to drop the watches of `owner`, then
    cancel `done`."""

    owner: object
    done: CancelToken


class RotatingLogSink:
    """Not thread-safe; owned by the pump thread. One output stream of a task,
    written to its rotated log files, which are opened on the first bytes."""

    _writer = confined("log pump")
    write_errors = confined("log pump")

    def __init__(self, config: TaskConfig, stream: str) -> None:
        self._config = config
        self._stream = stream
        self._writer: RotatingLogWriter | None = None
        self.write_errors = 0

    def write(self, data: bytes) -> None:
        try:
            if self._writer is None:
                config = self._config
                self._writer = RotatingLogWriter(
                    config.logs_dir,
                    config.name,
                    self._stream,
                    max_files=config.log_max_files,
                    max_bytes=config.log_max_file_size_bytes or config.log_max_file_size_mb * MB,
                )
            self._writer.write(data)
        except (OSError, ValueError):
            self.write_errors += 1

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()


class LogPump:
    """Thread-safe. Copies output pipes into sinks and reports exits (module docstring)."""

    _lock = immutable()
    _thread_name = immutable()
    _poll_interval = immutable()
    _closing = immutable()
    _threads = immutable()
    _epoll = immutable()
    _wake_r = immutable()
    _wake_w = immutable()
    # _lock guards: _watched, _by_owner, _polled, _held, _busy, _closings, _forgets,
    # _started, _closed
    _watched = immutable()  # checked map, changed in place under _lock
    _by_owner = immutable()  # checked map, changed in place under _lock
    _polled = guarded("_lock")
    _held = guarded("_lock")
    _busy = guarded("_lock")
    _closings = guarded("_lock")
    _forgets = guarded("_lock")
    _started = guarded("_lock")
    _closed = guarded("_lock")

    def __init__(self, thread_name: str, *, poll_interval: float) -> None:
        self._lock = make_lock("LogPump._lock")
        self._thread_name = thread_name
        self._poll_interval = poll_interval
        self._closing = CancelToken()
        self._threads = ThreadGroup(thread_name)
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        weakref.finalize(self, _close_all, self._epoll, self._wake_r, self._wake_w)
        # Descriptor -> what it watches: a _Pipe, or the Watch its pidfd belongs to.
        # An entry exists before its descriptor is registered and is removed before
        # the descriptor is unregistered and closed.
        self._watched: dict[int, _Pipe | Watch] = guarded_dict(self._lock)
        # id(owner) -> its entries (fd -> entry); an owner is alive while it has any.
        self._by_owner: dict[int, dict[int, _Pipe | Watch]] = guarded_dict(self._lock)
        self._polled: tuple[Watch, ...] = ()  # watches without a pidfd, polled
        self._held: frozenset[int] = frozenset()  # id(owner) of the held owners
        self._busy: int | None = None  # id(owner) whose pipes the pump reads now
        self._closings: tuple[_Pipe, ...] = ()  # taken pipes the pump is to close
        self._forgets: tuple[_Forget, ...] = ()
        self._started = False
        self._closed = False

    def add(self, watch: Watch) -> bool:
        """Watch a process from now on (starting the thread on first use). False if the
        pump is closed: then the descriptors are still the caller's."""
        entries: dict[int, _Pipe | Watch] = {fd: _Pipe(watch, fd, sink) for fd, sink in watch.pipes}
        if watch.pidfd is not None:
            entries[watch.pidfd] = watch
        with self._lock:
            if self._closed:
                return False
            self._watched.update(entries)
            self._by_owner.setdefault(id(watch.owner), {}).update(entries)
            if watch.pidfd is None and watch.poll_exit is not None:
                self._polled = (*self._polled, watch)
            spawn = not self._started
            self._started = True
        for fd in entries:
            # Only fails if close() raced us; then the pump thread closed the fds.
            with contextlib.suppress(OSError, ValueError):
                self._epoll.register(fd, select.EPOLLIN)
        if spawn:
            self._threads.spawn(self._thread_name, self._loop)
        return True

    def hold(self, owner: object, exit_fd: int) -> bool:
        """Stop waking for `owner` (its exit descriptor `exit_fd`, one its owner keeps:
        `Watch.read_exit`, and its pipes) while a thread of the owner's waits on
        `exit_fd` itself; until `release` or `forget`. False (nothing changed) if the
        owner is not watched, is held already, or the pump reads its pipes right now."""
        key = id(owner)
        with self._lock:
            owned = self._by_owner.get(key)
            if owned is None or key in self._held or self._busy == key:
                return False
            self._held = self._held | {key}
            # Under the lock (an epoll table update, no I/O): once the owner is held
            # the pump must not find its descriptors ready, or it would spin on them.
            for fd, entry in owned.items():
                with contextlib.suppress(OSError):
                    if isinstance(entry, _Pipe):
                        self._epoll.unregister(fd)
                    elif fd == exit_fd:
                        self._epoll.modify(fd, 0)
        return True

    def release(self, owner: object, exit_fd: int) -> None:
        """Give a held `owner` back to the pump (undoes `hold`): it copies what its pipes
        hold and reports its exit once `exit_fd` turns readable."""
        key = id(owner)
        with self._lock:
            if key not in self._held:
                return
            self._held = self._held - {key}
            for fd, entry in self._by_owner.get(key, {}).items():
                with contextlib.suppress(OSError):
                    if isinstance(entry, _Pipe):
                        self._epoll.register(fd, select.EPOLLIN)
                    elif fd == exit_fd:
                        self._epoll.modify(fd, select.EPOLLIN)

    def take_exit(self, owner: object) -> bool:
        """Take the report of a held `owner`'s exit, seen by a thread of the owner's on
        its exit descriptor, from the pump: True if none of its output is left to copy
        (each pipe was closed at end of file, or is empty at end of file now: it is
        taken off the watch, for the pump to close); the caller then reports the exit,
        and the owner stays held until `forget` drops it. False while output remains
        (or the owner is not held): the caller then calls `release`, and the pump
        reports the exit once the output is copied."""
        key = id(owner)
        with self._lock:
            if key not in self._held:
                return False
            owned = self._by_owner.get(key, {})
            pipes = [entry for entry in owned.values() if isinstance(entry, _Pipe)]
        if pipes and not _all_at_eof([pipe.fd for pipe in pipes]):
            return False
        if not pipes:
            return True
        with self._lock:
            self._unwatch_locked([pipe.fd for pipe in pipes])
            self._closings = (*self._closings, *pipes)
            wake = len(self._closings) >= _CLOSINGS_WAKE
        if wake:
            self._wake()
        return True

    @calls_out
    def forget(self, owner: object) -> None:
        """Stop watching the processes of `owner`: what their pipes hold is copied (a
        bounded amount), then their pipes and pidfds are closed and no exit of theirs
        is reported any more. Returns once done, or once the pump closes."""
        done = CancelToken()
        with self._lock:
            queued = self._started and not self._closed
            if queued:
                self._forgets = (*self._forgets, _Forget(owner, done))
        if not queued:
            return
        self._wake()
        joined = CancelToken.any_of(done, self._closing)
        try:
            joined.wait()
        finally:
            joined.cancel("done")

    @calls_out
    def close(self) -> None:
        """Stop the thread and close every descriptor it watches. Idempotent."""
        with self._lock:
            self._closed = True
            self._closing.cancel("log pump closed")
        self._wake()
        self._threads.join(timeout=10.0)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    # --- the pump thread -----------------------------------------------------------

    def _loop(self) -> None:
        """Thread body: copy pipes to sinks, notice exits, serve forget requests."""
        try:
            while True:
                with self._lock:
                    closed = self._closed
                    forgets, self._forgets = self._forgets, ()
                    closings, self._closings = self._closings, ()
                    polling = bool(self._polled)
                _close_pipes(closings)
                del closings
                served = self._drop_forgotten(forgets)
                # No forgotten owner is held once its caller returns (a raw_exec task's
                # record closes its notice socket when freed), nor while the thread sleeps.
                del forgets
                for done in served:
                    done.cancel("forgotten")
                del served
                if closed:
                    return
                events = self._epoll.poll(self._poll_interval if polling else -1)
                exits: list[_Exit] = []
                try:
                    for fd, _ in events:
                        self._dispatch(fd, exits)
                    if polling:
                        self._poll_exits(exits)
                finally:  # drained exits are reported even if a later read failed
                    _report(exits)
                    del exits  # while the thread sleeps it holds no exited owner
        finally:
            self._shutdown()

    def _drop_forgotten(self, forgets: tuple[_Forget, ...]) -> list[CancelToken]:
        """Drop what the pump holds of each forgotten owner; the tokens to cancel once
        the caller has let go of the requests too."""
        for request in forgets:
            self._drop(request.owner)
        return [request.done for request in forgets]

    def _dispatch(self, fd: int, exits: list[_Exit]) -> None:
        if fd == self._wake_r:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
            return
        with self._lock:
            entry = self._watched.get(fd)
            key = None if entry is None else id(_owner_of(entry))
            if key is None or key in self._held:
                return  # gone, or a thread of its owner's waits on it
            self._busy = key
        try:
            self._dispatch_entry(fd, entry, exits)
        finally:
            with self._lock:
                self._busy = None

    def _dispatch_entry(self, fd: int, entry: _Pipe | Watch | None, exits: list[_Exit]) -> None:
        if isinstance(entry, _Pipe):
            self._copy(entry, _BOUNDED_READS)
        elif isinstance(entry, Watch) and (entry.status_pipe or _readable(fd)):
            if entry.read_exit is not None:
                wait_status = entry.read_exit()
            else:
                wait_status = _read_status(fd) if entry.status_pipe else None
            self._unwatch(fd)
            if entry.read_exit is None:
                os.close(fd)
            exits.append(self._exited(entry, wait_status))

    def _unwatch(self, *fds: int) -> None:
        """Drop entries, then unregister their descriptors (the caller closes them)."""
        with self._lock:
            self._unwatch_locked(fds)
        for fd in fds:
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    @requires("_lock")
    def _unwatch_locked(self, fds: tuple[int, ...] | list[int]) -> None:
        """Drop the entries of `fds` (an owner left with none is held no more)."""
        for fd in fds:
            entry = self._watched.pop(fd, None)
            if entry is None:
                continue
            key = id(_owner_of(entry))
            owned = self._by_owner.get(key)
            if owned is not None:
                owned.pop(fd, None)
                if not owned:
                    del self._by_owner[key]
                    self._held = self._held - {key}

    def _copy(self, pipe: _Pipe, reads: int) -> None:
        """Copy what the pipe holds (at most `reads` reads) to its sink; close it at
        end of file."""
        for _ in range(reads):
            try:
                data = os.read(pipe.fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_pipe(pipe)
                return
            pipe.sink.write(data)

    def _close_pipe(self, pipe: _Pipe) -> None:
        with self._lock:
            mine = self._watched.get(pipe.fd) is pipe
        if not mine:
            return
        self._unwatch(pipe.fd)
        os.close(pipe.fd)
        pipe.sink.close()

    def _entries_of(self, owner: object) -> list[tuple[int, _Pipe | Watch]]:
        with self._lock:
            return list(self._by_owner.get(id(owner), {}).items())

    def _poll_exits(self, exits: list[_Exit]) -> None:
        with self._lock:
            polled = self._polled
        for watch in polled:
            exited = watch.poll_exit() if watch.poll_exit is not None else None
            if exited is None:
                continue
            self._stop_polling(watch.owner)
            exits.append(self._exited(watch, exited.wait_status))

    def _stop_polling(self, owner: object) -> None:
        with self._lock:
            self._polled = tuple(w for w in self._polled if w.owner is not owner)

    @calls_out
    def _exited(self, watch: Watch, wait_status: int | None) -> _Exit:
        """The process has exited: drain its pipes; the report for its owner, which
        the loop makes once the turn's descriptors are all served (`_report`)."""
        for _, entry in self._entries_of(watch.owner):
            if isinstance(entry, _Pipe):
                self._copy(entry, _UNBOUNDED_READS)
        return _Exit(watch, wait_status)

    def _drop(self, owner: object) -> None:
        key = id(owner)
        with self._lock:
            self._held = self._held - {key}
            self._busy = key
        try:
            self._drop_entries(owner)
        finally:
            with self._lock:
                self._busy = None

    def _drop_entries(self, owner: object) -> None:
        for fd, entry in self._entries_of(owner):
            if isinstance(entry, _Pipe):
                self._copy(entry, _BOUNDED_READS)
                self._close_pipe(entry)
            else:
                self._unwatch(fd)
                if entry.read_exit is None:
                    os.close(fd)
        self._stop_polling(owner)

    def _shutdown(self) -> None:
        """Close every watched descriptor (the processes keep running); release the
        forget requests still queued."""
        with self._lock:
            watched = dict(self._watched)
            self._watched.clear()
            self._by_owner.clear()
            self._polled = ()
            self._held = frozenset()
            forgets, self._forgets = self._forgets, ()
            closings, self._closings = self._closings, ()
        _close_pipes(closings)
        for fd, entry in watched.items():
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
            if isinstance(entry, _Pipe):
                # Keep what is buffered, but never chase a process that writes on.
                with contextlib.suppress(OSError):
                    for _ in range(_BOUNDED_READS):
                        data = os.read(fd, _READ_SIZE)
                        if not data:
                            break
                        entry.sink.write(data)
                entry.sink.close()
            if isinstance(entry, _Pipe) or entry.read_exit is None:
                os.close(fd)
        for request in forgets:
            request.done.cancel("closed")


def _owner_of(entry: _Pipe | Watch) -> object:
    return entry.watch.owner if isinstance(entry, _Pipe) else entry.owner


def _close_pipes(pipes: tuple[_Pipe, ...]) -> None:
    """On the pump thread: close pipes taken off the watch, and their sinks."""
    for pipe in pipes:
        with contextlib.suppress(OSError):
            os.close(pipe.fd)
        pipe.sink.close()


class _Exit(NamedTuple):
    """Immutable. The exit of a watched process, drained and not yet reported."""

    watch: Watch
    wait_status: int | None


@calls_out
def _report(exits: list[_Exit]) -> None:
    """Tell the owners of the exits one turn of the pump found, after the turn's reads,
    closes and epoll updates are all done: each report wakes a thread waiting for its
    exit, and a woken thread takes the GIL at the pump's next system call, so reporting
    between the system calls would make the pump wait for every woken thread in turn
    (a hundred tasks stopped together)."""
    for exited in exits:
        try:
            exited.watch.on_exit(exited.wait_status)
        except Exception:  # an owner's bug: the other owners are still told
            _log.exception("reporting the exit of %r failed", exited.watch.owner)


def _all_at_eof(fds: list[int]) -> bool:
    """True if every pipe in `fds` is empty and has no writer left (polls a hang-up
    without data)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ready = dict(poller.poll(0))
    return all(ready.get(fd, 0) & (select.POLLHUP | select.POLLIN) == select.POLLHUP for fd in fds)


def _read_status(fd: int) -> int | None:
    """The wait status a status pipe carries; None if it has none (yet)."""
    try:
        data = os.read(fd, 64)
    except OSError:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def _readable(fd: int) -> bool:
    """True if `fd` polls readable now (a pidfd: its process has exited)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _close_all(epoll: select.epoll, *fds: int) -> None:
    epoll.close()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
