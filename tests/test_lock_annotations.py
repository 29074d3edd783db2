"""Static checks of the lock annotations over the whole allocrunner package.

Every module is imported (so modules added later are covered without touching this
file) and every class that tags its fields is checked: a guarded field names a lock
field of the same class, and that lock field is itself tagged immutable (lock fields
are never rebound). The source is parsed to check that every lock is created through
`make_lock` / `make_rwlock` with a literal name declared in `LOCK_ORDER`, that no
other synchronisation object is built by hand outside the toolkit, that each declared
name is documented in `_locking`'s docstring, that `_locked` helpers and `@requires`
go together, and that every field assigned outside ``__init__`` carries a tag. Each
check is a function that is also run on planted bad samples, so none of them can pass
by finding nothing.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap
from collections.abc import Callable, Iterator, Set
from pathlib import Path
from types import ModuleType

import pytest

import allocrunner
from allocrunner import _locking
from allocrunner._locking import LOCK_ORDER, field_tags, guarded, immutable

PACKAGE_DIR = Path(allocrunner.__file__).resolve().parent

# Modules allowed to build locks by hand: the toolkit itself (with the RWLock it is built
# on), and _sync whose primitives own one private leaf lock each (they take no other lock
# under it).
LOCK_BUILDERS = {"_locking.py", "_rwlock.py", "_sync.py"}
# Every threading / queue constructor of something a thread can block on or hold.
# threading.Event is not among them: it is a plain signal that holds nothing a caller
# could keep (set() is notify-only), its waits are checked in check mode like any other
# blocking call, and the package uses it as a resettable "done" signal in a few places
# where `_sync.Event` (set once) does not fit.
RAW_LOCK_CALLS = {
    *("Lock", "RLock", "RWLock", "CheckedLock", "CheckedRWLock", "PrivateCondition"),
    *("Condition", "Semaphore", "BoundedSemaphore", "Barrier", "Timer"),
    *("Queue", "SimpleQueue", "LifoQueue", "PriorityQueue", "JoinableQueue"),
}
# Methods that build their object: a field they assign is its first binding.
INIT_METHODS = {"__init__", "__new__", "__post_init__", "__attrs_post_init__"}
TAG_CALLS = {"guarded", "immutable", "confined"}


# --- the checks ------------------------------------------------------------------------------


def guard_problems(cls: type) -> list[str]:
    """What is wrong with the field tags of `cls`."""
    tags = field_tags(cls)
    problems = []
    for name, tag in tags.items():
        if tag.kind not in ("guarded", "immutable", "confined"):
            problems.append(f"{name}: unknown tag kind {tag.kind!r}")
        if tag.name != name:
            problems.append(f"{name}: tag bound as {tag.name!r} (tag it in the class body)")
        if tag.kind != "guarded":
            continue
        lock_tag = tags.get(tag.lock or "")
        if tag.lock == name:
            problems.append(f"{name} is guarded by itself")
        elif lock_tag is None:
            problems.append(f"{name} is guarded by {tag.lock!r}, which is not a tagged field")
        elif lock_tag.kind != "immutable":
            problems.append(
                f"{name} is guarded by {tag.lock!r}, tagged {lock_tag!r}: a lock field is "
                "never rebound, so it must be immutable()"
            )
    doc = inspect.getdoc(cls) or ""
    if not doc.startswith(("Thread-safe.", "Not thread-safe; owned by")):
        problems.append(
            "a class with tagged fields opens its docstring with 'Thread-safe.' or "
            f"'Not thread-safe; owned by X.' (got {doc[:40]!r})"
        )
    return problems


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def lock_names(tree: ast.AST) -> list[tuple[int, str | None]]:
    """(line, literal name or None) for every make_lock / make_rwlock call in `tree`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node) in ("make_lock", "make_rwlock"):
            arg = node.args[0] if node.args else None
            for keyword in node.keywords:
                if keyword.arg == "name":
                    arg = keyword.value
            literal = (
                arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
            )
            found.append((node.lineno, literal))
    return found


def lock_name_problems(tree: ast.AST) -> list[str]:
    return [
        f"line {line}: {name!r} (a literal name declared in LOCK_ORDER is needed)"
        for line, name in lock_names(tree)
        if name is None or name not in LOCK_ORDER
    ]


def raw_lock_problems(tree: ast.AST) -> list[str]:
    """Locks, conditions, semaphores, barriers and queues built without the toolkit (so
    without a name, a rank or checks): use make_lock / make_rwlock / make_condition, or
    a `_sync` primitive."""
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node) in RAW_LOCK_CALLS:
            bad.append(f"line {node.lineno}: {_call_name(node)}()")
    return bad


def _tag_names(body: list[ast.stmt]) -> set[str]:
    """Names a class body binds to a field tag (``_x = guarded("_lock")``)."""
    names = set()
    for node in body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if isinstance(value, ast.Call) and _call_name(value) in TAG_CALLS:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _assigned_attributes(method: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, int]:
    """Attributes of the method's first argument (``self``) that it (or a function
    nested in it) binds, augments or deletes, with the first line that does."""
    if not method.args.args:
        return {}
    this = method.args.args[0].arg
    found: dict[str, int] = {}
    for node in ast.walk(method):
        if isinstance(node, ast.Assign | ast.Delete):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign | ast.For | ast.AsyncFor):
            targets = [node.target]
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            targets = [node.optional_vars]
        else:
            continue
        while targets:
            target = targets.pop()
            if isinstance(target, ast.Tuple | ast.List):
                targets.extend(target.elts)
            elif isinstance(target, ast.Starred):
                targets.append(target.value)
            elif (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == this
            ):
                found.setdefault(target.attr, target.lineno)
    return found


def _classes(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, ast.ClassDef]]:
    """Every class in `body`, with its qualified name (classes inside functions too)."""
    for node in body:
        if isinstance(node, ast.ClassDef):
            yield f"{prefix}{node.name}", node
            yield from _classes(node.body, f"{prefix}{node.name}.")
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _classes(node.body, f"{prefix}{node.name}.<locals>.")
        elif isinstance(node, ast.If | ast.Try | ast.With):
            children = [
                child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)
            ]
            yield from _classes(children, prefix)


def undeclared_field_problems(
    tree: ast.Module, inherited: Callable[[str], Set[str]] = lambda _: frozenset()
) -> list[str]:
    """Fields assigned outside ``__init__`` that carry no tag. `inherited(qualname)`
    gives the tagged fields a class gets from its bases (from the imported class)."""
    bad = []
    for qualname, cls in _classes(tree.body):
        tagged = _tag_names(cls.body) | set(inherited(qualname))
        for method in cls.body:
            if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if method.name in INIT_METHODS or _decorator_names(method) & {
                "staticmethod",
                "classmethod",
            }:
                continue
            for attr, line in sorted(_assigned_attributes(method).items()):
                if attr not in tagged:
                    bad.append(
                        f"line {line}: {qualname}.{attr} is assigned in {method.name} "
                        "but carries no tag (guarded, immutable or confined)"
                    )
    return bad


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    names = set()
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, ast.Attribute):
            names.add(target.attr)
    return names


def _functions(
    body: list[ast.stmt], public_scope: bool = True
) -> Iterator[tuple[ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """Every function or method, with whether it sits in a public scope (module level,
    or a class whose name does not start with an underscore)."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node, public_scope
            yield from _functions(node.body, public_scope=False)
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, public_scope and not node.name.startswith("_"))
        elif isinstance(node, ast.If | ast.Try | ast.With):
            children = [
                child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)
            ]
            yield from _functions(children, public_scope)


def locked_helper_problems(tree: ast.Module) -> list[str]:
    """`_locked` helpers and `@requires` go together; public API never ends in _locked."""
    bad = []
    for node, public_scope in _functions(tree.body):
        has_requires = "requires" in _decorator_names(node)
        locked_name = node.name.endswith("_locked")
        if locked_name and not has_requires:
            bad.append(f"line {node.lineno}: {node.name} lacks @requires")
        if has_requires and not locked_name:
            bad.append(f"line {node.lineno}: @requires on {node.name} (name it *_locked)")
        if locked_name and public_scope and not node.name.startswith("_"):
            bad.append(f"line {node.lineno}: public API {node.name} ends in _locked")
    return bad


# --- the package -----------------------------------------------------------------------------


def _modules() -> tuple[list[ModuleType], list[str]]:
    """Every module of the package that imports, and the failures of those that do not."""
    modules = [allocrunner]
    failures: list[str] = []

    def on_error(name: str) -> None:
        failures.append(name)

    for info in pkgutil.walk_packages(allocrunner.__path__, "allocrunner.", onerror=on_error):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # running it is its only purpose
        try:
            modules.append(importlib.import_module(info.name))
        except Exception as err:
            failures.append(f"{info.name}: {err!r}")
    return modules, failures


MODULES, IMPORT_FAILURES = _modules()


def _tagged_classes() -> list[type]:
    classes: dict[str, type] = {}
    for module in MODULES:
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == module.__name__ and field_tags(obj):
                classes[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [classes[name] for name in sorted(classes)]


TAGGED = _tagged_classes()


MODULES_BY_NAME = {module.__name__: module for module in MODULES}


def _runtime_tags(module_name: str) -> Callable[[str], Set[str]]:
    """The tagged fields (bases included) of the class `qualname` of a package module."""

    def tags(qualname: str) -> Set[str]:
        obj: object = MODULES_BY_NAME.get(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return frozenset()
        return set(field_tags(obj)) if isinstance(obj, type) else frozenset()

    return tags


SOURCES = {
    str(path.relative_to(PACKAGE_DIR.parent)): ast.parse(path.read_text(), filename=str(path))
    for path in sorted(PACKAGE_DIR.rglob("*.py"))
    if "__pycache__" not in path.parts
}
TOOLKIT = {f"allocrunner/{name}" for name in LOCK_BUILDERS}


def _per_file(check: Callable[[ast.Module], list[str]], skip: Set[str] = frozenset()) -> list[str]:
    return [
        f"{where} {problem}"
        for where, tree in SOURCES.items()
        if where not in skip
        for problem in check(tree)
    ]


def test_every_module_imports() -> None:
    assert not IMPORT_FAILURES, f"modules that do not import: {IMPORT_FAILURES}"


def test_the_whole_package_was_walked() -> None:
    names = {module.__name__ for module in MODULES}
    assert {"allocrunner._locking", "allocrunner._sync", "allocrunner.broadcaster"} <= names
    assert "allocrunner/broadcaster.py" in SOURCES
    assert len(TAGGED) >= 2, "no thread-safe classes found: the walk is broken"


@pytest.mark.parametrize("cls", TAGGED, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_field_tags_are_consistent(cls: type) -> None:
    assert guard_problems(cls) == []


def test_every_lock_name_is_a_declared_literal() -> None:
    assert _per_file(lock_name_problems) == []
    assert any(lock_names(tree) for tree in SOURCES.values())


def test_every_declared_lock_is_documented() -> None:
    doc = _locking.__doc__ or ""
    undocumented = [name for name in LOCK_ORDER if f"``{name}``" not in doc]
    assert not undocumented, (
        f"LOCK_ORDER names without a line in _locking's docstring: {undocumented}"
    )


def test_declared_locks_are_used_or_documented() -> None:
    used = {name for tree in SOURCES.values() for _, name in lock_names(tree)}
    doc = _locking.__doc__ or ""
    orphans = [name for name in LOCK_ORDER if name not in used and f"``{name}``" not in doc]
    assert not orphans, f"declared locks neither used nor documented: {orphans}"


def test_locks_are_built_only_through_the_toolkit() -> None:
    assert _per_file(raw_lock_problems, skip=TOOLKIT) == []


def test_every_field_assigned_outside_init_is_declared() -> None:
    problems = [
        f"{where} {problem}"
        for where, tree in SOURCES.items()
        if where not in TOOLKIT
        for problem in undeclared_field_problems(tree, _runtime_tags(_module_name(where)))
    ]
    assert problems == []


def _module_name(where: str) -> str:
    name = where.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def test_locked_helpers_carry_requires() -> None:
    assert _per_file(locked_helper_problems, skip=TOOLKIT - {"allocrunner/_sync.py"}) == []


# --- the checks catch planted mistakes -------------------------------------------------------


class BadTags:
    """Thread-safe. Planted mistakes: an untagged lock, a mutable lock, a self-guard."""

    _lock = guarded("_other")  # a lock field that may be rebound
    _a = guarded("_lock")
    _b = guarded("_missing")
    _c = guarded("_c")


class NoContract:
    _lock = immutable()
    _x = guarded("_lock")


def test_guard_check_flags_planted_mistakes() -> None:
    problems = " | ".join(guard_problems(BadTags))
    assert "_a is guarded by '_lock', tagged guarded('_other')" in problems
    assert "_b is guarded by '_missing', which is not a tagged field" in problems
    assert "_c is guarded by itself" in problems
    assert "_lock is guarded by '_other', which is not a tagged field" in problems
    assert any("docstring" in p for p in guard_problems(NoContract))


PLANTED_SOURCE = textwrap.dedent(
    """
    import queue
    import threading
    from allocrunner._locking import make_lock, make_rwlock, requires

    NAME = "AllocDir._lock"

    class Planted:
        def __init__(self):
            self._a = make_lock("AllocDir._lock")            # fine
            self._b = make_lock("Nope._lock")                # undeclared
            self._c = make_rwlock(NAME)                      # not a literal
            self._d = threading.Lock()                       # raw lock
            self._e = threading.Condition()                  # hidden lock
            self._f = threading.Condition(self._a)           # not make_condition
            self._g = threading.Semaphore(2)                 # raw semaphore
            self._h = queue.SimpleQueue()                    # raw queue
            self._i = threading.Barrier(2)                   # raw barrier
            self._j = threading.Event()                      # fine: a signal

        @requires("_a")
        def _fine_locked(self): ...

        def _missing_locked(self): ...

        @requires("_a")
        def misnamed(self): ...

        @requires("_a")
        def public_locked(self): ...

    class _Internal:
        @requires("_a")
        def helper_locked(self): ...   # fine: the class is private
    """
)


def test_source_checks_flag_planted_mistakes() -> None:
    tree = ast.parse(PLANTED_SOURCE)
    assert [name for _, name in lock_names(tree)] == ["AllocDir._lock", "Nope._lock", None]
    names = " | ".join(lock_name_problems(tree))
    assert "'Nope._lock'" in names and "None" in names and "AllocDir" not in names
    raw = " | ".join(raw_lock_problems(tree))
    for name in ("Lock()", "Condition()", "Semaphore()", "SimpleQueue()", "Barrier()"):
        assert name in raw, raw
    assert "Event()" not in raw
    assert len(raw_lock_problems(tree)) == 6
    helpers = locked_helper_problems(tree)
    assert len(helpers) == 3, helpers
    joined = " | ".join(helpers)
    assert "_missing_locked lacks @requires" in joined
    assert "@requires on misnamed" in joined
    assert "public API public_locked" in joined


PLANTED_FIELDS = textwrap.dedent(
    """
    from allocrunner._locking import confined, guarded, immutable

    class Tracker:
        _count = confined("task-run")
        _lock = immutable()
        _seen = guarded("_lock")

        def __init__(self):
            self._count = 0
            self._lock = None
            self._seen = ()
            self._policy = "fine: bound in __init__ only"

        def record(self):
            self._count += 1                      # tagged
            self._seen = (*self._seen, 1)         # tagged
            self._failure = True                  # untagged
            self._a, (self._b, *self._c) = 1, (2, 3)   # untagged, nested targets
            del self._policy                      # untagged

        def later(self):
            def inner():
                self._reason = "x"                # untagged, in a nested function
            inner()

        @classmethod
        def build(cls):
            cls.registry = {}                     # a class attribute: not a field

    class Child(Tracker):
        def bump(self):
            self._count = 2                       # tagged in the base class
            self._extra = 1                       # untagged

    def factory():
        class Local:
            def set(self):
                self._x = 1                       # untagged, class inside a function
        return Local
    """
)


def test_undeclared_field_check_flags_planted_mistakes() -> None:
    tree = ast.parse(PLANTED_FIELDS)
    inherited = {"Child": {"_count", "_lock", "_seen"}}
    problems = undeclared_field_problems(tree, lambda name: inherited.get(name, frozenset()))
    flagged = sorted(p.split(": ")[1].split(" is assigned")[0] for p in problems)
    assert flagged == [
        "Child._extra",
        "Tracker._a",
        "Tracker._b",
        "Tracker._c",
        "Tracker._failure",
        "Tracker._policy",
        "Tracker._reason",
        "factory.<locals>.Local._x",
    ], problems
