"""LocalState and HookState: immutable values with a JSON form that round-trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocrunner.drivers.base import TaskConfig, TaskHandle
from allocrunner.state import HookState, LocalState
from allocrunner.structs import FrozenDict

text = st.text(max_size=12)
str_maps = st.dictionaries(text, text, max_size=4)
hook_states = st.builds(HookState, prestart_done=st.booleans(), data=str_maps, env=str_maps)
handles = st.builds(
    lambda n, pid, env: TaskHandle(
        driver="raw_exec",
        config=TaskConfig(id=f"a/t/{n}", alloc_id="a", name="t", env=env),
        driver_state={"pid": pid, "argv": ["/bin/sh", "-c", "true"]},
    ),
    st.integers(0, 99),
    st.integers(1, 2**22),
    str_maps,
)
local_states = st.builds(
    LocalState,
    hooks=st.dictionaries(text, hook_states, max_size=4),
    task_handle=st.none() | handles,
    run_complete=st.booleans(),
)


@settings(max_examples=100, deadline=None)
@given(local_states)
def test_json_round_trip(local):
    data = json.loads(json.dumps(local.to_json()))
    assert LocalState.from_json(data) == local


@settings(max_examples=100, deadline=None)
@given(local_states)
def test_local_state_json_holds_each_hooks_own_json(local):
    """A local state's JSON holds each hook's own JSON."""
    assert local.to_json()["hooks"] == {name: h.to_json() for name, h in local.hooks.items()}


@settings(max_examples=100, deadline=None)
@given(local_states, st.dictionaries(text, hook_states, max_size=4))
def test_with_hooks_is_with_hook_for_each(local, states):
    one_by_one = local
    for name, state in states.items():
        one_by_one = one_by_one.with_hook(name, state)
    together = local.with_hooks(states)
    assert together == one_by_one
    assert list(together.hooks) == list(one_by_one.hooks)  # the order too
    assert together.task_handle is local.task_handle


def test_defaults_and_helpers():
    local = LocalState()
    assert local.hooks == {} and local.task_handle is None and not local.run_complete
    updated = local.with_hook("env", HookState(env={"A": "1"})).with_run_complete()
    assert local.hooks == {}, "helpers return copies"
    assert updated.hook("env") == HookState(env={"A": "1"})
    assert updated.hook("missing") is None
    assert updated.run_complete
    assert isinstance(updated.hooks, FrozenDict)
    assert hash(updated) == hash(LocalState.from_json(updated.to_json()))


def test_hooks_must_be_hook_states():
    with pytest.raises(TypeError, match=r"LocalState.hooks\['x'\]"):
        LocalState(hooks={"x": {"prestart_done": True}})


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ([], "LocalState: expected Mapping"),
        ({"run_complete": "yes"}, "LocalState.run_complete: expected bool"),
        ({"hooks": []}, "LocalState.hooks: expected Mapping"),
        ({"hooks": {"h": {"prestart_done": 1}}}, r"LocalState.hooks\['h'\].prestart_done"),
        ({"hooks": {"h": {"env": {"A": 1}}}}, r"LocalState.hooks\['h'\].env\['A'\]"),
        ({"hooks": {"h": {"data": "x"}}}, r"LocalState.hooks\['h'\].data: expected Mapping"),
        ({"task_handle": 3}, "LocalState.task_handle: expected Mapping"),
        ({"task_handle": {"driver": "x"}}, "LocalState.task_handle"),
    ],
)
def test_bad_json_names_the_field(data, path):
    with pytest.raises(ValueError, match=path):
        LocalState.from_json(data)
