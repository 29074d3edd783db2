"""The example job files are runnable: every task's driver accepts its config, and the
raw_exec commands of the batch and lifecycle examples run to success as real processes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.drivers import ExitResult, RawExecDriver, TaskConfig
from allocrunner.drivers.logs import read_logs
from allocrunner.drivers.mock import parse_mock_config
from allocrunner.drivers.raw_exec import parse_raw_exec_config
from allocrunner.jobspec import load_job
from allocrunner.structs import Task

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
PARSERS = {"raw_exec": parse_raw_exec_config, "mock_driver": parse_mock_config}


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir()))
def test_every_example_task_config_is_accepted_by_its_driver(name: str) -> None:
    job = load_job(EXAMPLES / name)
    for group in job.task_groups:
        for task in group.tasks:
            PARSERS[task.driver](task.config)


def run_task(driver: RawExecDriver, alloc_dir: Path, alloc_id: str, task: Task) -> str:
    """Run `task` with the NOMAD_* variables it uses; its stdout."""
    task_dir = alloc_dir / task.name
    logs_dir = alloc_dir / "alloc" / "logs"
    for d in (task_dir, logs_dir, alloc_dir / "alloc" / "data"):
        d.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NOMAD_ALLOC_DIR": str(alloc_dir / "alloc"),
        "NOMAD_ALLOC_ID": alloc_id,
        "NOMAD_TASK_NAME": task.name,
        **task.env,
    }
    config = TaskConfig(
        id=f"{alloc_id}/{task.name}",
        alloc_id=alloc_id,
        name=task.name,
        driver_config=task.config,
        env=env,
        task_dir=str(task_dir),
        alloc_dir=str(alloc_dir / "alloc"),
        logs_dir=str(logs_dir),
    )
    driver.start(config)
    result = driver.wait(config.id, CancelToken())
    assert result == ExitResult(), f"{task.name}: {result}"
    return read_logs(str(logs_dir), task.name, "stdout").decode()


def test_batch_example_commands_run(tmp_path: Path) -> None:
    job = load_job(EXAMPLES / "batch.nomad.hcl")
    alloc_id = str(uuid.uuid4())
    with RawExecDriver() as driver:
        outputs = {
            t.name: run_task(driver, tmp_path, alloc_id, t) for t in job.task_groups[0].tasks
        }
    assert outputs == {
        "hello": f"hi from hello in {alloc_id}\n",
        "count": "tick 1\ntick 2\ntick 3\n",
    }


def test_lifecycle_example_commands_run_in_order(tmp_path: Path) -> None:
    job = load_job(EXAMPLES / "lifecycle.nomad.hcl")
    group = job.task_groups[0]
    order = ["setup", "main", "announce", "cleanup"]
    alloc_id = str(uuid.uuid4())
    with RawExecDriver() as driver:
        outputs = {}
        for name in order:
            task = group.task(name)
            assert task is not None and task.driver == "raw_exec"
            outputs[name] = run_task(driver, tmp_path, alloc_id, task)
    assert outputs == {
        "setup": "",
        "main": "setting up\nmain done\n",
        "announce": "main task started\n",
        "cleanup": "cleaned up\n",
    }
    assert not (tmp_path / "alloc" / "data" / "setup.txt").exists()
