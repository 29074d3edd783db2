"""Node attributes on one node: a job pinned to this node by a `${node.unique.id}`
constraint whose value comes from `-var` (as Nomad's e2eutil jobs pin a node) is placed
here, and its task sees ${node.*} and ${attr.*} interpolated in its driver config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nomad_e2e.helpers import Node
from tests.nomad_e2e.test_placement import NODE_JOB

pytestmark = pytest.mark.timeout(60)


def test_a_job_pinned_to_this_node_sees_the_node_in_its_args(node: Node, tmp_path: Path) -> None:
    job = tmp_path / "where.nomad.hcl"
    job.write_text(NODE_JOB)
    [this] = node.n.nodes.get_nodes()
    node.run(job, f"-var=nodeID={this['ID']}", detach=False)
    alloc = node.finished("where", "complete")
    assert alloc["NodeID"] == this["ID"]
    assert node.stdout(alloc["ID"], "task") == f"{this['ID']} {this['Datacenter']} linux\n"
