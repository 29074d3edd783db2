"""HCL2 functions: one table row per function, expected values as HCL2/Nomad document
them (cty's stdlib and go-cty-funcs), plus the errors a job author can make."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from allocrunner.jobspec.hcl_eval import EvalError
from tests.unit.jobspec.hcl_helpers import ev

CASES: list[tuple[str, Any]] = [
    # strings
    ('upper("hello")', "HELLO"),
    ('lower("HELLO")', "hello"),
    ('title("hello world")', "Hello World"),
    ('chomp("hello\\n")', "hello"),
    ('chomp("hello\\r\\n\\n")', "hello"),
    ('indent(2, "[\\n  foo,\\n]")', "[\n    foo,\n  ]"),
    ('strrev("hello")', "olleh"),
    ('strlen("héllo")', 5),
    ('substr("hello world", 1, 4)', "ello"),
    ('substr("hello world", -5, -1)', "world"),
    ('split(",", "foo,bar,baz")', ["foo", "bar", "baz"]),
    ('split(",", "foo")', ["foo"]),
    ('join(", ", ["foo", "bar", "baz"])', "foo, bar, baz"),
    ('join("-", ["a"], ["b", "c"])', "a-b-c"),
    ('replace("1 + 2 + 3", "+", "-")', "1 - 2 - 3"),
    ('replace("hello world", "/w.*d/", "everybody")', "hello everybody"),
    ('regex_replace("hello world", "o", "0")', "hell0 w0rld"),
    ('regex_replace("a1b22", "([0-9]+)", "<$1>")', "a<1>b<22>"),
    ('regex("[a-z]+", "53453453.345345aaabbbccc23454")', "aaabbbccc"),
    ('regex("(\\\\d\\\\d\\\\d\\\\d)-(\\\\d\\\\d)", "2019-02-01")', ["2019", "02"]),
    (
        'regex("^(?P<user>[^@]+)@(?P<host>.+)$", "me@example.com")',
        {"user": "me", "host": "example.com"},
    ),
    ('regexall("[a-z]+", "1234abcd5678efgh9")', ["abcd", "efgh"]),
    ('length(regexall("[a-z]+", "1234"))', 0),
    ('trim("?!hello?!", "!?")', "hello"),
    ('trimprefix("helloworld", "hello")', "world"),
    ('trimsuffix("helloworld", "world")', "hello"),
    ('trimspace("  hello\\n\\n")', "hello"),
    ('format("Hello, %s!", "Ander")', "Hello, Ander!"),
    ('format("There are %d lights", 4)', "There are 4 lights"),
    ('format("%.2f", 3.14159)', "3.14"),
    ('format("%5d|%-5d|%05d", 42, 42, 42)', "   42|42   |00042"),
    ('format("%x %X %o %b", 255, 255, 8, 5)', "ff FF 10 101"),
    ('format("%q", "hi")', '"hi"'),
    ('format("%t", true)', "true"),
    ('format("%v %v", 1, "a")', "1 a"),
    ('format("%#v", {a = 1})', '{"a":1}'),
    ('format("100%%")', "100%"),
    ('format("id:%s", 1)', "id:1"),
    ('formatlist("Hello, %s!", ["Valentina", "Ander"])', ["Hello, Valentina!", "Hello, Ander!"]),
    (
        'formatlist("%s, %s", "Salutations", ["Valentina", "Ander"])',
        ["Salutations, Valentina", "Salutations, Ander"],
    ),
    # collections
    ("length([])", 0),
    ('length(["a", "b"])', 2),
    ('length({"a" = "b"})', 1),
    ('length("hello")', 5),
    ('concat(["a", ""], ["b", "c"])', ["a", "", "b", "c"]),
    ('contains(["a", "b", "c"], "a")', True),
    ('contains(["a", "b", "c"], "d")', False),
    ('distinct(["a", "b", "a", "c", "d", "b"])', ["a", "b", "c", "d"]),
    ('element(["a", "b", "c"], 1)', "b"),
    ('element(["a", "b", "c"], 3)', "a"),
    ('flatten([["a", "b"], [], ["c"]])', ["a", "b", "c"]),
    ('flatten([[["a", "b"], []], ["c"]])', ["a", "b", "c"]),
    ("keys({a=1, c=2, d=3})", ["a", "c", "d"]),
    ("values({a=3, c=2, d=1})", [3, 2, 1]),
    ('lookup({a="ay", b="bee"}, "a", "what?")', "ay"),
    ('lookup({a="ay", b="bee"}, "c", "what?")', "what?"),
    ('merge({a="b", c="d"}, {e="f", c="z"})', {"a": "b", "c": "z", "e": "f"}),
    ("range(3)", [0, 1, 2]),
    ("range(1, 4)", [1, 2, 3]),
    ("range(1, 8, 2)", [1, 3, 5, 7]),
    ("range(1, 4, 0.5)", [1, 1.5, 2, 2.5, 3, 3.5]),
    ("range(4, 1)", [4, 3, 2]),
    ("range(10, 5, -2)", [10, 8, 6]),
    ("reverse([1, 2, 3])", [3, 2, 1]),
    ('slice(["a", "b", "c", "d"], 1, 3)', ["b", "c"]),
    ('sort(["e", "d", "a", "x"])', ["a", "d", "e", "x"]),
    ('zipmap(["a", "b"], [1, 2])', {"a": 1, "b": 2}),
    ('coalesce("a", "b")', "a"),
    ('coalesce("", "b")', "b"),
    ("coalesce(1, 2)", 1),
    ('coalescelist(["a", "b"], ["c", "d"])', ["a", "b"]),
    ('coalescelist([], ["c", "d"])', ["c", "d"]),
    ('compact(["a", "", "b", "c"])', ["a", "b", "c"]),
    ('index(["a", "b", "c"], "b")', 1),
    ('setunion(["a", "b"], ["b", "c"], ["d"])', ["a", "b", "c", "d"]),
    ('setintersection(["a", "b"], ["b", "c"], ["b", "d"])', ["b"]),
    (
        'setproduct(["development", "staging"], ["app1", "app2"])',
        [
            ["development", "app1"],
            ["development", "app2"],
            ["staging", "app1"],
            ["staging", "app2"],
        ],
    ),
    ('chunklist(["a", "b", "c", "d", "e"], 2)', [["a", "b"], ["c", "d"], ["e"]]),
    # numbers
    ("abs(23)", 23),
    ("abs(-12.4)", 12.4),
    ("ceil(5)", 5),
    ("ceil(5.1)", 6),
    ("floor(4.9)", 4),
    ("floor(-1.5)", -2),
    ("max(12, 54, 3)", 54),
    ("max([12, 54, 3]...)", 54),
    ("min(12, 54, 3)", 3),
    ("pow(3, 2)", 9),
    ("pow(4, 0)", 1),
    ('parseint("100", 10)', 100),
    ('parseint("FF", 16)', 255),
    ('parseint("-10", 16)', -16),
    ('parseint("1011111011101111", 2)', 48879),
    ('parseint("aA", 62)', 656),
    ("signum(-13)", -1),
    ("signum(0)", 0),
    ("signum(344)", 1),
    ("log(50, 10) > 1.69", True),
    ("log(16, 2)", 4),
    ("log(1, 10)", 0),
    # encoding
    ('base64encode("Hello World")', "SGVsbG8gV29ybGQ="),
    ('base64decode("SGVsbG8gV29ybGQ=")', "Hello World"),
    ('jsonencode({"hello"="world"})', '{"hello":"world"}'),
    (
        'jsonencode({b = [1, true, null], a = "<&>"})',
        '{"a":"\\u003c\\u0026\\u003e","b":[1,true,null]}',
    ),
    ('jsondecode("{\\"hello\\": \\"world\\"}")', {"hello": "world"}),
    ('jsondecode("true")', True),
    ('jsondecode("[1, 2.5]")', [1, 2.5]),
    ('yamldecode("hello: world")', {"hello": "world"}),
    ('yamldecode("- a\\n- 1\\n- true")', ["a", 1, True]),
    ('yamlencode({a = "b", c = [1, 2]})', "a: b\nc:\n- 1\n- 2\n"),
    ('urlencode("Hello World!")', "Hello+World%21"),
    (
        'urlencode("foo:bar@localhost?foo=bar&bar=baz")',
        "foo%3Abar%40localhost%3Ffoo%3Dbar%26bar%3Dbaz",
    ),
    (
        'csvdecode("a,b,c\\n1,2,3\\n4,5,6")',
        [{"a": "1", "b": "2", "c": "3"}, {"a": "4", "b": "5", "c": "6"}],
    ),
    # dates
    ('formatdate("DD MMM YYYY hh:mm ZZZ", "2018-01-02T23:12:01Z")', "02 Jan 2018 23:12 UTC"),
    (
        'formatdate("EEEE, DD-MMM-YY hh:mm:ss ZZZ", "2018-01-02T23:12:01Z")',
        "Tuesday, 02-Jan-18 23:12:01 UTC",
    ),
    (
        'formatdate("EEE, DD MMM YYYY hh:mm:ss ZZZ", "2018-01-02T23:12:01-08:00")',
        "Tue, 02 Jan 2018 23:12:01 -0800",
    ),
    ('formatdate("MMM DD, YYYY", "2018-01-02T23:12:01Z")', "Jan 02, 2018"),
    ('formatdate("HH:mmaa", "2018-01-02T23:12:01Z")', "11:12pm"),
    ("formatdate(\"h 'o''clock'\", \"2018-01-02T11:12:01Z\")", "11 o'clock"),
    ('timeadd("2017-11-22T00:00:00Z", "10m")', "2017-11-22T00:10:00Z"),
    ('timeadd("2017-11-22T00:00:00Z", "-1h")', "2017-11-21T23:00:00Z"),
    # hashes and uuids
    ('md5("hello world")', "5eb63bbbe01eeed093cb22bb8f5acdc3"),
    ('sha1("hello world")', "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"),
    ('sha256("hello world")', "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"),
    ('substr(sha512("hello world"), 0, 16)', "309ecc489c12d6eb"),
    ('uuidv5("dns", "www.terraform.io")', "a5008fae-b28c-5ba5-96cd-82b4c53552d6"),
    ('uuidv5("url", "https://www.terraform.io/")', "9db6f67c-dd95-5ea0-aa5b-e70e5c5f7cf5"),
    (
        'uuidv5("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "www.terraform.io")',
        "a5008fae-b28c-5ba5-96cd-82b4c53552d6",
    ),
    # networks
    ('cidrhost("10.12.112.0/20", 16)', "10.12.112.16"),
    ('cidrhost("10.12.112.0/20", 268)', "10.12.113.12"),
    ('cidrnetmask("172.16.0.0/12")', "255.240.0.0"),
    ('cidrsubnet("172.16.0.0/12", 4, 2)', "172.18.0.0/16"),
    ('cidrsubnet("10.1.2.0/24", 4, 15)', "10.1.2.240/28"),
    (
        'cidrsubnets("10.1.0.0/16", 4, 4, 8, 4)',
        ["10.1.0.0/20", "10.1.16.0/20", "10.1.32.0/24", "10.1.48.0/20"],
    ),
    # type conversion
    ('tostring("hello")', "hello"),
    ("tostring(1)", "1"),
    ("tostring(true)", "true"),
    ('tonumber("1")', 1),
    ('tonumber("1.5")', 1.5),
    ('tobool("true")', True),
    ("tobool(false)", False),
    ('tolist(["a", "b"])', ["a", "b"]),
    ('toset(["c", "b", "b"])', ["b", "c"]),
    ('tomap({"a" = 1})', {"a": 1}),
    ('convert("5", number)', 5),
    ('convert([1, "2"], list(string))', ["1", "2"]),
    ("convert({a = 1}, map(string))", {"a": "1"}),
    ('try(tonumber("x"), 0)', 0),
    ('try({}.missing, "fallback")', "fallback"),
    ('can(tonumber("12"))', True),
    ('can(tonumber("twelve"))', False),
]


@pytest.mark.parametrize(("source", "expected"), CASES, ids=[c[0][:60] for c in CASES])
def test_function(source: str, expected: Any) -> None:
    assert ev(source) == expected


ERRORS: list[tuple[str, str]] = [
    ("nosuchfunction(1)", "nosuchfunction"),
    ("element([], 0)", "element"),
    ('index(["a"], "b")', "index"),
    ('lookup({a = 1}, "b")', "lookup"),
    ('regex("[a-z]+", "123")', "regex"),
    ('regex("(", "x")', "regex"),
    ('coalesce("", null)', "coalesce"),
    ("slice([1, 2], 1, 5)", "slice"),
    ('zipmap(["a"], [])', "zipmap"),
    ('tonumber("twelve")', "tonumber"),
    ('tobool("yes")', "tobool"),
    ('base64decode("***")', "base64decode"),
    ('jsondecode("{")', "jsondecode"),
    ('format("%d", "x")', "format"),
    ('format("%s")', "format"),
    ('formatdate("YYYY", "yesterday")', "formatdate"),
    ('timeadd("2017-11-22T00:00:00Z", "soon")', "timeadd"),
    ("range(0, 10, 0)", "range"),
    ("range(0, 1e12)", "range"),
    ("pow(10, 1000)", "pow"),
    ('cidrsubnet("10.0.0.0/8", 30, 1)', "cidrsubnet"),
    ('uuidv5("nope", "x")', "uuidv5"),
    ("upper([1])", "upper"),
    ('parseint("12", 99)', "parseint"),
    ('file("x")', "file"),
    ('abspath("x")', "abspath"),
]


@pytest.mark.parametrize(("source", "name"), ERRORS, ids=[c[0] for c in ERRORS])
def test_function_error_names_the_function(source: str, name: str) -> None:
    with pytest.raises(EvalError, match=re.escape(name)):
        ev(source)


def test_filesystem_functions_read_relative_to_the_base_dir(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.txt").write_text("hello\n")
    (tmp_path / "conf" / "other.txt").write_text("x")
    (tmp_path / "bin.dat").write_bytes(b"\xff\x00")
    base = str(tmp_path)
    assert ev('file("conf/app.txt")', base) == "hello\n"
    assert ev('chomp(file("conf/app.txt"))', base) == "hello"
    assert ev(f'file("{tmp_path}/conf/app.txt")', base) == "hello\n"
    assert ev('fileexists("conf/app.txt")', base) is True
    assert ev('fileexists("conf/none.txt")', base) is False
    assert ev('filebase64("bin.dat")', base) == "/wA="
    assert ev('fileset("conf", "*.txt")', base) == ["app.txt", "other.txt"]
    assert ev('basename("/a/b/c.txt")', base) == "c.txt"
    assert ev('dirname("/a/b/c.txt")', base) == "/a/b"
    assert ev('dirname("c.txt")', base) == "."
    assert ev('abspath("/a/../b")', base) == "/b"
    assert ev('pathexpand("/etc")', base) == "/etc"
    assert not str(ev('pathexpand("~/x")', base)).startswith("~")
    with pytest.raises(EvalError, match="file"):
        ev('file("bin.dat")', base)
    with pytest.raises(EvalError, match="file"):
        ev('file("missing.txt")', base)


def test_filesystem_functions_are_disabled_without_a_base_dir() -> None:
    for source in ('file("x")', 'fileexists("x")', 'basename("/a")', 'abspath("x")'):
        with pytest.raises(EvalError, match="filesystem function disabled"):
            ev(source)


def test_functions_that_are_not_repeatable() -> None:
    uuid = ev("uuidv4()")
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", uuid
    )
    assert ev("uuidv4()") != uuid
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ev("timestamp()"))
