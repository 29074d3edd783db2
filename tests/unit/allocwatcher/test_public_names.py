"""The package's names stay importable from both places they were published: the
package and its first module, `allocrunner.allocwatcher.watcher` (the same objects)."""

from __future__ import annotations

import importlib

import pytest

import allocrunner
import allocrunner.allocwatcher as package
from allocrunner.allocwatcher import watcher

PUBLISHED = [
    "POLL_INTERVAL",
    "FetchAlloc",
    "FetchSnapshot",
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


@pytest.mark.parametrize("name", PUBLISHED)
def test_name_is_importable_from_the_package_and_from_watcher(name: str) -> None:
    assert getattr(watcher, name) is getattr(package, name)
    assert name in package.__all__


def test_every_exported_name_resolves() -> None:
    for module in (package, watcher):
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{module.__name__}.{name}"


@pytest.mark.parametrize("name", ["base", "noop", "local", "remote", "group", "factory"])
def test_each_module_states_its_threads_locks_and_owner(name: str) -> None:
    doc = importlib.import_module(f"allocrunner.allocwatcher.{name}").__doc__ or ""
    for word in ("Threads", "Lock", "Owner"):
        assert word in doc, f"{name}: no {word!r} in its docstring"


def test_top_level_package_exports_are_the_same_objects() -> None:
    for name in PUBLISHED:
        if hasattr(allocrunner, name):
            assert getattr(allocrunner, name) is getattr(package, name)
