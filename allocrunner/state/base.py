"""The StateDB protocol and the per-task local state it persists.

A state database keeps what a node needs to survive its own restart: every
allocation it runs, each allocation's deployment status, and for each task the
server-visible `TaskState` and the client-only `LocalState` (hook progress and
the driver handle used to re-attach). It mirrors Nomad's client state DB:

- Missing entries read as None, never as an error, so a half-written allocation
  can be restored best effort.
- `delete_allocation` removes an allocation and every task entry under it; a task
  write that arrives afterwards (a runner persisting after its destroy, Nomad
  #5984/#6207) is dropped, so it can neither resurrect the allocation nor leave
  orphaned rows. Only `put_allocation` of that id brings it back.
- A write whose encoded value equals the last one written for the same key is
  skipped (Nomad's boltdd de-duplication). The implementations here also offer
  `stats() -> WriteStats`, counting what was written, skipped and dropped.
- A write may return before it is durable (SQLiteStateDB commits on its own thread,
  in groups); `flush()` returns once everything written before it is, and
  `delete_allocation` and `close()` flush. A read sees every write made before it.

Every public method of a StateDB is a callout: it may do file I/O, so callers must
hold no declared lock when they call it.

Threads: none; the local-state records here are immutable values. Locks: none here;
each implementation guards its store with its own "StateDB._lock", the last lock of
`LOCK_ORDER`. Owner: `Client` (or the embedder) opens a StateDB and passes it to every
`AllocRunner`, which hands it to its task runners; they are its only writers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import attrs

from allocrunner.drivers.base import TaskHandle
from allocrunner.structs import Allocation, AllocDeploymentStatus, TaskState
from allocrunner.structs.evolve import evolve
from allocrunner.structs.frozen import EMPTY, FrozenDict, frozen_map, plain_dict

__all__ = [
    "HookState",
    "LocalState",
    "StateDB",
    "WriteStats",
    "flush_state_db",
]


T = TypeVar("T")


def _expect(value: object, kind: type[T], path: str) -> T:
    """`value` if it is a `kind` (a bool is not an int here); else ValueError naming `path`."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{path}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _str_map(value: object, path: str) -> dict[str, str]:
    if value is None:
        return {}
    out: dict[str, str] = {}
    for key, item in _expect(value, Mapping, path).items():
        name = _expect(key, str, f"{path} key")
        out[name] = _expect(item, str, f"{path}[{name!r}]")
    return out


@attrs.frozen
class HookState:
    """Immutable. What one task hook recorded: whether its prestart finished, its
    private data, and the environment variables it contributed (Nomad's HookState)."""

    prestart_done: bool = False
    data: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)
    env: FrozenDict[str, str] = attrs.field(default=EMPTY, converter=frozen_map)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-compatible data."""
        return {
            "prestart_done": self.prestart_done,
            "data": {} if self.data is EMPTY else plain_dict(self.data),
            "env": {} if self.env is EMPTY else plain_dict(self.env),
        }

    @classmethod
    def from_json(cls, data: object, path: str = "HookState") -> HookState:
        """Inverse of `to_json`; ValueError naming the field on bad input."""
        fields = _expect(data, Mapping, path)
        return cls(
            prestart_done=_expect(
                fields.get("prestart_done", False), bool, f"{path}.prestart_done"
            ),
            data=_str_map(fields.get("data"), f"{path}.data"),
            env=_str_map(fields.get("env"), f"{path}.env"),
        )


def _hooks_converter(value: Mapping[str, HookState] | None) -> FrozenDict[str, HookState]:
    if value is None:
        return EMPTY
    if type(value) is FrozenDict:
        return value
    return FrozenDict(value)


def _check_hooks(
    _instance: object, _attribute: attrs.Attribute[Any], value: FrozenDict[str, HookState]
) -> None:
    for name, state in value.items():
        if type(name) is str and type(state) is HookState:
            continue  # the usual case, told without the two isinstance calls
        if not isinstance(name, str) or not isinstance(state, HookState):
            raise TypeError(
                f"LocalState.hooks[{name!r}]: expected str -> HookState, "
                f"got {type(name).__name__} -> {type(state).__name__}"
            )


@attrs.frozen
class LocalState:
    """Immutable. A task's client-only state: hook progress, the driver handle to
    re-attach to after an agent restart, and whether its run loop completed (a task
    whose run completed is never run again on restore, Nomad #5883)."""

    hooks: FrozenDict[str, HookState] = attrs.field(
        default=EMPTY, converter=_hooks_converter, validator=_check_hooks
    )
    task_handle: TaskHandle | None = None
    run_complete: bool = False

    def hook(self, name: str) -> HookState | None:
        """The state hook `name` recorded, or None."""
        return self.hooks.get(name)

    def with_hook(self, name: str, state: HookState) -> LocalState:
        """A copy with hook `name`'s state replaced."""
        return evolve(self, hooks=self.hooks.set(name, state))

    def with_hooks(self, states: Mapping[str, HookState]) -> LocalState:
        """A copy with the state of each hook in `states` replaced."""
        hooks = dict(self.hooks.items())
        hooks.update(states)
        return evolve(self, hooks=FrozenDict(hooks))

    def with_task_handle(self, handle: TaskHandle | None) -> LocalState:
        """A copy holding `handle` (None clears it)."""
        return evolve(self, task_handle=handle)

    def with_run_complete(self, done: bool = True) -> LocalState:
        """A copy with `run_complete` set."""
        return evolve(self, run_complete=done)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-compatible data."""
        return {
            "hooks": {name: state.to_json() for name, state in self.hooks.items()},
            "task_handle": None if self.task_handle is None else self.task_handle.to_json(),
            "run_complete": self.run_complete,
        }

    @classmethod
    def from_json(cls, data: object, path: str = "LocalState") -> LocalState:
        """Inverse of `to_json`; ValueError naming the field on bad input."""
        fields = _expect(data, Mapping, path)
        raw_hooks = fields.get("hooks")
        if raw_hooks is None:
            raw_hooks = {}
        hooks: dict[str, HookState] = {}
        for key, raw in _expect(raw_hooks, Mapping, f"{path}.hooks").items():
            name = _expect(key, str, f"{path}.hooks key")
            hooks[name] = HookState.from_json(raw, f"{path}.hooks[{name!r}]")
        raw_handle = fields.get("task_handle")
        handle = None
        if raw_handle is not None:
            handle_fields = _expect(raw_handle, Mapping, f"{path}.task_handle")
            try:
                handle = TaskHandle.from_json(dict(handle_fields))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}.task_handle: {err}") from err
        return cls(
            hooks=hooks,
            task_handle=handle,
            run_complete=_expect(fields.get("run_complete", False), bool, f"{path}.run_complete"),
        )


@attrs.frozen
class WriteStats:
    """Immutable. Counters of a state DB's writes since it was opened.

    `writes` were accepted for the store; `skipped` were identical to the last value
    written for their key (de-duplicated); `dropped` targeted an allocation already
    deleted. A store that commits in groups (SQLiteStateDB) also counts `commits`
    (transactions), `coalesced` (accepted writes superseded by a later write of the
    same key in the same transaction, so never written to the file) and `failed`
    (accepted writes lost to a failed transaction); these three follow its writer
    thread, so read them after `flush()` for settled figures.
    """

    writes: int = 0
    skipped: int = 0
    dropped: int = 0
    commits: int = 0
    coalesced: int = 0
    failed: int = 0


@runtime_checkable
class StateDB(Protocol):
    """Thread-safe. Durable (or not) storage of allocations and their task state.

    Every method may block on I/O: call with no declared lock held. Reads of entries
    that do not exist return None (or an empty list), never raise. After `close()`
    the other methods raise StateDBError; `close()` itself is idempotent.
    """

    def put_allocation(self, alloc: Allocation) -> None:
        """Store (or replace) the allocation under its id."""
        ...

    def all_allocations(self) -> list[Allocation]:
        """Every stored allocation; one that cannot be decoded is logged and skipped."""
        ...

    def delete_allocation(self, alloc_id: str) -> None:
        """Remove the allocation and every entry under it (tasks, deployment status)."""
        ...

    def put_task_state(self, alloc_id: str, task: str, state: TaskState) -> None:
        """Store the server-visible state of one task."""
        ...

    def put_task_local_state(self, alloc_id: str, task: str, local: LocalState) -> None:
        """Store the client-only state of one task."""
        ...

    def task_runner_state(
        self, alloc_id: str, task: str
    ) -> tuple[LocalState | None, TaskState | None]:
        """The task's (local state, task state); each None when absent."""
        ...

    def put_deployment_status(self, alloc_id: str, status: AllocDeploymentStatus | None) -> None:
        """Store the allocation's deployment status; None removes it."""
        ...

    def deployment_status(self, alloc_id: str) -> AllocDeploymentStatus | None:
        """The stored deployment status, or None."""
        ...

    def flush(self) -> None:
        """Return once every write made before the call is durable (StateDBError if a
        write failed)."""
        ...

    def close(self) -> None:
        """Flush and release the store. Idempotent."""
        ...


def flush_state_db(db: StateDB) -> None:
    """`db.flush()`, for a caller that must know its writes are durable before it goes
    on. A StateDB written before `flush` joined the protocol writes synchronously, so
    one without the method needs nothing."""
    flush = getattr(db, "flush", None)
    if flush is not None:
        flush()
