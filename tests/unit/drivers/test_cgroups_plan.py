"""The agent-side cgroup plan of a raw_exec task, and the spawner's making of a cgroup,
over fake cgroup trees (plain directories)."""

from __future__ import annotations

from pathlib import Path

import pytest

from allocrunner.drivers import spawner
from allocrunner.drivers._cgroups import CgroupPlan, host_mode, memory_max_bytes, plan_cgroup
from allocrunner.structs.job import Resources

MB = 1024 * 1024


def fake_v2(root: Path) -> Path:
    root.mkdir()
    (root / "cgroup.controllers").write_text("memory pids\n")
    (root / "cgroup.procs").write_text("")
    return root


def fake_cgroup(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.procs").write_text("")
    return path


def fake_v1_group(root: Path, controller: str, name: str) -> Path:
    """`name` below a fake v1 controller mount (itself a cgroup, as a mount root is)."""
    fake_cgroup(root / controller)
    return fake_cgroup(root / controller / name)


def plan(root: Path, **kwargs: object) -> tuple[CgroupPlan | None, str]:
    fields: dict[str, object] = {
        "root": str(root),
        "mode": host_mode(str(root)),
        "alloc_id": "a1",
        "task_name": "web",
        "resources": Resources(memory_mb=300),
        "v1_override": None,
        "v2_override": "",
    }
    fields.update(kwargs)
    return plan_cgroup(**fields)  # type: ignore[arg-type]


def test_host_modes(tmp_path: Path) -> None:
    assert host_mode(str(fake_v2(tmp_path / "v2"))) == "v2"
    fake_v1_group(tmp_path / "v1", "pids", "app")
    assert host_mode(str(tmp_path / "v1")) == "v1"
    assert host_mode(str(tmp_path / "none")) == ""


def test_a_task_gets_its_own_scope_with_its_memory_limit(tmp_path: Path) -> None:
    root = fake_v2(tmp_path / "cg")
    made, warning = plan(root)
    scope = str(root / "nomad.slice" / "a1.web.scope")
    assert warning == ""
    assert made == CgroupPlan(
        joins=((str(root), "", scope),), create=scope, memory_max=str(300 * MB)
    )


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (Resources(memory_mb=300), str(300 * MB)),
        (Resources(memory_mb=300, memory_max_mb=600), str(600 * MB)),
        (Resources(memory_mb=300, memory_max_mb=-1), "max"),
        (Resources(memory_mb=0), ""),
    ],
)
def test_memory_max_is_memory_max_else_memory(resources: Resources, expected: str) -> None:
    assert memory_max_bytes(resources) == expected


@pytest.mark.parametrize("spelled", ["custom.slice/app", "/custom.slice/app", "ROOT"])
def test_a_v2_override_is_joined_relative_to_the_root_or_as_is(
    tmp_path: Path, spelled: str
) -> None:
    root = fake_v2(tmp_path / "cg")
    target = fake_cgroup(root / "custom.slice" / "app")
    override = str(target) if spelled == "ROOT" else spelled
    made, warning = plan(root, v2_override=override)
    assert warning == ""
    assert made == CgroupPlan(joins=((str(root), "", str(target)),))


@pytest.mark.parametrize(
    ("override", "problem"),
    [("missing", "is not a cgroup"), ("../../etc", "is outside")],
)
def test_a_v2_override_that_cannot_be_joined_is_a_warning(
    tmp_path: Path, override: str, problem: str
) -> None:
    made, warning = plan(fake_v2(tmp_path / "cg"), v2_override=override)
    assert made is None and "not applied" in warning and problem in warning


def test_v1_overrides_are_joined_per_controller(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    pids = fake_v1_group(root, "pids", "app")
    cpu = fake_v1_group(root, "cpu", "app")
    made, warning = plan(root, v1_override={"pids": "/app", "cpu": "app"})
    assert warning == ""
    assert made == CgroupPlan(
        joins=((str(root / "cpu"), "cpu", str(cpu)), (str(root / "pids"), "pids", str(pids)))
    )


def test_one_missing_v1_controller_means_no_join_at_all(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    fake_v1_group(root, "pids", "app")
    made, warning = plan(root, v1_override={"pids": "/app", "memory": "/app"})
    assert made is None and "memory" in warning


def test_an_override_of_the_other_version_is_a_warning(tmp_path: Path) -> None:
    made, warning = plan(fake_v2(tmp_path / "cg"), v1_override={"pids": "/app"})
    assert made is None and "not cgroup v1" in warning


def test_make_cgroup_makes_parent_and_scope_and_writes_the_limit(tmp_path: Path) -> None:
    scope = tmp_path / "nomad.slice" / "a1.web.scope"
    warnings: list[str] = []
    made = spawner._make_cgroup({"create": str(scope), "memory_max": "1024"}, warnings)
    assert made == str(scope) and scope.is_dir()
    assert warnings == [f"memory limit not applied: no memory controller in {scope.parent}"]
    (scope / "memory.max").write_text("max")
    assert spawner._make_cgroup({"create": str(scope), "memory_max": "1024"}, []) == str(scope)
    assert (scope / "memory.max").read_text() == "1024"


def test_remove_cgroup_of_a_gone_cgroup_is_done(tmp_path: Path) -> None:
    assert spawner.remove_cgroup(str(tmp_path / "gone"))
    (tmp_path / "empty").mkdir()
    assert spawner.remove_cgroup(str(tmp_path / "empty"))
    assert not (tmp_path / "empty").exists()
