"""Every module of the package opens with a docstring that says what it is for and
states its threads, its locks and its owner, and no module grows past the size limit
without saying why."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "allocrunner"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 600

THREADS = re.compile(r"thread", re.IGNORECASE)
LOCKS = re.compile(r"lock", re.IGNORECASE)
OWNER = re.compile(
    r"owner|owned|built by|called by|used by|created by|run by|held by|read by|imported by",
    re.IGNORECASE,
)


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _name(path: Path) -> str:
    return str(path.relative_to(PACKAGE.parent))


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_module_docstring_states_threads_locks_and_owner(path: Path) -> None:
    doc = _docstring(path)
    assert doc, f"{_name(path)} has no module docstring"
    missing = [
        what
        for what, pattern in (("threads", THREADS), ("locks", LOCKS), ("owner", OWNER))
        if not pattern.search(doc)
    ]
    assert not missing, f"{_name(path)}: the docstring does not state its {', '.join(missing)}"


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_a_long_module_says_why(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    if lines <= MAX_LINES:
        return
    doc = _docstring(path).lower()
    assert "single concern" in doc or "one concern" in doc, (
        f"{_name(path)} has {lines} lines (over {MAX_LINES}) and its docstring does not "
        "say why it is one concern"
    )


def test_the_checks_see_the_package() -> None:
    assert len(MODULES) > 50
    assert PACKAGE / "taskrunner" / "runner.py" in MODULES
