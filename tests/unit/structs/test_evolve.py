"""`allocrunner.structs.evolve.evolve` makes exactly what `attrs.evolve` makes: the same
init arguments read (private attributes by their alias, fields without init left to
their defaults), converters and validators run again, unknown names refused; and
`init_args` gives those arguments, as `TaskConfig.to_json` uses them."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocrunner.drivers.base import TaskConfig
from allocrunner.structs import Resources, TaskEvent, TaskState
from allocrunner.structs.evolve import evolve, init_args
from allocrunner.structs.frozen import EMPTY, FrozenDict, frozen_map


@attrs.frozen
class _Mixed:
    name: str
    _secret: int = 0
    tags: FrozenDict[str, str] = attrs.field(factory=FrozenDict, converter=frozen_map)
    derived: int = attrs.field(init=False, default=7)
    positive: int = attrs.field(default=1, validator=attrs.validators.gt(0))


@attrs.frozen
class _One:
    only: int


@attrs.frozen
class _Empty:
    pass


def test_it_makes_what_attrs_evolve_makes() -> None:
    inst = _Mixed("a", 3, {"k": "v"}, positive=2)
    assert evolve(inst, name="b") == attrs.evolve(inst, name="b")
    assert evolve(inst, secret=9)._secret == 9
    assert evolve(inst).derived == 7
    assert evolve(_One(1), only=2) == _One(2)
    assert evolve(_One(1)) == _One(1)
    assert evolve(_Empty()) == _Empty()


def test_converters_and_validators_run_again() -> None:
    inst = _Mixed("a")
    changed = evolve(inst, tags={"x": "y"})
    assert type(changed.tags) is FrozenDict and changed.tags == {"x": "y"}
    assert evolve(inst, tags={}).tags is EMPTY
    with pytest.raises(ValueError):
        evolve(inst, positive=0)


def test_an_unknown_name_is_refused() -> None:
    with pytest.raises(TypeError):
        evolve(_Mixed("a"), nope=1)
    with pytest.raises(TypeError):
        evolve(_Mixed("a"), _secret=1)  # by its alias only, as attrs.evolve


@given(
    state=st.sampled_from(["pending", "running", "dead"]),
    failed=st.booleans(),
    restarts=st.integers(min_value=0, max_value=5),
    events=st.lists(st.sampled_from(["Received", "Started", "Terminated"]), max_size=3),
)
def test_task_states_evolve_alike(
    state: str, failed: bool, restarts: int, events: list[str]
) -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    base = TaskState(events=tuple(TaskEvent(type=kind, time=now) for kind in events))
    changes = {"state": state, "failed": failed, "restarts": restarts, "started_at": now}
    assert evolve(base, **changes) == attrs.evolve(base, **changes)


def test_init_args_are_what_rebuilds_the_instance() -> None:
    inst = _Mixed("a", 3, {"k": "v"}, positive=2)
    args = init_args(inst)
    assert args == {"name": "a", "secret": 3, "tags": {"k": "v"}, "positive": 2}
    assert _Mixed(**args) == inst
    assert init_args(_One(5)) == {"only": 5}
    assert init_args(_Empty()) == {}


def test_a_task_config_encodes_as_attrs_asdict_does() -> None:
    config = TaskConfig(
        id="a/t/1",
        alloc_id="a",
        name="t",
        driver_config={"run_for": "1s", "nested": {"k": [1, 2]}},
        env={"A": "1"},
        resources=Resources(cpu=200, memory_mb=64),
    )
    expected = attrs.asdict(config, recurse=False)
    expected["driver_config"] = {"run_for": "1s", "nested": {"k": [1, 2]}}
    expected["env"] = {"A": "1"}
    expected["resources"] = attrs.asdict(config.resources)
    assert config.to_json() == expected
    assert TaskConfig.from_json(config.to_json()) == config
