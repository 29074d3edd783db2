"""`env = true` templates: dotenv parsing with go-envparse's rules."""

from __future__ import annotations

import pytest

from allocrunner.template import DotenvError, TemplateError, parse_dotenv, render

LINES: list[tuple[str, str, str]] = [
    ("FoO=", "FoO", ""),
    ("F=# ...", "F", ""),
    ("F_O= ", "F_O", ""),
    ("FOO=bar", "FOO", "bar"),
    ("export FOO=bar", "FOO", "bar"),
    (" FOO = bar baz ", "FOO", "bar baz"),
    ("\tFOO\t= \tbar \t", "FOO", "bar"),
    ("export FOO = bar", "FOO", "bar"),
    ("export = bar", "export", "bar"),
    ("A1B2C3=a1b2c3", "A1B2C3", "a1b2c3"),
    ("FOO=bar # ok", "FOO", "bar"),
    ("FOO=#bar#", "FOO", ""),
    ('FOO="bar#"', "FOO", "bar#"),
    ('FOO="bar\\n"', "FOO", "bar\n"),
    ('FOO="bar\\n" # comment', "FOO", "bar\n"),
    ('FOO = " bar\\t" ', "FOO", " bar\t"),
    ("FOO='bar#'", "FOO", "bar#"),
    ("FOO='\\n' # literal", "FOO", "\\n"),
    ("FOO='' # empty", "FOO", ""),
    ("FOO=normal'single ' ", "FOO", "normalsingle "),
    ('FOO= "double\\\\" normal # "EOL"', "FOO", "double\\ normal"),
    (
        'export FOO =  \'single\\n\' \\\\normal\\t "double\\"\\n " # comment',
        "FOO",
        'single\\n \\\\normal\\t double"\n ',
    ),
    ("U1=\U0001f525", "U1", "\U0001f525"),
    ('U3="\\u2318"', "U3", "\u2318"),
    ('U3="\\uD83D\\uDE01"', "U3", "\U0001f601"),
    ("_=x' ' ", "_", "x "),
    ("FOO.BAR=x", "FOO.BAR", "x"),
    ("FOO/BAR=x", "FOO/BAR", "x"),
    ('w="\\r\\n"', "w", "\r\n"),
    (
        'SOME_KEY = normal unquoted \\text \'plus single quoted\\\' "\\"double quoted " # EOL',
        "SOME_KEY",
        'normal unquoted \\text plus single quoted\\ "double quoted ',
    ),
]


@pytest.mark.parametrize(("line", "key", "value"), LINES, ids=[line for line, _, _ in LINES])
def test_line(line: str, key: str, value: str) -> None:
    assert parse_dotenv(line) == {key: value}


BAD_LINES: list[tuple[str, str]] = [
    ("foo bar", "missing separator"),
    ("=bar", "empty key"),
    ("=", "empty key"),
    ("1abc=x", "invalid key"),
    ("@abc=x", "invalid key"),
    ("a b c=x", "invalid key"),
    ("FOO=\x00", "invalid value"),
    ('FOO=" bar', "unmatched double quote"),
    ("FOO=' bar", "unmatched single quote"),
    ("FOO=ok '\"ok\"' \\\"not ok ''", "unmatched double quote"),
    ('FOO="\\a"', 'invalid escape sequence "a"'),
    ('FOO="\\', "incomplete escape"),
    ('FOO="\\u12"', "incomplete hex"),
    ('FOO="\\uabcZ"', 'invalid hex digit "Z"'),
    ('FOO="abc \\uD83D"', "incomplete surrogate pair"),
    ('FOO="abc \\uD83D \\uDE01"', "incomplete surrogate pair"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[line for line, _ in BAD_LINES])
def test_bad_line(line: str, message: str) -> None:
    with pytest.raises(DotenvError) as caught:
        parse_dotenv(line)
    assert message in str(caught.value)
    assert caught.value.line == 1


def test_file_with_comments_blank_lines_and_duplicates() -> None:
    text = (
        "# Start of file\n\nFIRST=key and value pair\n_=_   # ok\n"
        'FIRST="overwrite # original"  #...\n'
    )
    assert parse_dotenv(text) == {"FIRST": "overwrite # original", "_": "_"}


def test_error_names_the_line() -> None:
    with pytest.raises(DotenvError, match=r"^line 2: ") as caught:
        parse_dotenv("FOO=bar\nx\nXYZ=1\n")
    assert caught.value.line == 2
    assert isinstance(caught.value, TemplateError)


def test_windows_line_endings() -> None:
    assert parse_dotenv("A=1\r\nB=2\r\n") == {"A": "1", "B": "2"}


def test_rendered_env_template_with_tojson_round_trips() -> None:
    secret = 'pa"ss#wo\\rd\nline2 \u00e9'
    text = '# comment\nDB_PASSWD={{ .pw | toJSON }}\nLOG_LEVEL="{{ env "LEVEL" }}"\n'
    rendered = render(text, env={"LEVEL": "DEBUG"}, data={"pw": secret})
    assert parse_dotenv(rendered) == {"DB_PASSWD": secret, "LOG_LEVEL": "DEBUG"}
