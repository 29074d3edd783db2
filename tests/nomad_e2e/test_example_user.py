"""Nomad's e2e/example testEnv with example/input/env.hcl exactly as Nomad ships it: its
raw_exec task runs `env` as the user `nobody` (the agent runs as root), and the output
holds NOMAD_JOB_ID of the job."""

from __future__ import annotations

import pytest

from tests.nomad_e2e.helpers import Node, e2e_file

pytestmark = pytest.mark.timeout(60)


def test_example_env_runs_as_its_user_and_shows_the_job_id(node: Node) -> None:
    node.run(e2e_file("example/input/env.hcl"), detach=False)
    alloc = node.finished("env", "complete")
    assert "NOMAD_JOB_ID=env" in node.stdout(alloc["ID"], "task").splitlines()
