"""Nomad `template` blocks: a Go text/template engine with consul-template's functions.

Public API:
- `render(text, *, env, left, right, data, ...)` renders one template to a string;
- `consul_or_vault_functions(text, left, right)` names the Consul/Vault/Nomad-API
  functions a template calls (found by parsing, before any rendering);
- `unsupported_functions(text, left, right)` names functions this client refuses;
- `parse_dotenv(text)` reads `env = true` output as environment variables;
- `TemplateError` (an AllocRunnerError) and `DotenvError`.

Rendering is a pure function of its arguments: parse into immutable trees, then walk
them with a fresh executor. Threads: none of its own; safe to call from any thread
at once. Locks: none (nothing is shared between calls). Owner: called by the task
runner's template hook and by the job loader's validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from allocrunner.template.analysis import function_calls
from allocrunner.template.builtins import BUILTINS
from allocrunner.template.dotenv import parse_dotenv
from allocrunner.template.errors import DotenvError, TemplateError
from allocrunner.template.execute import execute
from allocrunner.template.functions import (
    CONSUL_VAULT_FUNCTIONS,
    DISABLED_FUNCTIONS,
    HELPERS,
    UNSUPPORTED_FUNCTIONS,
)
from allocrunner.template.parser import Tree, parse
from allocrunner.template.registry import GoFunc
from allocrunner.template.sprig import SPRIG, UNSUPPORTED_SPRIG_FUNCTIONS

__all__ = [
    "CONSUL_VAULT_FUNCTIONS",
    "FUNCTIONS",
    "DotenvError",
    "MissingKey",
    "TemplateError",
    "consul_or_vault_functions",
    "parse_dotenv",
    "render",
    "unsupported_functions",
]

DEFAULT_NAME = "template"
MissingKey = Literal["default", "zero", "error"]
FUNCTIONS: Mapping[str, GoFunc] = {**SPRIG, **HELPERS, **BUILTINS}


def _known(name: str) -> bool:
    return name in FUNCTIONS or name in CONSUL_VAULT_FUNCTIONS


def _parse(text: str, name: str, left: str, right: str) -> dict[str, Tree]:
    try:
        return parse(text, name, left=left, right=right, known=_known)
    except RecursionError:
        raise TemplateError(f"template: {name}: nesting too deep") from None


def consul_or_vault_functions(text: str, left: str = "{{", right: str = "}}") -> set[str]:
    """Names of the Consul, Vault and Nomad-API functions the template calls.

    Raises TemplateError when the template does not parse."""
    trees = _parse(text, DEFAULT_NAME, left, right)
    return {name for name, _ in function_calls(trees) if name in CONSUL_VAULT_FUNCTIONS}


def unsupported_functions(text: str, left: str = "{{", right: str = "}}") -> set[str]:
    """Names of functions the template calls that this client refuses to run (disabled
    by Nomad's default denylist, or needing facilities this client does not offer)."""
    trees = _parse(text, DEFAULT_NAME, left, right)
    refused = DISABLED_FUNCTIONS | UNSUPPORTED_FUNCTIONS | UNSUPPORTED_SPRIG_FUNCTIONS
    return {name for name, _ in function_calls(trees) if name in refused}


def render(
    text: str,
    *,
    env: Mapping[str, str],
    left: str = "{{",
    right: str = "}}",
    data: Any = None,
    name: str = DEFAULT_NAME,
    error_on_missing_key: bool = False,
    now: datetime | None = None,
    missing_key: MissingKey | None = None,
) -> str:
    """Render a template; `env` is the task environment that `env "X"` reads.

    A map key that is absent behaves as Nomad's templates do: the zero value (printed
    `<no value>`, and a further field of it is an error), or an error when
    `error_on_missing_key` is set. `missing_key` overrides with Go's own option names
    ("default" is text/template's out-of-the-box behaviour)."""
    trees = _parse(text, name, left or "{{", right or "}}")
    for function, line in function_calls(trees):
        if function in CONSUL_VAULT_FUNCTIONS:
            raise TemplateError(
                f'template: {name}:{line}: function "{function}" needs Consul, Vault or '
                "the Nomad API, which this client does not offer"
            )
    moment = now if now is not None else datetime.now().astimezone()
    return execute(
        trees,
        name,
        data,
        funcs=FUNCTIONS,
        env=env,
        now=moment,
        missing_key=missing_key or ("error" if error_on_missing_key else "zero"),
    )
