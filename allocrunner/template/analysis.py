"""Static questions about parsed templates, answered before any rendering.

`function_calls` lists every function identifier a set of trees calls (in `define`d
and `block` templates too), with its position, so the job loader can refuse templates
that need Consul, Vault or the Nomad API, naming the function and its line.

Threads: none. Locks: none. Owner: called by the package API.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from allocrunner.template import nodes as nd
from allocrunner.template.parser import Tree


def _operand_calls(node: nd.Operand) -> Iterator[nd.Identifier]:
    if isinstance(node, nd.Identifier):
        yield node
    elif isinstance(node, nd.Pipeline):
        yield from _pipeline_calls(node)
    elif isinstance(node, nd.Chain):
        yield from _operand_calls(node.node)


def _pipeline_calls(pipe: nd.Pipeline | None) -> Iterator[nd.Identifier]:
    if pipe is None:
        return
    for cmd in pipe.cmds:
        for arg in cmd.args:
            yield from _operand_calls(arg)


def _node_calls(node: nd.Node | None) -> Iterator[nd.Identifier]:
    if isinstance(node, nd.ListNode):
        for child in node.nodes:
            yield from _node_calls(child)
    elif isinstance(node, nd.Action):
        yield from _pipeline_calls(node.pipe)
    elif isinstance(node, nd.Branch):
        yield from _pipeline_calls(node.pipe)
        yield from _node_calls(node.body)
        yield from _node_calls(node.else_list)
    elif isinstance(node, nd.TemplateCall):
        yield from _pipeline_calls(node.pipe)


def function_calls(trees: Mapping[str, Tree]) -> list[tuple[str, int]]:
    """Every (function name, 1-based line) called anywhere in the trees, in source order."""
    found: list[tuple[int, str, int]] = []
    for tree in trees.values():
        for ident in _node_calls(tree.root):
            line = tree.source.count("\n", 0, ident.pos) + 1
            found.append((ident.pos, ident.name, line))
    return [(name, line) for _, name, line in sorted(set(found))]
