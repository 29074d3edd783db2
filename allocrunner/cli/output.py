"""What the command line prints, and how: Nomad's table and key/value layouts, its time
formats and task event descriptions, and a stdout that survives a closed pipe.

`Output` writes to whatever `sys.stdout` is at each call (tests swap it). When the
reader goes away (`allocrunner … | head -1`) the first failed write points the
process's stdout at /dev/null, as Python's documentation recommends, and marks the
output closed: later writes are dropped, and loops that only exist to print (a log
follow, a monitor) see `closed` and end. No traceback ever comes of it.

Threads and locks: none; an `Output` is owned by the command's thread. Owner: `main`
creates one per command and hands it to the command's handler.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from allocrunner._locking import confined

__all__ = [
    "Output",
    "event_description",
    "format_kv",
    "format_table",
    "format_time",
    "format_time_ns",
    "human_size",
    "now_text",
    "pretty_time_ago",
    "say_error",
    "short_id",
]

SHORT_ID = 8
EMPTY = "<none>"


class Output:
    """Not thread-safe; owned by the command's main thread. The command's stdout."""

    closed = confined("command main")

    def __init__(self) -> None:
        self.closed = False

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    def write(self, text: str) -> None:
        if self.closed:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            self._reader_gone()

    def write_bytes(self, data: bytes) -> None:
        """Raw bytes (file contents, logs) as they are, when stdout has a byte buffer."""
        if self.closed:
            return
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:
            self.write(data.decode("utf-8", errors="replace"))
            return
        try:
            sys.stdout.flush()
            buffer.write(data)
            buffer.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        self.closed = True
        silence_stdout()


def silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot fail."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def say_error(message: str) -> None:
    """One line on stderr, `allocrunner: <message>`; a closed stderr is ignored."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"allocrunner: {message}\n")
        sys.stderr.flush()


def short_id(value: str, length: int = SHORT_ID) -> str:
    return value[:length]


def format_table(rows: Sequence[Sequence[Any]], glue: str = "  ", empty: str = EMPTY) -> str:
    """Rows as aligned columns (the last one unpadded); empty cells read `empty`."""
    cells = [[str(c) if c not in (None, "") else empty for c in row] for row in rows]
    if not cells:
        return ""
    width = max(len(r) for r in cells)
    widths = [max((len(r[i]) for r in cells if i < len(r)), default=0) for i in range(width)]
    lines = []
    for row in cells:
        parts = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + row[-1:]
        lines.append(glue.join(parts).rstrip())
    return "\n".join(lines)


def format_kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """`Key = value` lines with the `=` aligned, as Nomad prints an object."""
    return format_table([(k, v) for k, v in pairs], glue=" = ")


def _local(dt: datetime) -> datetime:
    return dt.astimezone()


def format_time(dt: datetime | None) -> str:
    """ISO 8601 local time to the second (`Z` for UTC); empty for no time."""
    if dt is None or dt.timestamp() < 1:
        return ""
    local = _local(dt)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    offset = local.utcoffset()
    if not offset:
        return text + "Z"
    return text + local.strftime("%z")[:3] + ":" + local.strftime("%z")[3:]


def from_ns(nanos: Any) -> datetime | None:
    """A Unix-nanoseconds JSON value as an aware datetime (None for 0 or garbage)."""
    if not isinstance(nanos, int) or isinstance(nanos, bool) or nanos <= 0:
        return None
    return datetime.fromtimestamp(nanos / 1e9, tz=UTC)


def parse_rfc3339(value: Any) -> datetime | None:
    """An RFC 3339 JSON time (task states use them) as an aware datetime, or None."""
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    text = value.replace("Z", "+00:00")
    if "." in text:  # Go writes up to 9 fractional digits; Python reads at most 6
        head, _, rest = text.partition(".")
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def now_text() -> str:
    """The current time as `format_time` writes it (monitor headers)."""
    return format_time(datetime.now(UTC))


def format_time_ns(nanos: Any) -> str:
    return format_time(from_ns(nanos))


def clock(nanos: Any) -> str:
    """`HH:MM:SS.mmm` local time of a Unix-nanoseconds value, for live event lines."""
    dt = from_ns(nanos)
    if dt is None:
        return "--:--:--.---"
    return _local(dt).strftime("%H:%M:%S.%f")[:-3]


_PERIODS = (("y", 365 * 86400), ("mo", 30 * 86400), ("d", 86400), ("h", 3600), ("m", 60))


def pretty_time_ago(dt: datetime | None, now: datetime | None = None) -> str:
    """`3m12s ago` / `1h5m from now`: at most two units, as Nomad shows ages."""
    if dt is None:
        return ""
    now = now or datetime.now(UTC)
    delta = round((now - dt).total_seconds())
    suffix = "ago" if delta >= 0 else "from now"
    rest = abs(delta)
    parts = []
    for unit, size in _PERIODS:
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    if rest:
        parts.append(f"{rest}s")
    return f"{''.join(parts[:2]) or '0s'} {suffix}"


def human_size(size: Any) -> str:
    """Bytes as Nomad's fs listing shows them: `512 B`, `4.0 KiB`, `1.2 MiB`."""
    if not isinstance(size, int):
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _details(event: Mapping[str, Any]) -> Mapping[str, Any]:
    details = event.get("Details")
    return details if isinstance(details, Mapping) else {}


def _event_field(event: Mapping[str, Any], key: str, detail: str) -> str:
    value = event.get(key) or _details(event).get(detail) or ""
    return str(value)


def _terminated(event: Mapping[str, Any]) -> str:
    parts = [f"Exit Code: {event.get('ExitCode', 0)}"]
    if event.get("Signal"):
        parts.append(f"Signal: {event['Signal']}")
    if event.get("Message"):
        parts.append(f"Exit Message: {json_quote(event['Message'])}")
    return ", ".join(parts)


def json_quote(text: Any) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _killing(event: Mapping[str, Any]) -> str:
    reason = _event_field(event, "KillReason", "kill_reason")
    if reason:
        return f"Killing task: {reason}"
    timeout = event.get("KillTimeout")
    if isinstance(timeout, int) and timeout:
        return f"Sent interrupt. Waiting {go_duration(timeout)} before force killing"
    return "Sent interrupt"


def _signaling(event: Mapping[str, Any]) -> str:
    sig = _event_field(event, "TaskSignal", "signal")
    reason = _event_field(event, "TaskSignalReason", "reason")
    if sig and reason:
        return f"Task being sent signal {sig}: {reason}"
    return reason or (f"Task being sent signal {sig}" if sig else "Task being sent a signal")


def _restarting(event: Mapping[str, Any]) -> str:
    delay = event.get("StartDelay")
    text = f"Task restarting in {go_duration(delay if isinstance(delay, int) else 0)}"
    reason = _event_field(event, "RestartReason", "restart_reason")
    if reason and reason != "Restart within policy":
        return f"{reason} - {text}"
    return text


_FIXED = {
    "Started": "Task started by client",
    "Received": "Task received by client",
    "Leader Task Dead": "Leader Task in Group dead",
    "Downloading Artifacts": "Client is downloading artifacts",
}


def event_description(event: Mapping[str, Any]) -> str:
    """What Nomad's CLI shows for a task event: its display message, or one built
    from its type and fields when the agent sent none."""
    shown = event.get("DisplayMessage")
    if shown:
        return str(shown)
    kind = str(event.get("Type", ""))
    if kind in _FIXED:
        return _FIXED[kind]
    builders = {
        "Terminated": _terminated,
        "Killing": _killing,
        "Signaling": _signaling,
        "Restarting": _restarting,
    }
    if kind in builders:
        return builders[kind](event)
    fallbacks = {
        "Setup Failure": ("SetupError", "setup_error", "Task setup failed"),
        "Driver Failure": ("DriverError", "driver_error", "Failed to start task"),
        "Killed": ("KillError", "kill_error", "Task successfully killed"),
        "Not Restarting": ("RestartReason", "restart_reason", "Task exceeded restart policy"),
        "Restart Signaled": ("RestartReason", "restart_reason", "Task signaled to restart"),
        "Sibling Task Failed": ("FailedSibling", "failed_sibling", "Task's sibling failed"),
    }
    if kind in fallbacks:
        key, detail, default = fallbacks[kind]
        value = _event_field(event, key, detail)
        if kind == "Sibling Task Failed" and value:
            return f"Task's sibling {json_quote(value)} failed"
        return value or default
    return str(event.get("Message") or "")


def go_duration(nanos: int) -> str:
    """Nanoseconds the way Go prints a time.Duration: `5s`, `1m30s`, `250ms`, `0s`."""
    if nanos == 0:
        return "0s"
    sign = "-" if nanos < 0 else ""
    nanos = abs(nanos)
    if nanos < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if nanos >= size:
                return f"{sign}{_trim(nanos / size)}{unit}"
    seconds = nanos / 1e9
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{_trim(round(secs, 9))}s"
    if hours:
        return f"{sign}{int(hours)}h{int(minutes)}m{text}"
    if minutes:
        return f"{sign}{int(minutes)}m{text}"
    return sign + text


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"
