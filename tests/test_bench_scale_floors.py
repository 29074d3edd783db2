"""The scale benchmark's start floors store what they say they store: the records
floor the three writes a crash-safe start needs, the Nomad-writes floor the thirteen a
Nomad client makes, each read back from the file as a restore reads it; and the contract
floor does what the public contract has a start do: those three writes with the task's
events, its state published under the state lock, broadcast and handed to the updater,
and its task started with the environment and interpolated config a runner builds.

Run in a child process, as the benchmark runs: importing it turns the lock check off
for the importing process and the processes it starts.

Threads and locks: none of their own. Owner: pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Nomad 1.6's prestart hooks of a plain raw_exec task, in its order: a first start stores
# the task's local state after each of them.
NOMAD_PRESTART_HOOKS = (
    "validate",
    "task_dir",
    "identity",
    "logmon",
    "dispatch_payload",
    "volumes",
    "artifacts",
    "devices",
    "script_checks",
)

CHECK = """
import json, sys, tempfile
from pathlib import Path
from benchmarks import bench_scale
from allocrunner.drivers import MockDriver
from allocrunner.state import SQLiteStateDB
from allocrunner.structs import new_allocation
from allocrunner.testing import mock_job, mock_task

persist = getattr(bench_scale, sys.argv[1])
root = Path(tempfile.mkdtemp(dir=sys.argv[2]))
alloc = new_allocation(mock_job(mock_task("t", config={"run_for": "24h"})), "web")
driver = MockDriver()
db = SQLiteStateDB(root / "state.db")
try:
    persist(db, alloc, str(root / "task"), driver)
    writes = db.stats().writes
    allocs = [a.id for a in db.all_allocations()]
    local, state = db.task_runner_state(alloc.id, "t")
finally:
    db.close()
    driver.close()
print(json.dumps({
    "writes": writes,
    "allocs_match": allocs == [alloc.id],
    "state": state.state,
    "events": [e.type for e in state.events],
    "handle_driver": local.task_handle.driver,
    "hooks": {name: [h.prestart_done, dict(h.data)] for name, h in local.hooks.items()},
}))
"""


def run_child(script: str, *args: str) -> dict:
    """Run `script` in a child Python from the repository with `args`; what it printed,
    as JSON (the child's stderr in the failure if it failed)."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("persist", "writes", "nomad"),
    [("persist_start", 3, False), ("persist_start_as_nomad", 13, True)],
)
def test_a_floor_stores_a_started_task(tmp_path: Path, persist, writes, nomad) -> None:
    got = run_child(CHECK, persist, str(tmp_path))
    assert got["writes"] == writes
    assert got["allocs_match"]
    assert got["state"] == "running" and got["handle_driver"] == "mock_driver"
    if nomad:
        assert got["events"] == ["Received", "Task Setup", "Started"]
        assert sorted(got["hooks"]) == sorted(NOMAD_PRESTART_HOOKS)
        done = sorted(name for name, (prestart_done, _) in got["hooks"].items() if prestart_done)
        assert done == ["artifacts", "devices", "dispatch_payload", "validate"]
        assert got["hooks"]["task_dir"] == [False, {"is_done": "true"}]
        assert set(got["hooks"]["logmon"][1]) == {"reattach_config"}
    else:
        assert got["hooks"] == {}


CONTRACT = """
import json, sys, tempfile
from pathlib import Path
from benchmarks import bench_scale
from allocrunner.allocdir import AllocDir
from allocrunner.drivers import MockDriver
from allocrunner.state import SQLiteStateDB
from allocrunner.structs import new_allocation
from allocrunner.testing import mock_job, mock_task

root = Path(tempfile.mkdtemp(dir=sys.argv[1]))
config = {"run_for": "${NOMAD_META_run_for}"}
task = mock_task("t", config=config, env={"WHO": "${NOMAD_TASK_NAME}"})
alloc = new_allocation(mock_job(task, meta={"run_for": "24h"}), "web")
driver = MockDriver()
db = SQLiteStateDB(root / "state.db")
cell = bench_scale.ContractCell()
updates = bench_scale.ViewUpdates()
alloc_dir = AllocDir(str(root), alloc.id)
alloc_dir.build()
task_dir = alloc_dir.new_task_dir("t")
task_dir.build()
try:
    before = cell.state().client_status
    bench_scale.start_as_contract(db, alloc, task_dir.paths(), driver, cell, updates)
    updates.close()
    writes = db.stats().writes
    local, stored = db.task_runner_state(alloc.id, "t")
    state = cell.state()
    view = cell.last_view()
    delivered = updates.delivered()
finally:
    cell.close()
    db.close()
    driver.close()

floor = bench_scale.bare_thread_floor(
    5, root / "floor", layout=True, records=True, driver=True, contract=True
)
pooled = bench_scale.bare_thread_floor(
    5, root / "pooled", layout=True, records=True, driver=True, contract=True, pool=2
)
floor_states = {}
for name in ("floor", "pooled"):
    floor_db = SQLiteStateDB(root / f"{name}.db")
    try:
        floor_states[name] = [
            floor_db.task_runner_state(a.id, "t")[1].state for a in floor_db.all_allocations()
        ]
    finally:
        floor_db.close()
print(json.dumps({
    "before": before,
    "writes": writes,
    "stored": stored.state,
    "events": [e.type for e in stored.events],
    "handle_driver": local.task_handle.driver,
    "config": {
        "alloc_id": local.task_handle.config.env["NOMAD_ALLOC_ID"] == alloc.id,
        "who": local.task_handle.config.env["WHO"],
        "run_for": local.task_handle.config.driver_config["run_for"],
        "local_dir": local.task_handle.config.local_dir == str(task_dir.local_dir),
        "logs_dir": local.task_handle.config.logs_dir == str(task_dir.logs_dir),
    },
    "status": state.client_status,
    "task_states": {name: s.state for name, s in state.task_states.items()},
    "view": [view.id == alloc.id, view.client_status, view.task_states["t"].state],
    "delivered": {k == alloc.id: v.client_status for k, v in delivered.items()},
    "floor_dirs": sorted(p.name for p in (root / "floor").iterdir()).__len__(),
    "pooled_dirs": sorted(p.name for p in (root / "pooled").iterdir()),
    "floor_states": floor_states,
    "floor_s": floor.start_all_s,
    "pooled_s": pooled.start_all_s,
}))
"""


@pytest.mark.timeout(60)
def test_the_contract_floor_stores_publishes_and_hands_over_a_started_task(
    tmp_path: Path,
) -> None:
    got = run_child(CONTRACT, str(tmp_path))
    assert got["before"] == "pending"
    assert got["writes"] == 3
    assert got["stored"] == "running" and got["handle_driver"] == "mock_driver"
    assert got["config"] == {
        "alloc_id": True,
        "who": "t",
        "run_for": "24h",
        "local_dir": True,
        "logs_dir": True,
    }
    assert got["events"] == ["Received", "Task Setup", "Started"]
    assert got["status"] == "running" and got["task_states"] == {"t": "running"}
    assert got["view"] == [True, "running", "running"]
    assert got["delivered"] == {"true": "running"}
    assert got["floor_dirs"] == 5
    assert got["floor_states"] == {"floor": ["running"] * 5, "pooled": ["running"] * 5}
    assert got["floor_s"] > 0
    # The pooled floor's two builders made every allocation's start, none twice.
    assert got["pooled_dirs"] == [f"alloc{i}" for i in range(5)]
    assert got["pooled_s"] > 0
