"""Re-rendering templates read from a `source` file while their task runs, and their
`change_mode` (Nomad's client/allocrunner/taskrunner/template/template.go, for the
file sources this node serves).

A `TemplateWatcher` is started by the template hook once the task has started, for a
task that has templates read from a `source` file (tasks without any get none: no
thread, no inotify instance). On each wake-up of its `SourceWatch` (inotify, or
polling where inotify is missing: `template_watch_fs`) it reads every source again and
renders it over the environment the task runs with. A template whose rendering
differs from the last one is written to its destination (as at start: a temporary
file renamed into place), then its change_mode is applied, for all the templates that
changed in that pass together, as Nomad does:

- `noop`: nothing more (the file is re-written, the task is not told);
- `restart` (if any changed template has it): the task runner restarts the task, not
  counted as a failure, with the event "Restart Signaled" / "Template with
  change_mode restart re-rendered". The watcher then ends: the next start renders
  every template again and the hook starts a new watcher;
- `signal` (otherwise): each distinct `change_signal` is sent once through the task
  runner's signal path, with the event "Signaling" / "Template re-rendered" carrying
  the signal (its number, and its Go name in `task_signal`). A signal that cannot be
  delivered kills the task with a failing "Killing" event "Template failed to send
  signals [...]: ...";
- before a restart or a signal the watcher waits a random delay below the largest
  `splay` of the changed templates, cut short when the watcher stops.

A template that cannot be rendered or written any more (its source no longer parses,
say) kills the task with a failing "Killing" event "Template failed: ...", as Nomad
does when its template runner fails. A missing source is left as it was rendered
until it comes back. An `env = true` template is re-rendered like the others; the
running task keeps the environment it was started with, and nothing forces a restart
(Nomad v1.6 behaves the same: its docs tell users to pick change_mode restart).

Threads: one per watcher, ``tmpl-<id8>-<task>``, spawned by `start()` and joined by
`stop()`. It calls the task runner's `request_restart` (which does not wait for the
run thread: the run thread joins the watcher from its hooks, so waiting for it would
deadlock), `signal` and `kill(timeout=0)`. It ends when `stop()` is called, when the
task's kill token fires, or after it asked for a restart. A failure inside it is
logged and ends it; the task keeps running.

Why a thread per task and not one for the whole client: the thread sleeps the splay
and renders, writes and signals for its own task, so one shared thread would make
every task wait behind the others (or need a pool and a registry of watches under a
lock); a task without source templates costs nothing, and one with them costs one
thread and one inotify instance, so an allocation with one such task runs two
threads (its task's and this one).

Locks: none declared. The watcher's working state (the last rendering of each
template) is confined to its thread; everything else it holds is immutable. Owner:
`template_hook.TemplateHook` creates, starts and stops it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal as signal_module
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol

import attrs

from allocrunner._locking import calls_out, confined, immutable
from allocrunner._sync import CancelToken, ThreadGroup
from allocrunner.allocdir import fs
from allocrunner.drivers._common import signal_number
from allocrunner.errors import AllocRunnerError, TaskNotRunningError
from allocrunner.structs import TaskEvent
from allocrunner.structs.frozen import FrozenDict, frozen_map
from allocrunner.structs.job import Template
from allocrunner.structs.task_state import EVENT_KILLING, EVENT_RESTART_SIGNAL, EVENT_SIGNALING
from allocrunner.taskrunner.template_watch_fs import SourceWatch

__all__ = [
    "JOIN_TIMEOUT",
    "MSG_RESTART",
    "MSG_SIGNAL",
    "TemplateLifecycle",
    "TemplateWatcher",
    "WatchedTemplate",
    "source_parts",
]

log = logging.getLogger("allocrunner.taskrunner")

MSG_RESTART: Final = "Template with change_mode restart re-rendered"
MSG_SIGNAL: Final = "Template re-rendered"
JOIN_TIMEOUT: Final = 10.0
"""Seconds `stop()` waits for the watcher thread (it never blocks for long)."""


class TemplateLifecycle(Protocol):
    """Restarts, signals or kills one task (`TaskRunner` is one)."""

    def request_restart(
        self, event: TaskEvent, failure: bool = False, *, force: bool = False
    ) -> Callable[[], object]: ...

    def signal(self, event: TaskEvent, sig: str) -> None: ...

    def kill(self, event: TaskEvent | None = None, timeout: float | None = None) -> bool: ...


class RenderFailed(Exception):
    """A template could not be rendered or written; the message says which and why."""


Render = Callable[[Template, Mapping[str, str], dict[str, str | None]], str | None]
"""Renders a template over an env: the text, None when its source is missing now;
RenderFailed otherwise. The dict is the pass's snapshot of the sources (path -> text,
None when missing): each source is read once per pass, so templates sharing a source
render the same version of it even while it is being rewritten."""
Write = Callable[[Template, str], None]
"""Writes a rendered text to a template's destination; RenderFailed on failure."""


@attrs.frozen
class WatchedTemplate:
    """Immutable. A template read from a source file: its index in the task, the block,
    its source as path components relative to the alloc dir, and its last rendering."""

    index: int
    template: Template
    source: tuple[str, ...]
    rendered: str


def source_parts(task_dir: Path, alloc_dir: Path, source: str) -> tuple[str, ...] | None:
    """`source` (relative to the task dir, or absolute inside the alloc dir) as path
    components relative to the alloc dir; None if it leaves it."""
    joined = os.path.normpath(os.path.join(task_dir, source))
    relative = os.path.relpath(joined, alloc_dir)
    try:
        return fs.clean_path(relative)
    except (AllocRunnerError, ValueError):
        return None


def _number(sig: str) -> int:
    """The number of `sig`, or 0 when this platform has no such signal."""
    try:
        return signal_number(sig)
    except AllocRunnerError:
        return 0


def go_signal_name(sig: str) -> str:
    """How Go names a signal ("hangup" for SIGHUP), as Nomad records it."""
    number = _number(sig)
    text = signal_module.strsignal(number) if number else None
    return (text or sig).lower()


@attrs.frozen
class _Pass:
    """Immutable. The templates one pass found changed (and wrote)."""

    changed: tuple[Template, ...]

    def acting(self) -> tuple[Template, ...]:
        return tuple(t for t in self.changed if t.change_mode in ("restart", "signal"))

    def restart(self) -> bool:
        return any(t.change_mode == "restart" for t in self.changed)

    def signals(self) -> tuple[str, ...]:
        found: dict[str, None] = {}
        for t in self.changed:
            if t.change_mode == "signal":
                found[t.change_signal or "SIGHUP"] = None
        return tuple(found)

    def splay(self) -> float:
        return max((t.splay for t in self.acting()), default=0.0)


class TemplateWatcher:
    """Thread-safe. Watches one task's source templates from `start()` to `stop()`
    (module docstring)."""

    _name = immutable()
    _alloc_dir = immutable()
    _lifecycle = immutable()
    _render = immutable()
    _write = immutable()
    _env = immutable()
    _stop = immutable()
    _cancel = immutable()
    _threads = immutable()
    _random = immutable()
    _watched = immutable()
    _last = confined("template-watch")

    def __init__(
        self,
        name: str,
        watched: Sequence[WatchedTemplate],
        *,
        alloc_dir: Path,
        env: Mapping[str, str],
        lifecycle: TemplateLifecycle,
        render: Render,
        write: Write,
        kill_token: CancelToken,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """`name` names the thread; `render` and `write` do what the hook does at start;
        `kill_token` fires when the task is killed for good."""
        self._name = name
        self._watched = tuple(watched)
        self._alloc_dir = alloc_dir
        self._env: FrozenDict[str, str] = frozen_map(env)
        self._lifecycle = lifecycle
        self._render = render
        self._write = write
        self._stop = CancelToken()
        self._cancel = CancelToken.any_of(kill_token, self._stop)
        self._threads = ThreadGroup(name)
        self._random = rand
        self._last: dict[int, str] = {w.index: w.rendered for w in self._watched}

    def __repr__(self) -> str:
        return f"<TemplateWatcher {self._name}>"

    def start(self) -> None:
        self._threads.spawn(self._name, self._run)

    @calls_out
    def stop(self, timeout: float = JOIN_TIMEOUT) -> bool:
        """Stop watching and wait for the thread; True if it ended in time."""
        self._stop.cancel("template watch stopped")
        ended = self._threads.join(timeout)
        if not ended:
            log.warning("%s: the watcher thread did not end within %ss", self, timeout)
        return ended

    def alive(self) -> bool:
        return bool(self._threads.alive())

    # --- the watcher thread -------------------------------------------------------

    @calls_out
    def _run(self) -> None:
        try:
            sources = [w.source for w in self._watched]
            with SourceWatch(str(self._alloc_dir), sources, self._cancel) as watch:
                while not self._cancel.cancelled():
                    watch.arm()
                    found = self._rerender()
                    if found is None or not self._act(found):
                        return
                    if not watch.wait():
                        return
        except Exception:
            log.exception("%s: watching the template sources failed", self)

    @calls_out
    def _rerender(self) -> _Pass | None:
        """Render every source again and write what changed; None once the task was
        killed because a template failed."""
        changed: list[Template] = []
        sources: dict[str, str | None] = {}
        for w in self._watched:
            try:
                text = self._render(w.template, self._env, sources)
                if text is None or text == self._last[w.index]:
                    continue
                self._write(w.template, text)
            except RenderFailed as err:
                self._kill(f"Template failed: template[{w.index}]: {err}")
                return None
            self._last[w.index] = text
            changed.append(w.template)
        return _Pass(tuple(changed))

    @calls_out
    def _act(self, found: _Pass) -> bool:
        """Apply the change modes of one pass; False when the watcher should end."""
        if not found.acting():
            return True
        splay = found.splay()
        if splay > 0 and self._cancel.wait(self._random() * splay):
            return False
        if self._cancel.cancelled():
            return False
        if found.restart():
            return self._restart()
        return self._signal(found.signals())

    @calls_out
    def _restart(self) -> bool:
        event = TaskEvent(EVENT_RESTART_SIGNAL, message=MSG_RESTART, display_message=MSG_RESTART)
        with contextlib.suppress(TaskNotRunningError):
            self._lifecycle.request_restart(event, False)
        return False  # the next start renders afresh and starts a new watcher

    @calls_out
    def _signal(self, signals: Sequence[str]) -> bool:
        errors: list[str] = []
        for sig in signals:
            name = go_signal_name(sig)
            event = TaskEvent(
                EVENT_SIGNALING,
                message=MSG_SIGNAL,
                display_message=MSG_SIGNAL,
                signal=_number(sig),
                details={"task_signal": name},
            )
            try:
                self._lifecycle.signal(event, sig)
            except TaskNotRunningError:
                return False  # the task is stopping: its watcher is on its way out
            except Exception as err:
                errors.append(str(err))
        if errors:
            names = " ".join(go_signal_name(s) for s in signals)
            self._kill(f"Template failed to send signals [{names}]: {'; '.join(errors)}")
            return False
        return True

    @calls_out
    def _kill(self, text: str) -> None:
        log.warning("%s: %s", self, text)
        event = TaskEvent(EVENT_KILLING, message=text, display_message=text, fails_task=True)
        self._lifecycle.kill(event, 0)
