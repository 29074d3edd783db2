"""HCL2 encoding, filesystem, date, hash, network and type functions; the full table.

`all_functions(base_dir)` is the function table a job file sees: hcl_functions' string,
number and collection functions plus base64/JSON/YAML/URL/CSV encoding, `file`,
`filebase64`, `fileexists`, `fileset` (relative to `base_dir`, the job file's directory),
`abspath`, `basename`, `dirname`, `pathexpand`, `formatdate`, `timeadd`, `timestamp`, the
hashes, `uuidv4`/`uuidv5`, `bcrypt` (when the bcrypt package is installed), the cidr
functions and `tostring`/`tonumber`/`tobool`/`tolist`/`toset`/`tomap`. With `base_dir`
None the filesystem functions fail ("filesystem function disabled"), as Nomad's do
when its HTTP API parses a job.

No threads, no locks; the functions are pure except that the filesystem ones read
files and `timestamp`/`uuidv4` are not repeatable. Called by the evaluator through the
scope hcl_body and hcl_vars build.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import glob
import hashlib
import io
import ipaddress
import json
import math
import os
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

from allocrunner.durations import parse_duration
from allocrunner.jobspec.hcl_functions import (
    FunctionError,
    core_functions,
    num,
    seq,
    text,
)
from allocrunner.jobspec.hcl_types import (
    BOOL,
    NUMBER,
    STRING,
    ConversionError,
    set_of,
)
from allocrunner.jobspec.hcl_types import convert as convert_value

__all__ = ["all_functions", "jsonencode"]

MAX_FILE_BYTES = 16 * 1024 * 1024


# --- encoding ------------------------------------------------------------------------


def jsonencode(value: Any) -> str:
    """JSON as Go's encoder writes it: compact, keys sorted, <, > and & escaped."""
    out = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _jsondecode(s: Any) -> Any:
    try:
        return _numbers(json.loads(text(s), parse_constant=_no_constant))
    except (ValueError, RecursionError) as err:
        raise FunctionError(f"invalid JSON: {err}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def _base64decode(s: Any) -> str:
    try:
        raw = base64.b64decode(text(s), validate=True)
    except ValueError as err:
        raise FunctionError(f"failed to decode base64 data: {err}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FunctionError("the decoded base64 data is not valid UTF-8") from None


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise FunctionError("YAML support (the pyyaml package) is not installed") from None
    return yaml


def _yamldecode(s: Any) -> Any:
    yaml = _yaml()
    try:
        return _numbers(_plain(yaml.safe_load(text(s))))
    except yaml.YAMLError as err:
        raise FunctionError(f"invalid YAML: {err}") from None


def _plain(value: Any) -> Any:
    """YAML data as HCL values: dates and other scalars become strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise FunctionError(f"{value} is not a number HCL can hold")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _yamlencode(value: Any) -> str:
    return str(_yaml().safe_dump(value, default_flow_style=False, sort_keys=True))


def _csvdecode(s: Any) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(text(s))))
    if not rows:
        raise FunctionError("missing header line")
    header, body = rows[0], rows[1:]
    out: list[dict[str, str]] = []
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise FunctionError(f"line {i}: wrong number of fields")
        out.append(dict(zip(header, row, strict=True)))
    return out


# --- filesystem ----------------------------------------------------------------------


def _filesystem(base_dir: str | None) -> dict[str, Callable[..., Any]]:
    def resolve(path: Any) -> str:
        if base_dir is None:
            raise FunctionError("filesystem function disabled")
        p = os.path.expanduser(text(path))
        return p if os.path.isabs(p) else os.path.join(base_dir, p)

    def read(path: Any) -> bytes:
        full = resolve(path)
        try:
            with open(full, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as err:
            raise FunctionError(f"failed to read {text(path)!r}: {err.strerror or err}") from None
        if len(data) > MAX_FILE_BYTES:
            raise FunctionError(f"{text(path)!r} is larger than {MAX_FILE_BYTES} bytes")
        return data

    def file(path: Any) -> str:
        try:
            return read(path).decode("utf-8")
        except UnicodeDecodeError:
            raise FunctionError(f"{text(path)!r} is not UTF-8 text; use filebase64") from None

    def filebase64(path: Any) -> str:
        return base64.b64encode(read(path)).decode("ascii")

    def fileexists(path: Any) -> bool:
        full = resolve(path)
        if os.path.isdir(full):
            raise FunctionError(f"{text(path)!r} is a directory, not a file")
        return os.path.isfile(full)

    def fileset(path: Any, pattern: Any) -> list[str]:
        root = resolve(path)
        found = glob.glob(text(pattern), root_dir=root, recursive=True)
        return sorted(p for p in found if os.path.isfile(os.path.join(root, p)))

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any) -> Any:
            if base_dir is None:
                raise FunctionError("filesystem function disabled")
            return fn(*args)

        return guarded

    return {
        "file": file,
        "filebase64": filebase64,
        "fileexists": fileexists,
        "fileset": fileset,
        "abspath": guard(lambda p: os.path.abspath(text(p))),
        "basename": guard(lambda p: os.path.basename(text(p).rstrip("/")) or _root(text(p))),
        "dirname": guard(lambda p: os.path.dirname(text(p).rstrip("/") or "/") or "."),
        "pathexpand": guard(lambda p: os.path.expanduser(text(p))),
    }


def _root(path: str) -> str:
    return "/" if path.startswith("/") else "."


# --- dates ---------------------------------------------------------------------------

_DATE_TOKENS = (
    ("YYYY", lambda t: f"{t.year:04d}"),
    ("YY", lambda t: f"{t.year % 100:02d}"),
    ("MMMM", lambda t: t.strftime("%B")),
    ("MMM", lambda t: t.strftime("%b")),
    ("MM", lambda t: f"{t.month:02d}"),
    ("M", lambda t: str(t.month)),
    ("DD", lambda t: f"{t.day:02d}"),
    ("D", lambda t: str(t.day)),
    ("EEEE", lambda t: t.strftime("%A")),
    ("EEE", lambda t: t.strftime("%a")),
    ("hh", lambda t: f"{t.hour:02d}"),
    ("h", lambda t: str(t.hour)),
    ("HH", lambda t: f"{(t.hour % 12) or 12:02d}"),
    ("H", lambda t: str((t.hour % 12) or 12)),
    ("AA", lambda t: "AM" if t.hour < 12 else "PM"),
    ("aa", lambda t: "am" if t.hour < 12 else "pm"),
    ("mm", lambda t: f"{t.minute:02d}"),
    ("m", lambda t: str(t.minute)),
    ("ss", lambda t: f"{t.second:02d}"),
    ("s", lambda t: str(t.second)),
    ("ZZZZZ", lambda t: _offset(t, colon=True)),
    ("ZZZZ", lambda t: _offset(t, colon=False)),
    ("ZZZ", lambda t: "UTC" if t.utcoffset() == dt.timedelta(0) else _offset(t, colon=False)),
    ("Z", lambda t: "Z" if t.utcoffset() == dt.timedelta(0) else _offset(t, colon=True)),
)


def _offset(t: dt.datetime, *, colon: bool) -> str:
    off = t.utcoffset() or dt.timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    return f"{sign}{hh:02d}{':' if colon else ''}{mm:02d}"


def _parse_timestamp(s: Any) -> dt.datetime:
    value = text(s)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in value.upper():
        raise FunctionError(f"not a valid RFC 3339 timestamp: {value!r}")
    return parsed


def _formatdate(spec: Any, timestamp: Any) -> str:
    t = _parse_timestamp(timestamp)
    fmt = text(spec)
    out: list[str] = []
    i = 0
    while i < len(fmt):
        if fmt[i] == "'":
            literal, i = _quoted_literal(fmt, i)
            out.append(literal)
            continue
        for token, render in _DATE_TOKENS:
            if fmt.startswith(token, i):
                out.append(render(t))
                i += len(token)
                break
        else:
            if fmt[i].isalpha():
                raise FunctionError(f"invalid date format verb starting at {fmt[i:]!r}")
            out.append(fmt[i])
            i += 1
    return "".join(out)


def _quoted_literal(fmt: str, start: int) -> tuple[str, int]:
    """A `'...'` literal of a date format (`''` is a quote) and the index after it."""
    if fmt.startswith("''", start):
        return "'", start + 2
    out: list[str] = []
    i = start + 1
    while i < len(fmt):
        if fmt[i] == "'":
            if fmt.startswith("''", i):
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        out.append(fmt[i])
        i += 1
    raise FunctionError("unterminated literal in date format")


def _rfc3339(t: dt.datetime) -> str:
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        base += f".{t.microsecond:06d}".rstrip("0")
    off = t.utcoffset()
    return base + ("Z" if off == dt.timedelta(0) else _offset(t, colon=True))


def _timeadd(timestamp: Any, duration: Any) -> str:
    t = _parse_timestamp(timestamp)
    d = text(duration)
    negative = d.startswith("-")
    try:
        seconds = parse_duration(d[1:] if negative else d)
    except ValueError as err:
        raise FunctionError(str(err)) from None
    return _rfc3339(t + dt.timedelta(seconds=-seconds if negative else seconds))


def _timestamp() -> str:
    return _rfc3339(dt.datetime.now(dt.UTC).replace(microsecond=0))


# --- hashes, uuids, networks ---------------------------------------------------------


def _hasher(name: str) -> Callable[[Any], str]:
    return lambda s: hashlib.new(name, text(s).encode("utf-8")).hexdigest()


_UUID_NAMESPACES = {
    "dns": uuid.NAMESPACE_DNS,
    "url": uuid.NAMESPACE_URL,
    "oid": uuid.NAMESPACE_OID,
    "x500": uuid.NAMESPACE_X500,
}


def _uuidv5(namespace: Any, name: Any) -> str:
    ns = text(namespace)
    try:
        space = _UUID_NAMESPACES.get(ns) or uuid.UUID(ns)
    except ValueError:
        raise FunctionError(
            f"uuidv5() namespace must be dns, url, oid, x500 or a UUID: {ns!r}"
        ) from None
    return str(uuid.uuid5(space, text(name)))


def _bcrypt(s: Any, *cost: Any) -> str:
    try:
        import bcrypt  # type: ignore[import-not-found]
    except ImportError:
        raise FunctionError("bcrypt support (the bcrypt package) is not installed") from None
    rounds = int(num(cost[0])) if cost else 10
    if not 4 <= rounds <= 31:
        raise FunctionError("bcrypt cost must be between 4 and 31")
    hashed = bcrypt.hashpw(text(s).encode("utf-8"), bcrypt.gensalt(rounds, prefix=b"2a"))
    return str(hashed.decode("ascii"))


def _network(prefix: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text(prefix), strict=False)
    except ValueError as err:
        raise FunctionError(f"invalid CIDR prefix: {err}") from None


def _cidrhost(prefix: Any, hostnum: Any) -> str:
    net = _network(prefix)
    n = int(num(hostnum))
    if n < 0:
        n += net.num_addresses
    if not 0 <= n < net.num_addresses:
        raise FunctionError(f"prefix {net} has no host number {int(num(hostnum))}")
    return str(net.network_address + n)


def _cidrsubnet(prefix: Any, newbits: Any, netnum: Any) -> str:
    net = _network(prefix)
    bits, n = int(num(newbits)), int(num(netnum))
    if bits < 0 or net.prefixlen + bits > net.max_prefixlen or not 0 <= n < 2**bits:
        raise FunctionError("the new subnet does not fit in the prefix")
    size = 2 ** (net.max_prefixlen - net.prefixlen - bits)
    return str(ipaddress.ip_network((int(net.network_address) + n * size, net.prefixlen + bits)))


def _cidrsubnets(prefix: Any, *newbits: Any) -> list[str]:
    net = _network(prefix)
    out: list[str] = []
    cursor = int(net.network_address)
    for nb in newbits:
        plen = net.prefixlen + int(num(nb))
        if plen > net.max_prefixlen:
            raise FunctionError("the new subnet does not fit in the prefix")
        size = 2 ** (net.max_prefixlen - plen)
        cursor = -(-cursor // size) * size
        sub = ipaddress.ip_network((cursor, plen))
        if not sub.subnet_of(net):  # type: ignore[arg-type]
            raise FunctionError("not enough address space for the requested subnets")
        out.append(str(sub))
        cursor += size
    return out


# --- type conversion -----------------------------------------------------------------


def _converter(target: Any) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        try:
            return convert_value(value, target)
        except ConversionError as err:
            raise FunctionError(str(err)) from None

    return convert


def _tomap(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise FunctionError("map required")
    return dict(value)


def all_functions(base_dir: str | None) -> dict[str, Callable[..., Any]]:
    """Every function a job file can call; filesystem ones resolve under `base_dir`."""
    return {
        **core_functions(),
        "base64encode": lambda s: base64.b64encode(text(s).encode("utf-8")).decode("ascii"),
        "base64decode": _base64decode,
        "jsonencode": jsonencode,
        "jsondecode": _jsondecode,
        "yamlencode": _yamlencode,
        "yamldecode": _yamldecode,
        "urlencode": lambda s: quote_plus(text(s), safe=""),
        "csvdecode": _csvdecode,
        **_filesystem(base_dir),
        "formatdate": _formatdate,
        "timeadd": _timeadd,
        "timestamp": _timestamp,
        "md5": _hasher("md5"),
        "sha1": _hasher("sha1"),
        "sha256": _hasher("sha256"),
        "sha512": _hasher("sha512"),
        "uuidv4": lambda: str(uuid.uuid4()),
        "uuidv5": _uuidv5,
        "bcrypt": _bcrypt,
        "cidrhost": _cidrhost,
        "cidrnetmask": lambda p: str(_network(p).netmask),
        "cidrsubnet": _cidrsubnet,
        "cidrsubnets": _cidrsubnets,
        "tostring": _converter(STRING),
        "tonumber": _converter(NUMBER),
        "tobool": _converter(BOOL),
        "tolist": lambda v: list(seq(v)),
        "toset": lambda v: set_of(seq(v)),
        "tomap": _tomap,
    }
