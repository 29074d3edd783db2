"""Errors raised by the template engine.

`TemplateError` is what every parse, execution or function failure becomes; its
message follows Go's text/template shapes (`template: NAME:LINE: ...`).
`DotenvError` is raised when `env = true` output is not a valid dotenv file.

Threads: none. Locks: none. Owner: raised by every module of this package; caught by
the task runner's template hook and the job loader.
"""

from __future__ import annotations

from allocrunner.errors import AllocRunnerError


class TemplateError(AllocRunnerError):
    """A template could not be parsed or executed."""


class DotenvError(TemplateError):
    """Rendered `env = true` output is not valid dotenv text; `line` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")
