"""Version constraints as Nomad's `version` and `semver` constraint operators read them.

Nomad parses the node's value with hashicorp/go-version (a loose grammar: an optional
``v``, any number of numeric segments padded to three, an optional pre-release with or
without a dash, optional ``+metadata``) and checks it against one of two constraint
languages:

- ``version`` (go-version constraints): comma-separated ``<op> <version>`` with the
  operators ``=`` (or none), ``!=``, ``>``, ``<``, ``>=``, ``<=`` and the pessimistic
  ``~>``. The ordered operators and ``~>`` carry the pre-release rule: a pre-release
  version satisfies them only when the constraint's version has a pre-release too and
  the same numeric segments; ``~> 1.2`` means ``>= 1.2, < 2.0`` and ``~> 1.2.3`` means
  ``>= 1.2.3, < 1.3``.
- ``semver`` (Nomad's helper/constraints/semver): the same operators without ``~>``,
  each constraint's version written strictly (a dash before any pre-release), compared
  with the plain Semver 2.0 ordering and no pre-release rule.

The comparison is go-version's: numeric segments (a shorter one is padded with zeros),
then a version without pre-release is above one with it, and pre-releases compare
dot-separated part by part (numeric parts below alphanumeric ones, numbers as numbers).

Threads: none; pure functions over immutable values, safe on any thread. Locks: none
(the parse caches are `functools.lru_cache`, which is thread-safe). Owner: used by
`allocrunner.placement.constraints`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import attrs

__all__ = ["GoVersion", "parse_version", "semver_check", "version_check"]

INT64_MAX = 2**63 - 1

# go-version's grammar (as a pattern, not code): segments, then a pre-release that
# either starts with digits after a dash or with letters after an optional dash, then
# metadata. The semver flavour makes the dash before the pre-release mandatory.
_SEGMENTS = r"v?([0-9]+(\.[0-9]+)*?)"
_PRE_IDENT = r"[0-9A-Za-z\-~]"
_META = rf"(\+({_PRE_IDENT}+(\.{_PRE_IDENT}+)*))??"
_NUMERIC_PRE = rf"-([0-9]+{_PRE_IDENT}*(\.{_PRE_IDENT}+)*)"
_WORD_PRE = rf"([A-Za-z\-~]+{_PRE_IDENT}*(\.{_PRE_IDENT}+)*)"
_LOOSE_RAW = rf"{_SEGMENTS}({_NUMERIC_PRE}|(-?{_WORD_PRE}))?{_META}"
_STRICT_RAW = rf"{_SEGMENTS}({_NUMERIC_PRE}|(-{_WORD_PRE}))?{_META}"
_LOOSE = re.compile(rf"^{_LOOSE_RAW}$")
_STRICT = re.compile(rf"^{_STRICT_RAW}$")
_SPACE = r"[\t\n\f\r ]*"  # Go's \s
_VERSION_OPS = ("~>", ">=", "<=", "!=", ">", "<", "=", "")
_SEMVER_OPS = (">=", "<=", "!=", ">", "<", "=", "")


def _op_pattern(ops: tuple[str, ...], version_raw: str) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(op) for op in ops)
    return re.compile(rf"^{_SPACE}({alternatives}){_SPACE}({version_raw}){_SPACE}$")


_VERSION_CONSTRAINT = _op_pattern(_VERSION_OPS, _LOOSE_RAW)
_SEMVER_CONSTRAINT = _op_pattern(_SEMVER_OPS, _STRICT_RAW)
_GO_INT = re.compile(r"[+-]?[0-9]+")


def parse_go_int(text: str) -> int | None:
    """`text` as Go's ``strconv.ParseInt(text, 10, 64)`` reads it, or None."""
    if not _GO_INT.fullmatch(text):
        return None
    value = int(text)
    if value > INT64_MAX or value < -INT64_MAX - 1:
        return None
    return value


@attrs.frozen
class GoVersion:
    """Immutable. A parsed go-version: padded segments, how many were written, the
    pre-release and the metadata."""

    segments: tuple[int, ...]
    written: int
    pre: str = ""
    metadata: str = ""

    def __str__(self) -> str:
        text = ".".join(str(s) for s in self.segments)
        if self.pre:
            text += f"-{self.pre}"
        if self.metadata:
            text += f"+{self.metadata}"
        return text

    def compare(self, other: GoVersion) -> int:
        """-1, 0 or 1 as go-version's Compare."""
        if str(self) == str(other):
            return 0
        if self.segments == other.segments:
            return _compare_pre_releases(self.pre, other.pre)
        return _compare_segments(self.segments, other.segments)


def _parse(text: str, pattern: re.Pattern[str]) -> GoVersion | None:
    match = pattern.match(text)
    if match is None:
        return None
    written = match.group(1).split(".")
    segments: list[int] = []
    for part in written:
        value = parse_go_int(part)
        if value is None:
            return None
        segments.append(value)
    segments.extend([0] * (3 - len(segments)))
    pre = match.group(7) or match.group(4) or ""
    return GoVersion(tuple(segments), len(written), pre, match.group(10) or "")


def parse_version(text: str) -> GoVersion | None:
    """`text` parsed as go-version's NewVersion (loose), or None when malformed."""
    return _parse(text, _LOOSE)


def _compare_segments(mine: tuple[int, ...], theirs: tuple[int, ...]) -> int:
    for i in range(max(len(mine), len(theirs))):
        if i >= len(mine):
            return -1 if any(theirs[i:]) else 0
        if i >= len(theirs):
            return 1 if any(mine[i:]) else 0
        if mine[i] != theirs[i]:
            return -1 if mine[i] < theirs[i] else 1
    return 0


def _compare_pre_releases(mine: str, theirs: str) -> int:
    if mine == theirs:
        return 0
    if not mine:
        return 1
    if not theirs:
        return -1
    mine_parts, their_parts = mine.split("."), theirs.split(".")
    for i in range(max(len(mine_parts), len(their_parts))):
        a = mine_parts[i] if i < len(mine_parts) else ""
        b = their_parts[i] if i < len(their_parts) else ""
        result = _compare_part(a, b)
        if result:
            return result
    return 0


def _compare_part(mine: str, theirs: str) -> int:
    """One pre-release part against another, with go-version's quirks kept (an empty
    part sorts below a numeric one and above a word; numeric parts never tie)."""
    if mine == theirs:
        return 0
    mine_int, their_int = parse_go_int(mine), parse_go_int(theirs)
    if mine == "":
        return -1 if their_int is not None else 1
    if theirs == "":
        return 1 if mine_int is not None else -1
    if mine_int is not None and their_int is None:
        return -1
    if mine_int is None and their_int is not None:
        return 1
    if mine_int is None and their_int is None:
        return 1 if mine > theirs else -1
    assert mine_int is not None and their_int is not None
    return 1 if mine_int > their_int else -1


# --- constraints -----------------------------------------------------------------------

Check = Callable[[GoVersion], bool]


def _pre_release_rule(v: GoVersion, c: GoVersion) -> bool:
    if c.pre and v.pre:
        return c.segments == v.segments
    return not (v.pre and not c.pre)


def _pessimistic(v: GoVersion, c: GoVersion) -> bool:
    if not _pre_release_rule(v, c) or (c.pre and not v.pre):
        return False
    if v.compare(c) < 0:
        return False
    size = len(c.segments)
    if size > len(v.segments):
        return False
    if any(v.segments[i] != c.segments[i] for i in range(c.written - 1)):
        return False
    return c.segments[size - 1] <= v.segments[size - 1]


def _ordered(op: str, v: GoVersion, c: GoVersion) -> bool:
    result = v.compare(c)
    return {
        "=": result == 0,
        "": result == 0,
        "!=": result != 0,
        ">": result == 1,
        "<": result == -1,
        ">=": result >= 0,
        "<=": result <= 0,
    }[op]


def _one(op: str, c: GoVersion, *, pre_rule: bool) -> Check:
    if op == "~>":
        return lambda v: _pessimistic(v, c)
    if pre_rule and op in (">", "<", ">=", "<="):
        return lambda v: _pre_release_rule(v, c) and _ordered(op, v, c)
    return lambda v: _ordered(op, v, c)


def _parse_constraints(
    text: str, pattern: re.Pattern[str], version: re.Pattern[str], *, pre_rule: bool
) -> tuple[Check, ...] | None:
    checks: list[Check] = []
    for single in text.split(","):
        match = pattern.match(single)
        if match is None:
            return None
        parsed = _parse(match.group(2), version)
        if parsed is None:
            return None
        checks.append(_one(match.group(1), parsed, pre_rule=pre_rule))
    return tuple(checks)


@functools.lru_cache(maxsize=512)
def _version_constraints(text: str) -> tuple[Check, ...] | None:
    return _parse_constraints(text, _VERSION_CONSTRAINT, _LOOSE, pre_rule=True)


@functools.lru_cache(maxsize=512)
def _semver_constraints(text: str) -> tuple[Check, ...] | None:
    return _parse_constraints(text, _SEMVER_CONSTRAINT, _STRICT, pre_rule=False)


def _check(value: str, checks: tuple[Check, ...] | None) -> bool:
    version = parse_version(value)
    if version is None or checks is None:
        return False
    return all(check(version) for check in checks)


def version_check(value: str, constraint: str) -> bool:
    """True when `value` satisfies the go-version constraint string (``version``);
    False for an unparsable value or constraint, as Nomad."""
    return _check(value, _version_constraints(constraint))


def semver_check(value: str, constraint: str) -> bool:
    """True when `value` satisfies the semver constraint string (``semver``)."""
    return _check(value, _semver_constraints(constraint))
