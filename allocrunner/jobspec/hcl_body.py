"""A Nomad HCL2 job file evaluated to plain values, the shape python-hcl2's `loads` gives.

`evaluate_file(text, options)` parses the file, resolves its variables and locals
(hcl_vars), then evaluates every attribute of the `job` block in that scope: the result
is `{"job": [{"<id>": {...}}]}` where an attribute is its value and a block is a list of
dicts marked `"__is_block__": True` (labels nest as one-key dicts), which hcl.py's
converter turns into API JSON. `dynamic "<type>" { for_each, iterator, labels, content
}` blocks are expanded; a job-level `task "x"` becomes a group "x" holding that task, as
Nomad's jobspec2 does. Errors are JobSpecErrors naming the field (`job.group[web].count`).

No threads, no locks; pure apart from reading var files and files the job's functions
ask for. Called by `hcl_to_api`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
from lark import Tree

from allocrunner.errors import JobSpecError
from allocrunner.jobspec.hcl_eval import EvalError, Scope, evaluate
from allocrunner.jobspec.hcl_functions_ext import all_functions
from allocrunner.jobspec.hcl_tree import Attribute, Block, body_items, file_body, parse_file
from allocrunner.jobspec.hcl_vars import (
    ValueSources,
    declarations,
    resolve_locals,
    resolve_variables,
)

__all__ = ["BLOCK_MARK", "EvalOptions", "evaluate_file"]

BLOCK_MARK = "__is_block__"
_TOP_LEVEL = frozenset({"job", "variable", "variables", "locals"})
_MAP_BLOCKS = frozenset({"config", "env", "meta"})  # their attributes are map entries
# Unlabelled blocks that may repeat (hcl_specs' `lists`): errors name each by its index,
# `template[1].data`, as the conversion and the job checks do.
_LIST_BLOCKS = frozenset({"artifact", "constraint", "network", "template"})


@attrs.frozen
class EvalOptions:
    """Immutable. Variable values and where file functions may read."""

    sources: ValueSources = attrs.field(factory=ValueSources)
    base_dir: str | None = None


def evaluate_file(text: str, options: EvalOptions, warnings: list[str]) -> dict[str, Any]:
    """The job file's top-level blocks as plain values; `warnings` gets what it notes."""
    items = body_items(file_body(parse_file(text)), text)
    for item in items:
        if isinstance(item, Attribute):
            raise JobSpecError(
                item.name, "unsupported top-level attribute: a job file holds blocks"
            )
        if item.type not in _TOP_LEVEL:
            raise JobSpecError(
                item.type,
                "unsupported top-level block: a job file holds one job block "
                "(and variable, variables, locals blocks)",
            )
    decls = declarations(items)
    for item in items:
        if isinstance(item, Block) and item.type == "variable" and _is_sensitive(item):
            warnings.append(
                f"variable[{item.labels[0]}].sensitive: accepted, but values are not redacted"
            )
    functions = Scope(functions=all_functions(options.base_dir))
    variables = resolve_variables(decls, options.sources, functions)
    base = Scope({"var": variables}, functions.functions, keep_unknown=True)
    local_values = resolve_locals(items, base)
    scope = base.with_names({"local": local_values})
    jobs: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, Block) and item.type == "job":
            if len(item.labels) != 1:
                raise JobSpecError("job", 'job block needs a name label: job "<id>" {…}')
            body = _body(item.body, item.text, scope, "job")
            jobs.append(_nest(item.labels, _tasks_as_groups(body)))
    return {"job": jobs} if jobs else {}


def _is_sensitive(block: Block) -> bool:
    items = body_items(block.body, block.text)
    return bool(block.labels) and any(
        isinstance(a, Attribute) and a.name == "sensitive" for a in items
    )


def _body(
    body: Tree, text: str, scope: Scope, path: str, *, entries: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    blocks: set[str] = set()
    for item in body_items(body, text):
        if isinstance(item, Attribute):
            where = f"{path}[{item.name}]" if entries else f"{path}.{item.name}"
            if item.name in out:
                kind = "block and attribute" if item.name in blocks else "attribute"
                raise JobSpecError(where, f"duplicate {kind} {item.name!r}")
            out[item.name] = _value(item, scope, where)
            continue
        if item.type == "dynamic":
            for block_type, expanded in _dynamic(item, scope, path):
                _add_block(out, blocks, block_type, expanded, path)
            continue
        inner = _body(
            item.body,
            item.text,
            scope,
            f"{path}.{item.type}{_block_suffix(item, out)}",
            entries=item.type in _MAP_BLOCKS and not item.labels,
        )
        _add_block(out, blocks, item.type, _nest(item.labels, inner), path)
    return out


def _block_suffix(item: Block, out: Mapping[str, Any]) -> str:
    """What follows a block's type in its path: its labels, or for an unlabelled block
    that may repeat its index among the blocks of its type so far."""
    if not item.labels and item.type in _LIST_BLOCKS:
        earlier = out.get(item.type)
        return f"[{len(earlier) if isinstance(earlier, list) else 0}]"
    return "".join(f"[{label}]" for label in item.labels)


def _add_block(
    out: dict[str, Any], blocks: set[str], block_type: str, block: dict[str, Any], path: str
) -> None:
    if block_type in out and block_type not in blocks:
        raise JobSpecError(
            f"{path}.{block_type}", f"{block_type!r} is set both as an attribute and as a block"
        )
    blocks.add(block_type)
    out.setdefault(block_type, []).append(block)


def _nest(labels: tuple[str, ...] | list[str], body: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = {**body, BLOCK_MARK: True}
    for label in reversed(labels):
        node = {label: node}
    return node


def _value(attr: Attribute, scope: Scope, path: str) -> Any:
    try:
        return evaluate(attr.expr, scope)
    except EvalError as err:
        raise JobSpecError(path, str(err)) from None
    except JobSpecError as err:  # a template or heredoc that does not parse
        raise JobSpecError(path, err.message) from None


def _dynamic(block: Block, scope: Scope, path: str) -> list[tuple[str, dict[str, Any]]]:
    """The blocks one `dynamic "<type>" {...}` block stands for."""
    if len(block.labels) != 1:
        raise JobSpecError(f"{path}.dynamic", 'dynamic block needs one label: dynamic "<type>"')
    block_type = block.labels[0]
    where = f"{path}.dynamic[{block_type}]"
    attrs_ = {a.name: a for a in body_items(block.body, block.text) if isinstance(a, Attribute)}
    contents = [b for b in body_items(block.body, block.text) if isinstance(b, Block)]
    if "for_each" not in attrs_:
        raise JobSpecError(f"{where}.for_each", "missing required argument")
    if len(contents) != 1 or contents[0].type != "content":
        raise JobSpecError(f"{where}.content", "a dynamic block holds exactly one content block")
    iterator = block_type
    if "iterator" in attrs_:
        iterator = _iterator_name(attrs_["iterator"], f"{where}.iterator")
    collection = _value(attrs_["for_each"], scope, f"{where}.for_each")
    out: list[tuple[str, dict[str, Any]]] = []
    for key, value in _pairs(collection, f"{where}.for_each"):
        inner = scope.with_names({iterator: {"key": key, "value": value}})
        labels: list[str] = []
        if "labels" in attrs_:
            raw = _value(attrs_["labels"], inner, f"{where}.labels")
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                raise JobSpecError(f"{where}.labels", "labels must be a list of strings")
            labels = raw
        label_path = "".join(f"[{label}]" for label in labels)
        content = contents[0]
        body = _body(content.body, content.text, inner, f"{path}.{block_type}{label_path}")
        out.append((block_type, _nest(labels, body)))
    return out


def _iterator_name(attr: Attribute, path: str) -> str:
    node = attr.expr.node
    while isinstance(node, Tree) and node.data == "expr_term" and len(node.children) == 1:
        node = node.children[0]
    if isinstance(node, Tree) and node.data == "identifier":
        return str(node.children[0])
    raise JobSpecError(path, "iterator must be a name")


def _pairs(collection: Any, path: str) -> list[tuple[Any, Any]]:
    if isinstance(collection, list):
        return list(enumerate(collection))
    if isinstance(collection, Mapping):
        return [(k, collection[k]) for k in sorted(collection)]
    raise JobSpecError(path, "for_each must be a list, set, map or object")


def _tasks_as_groups(job: dict[str, Any]) -> dict[str, Any]:
    """A job body whose job-level `task "x"` blocks are each a group "x" of one task."""
    tasks = job.get("task")
    if not isinstance(tasks, list):
        return job
    out = {k: v for k, v in job.items() if k != "task"}
    groups = list(out.get("group", [])) if isinstance(out.get("group"), list) else []
    for task in tasks:
        if not (isinstance(task, dict) and len(task) == 1):
            raise JobSpecError("job.task", 'task block needs a name label: task "<name>" {…}')
        ((name, _),) = task.items()
        groups.append({name: {"task": [task], BLOCK_MARK: True}})
    out["group"] = groups
    return out
