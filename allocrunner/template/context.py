"""What a template function may see of the render it runs in.

`RenderContext` carries the task environment for `env`, the render's clock reading for
`timestamp`, the per-render `scratch` store and a callback that renders another named
template (`executeTemplate`). A new context is built for every `render` call.

Threads: none; a context is used by exactly one render call on one thread. Locks:
none. Owner: built by `execute.execute`, handed to functions marked `contextual`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Scratch:
    """consul-template's `scratch`: a key/value store local to one render (its method
    names are Go's, as templates call them)."""

    values: dict[str, Any] = field(default_factory=dict)

    def Key(self, key: str) -> bool:
        return key in self.values

    def Get(self, key: str) -> Any:
        return self.values.get(key)

    def Set(self, key: str, value: Any) -> str:
        self.values[key] = value
        return ""

    def SetX(self, key: str, value: Any) -> str:
        self.values.setdefault(key, value)
        return ""

    def MapSet(self, key: str, mkey: str, value: Any) -> str:
        inner = self.values.setdefault(key, {})
        if isinstance(inner, dict):
            inner[mkey] = value
        return ""

    def MapSetX(self, key: str, mkey: str, value: Any) -> str:
        inner = self.values.setdefault(key, {})
        if isinstance(inner, dict):
            inner.setdefault(mkey, value)
        return ""

    def MapValues(self, key: str) -> list[Any]:
        inner = self.values.get(key)
        if not isinstance(inner, dict):
            return []
        return [inner[k] for k in sorted(inner)]


@dataclass
class RenderContext:
    """The per-render inputs that template functions may read."""

    env: Mapping[str, str]
    now: datetime
    scratch: Scratch
    execute_template: Callable[[str, Any], str]
