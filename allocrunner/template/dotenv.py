"""Parse rendered `env = true` template output into environment variables.

Follows hashicorp/go-envparse, which Nomad uses: one `KEY=VALUE` per line; blank lines
and `#` comment lines are skipped; an `export ` prefix is ignored; white space around
keys is trimmed; a key starts with a letter or `_` and holds no white space. A value
mixes unquoted text (no escapes, ends at `#`, leading and trailing white space
trimmed), single-quoted text (literal) and double-quoted text (JSON escapes: `\\"`
`\\\\` `\\/` `\\b` `\\f` `\\n` `\\r` `\\t` `\\uXXXX` with surrogate pairs). Later
duplicates win. Errors name the 1-based line.

Threads: none; `parse_dotenv` is a pure function. Locks: none. Owner: called by the
task runner's template hook for templates with `env = true`.
"""

from __future__ import annotations

from allocrunner.template.errors import DotenvError

_WHITESPACE = " \t\r\n\v\f"
_JSON_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


class _LineError(Exception):
    pass


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse dotenv text into a mapping of variables; DotenvError on a malformed line."""
    result: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            pair = parse_line(line)
        except _LineError as err:
            raise DotenvError(number, str(err)) from None
        if pair is not None:
            result[pair[0]] = pair[1]
    return result


def parse_line(line: str) -> tuple[str, str] | None:
    """One line: None for blank/comment lines, else (key, value)."""
    stripped = line.strip(_WHITESPACE)
    if not stripped or stripped.startswith("#"):
        return None
    if "=" not in stripped:
        raise _LineError("missing separator: expected KEY=VALUE")
    raw_key, raw_value = stripped.split("=", 1)
    return _key(raw_key), _value(raw_value)


def _key(raw: str) -> str:
    key = raw.strip(_WHITESPACE)
    if key.startswith("export") and len(key) > 6 and key[6] in _WHITESPACE:
        key = key[6:].strip(_WHITESPACE)
    if not key:
        raise _LineError("empty key")
    if not (key[0].isascii() and (key[0].isalpha() or key[0] == "_")):
        raise _LineError(f"invalid key {key!r}: must start with a letter or _")
    if any(c in _WHITESPACE or c in "\"'#" or not c.isprintable() for c in key):
        raise _LineError(f"invalid key {key!r}")
    return key


def _value(raw: str) -> str:
    out: list[str] = []
    keep = 0  # length of `out` that trailing-white-space trimming must not cut into
    i = 0
    raw = raw.lstrip(_WHITESPACE)
    while i < len(raw):
        c = raw[i]
        if c == "#":
            break
        if c == "'":
            close = raw.find("'", i + 1)
            if close < 0:
                raise _LineError("unmatched single quote")
            out.append(raw[i + 1 : close])
            keep, i = len(out), close + 1
            continue
        if c == '"':
            decoded, i = _double_quoted(raw, i + 1)
            out.append(decoded)
            keep = len(out)
            continue
        if c == "\x00" or (not c.isprintable() and c not in _WHITESPACE):
            raise _LineError(f"invalid value character {c!r}")
        out.append(c)
        if c not in _WHITESPACE:
            keep = len(out)
        i += 1
    return "".join(out[:keep])


def _double_quoted(raw: str, i: int) -> tuple[str, int]:
    out: list[str] = []
    while True:
        if i >= len(raw):
            raise _LineError("unmatched double quote")
        c = raw[i]
        if c == '"':
            return "".join(out), i + 1
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(raw):
            raise _LineError("incomplete escape sequence")
        esc = raw[i + 1]
        if esc in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[esc])
            i += 2
        elif esc == "u":
            char, i = _unicode_escape(raw, i)
            out.append(char)
        else:
            raise _LineError(f'invalid escape sequence "{esc}"')


def _hex4(raw: str, i: int) -> int:
    digits = raw[i : i + 4]
    if len(digits) < 4 or '"' in digits:
        raise _LineError("incomplete hex escape")
    for d in digits:
        if d not in "0123456789abcdefABCDEF":
            raise _LineError(f'invalid hex digit "{d}"')
    return int(digits, 16)


def _unicode_escape(raw: str, i: int) -> tuple[str, int]:
    """Decode `\\uXXXX` (and a following low surrogate) at raw[i] == '\\'."""
    code = _hex4(raw, i + 2)
    i += 6
    if not 0xD800 <= code < 0xDC00:
        if 0xDC00 <= code < 0xE000:
            raise _LineError("incomplete surrogate pair")
        return chr(code), i
    if not raw.startswith("\\u", i):
        raise _LineError("incomplete surrogate pair")
    low = _hex4(raw, i + 2)
    if not 0xDC00 <= low < 0xE000:
        raise _LineError("incomplete surrogate pair")
    return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), i + 6
