"""Properties of rendering: text without delimiters is itself, and any text can be
written through a template by quoting it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from allocrunner.template import render
from allocrunner.template.gofmt import go_quote

DELIMS = st.sampled_from([("{{", "}}"), ("[[", "]]"), ("<%", "%>"), ("{%", "%}")])


@given(st.text(), DELIMS)
def test_text_without_delimiters_renders_to_itself(text: str, delims: tuple[str, str]) -> None:
    left, right = delims
    text = text.replace(left, "")
    assert render(text, env={}, left=left, right=right) == text


@given(st.text())
def test_quoted_string_action_prints_its_text(text: str) -> None:
    assert render("{{" + go_quote(text) + "}}", env={}) == text


@given(st.text(alphabet=st.characters(exclude_characters="`\r")))
def test_raw_string_action_prints_its_text(text: str) -> None:
    assert render("{{`" + text + "`}}", env={}) == text


@given(st.text(alphabet="{}ab \n-/*"))
def test_braces_escaped_as_strings_survive(text: str) -> None:
    """Writing every `{` as `{{"{"}}` reproduces any text, delimiters included."""
    escaped = text.replace("{", '{{"{"}}')
    assert render(escaped, env={}) == text


def test_delimiter_escape_from_the_docs() -> None:
    assert render('{{"{{"}} .Foo {{"}}"}}', env={}) == "{{ .Foo }}"


@given(
    st.dictionaries(st.text(alphabet="abcxyz", min_size=1, max_size=4), st.integers(), max_size=5)
)
def test_range_over_a_map_visits_sorted_keys(mapping: dict[str, int]) -> None:
    out = render("{{range $k, $v := .}}{{$k}}={{$v}};{{end}}", env={}, data=mapping)
    assert out == "".join(f"{k}={mapping[k]};" for k in sorted(mapping))


@given(st.integers(min_value=-(2**62), max_value=2**62))
def test_integer_literals_print_as_written(n: int) -> None:
    assert render("{{" + str(n) + "}}", env={}) == str(n)


def test_concurrent_renders_do_not_share_state() -> None:
    """Rendering is a pure function: parallel renders with their own data and scratch
    never see each other's values."""
    from concurrent.futures import ThreadPoolExecutor

    text = (
        '{{ scratch.Set "me" .id }}{{ range loop 20 }}{{ $.id }}{{ end }}'
        '|{{ scratch.Get "me" }}|{{ env "WHO" }}'
    )

    def job(n: int) -> tuple[int, str]:
        return n, render(text, env={"WHO": f"w{n}"}, data={"id": n})

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(job, range(40)))
    for n, out in results:
        assert out == str(n) * 20 + f"|{n}|w{n}"
