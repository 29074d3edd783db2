"""Properties of HCL2 job-file evaluation.

- A random value of a random variable type, passed through `-var`, a var file (HCL or
  JSON) or a `NOMAD_VAR_` environment variable, reaches the job unchanged.
- Job files built from random variables, operators and function calls either load or
  raise JobSpecError: never another exception.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocrunner.errors import JobSpecError
from allocrunner.jobspec import parse_job
from allocrunner.jobspec.hcl_functions_ext import all_functions
from allocrunner.jobspec.hcl_types import nfc
from tests.unit.jobspec.hcl_helpers import job_file

# --- values of a type ---------------------------------------------------------------

TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"), max_size=12
).map(nfc)  # cty keeps strings in NFC form
INTS = st.integers(min_value=-(2**62), max_value=2**62)
FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
NUMBERS = st.one_of(INTS, FLOATS)
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True)

Typed = tuple[str, st.SearchStrategy[Any]]  # (type expression, values of that type)


def _list_of(inner: Typed) -> Typed:
    return (f"list({inner[0]})", st.lists(inner[1], max_size=3))


def _map_of(inner: Typed) -> Typed:
    return (f"map({inner[0]})", st.dictionaries(TEXT, inner[1], max_size=3))


def _object_of(fields: dict[str, Typed]) -> Typed:
    spec = ", ".join(f"{k} = {t}" for k, (t, _) in fields.items())
    return (f"object({{{spec}}})", st.fixed_dictionaries({k: v for k, (_, v) in fields.items()}))


def _tuple_of(items: list[Typed]) -> Typed:
    spec = ", ".join(t for t, _ in items)
    return (f"tuple([{spec}])", st.tuples(*(v for _, v in items)).map(list))


PRIMITIVES: list[Typed] = [("string", TEXT), ("number", NUMBERS), ("bool", st.booleans())]
SETS: list[Typed] = [
    ("set(string)", st.lists(TEXT, max_size=4, unique=True).map(sorted)),
    ("set(number)", st.lists(INTS, max_size=4, unique=True).map(sorted)),
]


@st.composite
def typed(draw: st.DrawFn, depth: int = 2) -> tuple[str, Any]:
    """(type expression, value of that type)."""
    if depth == 0:
        t, values = draw(st.sampled_from(PRIMITIVES))
        return t, draw(values)
    kind = draw(st.sampled_from(["primitive", "set", "list", "map", "object", "tuple"]))
    if kind == "primitive":
        t, values = draw(st.sampled_from(PRIMITIVES))
        return t, draw(values)
    if kind == "set":
        t, values = draw(st.sampled_from(SETS))
        return t, draw(values)
    inner = st.deferred(lambda: typed(depth - 1))
    if kind in ("list", "map"):
        t, _ = draw(inner)
        strategy = _typed_values(t)
        wrap = _list_of if kind == "list" else _map_of
        return _draw(draw, wrap((t, strategy)))
    if kind == "object":
        names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
        fields = {n: _fixed(draw(inner)) for n in names}
        return _draw(draw, _object_of(fields))
    items = [_fixed(draw(inner)) for _ in range(draw(st.integers(1, 3)))]
    return _draw(draw, _tuple_of(items))


def _fixed(pair: tuple[str, Any]) -> Typed:
    return (pair[0], _typed_values(pair[0]))


def _draw(draw: st.DrawFn, t: Typed) -> tuple[str, Any]:
    return t[0], draw(t[1])


def _typed_values(type_expr: str) -> st.SearchStrategy[Any]:
    """Values of a type expression built by `typed` (only the shapes it builds)."""
    simple = dict(PRIMITIVES) | dict(SETS)
    if type_expr in simple:
        return simple[type_expr]
    if type_expr.startswith("list("):
        return st.lists(_typed_values(type_expr[5:-1]), max_size=3)
    if type_expr.startswith("map("):
        return st.dictionaries(TEXT, _typed_values(type_expr[4:-1]), max_size=3)
    if type_expr.startswith("object({"):
        fields = _split_top(type_expr[8:-2])
        parts = {f.split(" = ", 1)[0]: _typed_values(f.split(" = ", 1)[1]) for f in fields}
        return st.fixed_dictionaries(parts)
    fields = _split_top(type_expr[7:-2])
    return st.tuples(*(_typed_values(f) for f in fields)).map(list)


def _split_top(text: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch in "([{"
        depth -= ch in ")]}"
        cur += ch
    return [*out, cur.strip()] if cur.strip() else out


def hcl_literal(value: Any) -> str:
    """`value` written as an HCL literal expression."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return hcl_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(hcl_literal(v) for v in value) + "]"
    return "{" + ", ".join(f"{hcl_string(k)} = {hcl_literal(v)}" for k, v in value.items()) + "}"


def hcl_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("${", "$${").replace("%{", "%%{") + '"'


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


JOB = job_file(top='variable "x" {\n  type = TYPE\n}\n', task="meta = { v = jsonencode(var.x) }")


def as_text(type_expr: str, value: Any) -> str:
    """A value as `-var` / NOMAD_VAR_ text: literal for string and number, else HCL."""
    if type_expr == "string":
        return value
    if type_expr == "number":
        return repr(value)
    return hcl_literal(value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pair=typed(),
    route=st.sampled_from(["var", "env", "hcl-file", "json-file", "python"]),
    data=st.data(),
)
def test_typed_variables_round_trip(
    tmp_path_factory: Any, pair: tuple[str, Any], route: str, data: st.DataObject
) -> None:
    type_expr, value = pair
    text = JOB.replace("TYPE", type_expr)
    kwargs: dict[str, Any] = {}
    if route == "var":
        kwargs["variables"] = [f"x={as_text(type_expr, value)}"]
    elif route == "python":
        kwargs["variables"] = {"x": value}
    elif route == "env":
        kwargs["env"] = {"NOMAD_VAR_x": as_text(type_expr, value)}
    else:
        directory: Path = tmp_path_factory.mktemp("vars")
        if route == "json-file":
            var_file = directory / "vars.json"
            var_file.write_text(json.dumps({"x": value}))
        else:
            var_file = directory / "vars.hcl"
            var_file.write_text(f"x = {hcl_literal(value)}\n")
        kwargs["var_files"] = [str(var_file)]
    job = parse_job(text, "hcl", **kwargs)
    got = json.loads(job.task_groups[0].tasks[0].meta["v"])
    assert same(got, value), (type_expr, value, got)


# --- fuzz: random expressions only ever raise JobSpecError --------------------------

FUNCTIONS = [*sorted(all_functions(None)), "nosuch", "try", "can", "convert"]
SCALARS = st.one_of(
    st.integers(-5, 5).map(str),
    st.sampled_from(["1.5", "-0.5", "true", "false", "null", "1e3"]),
    TEXT.map(hcl_string),
    st.sampled_from(["var.s", "var.n", "var.l", "var.m", "var.b", "var.missing", "local.a"]),
    st.sampled_from(["attr.kernel.name", '"${NOMAD_ALLOC_DIR}"', 'env["X"]', "string"]),
)


def _compound(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ops = ["+", "-", "*", "/", "%", "==", "!=", "<", ">=", "&&", "||"]
    return st.one_of(
        st.tuples(st.sampled_from(FUNCTIONS), st.lists(children, max_size=3)).map(
            lambda t: f"{t[0]}({', '.join(t[1])})"
        ),
        st.tuples(children, st.sampled_from(ops), children).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        ),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        st.lists(children, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(NAMES, children), max_size=3).map(
            lambda kv: "{" + ", ".join(f"{k} = {v}" for k, v in kv) + "}"
        ),
        children.map(lambda c: f"[for x in {c} : x]"),
        children.map(lambda c: f"{{for k, v in {c} : k => v...}}"),
        children.map(lambda c: f'"pre-${{{c}}}-post"'),
        children.map(lambda c: f'"%{{ for x in {c} }}${{x}}%{{ endfor }}"'),
        children.map(lambda c: f"{c}[*]"),
        children.map(lambda c: f"{c}[0]"),
        children.map(lambda c: f"{c}.name"),
        children.map(lambda c: f"-{c}"),
        children.map(lambda c: f"!{c}"),
    )


EXPRESSIONS = st.recursive(SCALARS, _compound, max_leaves=8)
FIELDS = ["group_count", "meta", "env", "config", "local", "cpu", "region"]

VARIABLES = """
variable "s" {
  default = "text"
}
variable "n" {
  type    = number
  default = 2
}
variable "l" {
  type    = list(string)
  default = ["a", "b"]
}
variable "m" {
  type    = map(number)
  default = { a = 1 }
}
variable "b" {
  type    = bool
  default = true
}
"""


def fuzz_job(expr: str, field: str) -> str:
    """A job file with `expr` in one field (or in a local the task's meta reads)."""
    top = VARIABLES
    if field == "local":
        top += "locals {\n  a = " + expr + "\n}\n"
        return job_file(top=top, task="meta = { a = local.a }")
    if field == "group_count":
        return job_file(top=top, group=f"count = {expr}")
    if field == "region":
        return job_file(top=top, job=f"region = {expr}")
    if field == "cpu":
        return job_file(top=top, task=f"resources {{\n cpu = {expr}\n}}")
    text = job_file(top=top, task=f"{field} = {{ x = {expr} }}")
    if field == "config":  # the one from job_file would be a duplicate
        text = text.replace('config { command = "/bin/true" }', "", 1)
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    expr=EXPRESSIONS,
    field=st.sampled_from(FIELDS),
    cli=st.lists(st.tuples(st.sampled_from(["s", "n", "l", "b", "zz"]), TEXT), max_size=2),
)
def test_random_expressions_raise_only_jobspec_errors(
    expr: str, field: str, cli: list[tuple[str, str]]
) -> None:
    text = fuzz_job(expr, field)
    try:
        parse_job(text, "hcl", variables=[f"{k}={v}" for k, v in cli])
    except JobSpecError as err:
        assert err.message


HCL_PIECES = st.sampled_from(
    [
        'job "j" {',
        "}",
        "{",
        'group "g" {',
        'task "t" {',
        'driver = "d"',
        "count = ",
        "${",
        "%{",
        '"',
        "<<EOT\n",
        "EOT\n",
        "\n",
        "var.",
        "local.",
        "locals {",
        'variable "v" {',
        "[",
        "]",
        "(",
        ")",
        "for x in",
        ":",
        "=>",
        "...",
        "?",
        "#",
        "/*",
        "*/",
        "upper(",
        ",",
        "1",
        "-",
    ]
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(HCL_PIECES, max_size=30))
def test_random_text_raises_only_jobspec_errors(pieces: list[str]) -> None:
    try:
        parse_job(" ".join(pieces), "hcl")
    except JobSpecError as err:
        assert err.message
