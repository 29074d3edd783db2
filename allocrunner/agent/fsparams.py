"""The client filesystem API's inputs and errors: parameter checks and status mapping.

Every ``/v1/client/fs/...`` endpoint (`allocrunner.agent.fsapi`) and the file
follower beneath it (`allocrunner.agent.fsfollow`) check their parameters here, the
way Nomad does (Go's ``strconv`` spellings for booleans and integers, 400 for a bad
value), and turn the alloc dir's errors into the status the HTTP layer answers with
(`api_errors`): 403 for a path that escapes the alloc dir or reaches into a task's
``secrets/``, 404 for a missing file, 400 for a symlink loop, 500 for an I/O failure.

Paths are relative to the alloc dir; a leading ``/`` is allowed and means the alloc
dir itself, as in Nomad (``/alloc/logs/web.stdout.0``).

Threads: none; every function runs on its caller's thread. Locks: none. Owner:
plain functions, called by `fsapi` and `fsfollow`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Final

from allocrunner.agent.errors import ApiError, bad_request, forbidden, not_found
from allocrunner.allocdir import AllocDir, FileInfo, PathNotFoundError
from allocrunner.allocdir.fs import SecretsAccessError, SymlinkLoopError
from allocrunner.errors import AllocDirError, PathEscapeError

__all__ = [
    "ORIGINS",
    "api_errors",
    "check_flag",
    "check_heartbeat",
    "check_origin",
    "file_path",
    "is_regular",
    "non_negative",
    "parse_bool",
    "parse_int",
    "relative",
    "stat_file",
]

ORIGINS: Final = ("start", "end")

_GO_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_GO_INT: Final = re.compile(r"[+-]?[0-9]+\Z")


# --- parameters --------------------------------------------------------------------


def parse_bool(name: str, text: str) -> bool:
    """A query parameter as Go's ``strconv.ParseBool`` reads it; 400 otherwise."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise bad_request(f"failed to parse {name} field to boolean: invalid syntax: {text!r}")


def parse_int(name: str, text: str) -> int:
    """A base-10 integer query parameter as Go's ``strconv.ParseInt`` reads it; 400
    otherwise (range checks are the caller's)."""
    if not _GO_INT.match(text):
        raise bad_request(f"error parsing {name}: invalid syntax: {text!r}")
    return int(text)


def non_negative(name: str, value: object) -> int:
    """`value` as an offset or a limit: an int >= 0 (not a bool); 400 otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{name} must be a non-negative integer, got {value!r}")
    return value


def check_flag(name: str, value: object) -> bool:
    """`value` as a boolean option; 400 for anything else."""
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be a boolean, got {value!r}")
    return value


def check_heartbeat(value: float) -> float:
    """A heartbeat interval in seconds (the caller's setting, not a client's: a bad
    one is a programming error, so ValueError rather than 400)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"heartbeat must be a positive number of seconds, got {value!r}")
    return float(value)


def check_origin(value: object) -> str:
    """``start`` (also for "") or ``end``; 400 otherwise."""
    if value == "":
        return "start"
    if value not in ORIGINS:
        raise bad_request("origin must be start or end")
    return str(value)


def file_path(path: object) -> str:
    """A path naming a file: required, relative to the alloc dir."""
    if not isinstance(path, str):
        raise bad_request(f"path must be a string, got {type(path).__name__}")
    if path == "":
        raise bad_request("must provide a file name")
    return relative(path)


def relative(path: str) -> str:
    """Nomad joins the path onto the alloc dir, so a leading ``/`` names the alloc dir."""
    return path.lstrip("/")


# --- errors ------------------------------------------------------------------------


@contextlib.contextmanager
def api_errors(path: str) -> Iterator[None]:
    """Turn the alloc dir's errors about `path` into the API's statuses."""
    try:
        yield
    except PathEscapeError as err:
        raise forbidden(str(err)) from err
    except SecretsAccessError as err:
        raise forbidden(str(err)) from err
    except PathNotFoundError as err:
        raise not_found(f"no such file or directory: {path!r}") from err
    except SymlinkLoopError as err:
        raise bad_request(str(err)) from err
    except AllocDirError as err:
        raise ApiError(500, str(err)) from err


def is_regular(info: FileInfo) -> bool:
    """True for a regular file: its Go mode string has no type letter."""
    return set(info.file_mode[:-9]) <= set("-ugt")


def stat_file(alloc_dir: AllocDir, path: str, display: str) -> FileInfo:
    """The info of a regular file to read; 400 for a directory or a special file."""
    with api_errors(display):
        info = alloc_dir.stat(path)
    if info.is_dir:
        raise bad_request(f"file {display!r} is a directory")
    if not is_regular(info):
        raise bad_request(f"file {display!r} is not a regular file")
    return info
