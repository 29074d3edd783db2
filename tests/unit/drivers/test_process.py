"""The package's one /proc/<pid>/stat parser and the process helpers built on it, against
synthetic stat lines and against real processes (names with ") " and spaces, zombies,
process groups), plus the wrapper's exit statuses."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocrunner.drivers._process import (
    CLOCK_TICKS,
    PidStat,
    boot_ticks,
    children_of,
    exit_result_from_status,
    group_processes,
    group_usage,
    parse_pid_stat,
    pid_alive,
    read_pid_stat,
    read_status,
    result_from_wait,
    signalled,
)
from allocrunner.drivers.base import ExitResult
from allocrunner.testing import wait_for

PACKAGE = Path(__file__).resolve().parents[3] / "allocrunner"
PAGE = os.sysconf("SC_PAGE_SIZE")


def stat_line(pid: int, name: str, **fields: int | str) -> bytes:
    """A /proc/<pid>/stat line; `fields` override the values after the name by index
    (f0 = state, f1 = ppid, f2 = pgid, f11 = utime, f12 = stime, f19 = start time,
    f21 = rss in pages)."""
    values: list[int | str] = ["S", *range(1, 50)]
    for key, value in fields.items():
        values[int(key[1:])] = value
    return f"{pid} ({name}) {' '.join(str(v) for v in values)}\n".encode()


# --- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["sleep", "a) b", ") Z 1 1 1 (", "two  spaces", "x) S 9 9 (y)", "(", ")", ""],
)
def test_parse_skips_any_command_name_up_to_its_last_paren(name):
    data = stat_line(4242, name, f0="R", f1=17, f2=99, f11=5, f12=6, f19=777, f21=3)
    assert parse_pid_stat(data) == PidStat(
        pid=4242, state="R", ppid=17, pgid=99, utime=5, stime=6, start_ticks=777, rss_bytes=3 * PAGE
    )


@pytest.mark.parametrize(
    "state,alive", [("R", True), ("S", True), ("D", True), ("Z", False), ("X", False)]
)
def test_alive_is_false_for_zombies_and_dead_processes(state, alive):
    found = parse_pid_stat(stat_line(1, "p", f0=state))
    assert found is not None and found.alive is alive


@pytest.mark.parametrize(
    "data", [b"", b"12", b"12 (x) S 1 2", b"x (y) " + b"7 " * 40, stat_line(1, "p", f19="?")]
)
def test_short_or_malformed_stat_is_none(data):
    assert parse_pid_stat(data) is None


def test_negative_rss_counts_as_zero():
    found = parse_pid_stat(stat_line(1, "p", f21=-1))
    assert found is not None and found.rss_bytes == 0


# --- real processes ------------------------------------------------------------------


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start processes (each in its own session) that are killed and reaped afterwards."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def start(spawned: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(list(argv), start_new_session=True)
    spawned.append(proc)
    return proc


def test_a_process_named_with_paren_and_spaces_parses_like_the_os_sees_it(spawn, tmp_path):
    name = "a) Z 1 (b c"
    link = tmp_path / name
    link.symlink_to("/bin/sleep")
    before = boot_ticks()
    proc = start(spawn, str(link), "30")
    after = boot_ticks()
    wait_for(lambda: _assert_equal(Path(f"/proc/{proc.pid}/comm").read_text(), name + "\n"))
    # The name changes at exec, before the new image has touched a page: wait until
    # sleep is asleep, so its memory is mapped in.
    found = wait_for(lambda: _asleep(read_pid_stat(proc.pid)))
    assert (found.pid, found.ppid, found.pgid) == (proc.pid, os.getpid(), proc.pid)
    assert found.alive
    assert before <= found.start_ticks <= after
    assert found.rss_bytes > 0


def _asleep(found: PidStat | None) -> PidStat:
    assert found is not None and found.state == "S", f"not asleep yet: {found!r}"
    return found


def _assert_equal(actual: object, expected: object) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"


def test_own_stat_matches_the_os():
    found = read_pid_stat(os.getpid())
    assert found is not None
    assert (found.pid, found.ppid, found.pgid) == (os.getpid(), os.getppid(), os.getpgid(0))
    assert found.utime / CLOCK_TICKS <= os.times().user + 1.0


def test_a_zombie_is_not_alive_and_a_reaped_process_is_gone(spawn):
    proc = start(spawn, "/bin/sh", "-c", "exit 0")
    wait_for(lambda: _assert_equal(_state(proc.pid), "Z"))
    assert not pid_alive(proc.pid)
    assert proc.pid not in {s.pid for s in children_of(os.getpid())}
    proc.wait(10)
    assert read_pid_stat(proc.pid) is None
    assert not pid_alive(proc.pid)


def _state(pid: int) -> str | None:
    found = read_pid_stat(pid)
    return None if found is None else found.state


def test_children_and_group_members(spawn):
    proc = start(spawn, "/bin/sh", "-c", "sleep 30 & sleep 30 & wait")
    assert pid_alive(proc.pid)
    assert proc.pid in {s.pid for s in children_of(os.getpid())}
    wait_for(lambda: _assert_equal(len(group_processes([proc.pid])[proc.pid]), 3))
    members = group_processes([proc.pid, 999_999_999])
    assert members[999_999_999] == []
    assert [s.pid for s in members[proc.pid]] == sorted(s.pid for s in members[proc.pid])
    sleepers = {s.pid for s in children_of(proc.pid)}
    assert sleepers == {s.pid for s in members[proc.pid]} - {proc.pid}
    usage = group_usage(proc.pid)
    assert usage["processes"] == 3.0 and usage["memory_rss_bytes"] > 0


def test_no_other_module_parses_proc_pid_stat():
    pattern = re.compile(r"/proc/\{[^}]*\}/stat\b")
    readers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    )
    assert readers == ["drivers/_process.py"]


# --- exit statuses -------------------------------------------------------------------


@pytest.mark.parametrize(
    "status,expected",
    [
        (0, ExitResult(exit_code=0)),
        (3, ExitResult(exit_code=3)),
        (128, ExitResult(exit_code=128)),
        (137, ExitResult(exit_code=137, signal=9)),
        (130, ExitResult(exit_code=130, signal=2)),
        (255, ExitResult(exit_code=255)),
    ],
)
def test_shell_status_above_128_is_a_signal(status, expected):
    assert exit_result_from_status(status) == expected


def test_wait_status_of_a_signalled_and_an_exited_process():
    killed = subprocess.Popen(["/bin/sh", "-c", "kill -TERM $$"])
    exited = subprocess.Popen(["/bin/sh", "-c", "exit 7"])
    for proc in (killed, exited):
        _, status = os.waitpid(proc.pid, 0)
        proc.returncode = 0  # reaped here
        if proc is killed:
            assert result_from_wait(status) == signalled(signal.SIGTERM)
        else:
            assert result_from_wait(status) == ExitResult(exit_code=7)


def test_status_file_is_read_only_when_complete_and_of_this_run(tmp_path):
    path = tmp_path / "status"
    assert read_status(str(path), 10) is None
    path.write_bytes(b"3 10")
    assert read_status(str(path), 10) is None  # still being written
    path.write_bytes(b"3 10\n")
    assert read_status(str(path), 10) == 3
    assert read_status(str(path), 11) is None  # left by an earlier run
    path.write_bytes(b"garbage\n")
    assert read_status(str(path), 10) is None


def test_boot_ticks_is_the_clock_of_start_times():
    found = read_pid_stat(os.getpid())
    assert found is not None
    assert found.start_ticks <= boot_ticks()
    first = boot_ticks()
    wait_for(lambda: _assert_equal(boot_ticks() > first, True))
