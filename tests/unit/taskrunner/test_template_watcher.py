"""TemplateWatcher and SourceWatch on real files and real inotify (or polling), with a
recording lifecycle: what a change of a source file leads to (nothing for an unchanged
rendering; one restart for several templates; each signal once; splay; a failure kills
the task), and that the watcher thread ends on stop, on the kill token, or after it
asked for a restart."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from allocrunner._sync import CancelToken
from allocrunner.allocdir import inotify
from allocrunner.errors import DriverError, TaskNotRunningError
from allocrunner.structs import TaskEvent
from allocrunner.structs.job import Template
from allocrunner.structs.task_state import EVENT_KILLING, EVENT_RESTART_SIGNAL, EVENT_SIGNALING
from allocrunner.taskrunner.template_watch import (
    RenderFailed,
    TemplateWatcher,
    WatchedTemplate,
    source_parts,
)
from allocrunner.testing import wait_for


class Lifecycle:
    """Thread-safe. Records what the watcher asked of the task."""

    def __init__(self, signal_error: Exception | None = None) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, TaskEvent, str]] = []
        self.signal_error = signal_error

    def request_restart(
        self, event: TaskEvent, failure: bool = False, *, force: bool = False
    ) -> Callable[[], object]:
        with self._lock:
            self.calls.append(("restart", event, ""))
        return lambda: None

    def signal(self, event: TaskEvent, sig: str) -> None:
        with self._lock:
            self.calls.append(("signal", event, sig))
        if self.signal_error is not None:
            raise self.signal_error

    def kill(self, event: TaskEvent | None = None, timeout: float | None = None) -> bool:
        assert event is not None
        with self._lock:
            self.calls.append(("kill", event, ""))
        return False

    def seen(self) -> list[tuple[str, TaskEvent, str]]:
        with self._lock:
            return list(self.calls)


class Renders:
    """Thread-safe. Renders a source by upper-casing it; counts the renders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self.count = 0

    def __call__(
        self, template: Template, env: Mapping[str, str], sources: dict[str, str | None]
    ) -> str | None:
        with self._lock:
            self.count += 1
        path = self.root / template.source_path
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        if "{{" in text:
            raise RenderFailed("unexpected {{")
        return text.upper()

    def renders(self) -> int:
        with self._lock:
            return self.count


def write(root: Path) -> Callable[[Template, str], None]:
    def write_dest(template: Template, text: str) -> None:
        path = root / template.dest_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    return write_dest


@pytest.fixture
def alloc(tmp_path) -> Path:
    root = tmp_path / "alloc-1"
    (root / "web" / "local").mkdir(parents=True)
    (root / "alloc" / "data").mkdir(parents=True)
    return root


class Setup:
    def __init__(self, alloc: Path) -> None:
        self.alloc = alloc
        self.lifecycle = Lifecycle()
        self.renders = Renders(alloc)
        self.kill = CancelToken()
        self.watchers: list[TemplateWatcher] = []
        self.count = 0

    def source(self, name: str, text: str) -> Path:
        path = self.alloc / "alloc" / "data" / name
        path.write_text(text)
        return path

    def template(self, name: str, **fields: Any) -> WatchedTemplate:
        template = Template(
            source_path=f"alloc/data/{name}", dest_path=f"web/local/{name}.out", **fields
        )
        parts = source_parts(self.alloc / "web", self.alloc, f"../alloc/data/{name}")
        assert parts is not None and parts == ("alloc", "data", *name.split("/"))
        rendered = (self.alloc / template.source_path).read_text().upper()
        self.count += 1
        return WatchedTemplate(self.count - 1, template, parts, rendered)

    def start(self, *watched: WatchedTemplate, rand: Callable[[], float] = lambda: 0.0):
        watcher = TemplateWatcher(
            "tmpl-test",
            watched,
            alloc_dir=self.alloc,
            env={},
            lifecycle=self.lifecycle,
            render=self.renders,
            write=write(self.alloc),
            kill_token=self.kill,
            rand=rand,
        )
        self.watchers.append(watcher)
        watcher.start()
        return watcher

    def dest(self, name: str) -> str:
        path = self.alloc / "web" / "local" / f"{name}.out"
        return path.read_text() if path.exists() else ""

    def kinds(self) -> list[str]:
        return [kind for kind, _event, _sig in self.lifecycle.seen()]


@pytest.fixture
def setup(alloc) -> Iterator[Setup]:
    s = Setup(alloc)
    yield s
    for watcher in s.watchers:
        assert watcher.stop(10)


def _assert(condition: bool, message: object = "") -> None:
    assert condition, message


def test_an_unchanged_rendering_does_nothing(setup) -> None:
    setup.source("a", "same")
    watcher = setup.start(setup.template("a", change_mode="restart", splay=0.0))
    wait_for(lambda: _assert(setup.renders.renders() >= 1))
    before = setup.renders.renders()
    setup.source("a", "SAME")  # renders to the same text
    wait_for(lambda: _assert(setup.renders.renders() > before, setup.renders.renders()))
    assert setup.kinds() == []
    assert not (setup.alloc / "web" / "local" / "a.out").exists()
    assert watcher.alive()


def test_restart_wins_over_signals_and_ends_the_watcher(setup) -> None:
    setup.source("a", "one")
    setup.source("b", "one")
    a = setup.template("a", change_mode="restart", splay=0.0)
    b = setup.template("b", change_mode="signal", change_signal="SIGHUP", splay=0.0)
    # Both changed before the watcher looked: handled in one pass.
    setup.source("a", "two")
    setup.source("b", "two")
    watcher = setup.start(a, b)
    wait_for(lambda: _assert(not watcher.alive()))
    assert setup.kinds() == ["restart"]
    event = setup.lifecycle.seen()[0][1]
    assert event.type == EVENT_RESTART_SIGNAL
    assert event.display_message == "Template with change_mode restart re-rendered"
    assert setup.dest("a") == "TWO" and setup.dest("b") == "TWO"


def test_each_signal_is_sent_once_per_pass(setup) -> None:
    setup.source("a", "one")
    setup.source("b", "one")
    setup.source("c", "one")
    hup = {"change_mode": "signal", "change_signal": "SIGHUP", "splay": 0.0}
    watched = [setup.template(n, **hup) for n in ("a", "b")]
    watched.append(setup.template("c", change_mode="signal", change_signal="SIGUSR2", splay=0))
    for name in ("a", "b", "c"):
        setup.source(name, "two")
    setup.start(*watched)
    wait_for(lambda: _assert(len(setup.kinds()) == 2, setup.kinds()))
    assert sorted(sig for _k, _e, sig in setup.lifecycle.seen()) == ["SIGHUP", "SIGUSR2"]
    event = setup.lifecycle.seen()[0][1]
    assert event.type == EVENT_SIGNALING and event.display_message == "Template re-rendered"
    assert event.details["task_signal"] in ("hangup", "user defined signal 2")


def test_noop_writes_and_tells_nobody(setup) -> None:
    setup.source("a", "one")
    setup.start(setup.template("a", change_mode="noop", splay=60.0))
    setup.source("a", "two")
    wait_for(lambda: _assert(setup.dest("a") == "TWO"))
    assert setup.kinds() == []


def test_splay_delays_and_stop_cuts_it_short(setup) -> None:
    setup.source("a", "one")
    watcher = setup.start(
        setup.template("a", change_mode="restart", splay=3600.0), rand=lambda: 1.0
    )
    setup.source("a", "two")
    wait_for(lambda: _assert((setup.alloc / "web/local/a.out").exists()))
    assert watcher.stop(10)
    assert setup.kinds() == []


def test_a_short_splay_passes(setup) -> None:
    setup.source("a", "one")
    setup.start(setup.template("a", change_mode="restart", splay=0.05), rand=lambda: 0.5)
    setup.source("a", "two")
    wait_for(lambda: _assert(setup.kinds() == ["restart"], setup.kinds()))


def test_a_template_that_fails_to_render_kills_the_task(setup) -> None:
    setup.source("a", "one")
    watcher = setup.start(setup.template("a", change_mode="noop"))
    setup.source("a", "broken {{")
    wait_for(lambda: _assert(setup.kinds() == ["kill"], setup.kinds()))
    event = setup.lifecycle.seen()[0][1]
    assert event.type == EVENT_KILLING and event.fails_task
    assert event.display_message.startswith("Template failed: template[0]: ")
    wait_for(lambda: _assert(not watcher.alive()))


def test_a_signal_that_cannot_be_sent_kills_the_task(setup) -> None:
    setup.lifecycle.signal_error = DriverError("no such process")
    setup.source("a", "one")
    setup.start(setup.template("a", change_mode="signal", change_signal="SIGHUP", splay=0))
    setup.source("a", "two")
    wait_for(lambda: _assert(setup.kinds() == ["signal", "kill"], setup.kinds()))
    event = setup.lifecycle.seen()[1][1]
    assert event.fails_task
    assert event.display_message == "Template failed to send signals [hangup]: no such process"


def test_a_task_that_stopped_meanwhile_is_not_killed(setup) -> None:
    setup.lifecycle.signal_error = TaskNotRunningError("not running")
    setup.source("a", "one")
    watcher = setup.start(
        setup.template("a", change_mode="signal", change_signal="SIGHUP", splay=0)
    )
    setup.source("a", "two")
    wait_for(lambda: _assert(not watcher.alive()))
    assert setup.kinds() == ["signal"]


def test_the_kill_token_ends_the_watcher(setup) -> None:
    setup.source("a", "one")
    watcher = setup.start(setup.template("a", change_mode="restart"))
    wait_for(lambda: _assert(setup.renders.renders() >= 1))
    setup.kill.cancel("killed")
    wait_for(lambda: _assert(not watcher.alive()))


def test_a_source_replaced_deleted_and_recreated_is_followed(setup) -> None:
    source = setup.source("a", "one")
    setup.start(setup.template("a", change_mode="noop"))
    source.unlink()
    setup.source("a", "back")
    wait_for(lambda: _assert(setup.dest("a") == "BACK"))
    tmp = source.with_name("a.tmp")
    tmp.write_text("renamed")
    os.replace(tmp, source)
    wait_for(lambda: _assert(setup.dest("a") == "RENAMED"))


def test_a_directory_on_the_way_that_comes_later_is_followed(setup) -> None:
    nested = setup.alloc / "alloc" / "data" / "sub"
    nested.mkdir()
    (nested / "a").write_text("one")
    watched = setup.template("sub/a", change_mode="noop")
    os.rename(nested, setup.alloc / "alloc" / "data" / "away")
    setup.start(watched)
    wait_for(lambda: _assert(setup.renders.renders() >= 1))
    staged = setup.alloc / "alloc" / "data" / "staging"
    staged.mkdir()
    (staged / "a").write_text("two")
    os.rename(staged, nested)
    wait_for(lambda: _assert(setup.dest("sub/a") == "TWO"))


def test_a_symlinked_source_is_followed_where_it_lives(setup) -> None:
    target = setup.alloc / "web" / "local" / "real.tpl"
    target.write_text("one")
    (setup.alloc / "alloc" / "data" / "a").symlink_to(target)
    setup.start(setup.template("a", change_mode="noop"))
    target.write_text("two")
    wait_for(lambda: _assert(setup.dest("a") == "TWO"))


def test_without_inotify_the_sources_are_polled(setup, monkeypatch) -> None:
    monkeypatch.setattr(inotify.Inotify, "open", classmethod(lambda cls: None))
    setup.source("a", "one")
    setup.start(setup.template("a", change_mode="noop"))
    setup.source("a", "longer")
    wait_for(lambda: _assert(setup.dest("a") == "LONGER"))


def test_source_parts_stay_inside_the_alloc_dir(alloc) -> None:
    task = alloc / "web"
    assert source_parts(task, alloc, "local/in.tpl") == ("web", "local", "in.tpl")
    assert source_parts(task, alloc, str(alloc / "alloc/x")) == ("alloc", "x")
    assert source_parts(task, alloc, "../../etc/passwd") is None
    assert source_parts(task, alloc, "/etc/passwd") is None
