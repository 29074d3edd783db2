"""Go text/template semantics: a table of templates with the output Go produces for
them (per the text/template documentation and Go's own executor tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from allocrunner.template import render


@dataclass
class Point:
    X: int
    Y: int

    def Sum(self) -> int:  # a method templates can call as .Sum
        return self.X + self.Y

    def Scale(self, k: int) -> int:
        return self.X * k


DATA: dict[str, Any] = {
    "I": 17,
    "F": 1.5,
    "Big": 1000000.0,
    "S": "xyz",
    "B": True,
    "Zero": 0,
    "Empty": "",
    "L": ["a", "b", "c"],
    "Ints": [1, 2, 3],
    "EmptyL": [],
    "M": {"one": 1, "two": 2, "three": 3},
    "Nested": {"a": {"b": {"c": "deep"}}},
    "Nil": None,
    "P": Point(3, 4),
    "Mixed": [1, "two", None, 3.5, True],
}

CASES: list[tuple[str, str, str]] = [
    # text and trim markers
    ("plain text", "hello, world", "hello, world"),
    ("trim both", "a  {{- 3 -}}  b", "a3b"),
    ("trim left only", "a \n {{- 3}} b", "a3 b"),
    ("trim right only", "a {{3 -}} \n\t b", "a 3b"),
    ("minus without space is a number", "{{-3}}", "-3"),
    ("trim with newline", 'x\n{{- "y" -}}\nz', "xyz"),
    ("comment", "a{{/* a comment */}}b", "ab"),
    ("trimmed comment", "a {{- /* c */ -}} b", "ab"),
    ("multi-line comment", "a{{/*\nline\n*/}}b", "ab"),
    # dot, fields, maps
    ("dot int", "{{.I}}", "17"),
    ("dot string", "{{.S}}", "xyz"),
    ("float", "{{.F}}", "1.5"),
    ("large float uses exponent", "{{.Big}}", "1e+06"),
    ("bool", "{{.B}}", "true"),
    ("list prints like Go", "{{.L}}", "[a b c]"),
    ("map prints sorted", "{{.M}}", "map[one:1 three:3 two:2]"),
    ("nested keys", "{{.Nested.a.b.c}}", "deep"),
    ("missing key", "{{.Missing}}", "<no value>"),
    ("field of missing key", "{{.Missing.Deeper}}", "<no value>"),
    ("nil value", "{{.Nil}}", "<no value>"),
    ("nil inside a list", "{{.Mixed}}", "[1 two <nil> 3.5 true]"),
    ("struct fields", "{{.P.X}},{{.P.Y}}", "3,4"),
    ("struct prints fields", "{{.P}}", "{3 4}"),
    ("method", "{{.P.Sum}}", "7"),
    ("method with argument", "{{.P.Scale 10}}", "30"),
    ("method with piped argument", "{{10 | .P.Scale}}", "30"),
    # literals
    ("string escapes", '{{"a\\tb\\n\\u00e9\\x41"}}', "a\tb\né\x41"),
    ("raw string", "{{`a\\tb`}}", "a\\tb"),
    ("char constant", "{{'a'}}", "97"),
    ("escaped char", "{{'\\n'}}", "10"),
    ("hex int", "{{0x1F}}", "31"),
    ("octal int", "{{0o17}} {{017}}", "15 15"),
    ("binary int", "{{0b101}}", "5"),
    ("underscored int", "{{1_000}}", "1000"),
    ("float literal", "{{1.5}}", "1.5"),
    ("integral float literal", "{{1.0}}", "1"),
    ("exponent literal", "{{1e3}}", "1000"),
    ("negative", "{{-7}}", "-7"),
    ("bool literals", "{{true}} {{false}}", "true false"),
    ("escaping the delimiters", '{{"{{"}}x{{"}}"}}', "{{x}}"),
    # variables
    ("declare", "{{$x := 5}}{{$x}}", "5"),
    ("assign", "{{$x := 1}}{{$x = 2}}{{$x}}", "2"),
    ("root variable", "{{with .Nested}}{{$.S}}{{end}}", "xyz"),
    ("variable field", "{{$m := .M}}{{$m.two}}", "2"),
    ("variable scope ends at end", "{{$x := 1}}{{if true}}{{$x := 2}}{{$x}}{{end}}{{$x}}", "21"),
    ("assign inside if changes outer", "{{$x := 1}}{{if true}}{{$x = 2}}{{end}}{{$x}}", "2"),
    # if / else
    ("if true", "{{if .B}}yes{{end}}", "yes"),
    ("if zero", "{{if .Zero}}yes{{else}}no{{end}}", "no"),
    ("if empty string", "{{if .Empty}}yes{{else}}no{{end}}", "no"),
    ("if empty list", "{{if .EmptyL}}yes{{else}}no{{end}}", "no"),
    ("if nil", "{{if .Nil}}yes{{else}}no{{end}}", "no"),
    ("if missing", "{{if .Missing}}yes{{else}}no{{end}}", "no"),
    ("if struct is true", "{{if .P}}yes{{end}}", "yes"),
    ("else if", "{{if eq .I 1}}one{{else if eq .I 17}}seventeen{{else}}other{{end}}", "seventeen"),
    ("else if falls through", "{{if false}}a{{else if false}}b{{else}}c{{end}}", "c"),
    ("if declares for else", "{{if $x := .Zero}}t{{else}}{{$x}}{{end}}", "0"),
    # with
    ("with sets dot", "{{with .Nested.a}}{{.b.c}}{{end}}", "deep"),
    ("with else", "{{with .Missing}}x{{else}}none{{end}}", "none"),
    ("with else keeps dot", "{{with .Empty}}x{{else}}{{.I}}{{end}}", "17"),
    ("else with", "{{with .Empty}}a{{else with .S}}{{.}}{{end}}", "xyz"),
    ("with variable", "{{with $x := .S}}{{$x}}{{.}}{{end}}", "xyzxyz"),
    # range
    ("range list", "{{range .L}}<{{.}}>{{end}}", "<a><b><c>"),
    ("range index and value", "{{range $i, $v := .L}}{{$i}}={{$v}} {{end}}", "0=a 1=b 2=c "),
    ("range one variable is the element", "{{range $v := .L}}{{$v}}{{end}}", "abc"),
    ("range map sorted", "{{range $k, $v := .M}}{{$k}}={{$v}};{{end}}", "one=1;three=3;two=2;"),
    ("range map values", "{{range .M}}{{.}}{{end}}", "132"),
    ("range else", "{{range .EmptyL}}x{{else}}empty{{end}}", "empty"),
    ("range nil", "{{range .Nil}}x{{else}}none{{end}}", "none"),
    ("range break", "{{range .Ints}}{{if eq . 2}}{{break}}{{end}}{{.}}{{end}}", "1"),
    ("range continue", "{{range .Ints}}{{if eq . 2}}{{continue}}{{end}}{{.}}{{end}}", "13"),
    ("range $ is root", "{{range .L}}{{$.I}}{{end}}", "171717"),
    ("range assign", "{{$v := 0}}{{range $v = .Ints}}{{end}}{{$v}}", "3"),
    (
        "nested range",
        "{{range .Ints}}{{$o := .}}{{range $.L}}{{$o}}{{.}}{{end}};{{end}}",
        "1a1b1c;2a2b2c;3a3b3c;",
    ),
    # define / template / block
    ("define and call", '{{define "t"}}[{{.}}]{{end}}{{template "t" .S}}', "[xyz]"),
    ("template without data", '{{define "t"}}{{.}}{{end}}{{template "t"}}', "<no value>"),
    (
        "template does not inherit variables",
        '{{define "t"}}{{$}}{{end}}{{$x := 1}}{{template "t" 5}}',
        "5",
    ),
    ("block default", '{{block "b" .I}}<{{.}}>{{end}}', "<17>"),
    ("define overrides empty", '{{define "t"}}{{end}}{{define "t"}}x{{end}}{{template "t"}}', "x"),
    (
        "recursive template",
        '{{define "r"}}{{if .}}{{index . 0}}{{template "r" (slice . 1)}}{{end}}{{end}}'
        '{{template "r" .L}}',
        "abc",
    ),
    # pipelines and parentheses
    ("pipeline last argument", '{{"x" | printf "%s-%s" "a"}}', "a-x"),
    ("pipeline chain", '{{.S | printf "%q" | len}}', "5"),
    ("parenthesized", '{{printf "%d" (len .L)}}', "3"),
    ("field of parenthesized", "{{(.Nested.a).b.c}}", "deep"),
    ("index of parenthesized", '{{(index .Nested "a").b.c}}', "deep"),
    ("declare in parens", "{{($x := 3)}}{{$x}}", "33"),
    # builtins
    ("and returns operand", "{{and 1 0 2}} {{and 1 2}}", "0 2"),
    ("or returns operand", '{{or 0 "" 3}} {{or 0 ""}}', "3 "),
    ("and short-circuits", "{{and false (index .L 99)}}", "false"),
    ("or short-circuits", "{{or true (index .L 99)}}", "true"),
    ("not", "{{not 0}} {{not .S}}", "true false"),
    ("len", '{{len .L}} {{len .M}} {{len .S}} {{len "é"}}', "3 3 3 2"),
    ("index list", "{{index .L 1}}", "b"),
    ("index map", '{{index .M "two"}}', "2"),
    ("index missing map key", '{{index .M "nine"}}', "<no value>"),
    ("index nested", '{{index .Nested "a" "b" "c"}}', "deep"),
    ("index string gives a byte", "{{index .S 0}}", "120"),
    ("slice list", "{{slice .L 1}} {{slice .L 0 2}} {{slice .L}}", "[b c] [a b] [a b c]"),
    ("slice string", "{{slice .S 1 2}}", "y"),
    ("print", '{{print 1 2 "a" 3 "b" "c"}}', "1 2a3bc"),
    ("println", '{{println 1 "a"}}', "1 a\n"),
    ("printf verbs", '{{printf "%d %s %v %q %t %%" 3 "s" .L "q" true}}', '3 s [a b c] "q" true %'),
    (
        "printf float",
        '{{printf "%.2f %f %e %g" 3.14159 1.5 1234.5 0.5}}',
        "3.14 1.500000 1.234500e+03 0.5",
    ),
    (
        "printf width",
        '{{printf "[%5d][%-4s][%05.1f][%x][%X]" 42 "ab" 3.14159 255 "hi"}}',
        "[   42][ab  ][003.1][ff][6869]",
    ),
    ("printf wrong type", '{{printf "%d" "x"}}', "%!d(string=x)"),
    ("printf missing", '{{printf "%d %d" 1}}', "1 %!d(MISSING)"),
    ("printf extra", '{{printf "%d" 1 2}}', "1%!(EXTRA int=2)"),
    ("eq", '{{eq 1 1}} {{eq "a" "b"}} {{eq .S "xyz"}}', "true false true"),
    ("eq several", "{{eq .I 1 2 17}} {{eq .I 1 2}}", "true false"),
    ("eq nil", "{{eq .Nil .Missing}}", "true"),
    ("ne", '{{ne 1 2}} {{ne "a" "a"}}', "true false"),
    ("ordering", "{{lt 1 2}} {{le 2 2}} {{gt 1 2}} {{ge 2 3}}", "true true false false"),
    ("string ordering", '{{lt "a" "b"}} {{gt "b" "a"}}', "true true"),
    ("float ordering", "{{lt 1.5 2.5}}", "true"),
    ("html", '{{html "<a href=\\"x\\">&\'"}}', "&lt;a href=&#34;x&#34;&gt;&amp;&#39;"),
    ("js", '{{js "it\'s <b>\\"q\\" a=b\\n"}}', 'it\\\'s \\u003Cb\\u003E\\"q\\" a\\u003Db\\u000A'),
    ("urlquery", '{{urlquery "a b&c=d/é"}}', "a+b%26c%3Dd%2F%C3%A9"),
    ("html of several args", "{{html 1 2}}", "1 2"),
    ("html of nil", "{{html .Nil}}", "&lt;no value&gt;"),
    ("printf hex float", '{{printf "%x" 3.5}}', "0x1.cp+01"),
]


@pytest.mark.parametrize(
    ("template", "expected"), [(t, e) for _, t, e in CASES], ids=[name for name, _, _ in CASES]
)
def test_go_output(template: str, expected: str) -> None:
    assert render(template, env={}, data=DATA, missing_key="default") == expected


def test_custom_delimiters() -> None:
    text = "<< .S >> {{ not an action }} <<- .I ->> [[x]]"
    expected = "xyz {{ not an action }}17[[x]]"
    assert render(text, env={}, data=DATA, left="<<", right=">>") == expected


def test_custom_delimiters_with_comments_and_escapes() -> None:
    text = '[[/* c */]][[ "[[" ]]x[[ "]]" ]]'
    assert render(text, env={}, left="[[", right="]]") == "[[x]]"


def test_empty_delimiters_mean_defaults() -> None:
    assert render("{{ 1 }}", env={}, left="", right="") == "1"


def test_missing_key_error_option() -> None:
    from allocrunner.template import TemplateError

    assert render("{{.S}}", env={}, data=DATA, error_on_missing_key=True) == "xyz"
    with pytest.raises(TemplateError, match='map has no entry for key "Missing"'):
        render("{{.Missing}}", env={}, data=DATA, error_on_missing_key=True)


def test_nomad_missing_keys_are_zero_values() -> None:
    """Nomad executes with missingkey=zero: an absent key is a nil interface{}, which
    prints `<no value>` but has no fields."""
    from allocrunner.template import TemplateError

    assert render("{{.Missing}}|{{.Nested.a.zz}}", env={}, data=DATA) == "<no value>|<no value>"
    with pytest.raises(TemplateError, match=r"nil pointer evaluating interface \{\}\.Deeper"):
        render("{{.Missing.Deeper}}", env={}, data=DATA)
    assert render("{{.Missing.Deeper}}", env={}, data=DATA, missing_key="default") == (
        "<no value>"
    )


def test_nil_data_prints_no_value() -> None:
    assert render("{{.}}", env={}) == "<no value>"
    assert render("{{.Foo}}", env={}) == "<no value>"


def test_actions_may_span_lines() -> None:
    assert render('{{ printf\n "%d"\n 3 }}', env={}) == "3"
