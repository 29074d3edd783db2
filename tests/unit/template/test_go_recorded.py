"""Randomly composed templates (trim markers, custom delimiters, comments, pipelines,
control structures, define/template/block, break/continue, variables, malformed
actions, each missingkey mode) whose output or error message was recorded from
Go's own text/template: every one must render byte for byte the same here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from allocrunner.template import TemplateError, render

RECORDED = json.loads((Path(__file__).parent / "go_cases.json").read_text())
CASES: list[dict[str, Any]] = RECORDED["cases"]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_same_as_go(case: dict[str, Any]) -> None:
    try:
        got = {"out": render(case["t"], env={}, data=RECORDED["data"], left=case["l"],
                             right=case["r"], missing_key=case["mode"])}
    except TemplateError as err:
        got = {"err": str(err)}
    expected = {key: case[key] for key in ("out", "err") if key in case}
    assert got == expected, case["t"]


def test_the_recording_covers_outputs_and_errors() -> None:
    assert sum("out" in c for c in CASES) >= 300
    assert sum("err" in c for c in CASES) >= 200
    assert any(c["l"] != "{{" for c in CASES)
