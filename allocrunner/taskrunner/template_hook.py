"""The template hook: renders a task's `template` blocks into its directory before the
task starts (Nomad's client/allocrunner/taskrunner/template_hook.go, for the templates
that need no Consul, Vault or Nomad API: the job loader refuses the others).

Each template's text is its `data`, or the file its `source` names (relative to the
task directory, read at every start; like the destination it must stay inside the
allocation directory, as Nomad's file sandbox has it). It is rendered with
`allocrunner.template` over the task environment built so far (so
`{{ env "NOMAD_TASK_NAME" }}` works), with the block's delimiters and
`error_on_missing_key`, and written to `destination` (relative to the task directory)
with `perms`, through a temporary file renamed into place, so the task never sees half
a file. A destination that leaves the allocation directory (through `..` or a symlink
planted there) is refused. With `env = true` the rendered text is read as a dotenv
file and its variables join the task environment.

Templates here have no dynamic sources, so nothing re-renders them while the task
runs: they are rendered afresh at every start. A failure (a render error, an
unreadable source, a bad destination) is the task event "Template" with "Failed
Template Rendering: …", and fails the task, as in Nomad.

No threads and no locks: the hook runs on its task runner's run thread, called by the
prestart phase after the env hook; owned by that TaskRunner.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from allocrunner._locking import calls_out
from allocrunner.structs import TaskEvent
from allocrunner.structs.job import Template
from allocrunner.taskrunner.hooks import HookEventError, HookRequest, PrestartResult, TaskHook
from allocrunner.taskrunner.template_watch import TemplateLifecycle

__all__ = ["EVENT_TEMPLATE", "TemplateHook", "render_template"]

EVENT_TEMPLATE = "Template"
"""The task event of a template that failed to render (Nomad's event type)."""
FAILED = "Failed Template Rendering"
DIR_MODE = 0o777


class TemplateRenderError(Exception):
    """A template could not be rendered or written; the message says which and why."""


class TemplateHook(TaskHook):
    """Renders the task's templates at every start (module docstring)."""

    name = "template"

    def __init__(self, *, lifecycle: TemplateLifecycle | None = None) -> None:
        self._lifecycle = lifecycle

    @calls_out
    def prestart(self, req: HookRequest) -> PrestartResult:
        env: dict[str, str] = {}
        task_env = dict(req.env)
        for index, template in enumerate(req.task.templates):
            try:
                rendered = render_template(
                    template,
                    task_dir=req.task_dir.dir,
                    alloc_dir=req.task_dir.dir.parent,
                    env={**task_env, **env},
                )
            except TemplateRenderError as err:
                message = f"{FAILED}: template[{index}]: {err}"
                event = TaskEvent(EVENT_TEMPLATE, message=message, display_message=message)
                raise HookEventError(message, event, recoverable=False) from None
            if template.envvars:
                env.update(_dotenv(rendered, index))
        return PrestartResult(env=env)


@calls_out
def render_template(
    template: Template, *, task_dir: Path, alloc_dir: Path, env: dict[str, str]
) -> str:
    """Render `template` for a task whose directory is `task_dir` and write it to its
    destination; the rendered text. TemplateRenderError on any failure."""
    from allocrunner.template import TemplateError, render

    text = template.embedded_tmpl
    if not text and template.source_path:
        text = _read_source(task_dir, alloc_dir, template.source_path)
    try:
        rendered = render(
            text,
            env=env,
            left=template.left_delim or "{{",
            right=template.right_delim or "}}",
            error_on_missing_key=template.err_missing_key,
        )
    except TemplateError as err:
        raise TemplateRenderError(str(err)) from None
    _write(task_dir, alloc_dir, template.dest_path, rendered, template.perms)
    return rendered


def _read_source(task_dir: Path, alloc_dir: Path, source: str) -> str:
    root = Path(os.path.realpath(alloc_dir))
    path = Path(os.path.realpath(task_dir / source))
    if root not in path.parents:
        raise TemplateRenderError(f"source {source!r} is outside the allocation directory")
    try:
        return path.read_text(encoding="utf-8")
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
        message = f"{FAILED}: template[{index}]: env file: {err}"
        event = TaskEvent(EVENT_TEMPLATE, message=message, display_message=message)
        raise HookEventError(message, event, recoverable=False) from None

