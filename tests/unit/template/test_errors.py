"""Parse and execution errors: Go's messages and locations, always as TemplateError."""

from __future__ import annotations

import pytest

from allocrunner.errors import AllocRunnerError
from allocrunner.template import TemplateError, render
from tests.unit.template.test_go_semantics import DATA

PARSE_ERRORS: list[tuple[str, str]] = [
    ("{{ .Foo", "template: template:1: unclosed action"),
    ("a {{ .Foo }", 'template: template:1: unexpected "}" in operand'),
    ("{{ .a\n\n", "template: template:3: unclosed action started at template:1"),
    ("x\ny {{ foo }}", 'template: template:2: function "foo" not defined'),
    ("{{ $x }}", 'template: template:1: undefined variable "$x"'),
    ("{{if true}}{{$x := 1}}{{end}}{{$x}}", 'undefined variable "$x"'),
    ("{{end}}", "template: template:1: unexpected {{end}}"),
    ("{{else}}", "template: template:1: unexpected {{else}}"),
    ("{{if true}}x", "template: template:1: unexpected EOF"),
    ("{{range .L}}x{{else}}y", "unexpected EOF"),
    ("{{ if }}{{end}}", "missing value for if"),
    ("{{ }}", "missing value for command"),
    ("{{ break }}", "{{break}} outside {{range}}"),
    ("{{ continue }}", "{{continue}} outside {{range}}"),
    ("{{ 3 | 4 }}", "non executable command in pipeline stage 2"),
    ("{{/* x */ 1}}", "comment ends before closing delimiter"),
    ("{{/* x", "unclosed comment"),
    ('{{ "abc }}', "unterminated quoted string"),
    ("{{ `abc }}", "unterminated raw quoted string"),
    ("{{ 'ab' }}", "malformed character constant: 'ab'"),
    ("{{ ( 1 }}", "unclosed left paren"),
    ("{{ 1 ) }}", 'unexpected ")" in command'),
    ("{{ with $x, $y := 1 }}{{end}}", "too many declarations in with"),
    ("{{ 1.2.3 }}", 'unexpected ".3" in operand'),
    ("{{ - }}", 'illegal number syntax: "-"'),
    ("{{ range $a, $b, $c := .L }}{{ end }}", "too many declarations in range"),
    ("{{ 08 }}", 'integer overflow: "08"'),
    ('{{ "\\q" }}', "invalid syntax"),
    ('{{define "a"}}x{{end}}{{define "a"}}y{{end}}', 'multiple definition of template "a"'),
    ("{{ .Foo | 3 }}", "non executable command in pipeline stage 2"),
    ("{{ 3.Foo }}", 'bad number syntax: "3.F"'),
    ('{{ "x".Foo }}', 'unexpected . after term "\\"x\\""'),
    ("{{ true.Foo }}", 'unexpected . after term "true"'),
]

EXEC_ERRORS: list[tuple[str, str]] = [
    (
        "{{ .S.Foo }}",
        'template: template:1:5: executing "template" at <.S.Foo>: '
        "can't evaluate field Foo in type interface {}",
    ),
    (
        "line1\nline2 {{ .I.Foo }}",
        'template: template:2:11: executing "template" at <.I.Foo>: '
        "can't evaluate field Foo in type interface {}",
    ),
    ("{{ .L.Foo }}", "can't evaluate field Foo in type interface {}"),
    (
        "{{ $x := 1 }}{{ $x.Foo }}",
        'template:1:18: executing "template" at <$x.Foo>: can\'t evaluate field Foo in type int',
    ),
    ("{{ .Nil.Foo }}", "nil pointer evaluating interface {}.Foo"),
    ("{{ range .Mixed }}{{ .Foo }}{{ end }}", "can't evaluate field Foo in type interface {}"),
    ("{{ $x = 1 }}", "undefined variable: $x"),
    (
        "{{len 1 2}}",
        'template: template:1:2: executing "template" at <len>: wrong number of args for len: '
        "want 1 got 2",
    ),
    ("{{ printf }}", "wrong number of args for printf: want at least 1 got 0"),
    ("{{ toUpper .I }}", "wrong type for value; expected string; got int"),
    ('{{ indent "x" "y" }}', 'expected integer; found "x"'),
    (
        "{{ index .L 5 }}",
        'template:1:3: executing "template" at <index .L 5>: error calling index: '
        "index out of range: 5",
    ),
    ('{{ index .M "zz" "b" }}', "error calling index: index of nil pointer"),
    ("{{ index 1 1 }}", "error calling index: can't index item of type int"),
    ("{{ lt true false }}", "error calling lt: invalid type for comparison"),
    ('{{ eq 1 "a" }}', "error calling eq: incompatible types for comparison"),
    ("{{ eq 1 1.0 }}", "error calling eq: incompatible types for comparison"),
    ("{{ eq .L .L }}", "error calling eq: non-comparable type [a b c]: []interface {}"),
    ("{{ nil }}", "nil is not a command"),
    ("{{ 3 4 }}", "at <3>: can't give argument to non-function 3"),
    ("{{ (1) 2 }}", "at <(1) 2>: can't give argument to non-function 1"),
    ('{{ "x" | .S }}', "S is not a method but has arguments"),
    ("{{ range 5 }}{{end}}", "range can't iterate over 5"),
    (
        '{{template "nope"}}',
        'template:1:11: executing "template" at <{{template "nope"}}>: template "nope" not defined',
    ),
    (
        '{{define "r"}}{{template "r"}}{{end}}{{template "r"}}',
        "exceeded maximum template depth (100)",
    ),
    ("{{ .P.Scale }}", "wrong number of args for Scale: want 1 got 0"),
    ("{{ .P.Nope }}", "can't evaluate field Nope in type interface {}"),
    ("{{ with .P }}{{ .Nope }}{{ end }}", "can't evaluate field Nope in type Point"),
    ("{{ divide 0 1 }}", "error calling divide: runtime error: integer divide by zero"),
    ("{{ loop 3 }}", "can't print loop 3 of type <-chan int64"),
]


@pytest.mark.parametrize(("template", "message"), PARSE_ERRORS, ids=[t for t, _ in PARSE_ERRORS])
def test_parse_error(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(template, env={}, data=DATA)
    assert message in str(caught.value)
    assert str(caught.value).startswith("template: template:")


@pytest.mark.parametrize(("template", "message"), EXEC_ERRORS, ids=[t for t, _ in EXEC_ERRORS])
def test_exec_error(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(template, env={}, data=DATA)
    assert message in str(caught.value)


def test_parse_errors_come_before_any_output() -> None:
    with pytest.raises(TemplateError, match="unclosed action"):
        render("{{ .S }} fine, then {{ .x", env={}, data=DATA)


def test_error_names_the_template() -> None:
    with pytest.raises(TemplateError, match=r"^template: redis.conf.tpl:1: "):
        render("{{ nope }}", env={}, name="redis.conf.tpl")


def test_errors_are_allocrunner_errors() -> None:
    assert issubclass(TemplateError, AllocRunnerError)


def test_deep_nesting_is_a_template_error() -> None:
    text = "{{" + "(" * 2000 + "1" + ")" * 2000 + "}}"
    with pytest.raises(TemplateError):
        render(text, env={})


def test_error_in_defined_template_names_it() -> None:
    text = '{{define "inner"}}\n{{ .Foo.Bar }}{{end}}{{template "inner" 3}}'
    with pytest.raises(TemplateError, match=r'template:2:7: executing "inner" at <\.Foo\.Bar>'):
        render(text, env={})
