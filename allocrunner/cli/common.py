"""Exit codes and the one error type of the command line.

Every command returns one of the exit codes below; `CliError` carries a message for
the user and the exit code it implies, so a command can stop anywhere with a clear
line on stderr instead of a traceback.

Threads and locks: none; constants and an exception. Used by every command module
and by `main`, which turns a `CliError` into its line and exit code.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1  # a task failed, or the command could not do its work
EXIT_BAD_INPUT = 2  # bad arguments, a bad job file, an unknown id, a placement failure
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "CliError",
    "bad_input",
]


class CliError(Exception):
    """A failure to report in one line, with the exit code it implies."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def bad_input(message: str) -> CliError:
    """A CliError for input the user can fix (exit 2)."""
    return CliError(message, EXIT_BAD_INPUT)
