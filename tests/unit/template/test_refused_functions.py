"""Templates that need Consul, Vault or the Nomad API are found before rendering."""

from __future__ import annotations

import pytest

from allocrunner.template import (
    CONSUL_VAULT_FUNCTIONS,
    TemplateError,
    consul_or_vault_functions,
    render,
    unsupported_functions,
)


def test_plain_template_needs_nothing() -> None:
    assert consul_or_vault_functions('{{ env "X" | toUpper }}', "{{", "}}") == set()


def test_finds_functions_everywhere() -> None:
    text = """
{{ key "service/my-key" }}
{{ if keyOrDefault "a" "b" }}{{ end }}
{{ range service "redis" }}{{ .Address }}{{ end }}
{{ with secret "secret/geo-api-key" }}{{ .Data.value }}{{ end }}
{{ define "t" }}{{ range nomadService "api" }}{{ end }}{{ end }}
{{ block "b" . }}{{ (nomadVar "nomad/jobs").x }}{{ end }}
{{ printf "%s" (ls "prefix") }}
{{ tree "x" | len }}
"""
    assert consul_or_vault_functions(text, "{{", "}}") == {
        "key",
        "keyOrDefault",
        "service",
        "secret",
        "nomadService",
        "nomadVar",
        "ls",
        "tree",
    }


def test_strings_and_fields_named_like_functions_do_not_count() -> None:
    text = '{{ "key" }} {{ .key }} {{ $key := 1 }}{{ $key }} {{/* secret */}}'
    assert consul_or_vault_functions(text, "{{", "}}") == set()


def test_custom_delimiters() -> None:
    assert consul_or_vault_functions('[[ key "x" ]] {{ secret }}', "[[", "]]") == {"key"}


def test_detection_raises_on_syntax_errors() -> None:
    with pytest.raises(TemplateError, match="unclosed action"):
        consul_or_vault_functions("{{ key", "{{", "}}")


def test_render_refuses_before_writing_anything() -> None:
    text = '{{ if false }}{{ key "never-run" }}{{ end }}'
    with pytest.raises(TemplateError, match='function "key" needs Consul, Vault or the Nomad API'):
        render(text, env={})


@pytest.mark.parametrize("name", sorted(CONSUL_VAULT_FUNCTIONS))
def test_every_api_function_is_refused(name: str) -> None:
    assert consul_or_vault_functions("{{ " + name + " }}", "{{", "}}") == {name}


def test_unsupported_functions() -> None:
    text = '{{ plugin "x" }}{{ file "y" }}{{ env "Z" }}'
    assert unsupported_functions(text) == {"plugin", "file"}
