"""The one runner of hook phases, shared by the alloc runner and the task runner.

A hook is a small object with a `name` and some phase methods. Each runner sorts its
hooks by phase with typed protocols (`allocrunner.runner.hooks`,
`allocrunner.taskrunner.hooks`) and hands one phase's hooks to `run_phase` together
with the call to make on each. `run_phase` calls them in order under an explicit
error `Policy`:

- `Policy.STOP_AT_FIRST` raises the first failure at once (later hooks depend on
  earlier ones: alloc prerun, task prestart);
- `Policy.COLLECT_ALL` runs every hook and raises every failure together, as a
  `HookErrors` group.

Each failure is a `HookError` that names the hook and the phase (by the label the
runner passes in, e.g. "post-run"), is chained to the original error (its
``__cause__``) and keeps that error's recoverability for the restart policy.

Threads: runs on the caller's thread. Locks: none; a phase is a callout, so the
caller holds no declared lock (`@calls_out`). Owner: module functions, called by the
alloc runner's `AllocHooks` and the task runner's `run_phase`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar, runtime_checkable

from allocrunner._locking import calls_out
from allocrunner.errors import HookError, HookErrors, is_recoverable

__all__ = ["NamedHook", "Policy", "hook_error", "run_phase"]


class Policy(enum.StrEnum):
    """What a phase does when a hook fails."""

    STOP_AT_FIRST = "stop_at_first"
    COLLECT_ALL = "collect_all"


@runtime_checkable
class NamedHook(Protocol):
    """What every hook has: a name for logs, events and errors."""

    @property
    def name(self) -> str: ...


H = TypeVar("H", bound=NamedHook)


def hook_error(hook: NamedHook, label: str, err: Exception) -> HookError:
    """`err` of `hook` in phase `label`, as a HookError chained to it."""
    failure = HookError(
        hook.name, label, str(err) or type(err).__name__, recoverable=is_recoverable(err)
    )
    failure.__cause__ = err
    return failure


@calls_out
def run_phase(
    hooks: Iterable[H], label: str, call: Callable[[H], object], *, policy: Policy
) -> None:
    """Call `call(hook)` for each of `hooks` in order, under `policy` (module docstring).

    STOP_AT_FIRST raises the first failure as a HookError; COLLECT_ALL raises a
    HookErrors group of every failure once all hooks ran.
    """
    errors: list[HookError] = []
    for hook in hooks:
        try:
            call(hook)
        except Exception as err:
            failure = hook_error(hook, label, err)
            if policy == Policy.STOP_AT_FIRST:
                raise failure from err
            errors.append(failure)
    if errors:
        raise HookErrors(f"{label} hooks failed", errors)
