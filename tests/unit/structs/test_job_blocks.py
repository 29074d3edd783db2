"""The job blocks the runtime acts on: Nomad's defaults, and values that never change."""

from __future__ import annotations

import attrs
import pytest

from allocrunner import Constraint, NetworkResource, Port, TaskArtifact, Template
from allocrunner.structs import Job, Resources, Task, TaskGroup
from allocrunner.structs.job import default_artifact_dest


def test_template_defaults_are_nomads() -> None:
    template = Template(embedded_tmpl="x", dest_path="local/x")
    assert template.change_mode == "restart"
    assert template.perms == "0644" and template.mode_bits() == 0o644
    assert (template.left_delim, template.right_delim) == ("{{", "}}")
    assert template.splay == 5.0
    assert (template.envvars, template.err_missing_key) == (False, False)
    assert (template.data, template.destination) == ("x", "local/x")


def test_artifact_defaults_and_destinations() -> None:
    artifact = TaskArtifact("https://example.com/app.tgz")
    assert artifact.getter_mode == "any"
    assert artifact.relative_dest == "local/"
    assert default_artifact_dest("https://example.com/bin/tool", "file") == "local/tool"
    assert default_artifact_dest("https://example.com/bin/tool", "dir") == "local/"


def test_constraint_reads_as_nomad_prints_it() -> None:
    assert str(Constraint("${attr.kernel.name}", "linux", "=")) == "${attr.kernel.name} = linux"
    assert Constraint().operand == "="


def test_network_lists_static_then_dynamic_ports() -> None:
    network = NetworkResource(
        reserved_ports=[Port("http", 8080)], dynamic_ports=[Port("db", to=5432)]
    )
    assert network.mode == "host"
    assert [p.label for p in network.ports()] == ["http", "db"]
    assert network.ports()[1].host_network == "default"


def test_new_fields_default_to_nothing() -> None:
    job = Job(id="j", task_groups=[TaskGroup("g", tasks=[Task("t", "raw_exec")])])
    group = job.task_groups[0]
    task = group.tasks[0]
    assert job.constraints == group.constraints == task.constraints == ()
    assert group.networks == () and group.max_run_duration == 0.0
    assert task.templates == () and task.artifacts == ()
    assert Resources().cores == 0


def test_blocks_are_frozen_and_hashable() -> None:
    task = Task(
        "t",
        "raw_exec",
        templates=[Template(embedded_tmpl="x", dest_path="local/x")],
        artifacts=[TaskArtifact("https://x/y", getter_options={"checksum": "md5:00"})],
        constraints=[Constraint("a", "b")],
    )
    assert isinstance(task.templates, tuple) and isinstance(task.artifacts, tuple)
    hash(task)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        task.templates[0].dest_path = "elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        task.artifacts[0].getter_options["checksum"] = "x"  # type: ignore[index]
