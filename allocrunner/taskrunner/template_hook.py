"""The template hook: renders a task's `template` blocks into its directory before the
task starts, and re-renders the ones read from a `source` file while it runs (Nomad's
client/allocrunner/taskrunner/template_hook.go, for the templates that need no Consul,
Vault or Nomad API: the job loader refuses the others).

Each template's text is its `data`, or the file its `source` names (relative to the
task directory, read at every start; like the destination it must stay inside the
allocation directory, as Nomad's file sandbox has it). It is rendered with
`allocrunner.template` over the task environment built so far (so
`{{ env "NOMAD_TASK_NAME" }}` works), with the block's delimiters and
`error_on_missing_key`, and written to `destination` (relative to the task directory)
with `perms`, through a temporary file renamed into place, so the task never sees half
a file. A destination that leaves the allocation directory (through `..` or a symlink
planted there) is refused. With `env = true` the rendered text is read as a dotenv
file and its variables join the task environment. A failure (a render error, an
unreadable source, a bad destination) is the task event "Template" with "Failed
Template Rendering: …", and fails the task, as in Nomad. `change_mode = "script"`
needs a driver that can run commands in the task, which this node's drivers cannot:
the job decoder refuses it, and so does this hook for a hand-built block.

Templates with `data` never change while the task runs (their text and env are
fixed). Templates read from a `source` file are watched from the moment the task has
started (poststart) by a `template_watch.TemplateWatcher`: a change to a source
re-renders it and applies its `change_mode` (noop, restart, signal, with `splay`; see
that module). The watcher is stopped before the task is stopped (pre-kill), after it
exited, when it will not run again (stop) and on agent shutdown; the next start
renders everything afresh and starts a new one. A hook built without a lifecycle (the
task runner's restart and signal path: `default_hooks(lifecycle)`) watches nothing.

Threads: the hook runs on its task runner's run thread (every phase but shutdown,
which the caller of `TaskRunner.shutdown` runs after the run thread returned); the
watcher has its own thread (at most one per task, only for a task with source
templates). Locks: none. What prestart rendered is confined to the run thread; the
running watcher sits in a `LatestValue` slot, so the shutdown caller can stop it.
Owner: the TaskRunner (`default_hooks`), whose prestart phase calls it after the env
and artifact hooks.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import attrs

from allocrunner._locking import calls_out, confined, immutable
from allocrunner._sync import LatestValue
from allocrunner.structs import TaskEvent
from allocrunner.structs.frozen import plain_dict
from allocrunner.structs.job import Template
from allocrunner.taskrunner.hooks import HookEventError, HookRequest, PrestartResult, TaskHook
from allocrunner.taskrunner.lifecycle import RUN_THREAD
from allocrunner.taskrunner.template_watch import (
    RenderFailed,
    TemplateLifecycle,
    TemplateWatcher,
    WatchedTemplate,
    source_parts,
)

__all__ = ["EVENT_TEMPLATE", "TemplateHook", "render_template", "render_text"]

EVENT_TEMPLATE = "Template"
"""The task event of a template that failed to render (Nomad's event type)."""
FAILED = "Failed Template Rendering"
DIR_MODE = 0o777


class TemplateRenderError(Exception):
    """A template could not be rendered or written; the message says which and why."""


class SourceMissingError(TemplateRenderError):
    """A template's source file does not exist (now)."""


class TemplateHook(TaskHook):
    """Not thread-safe; owned by the task's run thread, which renders the templates at
    every start and starts and stops the watcher of the source templates while the task
    runs (module docstring); other threads only read the watcher's latest value."""

    name = "template"

    _lifecycle = immutable()
    _watcher = immutable()
    _watched = confined(RUN_THREAD)

    def __init__(self, *, lifecycle: TemplateLifecycle | None = None) -> None:
        self._lifecycle = lifecycle
        self._watcher: LatestValue[TemplateWatcher] = LatestValue()
        self._watched: tuple[WatchedTemplate, ...] = ()

    @calls_out
    def prestart(self, req: HookRequest) -> PrestartResult | None:
        self._stop_watcher()
        if not req.task.templates:  # nothing to render, and no env to hand back
            self._watched = ()
            return None
        env: dict[str, str] = {}
        task_env = plain_dict(req.env)
        task_dir, alloc_dir = req.task_dir.dir, req.task_dir.dir.parent
        watched: list[WatchedTemplate] = []
        for index, template in enumerate(req.task.templates):
            if template.change_mode == "script":
                raise _failure(index, 'change_mode "script" is not supported on this node')
            try:
                rendered = render_template(
                    template, task_dir=task_dir, alloc_dir=alloc_dir, env={**task_env, **env}
                )
            except TemplateRenderError as err:
                raise _failure(index, str(err)) from None
            if template.envvars:
                env.update(_dotenv(rendered, index))
            source = _watched_source(template, task_dir, alloc_dir)
            if source is not None:
                watched.append(WatchedTemplate(index, template, source, rendered))
        self._watched = tuple(watched)
        return PrestartResult(env=env)

    @calls_out
    def poststart(self, req: HookRequest) -> None:
        watched, self._watched = self._watched, ()
        if not watched or self._lifecycle is None:
            return
        task_dir, alloc_dir = req.task_dir.dir, req.task_dir.dir.parent
        watcher = TemplateWatcher(
            f"tmpl-{req.alloc.id[:8]}-{req.task.name}",
            watched,
            alloc_dir=alloc_dir,
            env=req.env,
            lifecycle=self._lifecycle,
            render=functools.partial(_render_again, task_dir, alloc_dir),
            write=functools.partial(_write_again, task_dir, alloc_dir),
            kill_token=req.cancel,
        )
        self._stop_watcher()
        self._watcher.offer(watcher)
        watcher.start()

    @calls_out
    def pre_kill(self, req: HookRequest) -> None:
        self._stop_watcher()

    @calls_out
    def exited(self, req: HookRequest) -> None:
        self._stop_watcher()

    @calls_out
    def stop(self, req: HookRequest) -> None:
        self._stop_watcher()

    @calls_out
    def shutdown(self, req: HookRequest) -> None:
        self._stop_watcher()

    @calls_out
    def _stop_watcher(self) -> None:
        watcher = self._watcher.poll()
        if watcher is not None:
            watcher.stop()


def _failure(index: int, why: str) -> HookEventError:
    message = f"{FAILED}: template[{index}]: {why}"
    event = TaskEvent(EVENT_TEMPLATE, message=message, display_message=message)
    return HookEventError(message, event, recoverable=False)


def _watched_source(template: Template, task_dir: Path, alloc_dir: Path) -> tuple[str, ...] | None:
    """Where a template read from a source file reads it (relative to the alloc dir);
    None for a template with `data`."""
    if template.embedded_tmpl or not template.source_path:
        return None
    return source_parts(task_dir, alloc_dir, template.source_path)


@calls_out
def _render_again(
    task_dir: Path,
    alloc_dir: Path,
    template: Template,
    env: Mapping[str, str],
    sources: dict[str, str | None],
) -> str | None:
    """`template` rendered again from the pass's snapshot of its source (read into
    `sources` on first use); None while the source is missing."""
    key = template.source_path
    try:
        if key not in sources:
            try:
                sources[key] = _read_source(task_dir, alloc_dir, key)
            except SourceMissingError:
                sources[key] = None
        text = sources[key]
        if text is None:
            return None
        snapshot = attrs.evolve(template, embedded_tmpl=text, source_path="")
        return render_text(snapshot, task_dir=task_dir, alloc_dir=alloc_dir, env=dict(env))
    except TemplateRenderError as err:
        raise RenderFailed(str(err)) from None


@calls_out
def _write_again(task_dir: Path, alloc_dir: Path, template: Template, text: str) -> None:
    try:
        _write(task_dir, alloc_dir, template.dest_path, text, template.perms)
    except TemplateRenderError as err:
        raise RenderFailed(str(err)) from None


@calls_out
def render_template(
    template: Template, *, task_dir: Path, alloc_dir: Path, env: dict[str, str]
) -> str:
    """Render `template` for a task whose directory is `task_dir` and write it to its
    destination; the rendered text. TemplateRenderError on any failure."""
    rendered = render_text(template, task_dir=task_dir, alloc_dir=alloc_dir, env=env)
    _write(task_dir, alloc_dir, template.dest_path, rendered, template.perms)
    return rendered


@calls_out
def render_text(template: Template, *, task_dir: Path, alloc_dir: Path, env: dict[str, str]) -> str:
    """What `template` renders to now, written nowhere. TemplateRenderError on any
    failure (SourceMissingError when its source file does not exist)."""
    from allocrunner.template import TemplateError, render

    text = template.embedded_tmpl
    if not text and template.source_path:
        text = _read_source(task_dir, alloc_dir, template.source_path)
    try:
        return render(
            text,
            env=env,
            left=template.left_delim or "{{",
            right=template.right_delim or "}}",
            error_on_missing_key=template.err_missing_key,
        )
    except TemplateError as err:
        raise TemplateRenderError(str(err)) from None


def _read_source(task_dir: Path, alloc_dir: Path, source: str) -> str:
    root = Path(os.path.realpath(alloc_dir))
    path = Path(os.path.realpath(task_dir / source))
    if root not in path.parents:
        raise TemplateRenderError(f"source {source!r} is outside the allocation directory")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise SourceMissingError(f"cannot read source {source!r}: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TemplateRenderError(f"cannot read source {source!r}: {err}") from None


def _write(task_dir: Path, alloc_dir: Path, destination: str, text: str, perms: str) -> None:
    if not destination:
        raise TemplateRenderError("no destination")
    try:
        mode = int(perms or "644", 8)
    except ValueError:
        raise TemplateRenderError(f"perms {perms!r} is not an octal mode") from None
    root = Path(os.path.realpath(alloc_dir))
    target = task_dir / destination
    # `..` is caught before any directory is made; a planted symlink after.
    lexical = Path(os.path.normpath(Path(os.path.realpath(task_dir)) / destination))
    if root not in lexical.parents:
        raise TemplateRenderError(f"destination {destination!r} escapes the allocation directory")
    try:
        os.makedirs(target.parent, mode=DIR_MODE, exist_ok=True)
    except OSError as err:
        raise TemplateRenderError(f"cannot make the directory of {destination!r}: {err}") from None
    parent = Path(os.path.realpath(target.parent))
    if parent != root and root not in parent.parents:
        raise TemplateRenderError(f"destination {destination!r} escapes the allocation directory")
    if target.name in ("", ".", ".."):
        raise TemplateRenderError(f"destination {destination!r} names no file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, parent / target.name)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as err:
        raise TemplateRenderError(f"cannot write {destination!r}: {err}") from None


def _dotenv(text: str, index: int) -> dict[str, str]:
    from allocrunner.template import TemplateError, parse_dotenv

    try:
        return parse_dotenv(text)
    except TemplateError as err:
        raise _failure(index, f"env file: {err}") from None
