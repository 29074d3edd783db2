"""FrozenDict and the freeze/thaw converters: immutability, hashing, equality, repr."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocrunner.structs import FrozenDict, freeze, thaw
from allocrunner.structs.frozen import EMPTY, frozen_map, frozen_tuple, shallow_frozen

keys = st.text(max_size=6)
scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=6)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)
flat_maps = st.dictionaries(keys, scalars, max_size=6)


def test_it_is_a_read_only_mapping() -> None:
    fd = FrozenDict({"a": 1, "b": 2})
    assert isinstance(fd, Mapping)
    assert fd["a"] == 1 and fd.get("c") is None and "b" in fd
    assert list(fd) == ["a", "b"] and len(fd) == 2
    assert dict(fd.items()) == {"a": 1, "b": 2}
    with pytest.raises(TypeError):
        fd["a"] = 3  # type: ignore[index]
    with pytest.raises(TypeError):
        del fd["a"]  # type: ignore[attr-defined]
    for method in ("clear", "pop", "popitem", "setdefault", "update"):
        assert not hasattr(fd, method), method


def test_its_attributes_cannot_be_rebound() -> None:
    fd = FrozenDict({"a": 1})
    with pytest.raises(AttributeError):
        fd._data = {"a": 2}  # type: ignore[misc]
    with pytest.raises(AttributeError):
        fd.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del fd._data
    assert fd == {"a": 1}


def test_it_does_not_share_the_dict_it_was_built_from() -> None:
    source = {"a": 1}
    fd = FrozenDict(source)
    source["a"] = 2
    source["b"] = 3
    assert fd == {"a": 1}


def test_it_takes_dicts_arguments() -> None:
    assert FrozenDict() == {}
    assert FrozenDict([("a", 1)]) == {"a": 1}
    assert FrozenDict({"a": 1}, b=2) == {"a": 1, "b": 2}
    assert FrozenDict(a=1) == {"a": 1}


def test_set_makes_a_new_mapping() -> None:
    fd = FrozenDict({"a": 1})
    changed = fd.set("a", 2).set("b", 3)
    assert changed == {"a": 2, "b": 3}
    assert fd == {"a": 1}
    assert isinstance(changed, FrozenDict)


def test_repr_shows_the_items() -> None:
    assert repr(FrozenDict({"a": 1})) == "FrozenDict({'a': 1})"
    assert repr(FrozenDict()) == "FrozenDict({})"


def test_equal_to_any_mapping_with_the_same_items() -> None:
    fd = FrozenDict({"a": 1})
    assert fd == {"a": 1}
    assert {"a": 1} == fd  # noqa: SIM300  (the reflected comparison, on purpose)
    assert fd == MappingProxyType({"a": 1})
    assert fd != {"a": 2} and fd != {"a": 1, "b": 2}
    assert fd != [("a", 1)] and fd != "a"


def test_unhashable_values_make_it_unhashable() -> None:
    fd = FrozenDict({"a": [1]})
    with pytest.raises(TypeError):
        hash(fd)
    with pytest.raises(TypeError):
        hash(fd)  # nothing half-done was cached


def test_pickle_and_copy_keep_it_frozen() -> None:
    fd = FrozenDict({"a": (1, FrozenDict({"b": 2}))})
    for twin in (copy.copy(fd), copy.deepcopy(fd), pickle.loads(pickle.dumps(fd))):
        assert type(twin) is FrozenDict and twin == fd and hash(twin) == hash(fd)
        with pytest.raises(AttributeError):
            twin._data = {}  # type: ignore[misc]


@given(flat_maps)
def test_equal_mappings_hash_alike_whatever_the_order(items: dict[str, Any]) -> None:
    forward = FrozenDict(items)
    backward = FrozenDict(reversed(list(items.items())))
    assert forward == backward
    assert hash(forward) == hash(backward) == hash(forward)
    assert {forward: 1}[backward] == 1


@given(flat_maps, flat_maps)
def test_equality_is_item_equality(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert (FrozenDict(a) == FrozenDict(b)) == (a == b)
    assert (FrozenDict(a) == b) == (a == b)


@given(json_like)
def test_freeze_makes_everything_hashable_and_thaw_undoes_it(value: Any) -> None:
    frozen = freeze(value)
    hash(frozen)
    assert thaw(frozen) == value
    assert freeze(thaw(frozen)) == frozen
    assert freeze(frozen) == frozen


def test_freeze_turns_maps_and_lists_into_frozen_forms() -> None:
    frozen = freeze({"args": ["a", {"b": [1]}], "n": 1})
    assert isinstance(frozen, FrozenDict)
    assert frozen["args"] == ("a", FrozenDict({"b": (1,)}))
    assert isinstance(frozen["args"][1], FrozenDict)
    fd = FrozenDict({"x": 1})
    assert freeze(fd) is fd
    assert fd.thaw() == {"x": 1} and type(fd.thaw()) is dict


def test_thaw_gives_plain_mutable_data() -> None:
    thawed = thaw(FrozenDict({"a": (1, FrozenDict({"b": ()}))}))
    assert thawed == {"a": [1, {"b": []}]}
    assert type(thawed["a"]) is list and type(thawed["a"][1]) is dict


def test_the_attrs_converters() -> None:
    assert frozen_map(None) is EMPTY
    assert frozen_map({"a": [1]}) == FrozenDict({"a": (1,)})
    converted = FrozenDict({"a": (1,)})
    assert frozen_map(converted) is converted  # frozen already: no copy
    assert frozen_map(FrozenDict()) is EMPTY and frozen_map({}) is EMPTY
    assert frozen_tuple(None) == ()
    assert frozen_tuple([1, 2]) == (1, 2) and frozen_tuple(iter("ab")) == ("a", "b")


def test_shallow_frozen_shares_a_frozen_map_and_copies_any_other() -> None:
    shared = FrozenDict({"mock_driver": object()})
    assert shallow_frozen(shared) is shared
    source = {"a": [1]}
    copied = shallow_frozen(source)
    assert type(copied) is FrozenDict and copied == source
    assert copied["a"] is source["a"]  # shallow: the values are not frozen
    source["b"] = [2]
    assert "b" not in copied
