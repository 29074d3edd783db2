"""End to end with real processes: a raw_exec group whose leader exits, and a raw_exec
task launched (its start made on the launching thread)."""

from __future__ import annotations

import os

import attrs

from allocrunner.drivers._process import pid_alive
from allocrunner.structs import EVENT_LEADER_DEAD, new_allocation
from allocrunner.testing import mock_job, mock_task, wait_for


def test_leader_exit_stops_real_processes(make_runner):
    leader = mock_task(
        "leader",
        driver="raw_exec",
        config={
            "command": "/bin/sh",
            "args": ["-c", "sleep 0.3; echo done > ${NOMAD_TASK_DIR}/out"],
        },
        leader=True,
    )
    follower = mock_task(
        "follower",
        driver="raw_exec",
        config={
            "command": "/bin/sh",
            "args": [
                "-c",
                "echo $$ > ${NOMAD_TASK_DIR}/pid; "
                "sleep 30 & echo $! > ${NOMAD_TASK_DIR}/child; wait",
            ],
        },
        kill_timeout=2.0,
    )
    job = mock_job(leader, follower, job_type="batch")
    ar = make_runner(new_allocation(job, "web"))
    ar.start()
    follower_dir = ar.alloc_dir.path / "follower" / "local"

    def pids_written():
        assert (follower_dir / "child").is_file() and (follower_dir / "child").read_text().strip()

    wait_for(pids_written)
    shell_pid = int((follower_dir / "pid").read_text())
    child_pid = int((follower_dir / "child").read_text())
    assert pid_alive(child_pid)
    assert ar.wait(20)
    state = ar.alloc_state()
    assert state.client_status == "complete"
    assert (ar.alloc_dir.path / "leader" / "local" / "out").read_text().strip() == "done"
    assert EVENT_LEADER_DEAD in [e.type for e in state.task_states["follower"].events]
    wait_for(lambda: _assert_dead(shell_pid, child_pid), timeout=5)
    assert os.path.isdir(ar.alloc_dir.logs_dir)


def _assert_dead(*pids: int) -> None:
    alive = [p for p in pids if pid_alive(p)]
    assert not alive, f"processes still alive: {alive}"


def test_runner_closes_the_drivers_it_built(config):
    from allocrunner.runner.alloc_runner import AllocRunner

    task = mock_task("hi", driver="raw_exec", config={"command": "/bin/echo", "args": ["hi"]})
    ar = AllocRunner(new_allocation(mock_job(task, job_type="batch"), "web"), config)
    ar.start()
    assert ar.wait(20)
    assert ar.alloc_state().client_status == "complete"
    ar.destroy()
    assert ar.wait_destroyed(20)
    assert ar.close(20)
    # The harness fails this test if the raw_exec driver's I/O thread outlived it.


def _pids_running(argv: list[str]) -> list[int]:
    """Pids whose /proc cmdline is exactly `argv` and that are not zombies."""
    wanted = "\0".join(argv) + "\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cmdline == wanted and state != "Z":
            found.append(int(entry))
    return found


def test_a_launched_raw_exec_task_has_been_execd_when_launch_returns(make_runner):
    # The launching thread makes the start, and raw_exec's start returns once the
    # command is exec'd: /proc shows it before launch returns to the caller.
    argv = ["/bin/sleep", "31.4159"]
    task = mock_task(
        "web", driver="raw_exec", config={"command": argv[0], "args": argv[1:]}, kill_timeout=2.0
    )
    alloc = new_allocation(mock_job(task), "web")
    ar = make_runner(alloc)
    ar.launch()
    (pid,) = _pids_running(argv)
    stop = attrs.evolve(
        alloc, desired_status="stop", alloc_modify_index=alloc.alloc_modify_index + 1
    )
    ar.update(stop)
    assert ar.wait(20)
    assert ar.alloc_state().client_status == "complete"
    wait_for(lambda: _assert_dead(pid), timeout=5)
