"""What the job loader says about raw_exec's oom_score_adj and cgroup overrides and a
task's disabled logs, which the driver honours."""

from __future__ import annotations

import pytest

from allocrunner import parse_job_with_warnings
from allocrunner.drivers._cgroups import host_mode
from allocrunner.errors import JobSpecError

T = "job.group[web].task[api]"


def job_with(config: str = "", task: str = "") -> str:
    return f"""
job "shop" {{
  group "web" {{
    task "api" {{
      driver = "raw_exec"
      config {{
        command = "/bin/true"
        {config}
      }}
      {task}
    }}
  }}
}}
"""


def warnings_for(config: str = "", task: str = "") -> list[str]:
    _, warnings = parse_job_with_warnings(job_with(config, task), "hcl")
    return warnings


def test_honoured_settings_give_no_warning() -> None:
    assert warnings_for("oom_score_adj = 500", "logs {\ndisabled = true\n}") == []


@pytest.mark.parametrize("value", ["-1", "1001", "true", '"5"'])
def test_oom_score_adj_outside_0_to_1000_is_refused(value: str) -> None:
    with pytest.raises(JobSpecError, match="from 0 to 1000") as info:
        warnings_for(f"oom_score_adj = {value}")
    assert info.value.path == f"{T}.config.oom_score_adj"


@pytest.mark.parametrize(
    ("config", "key", "version"),
    [
        ('cgroup_v2_override = "custom.slice"', "cgroup_v2_override", "v2"),
        ('cgroup_v1_override = { pids = "/app" }', "cgroup_v1_override", "v1"),
    ],
)
def test_an_override_of_another_cgroup_version_is_warned_about_once(
    config: str, key: str, version: str
) -> None:
    found = warnings_for(config)
    if host_mode() == version:
        assert found == []
    else:
        (warning,) = found
        assert warning.startswith(f"{T}.config.{key}: this node has ")
        assert warning.endswith(
            f"not cgroup {version} (the task runs in no cgroup of its own); ignored"
        )
