"""Template change_mode through real TaskRunners, raw_exec and real files: a template
read from a source file is re-rendered when the file changes after the task started,
and its change_mode applies (noop: the file only; restart: a new process with Nomad's
"Restart Signaled" event; signal: the task's trap runs). The watcher thread exists
only for tasks with source templates and ends with the task."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from allocrunner.structs.job import Template
from allocrunner.structs.task_state import (
    EVENT_RESTART_SIGNAL,
    EVENT_SIGNALING,
    EVENT_STARTED,
)
from allocrunner.taskrunner.template_watch import MSG_RESTART, MSG_SIGNAL
from allocrunner.testing import mock_alloc, mock_job, mock_task, wait_for
from tests.unit.taskrunner.conftest import (
    NO_RESTARTS,
    events_of,
    kill_quietly,
    wait_event,
    wait_state,
)

# Writes its pid, records each SIGHUP / SIGUSR1 as a line, and runs until killed.
SCRIPT = (
    "trap 'echo hup >> local/signals' HUP; "
    "trap 'echo usr1 >> local/signals' USR1; "
    "echo $$ > local/pid.tmp && mv local/pid.tmp local/pid; "
    "while :; do sleep 0.05; done"
)
SOURCE = "../alloc/data/src.tpl"


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tmpl-")]


def start_task(harness, *templates: Template, source_text: str = 'v1 {{ "x" }}'):
    job = mock_job(
        mock_task(
            driver="raw_exec",
            config={"command": "/bin/sh", "args": ["-c", SCRIPT]},
            templates=templates,
        ),
        job_type="service",
        restart_policy=NO_RESTARTS,
    )
    alloc = mock_alloc(job=job)
    alloc_dir = harness.alloc_dir(alloc)
    source = alloc_dir.shared_dir / "data" / "src.tpl"
    source.write_text(source_text)
    tr = harness.runner(alloc, alloc_dir=alloc_dir)
    wait_state(tr, "running")
    return tr, source


def pid_of(tr) -> int:
    def read() -> int:
        path = tr.task_dir.local_dir / "pid"
        assert path.exists(), "the task has not written its pid yet"
        return int(path.read_text())

    return wait_for(read)


def dest_text(tr, name: str = "out.txt") -> str:
    return (tr.task_dir.local_dir / name).read_text()


def wait_dest(tr, text: str, name: str = "out.txt") -> None:
    def check() -> None:
        assert dest_text(tr, name) == text

    wait_for(check)


def signals_seen(tr) -> list[str]:
    path = tr.task_dir.local_dir / "signals"
    return path.read_text().split() if path.exists() else []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def replace_source(source: Path, text: str) -> None:
    """Write a source into place at once. A source written in place can be read half
    written by a watcher's first pass (it reads without waiting for an event), which is
    a change of its own; the tests that count restarts or signals write this way."""
    staged = source.with_name(source.name + ".new")
    staged.write_text(text)
    os.replace(staged, source)


def test_noop_re_renders_the_file_only(harness) -> None:
    template = Template(source_path=SOURCE, dest_path="local/out.txt", change_mode="noop")
    tr, source = start_task(harness, template)
    pid = pid_of(tr)
    assert dest_text(tr) == "v1 x"
    wait_for(lambda: _assert(len(watch_threads()) == 1, watch_threads()))  # poststart
    source.write_text('v2 {{ "y" }}')
    wait_dest(tr, "v2 y")
    # Renamed into place, as editors and config tools write files.
    tmp = source.with_name("src.tpl.new")
    tmp.write_text('v3 {{ "z" }}')
    os.replace(tmp, source)
    wait_dest(tr, "v3 z")
    assert pid_of(tr) == pid and alive(pid)
    assert len(events_of(tr, EVENT_STARTED)) == 1
    assert not events_of(tr, EVENT_RESTART_SIGNAL) and not events_of(tr, EVENT_SIGNALING)


def test_restart_starts_a_new_process(harness) -> None:
    template = Template(source_path=SOURCE, dest_path="local/out.txt", splay=0.0)
    tr, source = start_task(harness, template)
    first = pid_of(tr)
    (tr.task_dir.local_dir / "pid").unlink()
    replace_source(source, 'v2 {{ "y" }}')
    st = wait_event(tr, EVENT_STARTED, count=2)
    restart = events_of(tr, EVENT_RESTART_SIGNAL)
    assert len(restart) == 1 and restart[0].display_message == MSG_RESTART
    assert not restart[0].fails_task
    assert not st.failed
    second = pid_of(tr)
    assert second != first
    wait_for(lambda: _assert(not alive(first), f"old pid {first} still alive"))
    assert dest_text(tr) == "v2 y"
    # The new instance has its own watcher, and it works.
    wait_for(lambda: _assert(len(watch_threads()) == 1, watch_threads()))
    replace_source(source, 'v3 {{ "z" }}')
    wait_event(tr, EVENT_STARTED, count=3)
    assert dest_text(tr) == "v3 z"


def test_signal_reaches_the_task(harness) -> None:
    template = Template(
        source_path=SOURCE,
        dest_path="local/out.txt",
        change_mode="signal",
        change_signal="SIGUSR1",
        splay=0.0,
    )
    tr, source = start_task(harness, template)
    pid = pid_of(tr)
    replace_source(source, 'v2 {{ "y" }}')
    wait_for(lambda: _assert(signals_seen(tr) == ["usr1"], signals_seen(tr)))
    event = events_of(tr, EVENT_SIGNALING)[-1]
    assert event.display_message == MSG_SIGNAL
    assert event.details["task_signal"] == "user defined signal 1"
    assert event.signal == 10
    assert dest_text(tr) == "v2 y"
    assert pid_of(tr) == pid and len(events_of(tr, EVENT_STARTED)) == 1


def test_signals_of_templates_changed_together_are_sent_once(harness) -> None:
    first, second = (
        Template(
            source_path=SOURCE,
            dest_path=f"local/{name}.txt",
            change_mode="signal",
            change_signal="SIGHUP",
            splay=0.0,
        )
        for name in ("a", "b")
    )
    tr, source = start_task(harness, first, second)
    pid_of(tr)
    replace_source(source, "changed")
    wait_for(lambda: _assert(signals_seen(tr) == ["hup"], signals_seen(tr)))
    wait_dest(tr, "changed", "a.txt")
    wait_dest(tr, "changed", "b.txt")
    assert len(events_of(tr, EVENT_SIGNALING)) == 1


def test_a_task_without_source_templates_has_no_watcher(harness) -> None:
    template = Template(embedded_tmpl="fixed", dest_path="local/out.txt")
    tr, _source = start_task(harness, template)
    pid_of(tr)
    assert watch_threads() == []


def test_the_watcher_stops_with_the_task(harness) -> None:
    baseline = {t.name for t in threading.enumerate()}
    template = Template(source_path=SOURCE, dest_path="local/out.txt")
    tr, _source = start_task(harness, template)
    pid = pid_of(tr)
    # The watcher starts in poststart, which runs after the task has started (and may
    # have written its pid).
    wait_for(lambda: _assert(len(watch_threads()) == 1, watch_threads()))
    assert tr.kill(timeout=20)
    assert watch_threads() == []
    assert not alive(pid)
    # Back to the baseline, but for the driver's own shared threads and the runner's.
    names = {t.name for t in threading.enumerate() if not t.name.startswith("raw_exec")}
    assert names - baseline <= {f"task-{tr.alloc_id[:8]}-{tr.name}"}


def test_the_watcher_stops_on_agent_shutdown(harness) -> None:
    template = Template(source_path=SOURCE, dest_path="local/out.txt")
    tr, source = start_task(harness, template)
    pid = pid_of(tr)
    try:
        assert tr.shutdown(timeout=20)
        assert watch_threads() == []
        assert alive(pid)  # the task keeps running on a shutdown
        source.write_text("after shutdown")
        assert dest_text(tr) == "v1 x"
    finally:
        kill_quietly(pid)


def test_after_an_agent_restart_the_sources_are_watched_again(harness) -> None:
    template = Template(
        source_path=SOURCE,
        dest_path="local/out.txt",
        change_mode="signal",
        change_signal="SIGHUP",
        splay=0.0,
    )
    first, source = start_task(harness, template)
    pid = pid_of(first)
    assert first.shutdown(timeout=20)
    assert watch_threads() == []
    alloc = first.alloc()
    second = harness.runner(alloc, start=False, alloc_dir=harness.alloc_dir(alloc))
    second.restore()
    harness.start(second)
    wait_for(lambda: _assert(len(watch_threads()) == 1, watch_threads()))
    replace_source(source, "after the restart")
    wait_for(lambda: _assert(signals_seen(second) == ["hup"], signals_seen(second)))
    assert dest_text(second) == "after the restart"
    assert pid_of(second) == pid and len(events_of(second, EVENT_STARTED)) == 1


def _assert(condition: bool, message: object = "") -> None:
    assert condition, message
