"""Helpers for the HCL2 evaluation tests: evaluate one expression, build a job file."""

from __future__ import annotations

from typing import Any

from allocrunner.jobspec.hcl_eval import Scope, evaluate
from allocrunner.jobspec.hcl_functions_ext import all_functions
from allocrunner.jobspec.hcl_template import parse_expression


def ev(source: str, base_dir: str | None = None, **names: Any) -> Any:
    """The value of one HCL expression, with Nomad's functions and `names` in scope."""
    scope = Scope(names, all_functions(base_dir), keep_unknown=True)
    return evaluate(parse_expression(source), scope)


def job_file(*, top: str = "", job: str = "", group: str = "", task: str = "") -> str:
    """A one-group, one-task job file with extra text at each level."""
    return f"""
{top}
job "example" {{
  {job}
  group "web" {{
    {group}
    task "api" {{
      driver = "raw_exec"
      config {{ command = "/bin/true" }}
      {task}
    }}
  }}
}}
"""
