"""The job file examples in README.md load, so the documentation cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from allocrunner import load_job

README = Path(__file__).resolve().parents[3] / "README.md"


def _block(lang: str) -> str:
    match = re.search(rf"```{lang}\n(.*?)```", README.read_text(), re.S)
    assert match, f"README.md has no {lang} example"
    return match.group(1)


def test_readme_hcl_example_loads(tmp_path):
    path = tmp_path / "example.nomad.hcl"
    path.write_text(_block("hcl"))
    job = load_job(path)
    assert job.type == "batch"
    assert [t.name for t in job.task_groups[0].tasks] == ["setup", "hello"]
    assert job.task_groups[0].tasks[1].kill_timeout == 2.0


def test_readme_json_example_loads(tmp_path):
    path = tmp_path / "example.json"
    path.write_text(_block("json"))
    job = load_job(path)
    assert job.id == "web"
    assert job.task_groups[0].tasks[0].kill_timeout == 2.0
