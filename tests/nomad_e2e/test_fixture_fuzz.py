"""Nomad's own e2e job files, mangled: loading raises JobSpecError or succeeds, never
another exception.

Hypothesis takes a copied e2e file and, between random lines, inserts lines of HCL
(variable blocks with random defaults; attributes, `meta`, `env`, `args` and locals that
call functions on variables; dynamic blocks; template blocks of random Go template
tokens, which the job check parses; stray braces and quotes), cutting up to
two lines where it inserts; four variables with random defaults are declared first, so
most function calls get values to work on. Random
`-var` values are passed as the command line would. tests/unit/jobspec fuzzes job files
built from scratch; this starts from real ones, so the mangled text reaches the deeper
blocks (templates, artifacts, networks, constraints) those files carry.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from allocrunner.errors import JobSpecError
from allocrunner.jobspec import parse_job_with_warnings
from allocrunner.jobspec.runnable import ANY_DRIVER
from allocrunner.template import TemplateError, render
from tests.nomad_e2e.helpers import E2E
from tests.nomad_e2e.test_load import JOB_FILES

TEXTS = {relative: (E2E / relative).read_text() for relative in JOB_FILES}

NAMES = st.sampled_from(["X", "Y", "Z", "nodeID", "n", "s", "l", "m"])
VALUES = st.sampled_from(
    ['"a"', "1", "-2.5", "true", "null", '["a", 1]', '{ k = "v" }', '"${1 + 1}"', "[]", "{}"]
)
CALLS = st.sampled_from(
    [
        "upper(var.{v})",
        "length(var.{v})",
        'format("%s-%d", var.{v}, 3)',
        'join(",", var.{v})',
        'lookup(var.{v}, "k", 0)',
        "element(var.{v}, 7)",
        "tonumber(var.{v})",
        "jsonencode(var.{v})",
        "jsondecode(var.{v})",
        "merge(var.{v}, {{}})",
        "concat(var.{v}, [1])",
        'split("-", var.{v})',
        "substr(var.{v}, 1, -1)",
        'regex("[", var.{v})',
        "try(var.{v}.x, 1)",
        "can(var.{v}[0])",
        "coalesce(var.{v}, null)",
        'timeadd(var.{v}, "1h")',
        "cidrhost(var.{v}, 300)",
        "range(var.{v})",
        "file(var.{v})",
        'var.{v} ? 1 : "a"',
        "[for x in var.{v} : x if x]",
        "{{for k, x in var.{v} : k => x...}}",
        "var.{v}[*].id",
    ]
)


TEMPLATE_TOKENS = st.sampled_from(
    [
        "{{",
        "}}",
        "{{ end }}",
        '{{ env "NOMAD_TASK_NAME" }}',
        '{{ range $i, $e := split "," "a,b" }}',
        "{{ if eq 1 1 }}",
        "{{ else }}",
        '{{ printf "%d-%s" 1 "a" }}',
        "{{ .Missing }}",
        "{{/* comment */}}",
        "{{- 1 -}}",
        "{{ with $x := 1 }}",
        '{{ define "t" }}',
        '{{ template "t" }}',
        '{{ block "b" . }}',
        '{{ parseInt "x" }}',
        '{{ "a" | toUpper }}',
        "{{ index . 3 }}",
        "{{ $y }}",
        "{{ len 3 }}",
        '{{ key "a" }}',
        "text",
        "$",
        "|",
        "(",
        ")",
    ]
)


@st.composite
def template_block(draw: st.DrawFn) -> str:
    """A task's template block whose text is a random run of Go template tokens."""
    data = "".join(draw(st.lists(TEMPLATE_TOKENS, max_size=8)))
    return f'  template {{\n    data = <<EOT\n{data}\nEOT\n    destination = "local/t"\n  }}\n'


@st.composite
def pieces(draw: st.DrawFn) -> str:
    """Lines of HCL, each valid somewhere in a job file (and out of place elsewhere)."""
    name = draw(NAMES)
    call = draw(CALLS).format(v=name)
    kind = draw(st.integers(0, 8))
    if kind == 8:
        return draw(template_block())
    if kind == 0:
        return f'variable "{name}" {{\n  default = {draw(VALUES)}\n}}\n'
    if kind == 1:
        return f'  {name.lower()}_arg = "${{{call}}}"\n'
    if kind == 2:
        return f"locals {{\n  {name.lower()} = {call}\n}}\n"
    if kind == 3:
        body = 'content {\n    driver = "x"\n  }'
        return f'dynamic "task" {{\n  for_each = var.{name}\n  {body}\n}}\n'
    if kind == 4:
        return draw(st.sampled_from(["{", "}", '"', "${", "%{", "<<EOF", "=", "[", "#"])) + "\n"
    if kind == 5:
        return f"  meta {{\n    k = {call}\n  }}\n"
    if kind == 6:
        return f"  env {{\n    K = {call}\n  }}\n"
    return f"  args = [{call}]\n"


@st.composite
def mangled(draw: st.DrawFn) -> str:
    """A copied e2e file with pieces inserted between its lines and lines cut out."""
    lines = TEXTS[draw(st.sampled_from(sorted(TEXTS)))].splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines)))
        cut = draw(st.sampled_from([0, 0, 0, 1, 2]))
        lines[at : at + cut] = [draw(pieces())]
    declared = "".join(f'variable "{name}" {{\n  default = {draw(VALUES)}\n}}\n' for name in "nslm")
    return declared + "".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mangled(), cli=st.lists(st.tuples(NAMES, st.text(max_size=6)), max_size=2))
def test_mangled_e2e_files_raise_only_jobspec_errors(text: str, cli: list[tuple[str, str]]) -> None:
    try:
        job, warnings = parse_job_with_warnings(
            text, "hcl", variables=[f"{k}={v}" for k, v in cli], drivers=ANY_DRIVER
        )
    except JobSpecError as err:
        assert err.message, err
        return
    assert job.task_groups
    assert all(isinstance(w, str) for w in warnings)


ISOLATION = TEXTS["isolation/input/raw_exec.hcl"]
SCRIPT = "#!/usr/bin/env bash\necho my pid is $BASHPID\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=st.lists(TEMPLATE_TOKENS, max_size=10))
def test_random_template_text_in_an_e2e_file_loads_and_renders_or_says_why(
    tokens: list[str],
) -> None:
    """isolation/input/raw_exec.hcl with its template's text replaced: the job loads or
    JobSpecError names the template; what loads renders or raises TemplateError."""
    data = "".join(tokens)
    assert ISOLATION.count(SCRIPT) == 1
    text = ISOLATION.replace(SCRIPT, data + "\n")
    try:
        job, _ = parse_job_with_warnings(text, "hcl")
    except JobSpecError as err:
        assert err.path.startswith("job.group[group].task[bash].template[0]"), err
        return
    [template] = job.task_groups[0].tasks[0].templates
    with contextlib.suppress(TemplateError):
        render(template.embedded_tmpl, env={"NOMAD_TASK_NAME": "bash"})
