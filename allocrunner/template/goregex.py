"""Go (RE2) regular expressions on Python's `re`.

`compile_go` translates the RE2 spellings Python lacks (`\\z`, POSIX classes such as
`[[:alpha:]]`, `(?P<name>` is shared) and reports bad patterns with Go-like messages;
`expand_go` applies a Go replacement template (`$1`, `${1}`, `$name`, `${name}`, `$$`,
where `$name` takes the longest run of letters, digits and `_`, and an unknown group
expands to nothing).

Threads: none. Locks: none (the compile cache is `functools.lru_cache`, whose own
internal lock is CPython's). Owner: used by `functions` and `sprig`.
"""

from __future__ import annotations

import functools
import re

_POSIX = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7F",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1F\\x7F",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_POSIX_CLASS = re.compile(r"\[:(\^?)([a-z]+):\]")
_TEMPLATE = re.compile(r"\$(?:\$|\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


def _translate(pattern: str) -> str:
    def posix(match: re.Match[str]) -> str:
        negate, name = match.groups()
        if name not in _POSIX:
            raise re.error(f"invalid character class range: [:{name}:]")
        if negate:
            raise re.error("negated POSIX class inside a character class is not supported")
        return _POSIX[name]

    return _POSIX_CLASS.sub(posix, pattern.replace("\\z", "\\Z"))


_UNICODE_CLASSES = {"L": "[^\\W\\d_]", "N": "\\d", "Nd": "\\d"}
_UNICODE_CLASS = re.compile(r"\\([pP])(?:\{(\w+)\}|(\w))")
_GO_MESSAGES = (
    ("missing ), unterminated subpattern", "missing closing )"),
    ("unbalanced parenthesis", "unexpected )"),
    ("unterminated character set", "missing closing ]"),
    ("nothing to repeat", "missing argument to repetition operator"),
    ("multiple repeat", "invalid nested repetition operator"),
    ("bad escape", "invalid escape sequence"),
)


def _unicode_classes(pattern: str) -> str:
    """`\\pL`, `\\p{L}`, `\\pN`, `\\p{Nd}` (and `\\P` negations) outside brackets."""
    def expand(match: re.Match[str]) -> str:
        negate, name = match.group(1) == "P", match.group(2) or match.group(3)
        if name not in _UNICODE_CLASSES:
            raise re.error(f"invalid character class range: \\p{{{name}}}")
        body = _UNICODE_CLASSES[name]
        return f"(?:(?!{body}).)" if negate else body

    return _UNICODE_CLASS.sub(expand, pattern)


@functools.lru_cache(maxsize=256)
def compile_go(pattern: str) -> re.Pattern[str]:
    """Compile a Go regular expression; ValueError with Go's wording when invalid."""
    try:
        return re.compile(_unicode_classes(_translate(pattern)))
    except re.error as err:
        message = str(err.msg)
        for python_words, go_words in _GO_MESSAGES:
            if message.startswith(python_words):
                message = go_words
                break
        raise ValueError(f"error parsing regexp: {message}: `{pattern}`") from None


def expand_go(match: re.Match[str], template: str) -> str:
    """Expand a Go replacement template for one match."""

    def group(ref: re.Match[str]) -> str:
        if ref.group(0) == "$$":
            return "$"
        name = ref.group(1) or ref.group(2)
        try:
            value = match.group(int(name)) if name.isdigit() else match.group(name)
        except IndexError:
            return ""
        return value or ""

    return _TEMPLATE.sub(group, template)


def replace_all(pattern: str, template: str, text: str) -> str:
    """Go's Regexp.ReplaceAllString."""
    return compile_go(pattern).sub(lambda m: expand_go(m, template), text)
