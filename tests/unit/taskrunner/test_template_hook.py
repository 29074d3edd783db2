"""The template hook through real TaskRunners and raw_exec: the task reads what its
templates rendered (files with their perms, env files), and a template that cannot be
rendered fails the task with the "Template" event before it starts."""

from __future__ import annotations

import stat

import pytest

from allocrunner.structs.job import Template
from allocrunner.structs.task_state import EVENT_STARTED
from allocrunner.taskrunner.template_hook import EVENT_TEMPLATE
from allocrunner.testing import mock_alloc, mock_job, mock_task
from tests.unit.taskrunner.conftest import NO_RESTARTS, event_types, wait_state


def sh_task(script: str, *templates: Template):
    return mock_task(
        driver="raw_exec",
        config={"command": "/bin/sh", "args": ["-c", script]},
        templates=templates,
    )


def batch(*tasks):
    return mock_job(*tasks, job_type="batch", restart_policy=NO_RESTARTS)


def stdout_of(tr) -> str:
    return (tr.task_dir.logs_dir / f"{tr.name}.stdout.0").read_text()


def test_the_task_reads_the_rendered_file(harness) -> None:
    template = Template(
        embedded_tmpl='task={{ env "NOMAD_TASK_NAME" }} up={{ "x" | toUpper }}',
        dest_path="local/out.txt",
        perms="0600",
    )
    tr = harness.runner(mock_alloc(job=batch(sh_task("cat local/out.txt", template))))
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)
    assert stdout_of(tr) == "task=web up=X"
    written = tr.task_dir.dir / "local" / "out.txt"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_an_env_template_sets_the_task_environment(harness) -> None:
    template = Template(
        embedded_tmpl='GREETING=hello\nWHO="{{ env "NOMAD_TASK_NAME" }}"\n',
        dest_path="secrets/app.env",
        envvars=True,
    )
    tr = harness.runner(mock_alloc(job=batch(sh_task('echo "$GREETING $WHO"', template))))
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)
    assert stdout_of(tr) == "hello web\n"


def test_custom_delimiters_and_a_source_file(harness) -> None:
    # A source relative to the task dir: written by an earlier template.
    first = Template(
        embedded_tmpl="[[ 1 ]] {{ literal }}",
        dest_path="local/in.tpl",
        left_delim="<<",
        right_delim=">>",
    )
    second = Template(
        source_path="local/in.tpl",
        dest_path="local/out.txt",
        left_delim="[[",
        right_delim="]]",
    )
    job = batch(sh_task("cat local/out.txt", first, second))
    tr = harness.runner(mock_alloc(job=job))
    st = wait_state(tr, "dead")
    assert st.successful(), event_types(st)
    assert stdout_of(tr) == "1 {{ literal }}"


@pytest.mark.parametrize(
    ("template", "why"),
    [
        (Template(embedded_tmpl="{{ nosuchfunc }}", dest_path="local/x"), "nosuchfunc"),
        (Template(embedded_tmpl="{{ if }}", dest_path="local/x"), "missing value for if"),
        (Template(source_path="local/none.tpl", dest_path="local/x"), "cannot read source"),
        (Template(embedded_tmpl="x", dest_path="../../../etc/x"), "escapes the allocation"),
        (Template(source_path="/etc/hostname", dest_path="local/x"), "outside the allocation"),
        (Template(source_path="../../../../etc/hostname", dest_path="local/x"), "outside the"),
    ],
)
def test_a_template_that_cannot_be_rendered_fails_the_task(harness, template, why) -> None:
    tr = harness.runner(mock_alloc(job=batch(sh_task("true", template))))
    st = wait_state(tr, "dead")
    assert st.failed
    types = event_types(st)
    assert EVENT_TEMPLATE in types and EVENT_STARTED not in types, types
    event = next(e for e in st.events if e.type == EVENT_TEMPLATE)
    assert event.display_message.startswith("Failed Template Rendering: template[0]: ")
    assert why in event.display_message


def test_an_escaping_destination_makes_no_directory_outside(harness, tmp_path) -> None:
    outside = tmp_path / "made-by-the-hook"
    depth = "../" * 12
    template = Template(embedded_tmpl="x", dest_path=f"{depth}{outside}/x")
    tr = harness.runner(mock_alloc(job=batch(sh_task("true", template))))
    assert wait_state(tr, "dead").failed
    assert not outside.exists()
