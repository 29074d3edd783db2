"""Value kinds of Nomad's API JSON: how one field is checked, decoded and encoded.

Each kind turns a JSON value into its Python value (raising `JobSpecError` naming the
field's path on anything else) and back. A `Struct` kind maps a frozen attrs class to a
JSON object by a table of fields; the codec builds its whole schema from these parts, so
the rules for a field (type, range, null) live in exactly one place.

Conventions (Nomad's): integers are JSON integers (a bool is not an integer, nor is
2.0); durations are integer nanoseconds; `null` or an absent key means the field's
default; unknown keys are ignored.

No threads, no locks; immutable kinds with pure methods, used by `codec` (which
builds its schema from them), `hcl` and `defaults`.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from allocrunner.errors import JobSpecError
from allocrunner.structs.evolve import attributes_reader
from allocrunner.structs.frozen import FrozenDict, plain_dict

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

#: Free-form values (driver config) may nest at most this deep.
MAX_DEPTH = 64

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=UTC)
GO_ZERO_TIME_TEXT = "0001-01-01T00:00:00Z"
_ONE_MICROSECOND = timedelta(microseconds=1)


class _Omit:
    """Immutable. Marker: a null or absent field takes its attrs default."""

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Any = _Omit()


class _Call:
    """Immutable. Marker: a kind's encoding of None is not a constant (call `encode`)."""

    def __repr__(self) -> str:
        return "CALL"


CALL: Any = _Call()

_LEFT_OUT: Any = object()
"""Marker for `Struct._encode_fields`: the given field's key is left out."""


def describe(value: Any) -> str:
    """A short description of a bad value for error messages."""
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def key_path(path: str, key: object) -> str:
    """The path of a map entry: `Job.Meta[owner]`."""
    return f"{path}[{key}]"


class Kind:
    """Immutable. How one JSON field decodes and encodes.

    `null` is what a null or absent value decodes to: `OMIT` leaves the attrs default.
    """

    __slots__ = ()
    null: Any = OMIT
    #: What `encode(None)` returns when that is a constant, so that a struct can put
    #: it in without the call; `CALL` where it is not declared.
    none_encoding: Any = CALL

    def decode(self, value: Any, path: str) -> Any:
        raise NotImplementedError

    def encode(self, value: Any) -> Any:
        return value


class Str(Kind):
    """Immutable. A JSON string, optionally non-empty or one of a fixed set."""

    __slots__ = ("choices", "nonempty")

    def __init__(self, *, choices: tuple[str, ...] | None = None, nonempty: bool = False):
        self.choices = choices
        self.nonempty = nonempty

    def decode(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise JobSpecError(path, f"expected a string, got {describe(value)}")
        if self.nonempty and not value:
            raise JobSpecError(path, "must not be empty")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise JobSpecError(path, f"must be one of {allowed}, got {value!r}")
        return str(value)


class Bool(Kind):
    """Immutable. A JSON boolean (`null` is the default, or None where that is it)."""

    __slots__ = ()

    def decode(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise JobSpecError(path, f"expected a boolean, got {describe(value)}")
        return value


class Int(Kind):
    """Immutable. A JSON integer within [lo, hi] (non-negative int64 unless told)."""

    __slots__ = ("hi", "lo")

    def __init__(self, lo: int = 0, hi: int = INT64_MAX):
        self.lo = lo
        self.hi = hi

    def decode(self, value: Any, path: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise JobSpecError(path, f"expected an integer, got {describe(value)}")
        if value < self.lo:
            what = "non-negative" if self.lo == 0 else f">= {self.lo}"
            raise JobSpecError(path, f"must be {what}, got {value}")
        if value > self.hi:
            raise JobSpecError(path, f"out of range: {value} > {self.hi}")
        return int(value)


class Duration(Kind):
    """Immutable. Integer nanoseconds in JSON (>= 0, int64); float seconds in Python."""

    __slots__ = ()

    def decode(self, value: Any, path: str) -> float:
        if not isinstance(value, int) or isinstance(value, bool):
            raise JobSpecError(
                path, f"expected a duration in integer nanoseconds, got {describe(value)}"
            )
        if value < 0:
            raise JobSpecError(path, f"duration must not be negative, got {value}")
        if value > INT64_MAX:
            raise JobSpecError(path, f"duration out of range: {value} ns")
        return value / 1e9

    def encode(self, value: float) -> int:
        return round(value * 1e9)


_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:(Z)|([+-])(\d\d):(\d\d))\Z",
    re.ASCII,
)


def parse_rfc3339(text: str) -> datetime:
    """An aware UTC datetime from an RFC 3339 timestamp (fraction truncated to µs).

    ValueError for anything else, including dates out of Python's range.
    """
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError("expected an RFC 3339 time such as '2024-05-01T12:00:00.5Z'")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7) or ""
    micro = int((frac + "000000")[:6])
    dt = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    if m.group(9):
        offset = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        if int(m.group(10)) > 23 or int(m.group(11)) > 59:
            raise ValueError("time zone offset out of range")
        dt = dt - offset if m.group(9) == "+" else dt + offset
    return dt


def format_rfc3339(dt: datetime) -> str:
    """Go's RFC3339Nano rendering of `dt` in UTC (trailing fraction zeros trimmed)."""
    u = dt.astimezone(UTC)
    text = f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    if u.microsecond:
        text += "." + f"{u.microsecond:06d}".rstrip("0")
    return text + "Z"


class Rfc3339Time(Kind):
    """Immutable. A time as Go marshals `time.Time`: an RFC 3339 string.

    Go's zero time ("0001-01-01T00:00:00Z") and null are None in Python.
    """

    __slots__ = ()
    null = None
    none_encoding = GO_ZERO_TIME_TEXT

    def decode(self, value: Any, path: str) -> datetime | None:
        if not isinstance(value, str):
            raise JobSpecError(path, f"expected an RFC 3339 time string, got {describe(value)}")
        try:
            dt = parse_rfc3339(value)
        except (ValueError, OverflowError) as err:
            raise JobSpecError(path, f"invalid time {value!r}: {err}") from None
        return None if dt == GO_ZERO_TIME else dt

    def encode(self, value: datetime | None) -> str:
        return GO_ZERO_TIME_TEXT if value is None else format_rfc3339(value)


class UnixNanoTime(Kind):
    """Immutable. A time as integer nanoseconds since the Unix epoch (int64).

    0 and null are None in Python (Go's zero value means "unset").
    """

    __slots__ = ()
    null = None
    none_encoding = 0

    def decode(self, value: Any, path: str) -> datetime | None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise JobSpecError(
                path, f"expected a time in integer Unix nanoseconds, got {describe(value)}"
            )
        if not INT64_MIN <= value <= INT64_MAX:
            raise JobSpecError(path, f"time out of range: {value} ns")
        if value == 0:
            return None
        return EPOCH + timedelta(microseconds=value // 1000)

    def encode(self, value: datetime | None) -> int:
        if value is None:
            return 0
        return ((value - EPOCH) // _ONE_MICROSECOND) * 1000


class Base64Bytes(Kind):
    """Immutable. Bytes as Go marshals `[]byte`: standard base64 text (with padding).

    Null and absent are empty; empty bytes encode as null, as Go encodes a nil slice.
    """

    __slots__ = ()

    def decode(self, value: Any, path: str) -> bytes:
        if not isinstance(value, str):
            raise JobSpecError(path, f"expected base64 text, got {describe(value)}")
        if len(value) % 4:
            raise JobSpecError(path, "invalid base64 data: length is not a multiple of 4")
        try:
            return base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise JobSpecError(path, "invalid base64 data") from None

    def encode(self, value: bytes) -> str | None:
        return base64.b64encode(value).decode("ascii") if value else None


class StrList(Kind):
    """Immutable. A JSON array of strings; a tuple in Python."""

    __slots__ = ()

    def decode(self, value: Any, path: str) -> tuple[str, ...]:
        if not isinstance(value, list | tuple):
            raise JobSpecError(path, f"expected an array of strings, got {describe(value)}")
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise JobSpecError(f"{path}[{i}]", f"expected a string, got {describe(item)}")
            out.append(str(item))
        return tuple(out)

    def encode(self, value: tuple[str, ...]) -> list[str]:
        return list(value)


class StrMap(Kind):
    """Immutable. A JSON object of string values (env, meta, event details)."""

    __slots__ = ()

    def decode(self, value: Any, path: str) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise JobSpecError(path, f"expected an object of strings, got {describe(value)}")
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise JobSpecError(path, f"keys must be strings, got {describe(k)}")
            if not isinstance(v, str):
                raise JobSpecError(key_path(path, k), f"expected a string, got {describe(v)}")
            out[str(k)] = str(v)
        return out

    def encode(self, value: Mapping[str, str]) -> dict[str, str]:
        return plain_dict(value)


def check_json_like(value: Any, path: str, depth: int = 0) -> None:
    """Raise JobSpecError unless `value` is plain JSON data (finite numbers, string keys)."""
    if depth > MAX_DEPTH:
        raise JobSpecError(path, f"nested more than {MAX_DEPTH} levels deep")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JobSpecError(path, f"numbers must be finite, got {value!r}")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise JobSpecError(path, f"keys must be strings, got {describe(k)}")
            check_json_like(v, key_path(path, k), depth + 1)
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            check_json_like(v, f"{path}[{i}]", depth + 1)
        return
    raise JobSpecError(path, f"expected JSON data, got {describe(value)}")


class FreeMap(Kind):
    """Immutable. A free-form JSON object (driver config): any JSON values inside."""

    __slots__ = ()

    def decode(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise JobSpecError(path, f"expected an object, got {describe(value)}")
        check_json_like(value, path)
        return value

    def encode(self, value: Any) -> Any:
        return value.thaw() if isinstance(value, FrozenDict) else _thaw(value)


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value


def _encoder(kind: Kind) -> Callable[[Any], Any] | None:
    """The bound `encode` of `kind`; None when it returns every value as it is."""
    return None if type(kind).encode is Kind.encode else kind.encode


class Field:
    """Immutable. One field of a struct: attrs attribute name, JSON key, kind.

    `omit_empty` leaves the key out of the JSON when the value is Go's zero value (0,
    "", false, empty), as Go's `omitempty` does."""

    __slots__ = ("attr", "key", "kind", "omit_empty", "required")

    def __init__(
        self, attr: str, key: str, kind: Kind, *, required: bool = False, omit_empty: bool = False
    ):
        self.attr = attr
        self.key = key
        self.kind = kind
        self.required = required
        self.omit_empty = omit_empty


class Struct(Kind):
    """Immutable. A frozen attrs class as a JSON object, field by field.

    `check(kwargs, path)` may add cross-field rules (unique names) before construction.
    """

    __slots__ = ("_plan", "_values", "check", "cls", "fields", "name")
    none_encoding = None

    def __init__(
        self,
        cls: type,
        fields: list[Field],
        *,
        check: Callable[[dict[str, Any], str], None] | None = None,
    ):
        self.cls = cls
        self.name = cls.__name__
        self.fields = tuple(fields)
        self.check = check
        self._values = attributes_reader(tuple(f.attr for f in self.fields))
        self._plan = tuple(
            (f.attr, f.key, _encoder(f.kind), f.omit_empty, f.kind.none_encoding)
            for f in self.fields
        )

    def field(self, key: str) -> Field:
        """The field whose JSON key is `key`."""
        for f in self.fields:
            if f.key == key:
                return f
        raise KeyError(key)

    def decode(self, value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise JobSpecError(path, f"expected an object, got {describe(value)}")
        kwargs: dict[str, Any] = {}
        for f in self.fields:
            raw = value.get(f.key)
            if raw is None:
                if f.required:
                    raise JobSpecError(f"{path}.{f.key}", "missing required field")
                if f.kind.null is not OMIT:
                    kwargs[f.attr] = f.kind.null
                continue
            kwargs[f.attr] = f.kind.decode(raw, f"{path}.{f.key}")
        if self.check is not None:
            self.check(kwargs, path)
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise JobSpecError(path, f"invalid {self.name}: {err}") from None

    def encode(self, value: Any) -> Any:
        """The JSON object of `value` (None for None)."""
        if value is None:
            return None
        return self._encode_fields(value, None, None)

    def encode_with(self, value: Any, attr: str, encoded: Any) -> dict[str, Any]:
        """`encode(value)` with field `attr` taken as `encoded` instead of encoding it
        again (a value whose encoding the caller already has)."""
        return self._encode_fields(value, attr, encoded)

    def encode_without(self, value: Any, attr: str) -> dict[str, Any]:
        """`encode(value)` less field `attr`, whose key is left out (a caller that
        serialises that field itself)."""
        return self._encode_fields(value, attr, _LEFT_OUT)

    def _encode_fields(self, value: Any, given: str | None, encoded: Any) -> dict[str, Any]:
        """The fields of `value`, field `given` taken as `encoded`. They are read with
        one getter and walked by a plan made once (`_encoder`), so a field whose kind
        encodes a value as itself, or None as a constant, costs no call: a TaskState
        is encoded at every change of a task, and an allocation at every update."""
        out: dict[str, Any] = {}
        for (attr, key, encode, omit_empty, none), item in zip(
            self._plan, self._values(value), strict=True
        ):
            if attr == given:
                if encoded is not _LEFT_OUT:
                    out[key] = encoded
            elif omit_empty and not item:
                continue
            elif encode is None:
                out[key] = item
            elif item is None and none is not CALL:
                out[key] = none
            else:
                out[key] = encode(item)
        return out


class ListOf(Kind):
    """Immutable. A JSON array of one kind; a tuple in Python."""

    __slots__ = ("item",)

    def __init__(self, item: Kind):
        self.item = item

    def decode(self, value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise JobSpecError(path, f"expected an array, got {describe(value)}")
        out = []
        for i, item in enumerate(value):
            if item is None:
                raise JobSpecError(f"{path}[{i}]", "must not be null")
            out.append(self.item.decode(item, f"{path}[{i}]"))
        return tuple(out)

    def encode(self, value: Any) -> list[Any]:
        return [self.item.encode(v) for v in value]


class MapOf(Kind):
    """Immutable. A JSON object whose values are one kind (task name → TaskState)."""

    __slots__ = ("item",)

    def __init__(self, item: Kind):
        self.item = item

    def decode(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise JobSpecError(path, f"expected an object, got {describe(value)}")
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise JobSpecError(path, f"keys must be strings, got {describe(k)}")
            if v is None:
                raise JobSpecError(key_path(path, k), "must not be null")
            out[str(k)] = self.item.decode(v, key_path(path, k))
        return out

    def encode(self, value: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self.item.encode(v) for k, v in value.items()}
