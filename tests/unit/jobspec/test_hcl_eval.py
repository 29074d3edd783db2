"""HCL2 expressions evaluated over python-hcl2's parse tree: operators, templates,
for expressions, splats, heredocs and references the client fills at run time."""

from __future__ import annotations

from typing import Any

import pytest

from allocrunner.errors import JobSpecError
from allocrunner.jobspec.hcl_eval import EvalError
from tests.unit.jobspec.hcl_helpers import ev

NAMES: dict[str, Any] = {
    "var": {
        "n": 3,
        "list": [1, 2, 3],
        "map": {"b": 2, "a": 1},
        "objs": [{"name": "a", "port": 80}, {"name": "b", "port": 81}],
        "obj": {"name": "solo"},
        "nothing": None,
    },
    "local": {"greeting": "hi"},
}

CASES: list[tuple[str, Any]] = [
    # literals and arithmetic
    ("42", 42),
    ("-1", -1),
    ("1.5", 1.5),
    ("1e3", 1000),
    ('"plain"', "plain"),
    ("true", True),
    ("null", None),
    ('[1, "a", true]', [1, "a", True]),
    ('{a = 1, "b c" = 2, d: 3}', {"a": 1, "b c": 2, "d": 3}),
    ("{(local.greeting) = 1}", {"hi": 1}),
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("7 / 2", 3.5),
    ("6 / 2", 3),
    ("7 % 3", 1),
    ("-7 % 3", -1),
    ('"5" + 1', 6),
    ("0.5 + 0.25", 0.75),
    ("-var.n", -3),
    # comparison and logic
    ("1 == 1.0", True),
    ('1 == "1"', False),
    ("[1, 2] == [1, 2]", True),
    ("{a = 1} != {a = 2}", True),
    ("3 >= 3 && 2 < 3", True),
    ("false || !false", True),
    ('var.n > 2 ? "big" : "small"', "big"),
    ("var.nothing == null", True),
    ('true ? 1 : "x"', "1"),
    ("false ? 1 : true", "true"),
    ("true ? 1 : 2", 1),
    ('var.n > 5 ? var.missing : "fallback"', "fallback"),
    ('var.n > 1 ? "ok" : var.missing', "ok"),
    ('true ? [1] : "x"', [1]),
    # references
    ("var.n", 3),
    ("var.list[1]", 2),
    ('var.map["b"]', 2),
    ("var.map.a", 1),
    ("var.objs[1].name", "b"),
    ("var.list.0", 1),
    ("local.greeting", "hi"),
    # splats
    ("var.objs[*].name", ["a", "b"]),
    ("var.objs.*.port", [80, 81]),
    ("var.obj[*].name", ["solo"]),
    ("var.objs.*.name[1]", "b"),
    ("var.nothing[*]", []),
    # for expressions
    ("[for x in var.list : x * 2]", [2, 4, 6]),
    ("[for i, x in var.list : i + x]", [1, 3, 5]),
    ("[for x in var.list : x if x != 2]", [1, 3]),
    ('[for k, v in var.map : "${k}=${v}"]', ["a=1", "b=2"]),
    ("{for o in var.objs : o.name => o.port}", {"a": 80, "b": 81}),
    ("{for k, v in var.map : upper(k) => v if v > 1}", {"B": 2}),
    ('{for s in ["a", "b", "a"] : s => s...}', {"a": ["a", "a"], "b": ["b"]}),
    # templates
    ('"${local.greeting}, world"', "hi, world"),
    ('"n=${var.n + 1}"', "n=4"),
    ('"${0.0000001} ${1e20} ${1.5}"', "0.0000001 100000000000000000000 1.5"),
    ('"e\u0301" == "\u00e9"', True),
    ('length("e\u0301")', 1),
    ('"${var.n}"', 3),
    ('"${var.list}"', [1, 2, 3]),
    ('"$${literal} %%{literal}"', "${literal} %{literal}"),
    ('"tab\\there\\nquote\\" \\u00e9"', 'tab\there\nquote" é'),
    ('"%{ if var.n > 2 }big%{ else }small%{ endif }"', "big"),
    ('"%{ if var.n > 5 }big%{ endif }"', ""),
    ('"%{ for x in var.list }<${x}>%{ endfor }"', "<1><2><3>"),
    ('"%{ for k, v in var.map }${k}${v};%{ endfor }"', "a1;b2;"),
    ('"a %{~ if true ~} b %{~ endif ~} c"', "abc"),
    # references the client fills at run time stay as written
    ('"${NOMAD_ALLOC_DIR}/data"', "${NOMAD_ALLOC_DIR}/data"),
    ('"${attr.kernel.name}"', "${attr.kernel.name}"),
    ('"${node.unique.name}-${meta.rack}"', "${node.unique.name}-${meta.rack}"),
    ('"${env["HOME"]}"', '${env["HOME"]}'),
    ("attr.cpu.arch", "${attr.cpu.arch}"),
    ('"x${ node.datacenter }y"', "x${ node.datacenter }y"),
]


@pytest.mark.parametrize(("source", "expected"), CASES, ids=[c[0][:60] for c in CASES])
def test_expression(source: str, expected: Any) -> None:
    assert ev(source, **NAMES) == expected


def test_heredocs() -> None:
    plain = "<<EOT\nhello ${local.greeting}\n  indented\nEOT\n"
    assert ev(plain, **NAMES) == "hello hi\n  indented\n"
    trimmed = "<<-EOT\n    first\n      second ${var.n}\n    EOT\n"
    assert ev(trimmed, **NAMES) == "first\n  second 3\n"
    directive = "<<EOT\n%{ for x in var.list ~}\nline ${x}\n%{ endfor ~}\nEOT\n"
    assert ev(directive, **NAMES) == "line 1\nline 2\nline 3\n"
    braces = '<<EOT\n${jsonencode({a = "}"})}\nEOT\n'
    assert ev(braces, **NAMES) == '{"a":"}"}\n'


ERRORS: list[tuple[str, str]] = [
    ("var.missing", 'attribute named "missing"'),
    ("var.list[5]", "does not identify an element"),
    ('var.map["zz"]', "does not identify an element"),
    ("1 / 0", "divide by zero"),
    ('"a" + 1', "number is required"),
    ("1 ? 2 : 3", "bool is required"),
    ("[for x in 5 : x]", "for expression"),
    ('{for s in ["a", "a"] : s => 1}', "duplicate key"),
    ('"${var.list}x"', "cannot include"),
    ('"${null}x"', "null"),
    ("var.n.field", "cannot access attribute"),
    ("var.objs[*].name[1]", "cannot index a string"),
    ("undefined_function(1)", "undefined_function"),
]


@pytest.mark.parametrize(("source", "message"), ERRORS, ids=[c[0] for c in ERRORS])
def test_expression_error(source: str, message: str) -> None:
    with pytest.raises(EvalError, match=message):
        ev(source, **NAMES)


def test_unknown_names_are_errors_where_nothing_is_kept() -> None:
    from allocrunner.jobspec.hcl_eval import Scope, evaluate
    from allocrunner.jobspec.hcl_template import parse_expression

    with pytest.raises(EvalError, match="unknown variable"):
        evaluate(parse_expression("attr.x"), Scope())


def test_bad_template_is_a_jobspec_error() -> None:
    with pytest.raises(JobSpecError):
        ev("<<EOT\n%{ if true }unclosed\nEOT\n")
