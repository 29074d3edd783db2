"""The sprig functions Nomad templates reach as `sprig_<name>`."""

from __future__ import annotations

import pytest

from allocrunner.template import TemplateError, render

CASES: list[tuple[str, str]] = [
    (
        '{{ sprig_upper "abc" }} {{ "Hello" | sprig_lower }} {{ sprig_title "hello world" }}',
        "ABC hello Hello World",
    ),
    ('[{{ sprig_trim "  x  " }}] {{ sprig_trimAll "$" "$5.00$" }}', "[x] 5.00"),
    ('{{ sprig_trimPrefix "a" "abc" }} {{ sprig_trimSuffix "c" "abc" }}', "bc ab"),
    (
        '{{ sprig_repeat 3 "ab" }} {{ sprig_substr 1 3 "hello" }} {{ sprig_nospace "a b c" }}',
        "ababab el abc",
    ),
    (
        '{{ sprig_trunc 3 "hello" }} {{ sprig_trunc -2 "hello" }} {{ sprig_trunc 9 "hi" }}',
        "hel lo hi",
    ),
    ('{{ sprig_contains "ll" "hello" }} {{ sprig_hasPrefix "he" "hello" }}', "true true"),
    ('{{ sprig_hasSuffix "lo" "hello" }}', "true"),
    ('{{ sprig_quote "a" 1 }} {{ sprig_squote "a" }}', '"a" "1" \'a\''),
    ('{{ sprig_cat "a" 1 nil 2.5 }}', "a 1 2.5"),
    ('{{ sprig_indent 2 "a\\nb" }}|{{ sprig_nindent 2 "a" }}', "  a\n  b|\n  a"),
    ('{{ sprig_replace "a" "o" "banana" }} {{ sprig_plural "one" "many" 2 }}', "bonono many"),
    ('{{ sprig_toString 5 }} {{ sprig_atoi "42" }} {{ sprig_atoi "x" }}', "5 42 0"),
    ('{{ sprig_int "7" }} {{ sprig_int64 3.9 }} {{ sprig_float64 "2.5" }}', "7 3 2.5"),
    ('{{ sprig_toStrings (sprig_list 1 "a") }}', "[1 a]"),
    (
        '{{ sprig_default "d" "" }} {{ sprig_default "d" "x" }} {{ "" | sprig_default "foo" }}',
        "d x foo",
    ),
    ('{{ sprig_empty "" }} {{ sprig_empty 1 }} {{ sprig_coalesce "" 0 "c" }}', "true false c"),
    ('{{ sprig_ternary "y" "n" true }} {{ false | sprig_ternary "y" "n" }}', "y n"),
    (
        "{{ $l := sprig_list 3 1 2 1 }}{{ sprig_first $l }} {{ sprig_last $l }} "
        "{{ sprig_rest $l }} {{ sprig_initial $l }}",
        "3 1 [1 2 1] [3 1 2]",
    ),
    (
        "{{ $l := sprig_list 3 1 2 1 }}{{ sprig_append $l 9 }} {{ sprig_prepend $l 0 }} "
        "{{ sprig_reverse $l }}",
        "[3 1 2 1 9] [0 3 1 2 1] [1 2 1 3]",
    ),
    (
        "{{ $l := sprig_list 3 1 2 1 }}{{ sprig_uniq $l }} {{ sprig_without $l 1 }} "
        "{{ sprig_has 2 $l }}",
        "[3 1 2] [3 2] true",
    ),
    ('{{ sprig_compact (sprig_list 1 "" 0 "a") }}', "[1 a]"),
    ('{{ sprig_sortAlpha (sprig_list "b" "a" "c") }}', "[a b c]"),
    ('{{ sprig_join "," (sprig_list 1 "a") }} {{ sprig_splitList "," "a,b" }}', "1,a [a b]"),
    ('{{ sprig_split "," "a,b" }}', "map[_0:a _1:b]"),
    ("{{ sprig_until 3 }} {{ sprig_untilStep 0 10 3 }}", "[0 1 2] [0 3 6 9]"),
    ("{{ sprig_concat (sprig_list 1) (sprig_list 2 3) }}", "[1 2 3]"),
    (
        '{{ $d := sprig_dict "a" 1 "b" 2 }}{{ sprig_get $d "a" }} {{ sprig_hasKey $d "b" }} '
        "{{ sprig_keys $d }} {{ sprig_values $d }}",
        "1 true [a b] [1 2]",
    ),
    (
        '{{ $d := sprig_dict "a" 1 "b" 2 }}{{ sprig_pick $d "a" }} {{ sprig_omit $d "a" }}',
        "map[a:1] map[b:2]",
    ),
    (
        '{{ $d := sprig_dict "a" 1 }}{{ $_ := sprig_set $d "c" 3 }}{{ $d }} '
        '{{ sprig_unset $d "a" }}',
        "map[a:1 c:3] map[c:3]",
    ),
    (
        "{{ sprig_add 1 2 3 }} {{ sprig_add1 4 }} {{ sprig_sub 5 2 }} {{ sprig_mul 2 3 4 }}",
        "6 5 3 24",
    ),
    (
        "{{ sprig_div 7 2 }} {{ sprig_mod 7 3 }} {{ sprig_max 1 5 3 }} {{ sprig_min 4 2 8 }}",
        "3 1 5 2",
    ),
    ("{{ sprig_floor 1.7 }} {{ sprig_ceil 1.2 }} {{ sprig_round 3.14159 2 }}", "1 2 3.14"),
    ('{{ sprig_b64enc "hi" }} {{ sprig_b64dec "aGk=" }}', "aGk= hi"),
    ('{{ sprig_b32enc "hi" }} {{ sprig_b32dec "NBUQ====" }}', "NBUQ==== hi"),
    ('{{ sprig_sha1sum "abc" }}', "a9993e364706816aba3e25717850c26c9cd0d89d"),
    (
        '{{ sprig_sha256sum "" }}',
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
    ('{{ sprig_adler32sum "abc" }}', "38600999"),
    ('{{ sprig_toJson (sprig_dict "a" 1) }} {{ sprig_toRawJson "<" }}', '{"a":1} "<"'),
    ("{{ sprig_toPrettyJson (sprig_list 1) }}", "[\n  1\n]"),
    ('{{ (sprig_fromJson "{\\"a\\":2}").a }}', "2"),
    ('{{ sprig_regexMatch "^a" "abc" }} {{ sprig_regexFind "b+" "abbbc" }}', "true bbb"),
    (
        '{{ sprig_regexFindAll "[0-9]" "a1b2c3" -1 }} {{ sprig_regexFindAll "[0-9]" "a1b2" 1 }}',
        "[1 2 3] [1]",
    ),
    ('{{ sprig_regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}', "-W-xxW-"),
    ('{{ sprig_regexReplaceAllLiteral "a(x*)b" "-ab-" "${1}" }}', "-${1}-"),
    ('{{ sprig_regexSplit "z+" "pizza" -1 }} {{ sprig_regexQuoteMeta "1.2" }}', "[pi a] 1\\.2"),
    (
        '{{ sprig_kindOf "a" }} {{ sprig_kindOf (sprig_list) }} {{ sprig_kindIs "int" 1 }}',
        "string slice true",
    ),
    ("{{ sprig_typeOf 1.5 }}", "float64"),
]


@pytest.mark.parametrize(("template", "expected"), CASES, ids=[t for t, _ in CASES])
def test_sprig(template: str, expected: str) -> None:
    assert render(template, env={}) == expected


def test_sprig_fail_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="error calling sprig_fail: boom"):
        render('{{ sprig_fail "boom" }}', env={})


EXTRA_CASES: list[tuple[str, str]] = [
    ("{{ sprig_hello }}", "Hello!"),
    ('{{ sprig_trimall "x" "xaxx" }} {{ sprig_untitle "Hello World" }}', "a hello world"),
    ('{{ sprig_initials "First Try" }} {{ sprig_swapcase "aBc" }}', "FT AbC"),
    ('{{ sprig_snakecase "FirstName" }} {{ sprig_snakecase "HTTPServer" }}',
     "first_name http_server"),
    ('{{ sprig_kebabcase "FirstName" }} {{ sprig_camelcase "http_server" }}',
     "first-name HttpServer"),
    ('{{ sprig_camelcase "_complex__case_" }}', "_Complex_Case_"),
    ('{{ sprig_abbrev 5 "hello world" }} {{ sprig_abbrevboth 5 10 "1234 5678 9123" }}',
     "he... ...5678..."),
    ('{{ sprig_splitn "$" 2 "foo$bar$baz" }}', "map[_0:foo _1:bar$baz]"),
    ("{{ sprig_seq 5 }}|{{ sprig_seq -3 }}|{{ sprig_seq 0 2 10 }}|{{ sprig_seq 2 -2 }}",
     "1 2 3 4 5|1 0 -1 -2 -3|0 2 4 6 8 10|2 1 0 -1 -2"),
    ('{{ sprig_toDecimal "0777" }} {{ sprig_tuple 1 2 }}', "511 [1 2]"),
    ('{{ sprig_all 1 "a" }} {{ sprig_any 0 "" }} {{ sprig_deepEqual 1 1.0 }}',
     "true false false"),
    ('{{ sprig_pluck "a" (sprig_dict "a" 1) (sprig_dict "a" 2) }}', "[1 2]"),
    ('{{ sprig_dig "x" "y" "def" (sprig_dict "x" (sprig_dict "y" 5)) }}', "5"),
    ('{{ sprig_dig "x" "z" "def" (sprig_dict "x" (sprig_dict "y" 5)) }}', "def"),
    ("{{ sprig_chunk 2 (sprig_list 1 2 3) }} {{ sprig_slice (sprig_list 1 2 3) 1 }}",
     "[[1 2] [3]] [2 3]"),
    ('{{ sprig_merge (sprig_dict "a" 1) (sprig_dict "a" 2 "b" 3) }}', "map[a:1 b:3]"),
    ('{{ sprig_mergeOverwrite (sprig_dict "a" 1) (sprig_dict "a" 2) }}', "map[a:2]"),
    ('{{ sprig_base "/a/b.txt" }} {{ sprig_dir "/a/b.txt" }} {{ sprig_clean "a//b/../c" }}',
     "b.txt /a a/c"),
    ('{{ sprig_ext "x.tar.gz" }} {{ sprig_isAbs "/x" }}', ".gz true"),
    ("{{ sprig_addf 1.5 2 }} {{ sprig_subf 5 1.5 }} {{ sprig_mulf 2 2.5 }}", "3.5 3.5 5"),
    ("{{ sprig_divf 10 4 }} {{ sprig_maxf 1 2.5 }} {{ sprig_biggest 1 9 }}", "2.5 2.5 9"),
    ('{{ sprig_uniq (sprig_list 1 1.0 true "1" 1) }}', "[1 1 true 1]"),
    ("{{ sprig_mustFirst (sprig_list 1) }} {{ sprig_mustToJson (sprig_list 1) }}", "1 [1]"),
    ('{{ sprig_typeIs "int" 1 }} {{ sprig_typeIsLike "string" "x" }}', "true true"),
    ('{{ sprig_env "X" }} {{ sprig_expandenv "a $X ${X}" }}', "x a x x"),
    ("{{ sprig_now }}", "2026-12-03 18:04:05.12 +0000 UTC"),
    ('{{ sprig_date "2006-01-02" sprig_now }} {{ sprig_htmlDate 0 }}', "2026-12-03 1970-01-01"),
    ('{{ sprig_dateInZone "15:04 MST" sprig_now "America/New_York" }}', "13:04 EST"),
    ("{{ sprig_unixEpoch sprig_now }}", "1796321045"),
    ("{{ len sprig_uuidv4 }} {{ len (sprig_randAlphaNum 8) }}", "36 8"),
]


@pytest.mark.parametrize(("template", "expected"), EXTRA_CASES, ids=[t for t, _ in EXTRA_CASES])
def test_sprig_extra(template: str, expected: str) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 3, 18, 4, 5, 120000, tzinfo=UTC)
    assert render(template, env={"X": "x"}, now=now) == expected


def test_sprig_env_reads_only_the_task_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_ONLY", "leak")
    assert render('[{{ sprig_env "AGENT_ONLY" }}]', env={}) == "[]"


def test_refused_sprig_functions() -> None:
    from allocrunner.template import unsupported_functions

    text = '{{ sprig_semver "1.2.3" }}{{ sprig_upper "a" }}'
    assert unsupported_functions(text) == {"sprig_semver"}
    with pytest.raises(TemplateError, match="function is not supported by this client"):
        render(text, env={})
