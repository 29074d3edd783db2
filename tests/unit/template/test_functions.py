"""consul-template's helper functions as Nomad offers them without Consul or Vault."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from allocrunner.template import TemplateError, render

NOW = datetime(2026, 12, 3, 18, 4, 5, 123456, tzinfo=UTC)
ENV = {
    "NOMAD_TASK_DIR": "/local",
    "node.datacenter": "dc1",
    "EMPTY": "",
    "NOMAD_META_mykey": "some_value",
}
DATA: dict[str, Any] = {
    "tags": ["web", "db"],
    "want": ["web"],
    "other": ["x", "db"],
    "none": ["q"],
    "ints": [1, 2, 3],
    "m1": {"a": 1, "n": {"x": 1}},
    "m2": {"a": 2, "b": 3, "n": {"y": 2}},
}


def run(text: str, **kwargs: Any) -> str:
    return render(text, env=ENV, data=DATA, now=NOW, **kwargs)


CASES: list[tuple[str, str]] = [
    # environment
    ('{{ env "NOMAD_TASK_DIR" }}', "/local"),
    ('{{ env "node.datacenter" }}', "dc1"),
    ('{{ env "NOMAD_META_mykey" }}', "some_value"),
    ('[{{ env "NOT_SET" }}]', "[]"),
    ('{{ envOrDefault "NOT_SET" "d" }}', "d"),
    ('[{{ envOrDefault "EMPTY" "d" }}]', "[]"),
    ('{{ "NOMAD_TASK_DIR" | env }}', "/local"),
    # time
    ("{{ timestamp }}", "2026-12-03T18:04:05Z"),
    ('{{ timestamp "unix" }}', str(int(NOW.timestamp()))),
    ('{{ timestamp "2006-01-02" }}', "2026-12-03"),
    ('{{ timestamp "Mon Jan _2 15:04:05 MST 2006" }}', "Thu Dec  3 18:04:05 UTC 2026"),
    ('{{ timestamp "3:04PM .000 .999999" }}', "6:04PM .123 .123456"),
    ('{{ timestamp "January 02, 06 002" }}', "December 03, 26 337"),
    # JSON
    ("{{ toJSON .m2 }}", '{"a":2,"b":3,"n":{"y":2}}'),
    ('{{ toJSON "<a&b>" }}', '"\\u003ca\\u0026b\\u003e"'),
    ('{{ toUnescapedJSON "<a&b>" }}', '"<a&b>"'),
    ('{{ toJSON "line\\nnext\\t\\u0001" }}', '"line\\nnext\\t\\u0001"'),
    ("{{ toJSON 1.5 }} {{ toJSON 2.0 }} {{ toJSON 1e21 }}", "1.5 2 1e+21"),
    ("{{ toJSON .tags }}", '["web","db"]'),
    ("{{ toJSONPretty .m1 }}", '{\n  "a": 1,\n  "n": {\n    "x": 1\n  }\n}'),
    ('{{ toJSONPretty (parseJSON "[]") }}', "[]"),
    ('{{ (parseJSON "{\\"a\\": {\\"b\\": [1, \\"x\\"]}}").a.b }}', "[1 x]"),
    ('{{ with parseJSON "{\\"port\\": 8080}" }}{{ .port }}{{ end }}', "8080"),
    ('{{ (parseJSON "{\\"big\\": 1700000000}").big }}', "1.7e+09"),
    ('{{ parseJSON "" }}', "map[]"),
    ('{{ parseJSON "null" }}', "<no value>"),
    # parsing
    ('{{ parseBool "true" }} {{ parseBool "0" }} {{ parseBool "" }}', "true false false"),
    ('{{ parseInt "-42" }} {{ parseInt "" }}', "-42 0"),
    ('{{ parseFloat "1.5" }} {{ parseFloat "1e6" }}', "1.5 1e+06"),
    ('{{ parseUint "7" }}', "7"),
    ('{{ add 1 (parseInt "41") }}', "42"),
    ('{{ parseFloat "1_000.5" }} {{ parseFloat "0x1p-2" }} {{ parseFloat "-Inf" }}',
     "1000.5 0.25 -Inf"),
    ('{{ timestamp "__2|002|_2" }}', "337|337| 3"),
    # strings
    ('{{ toUpper "ßaé" }} {{ toLower "ÀB" }}', "ßAÉ àb"),
    ('{{ regexMatch "^\\\\pL+$" "héllo" }} {{ regexMatch "\\\\p{N}" "abc" }}', "true false"),
    ('{{ toLower "HeLLo" }} {{ toUpper "abc" }}', "hello ABC"),
    ('{{ toTitle "hello wide-world" }}', "Hello Wide-World"),
    ('{{ toTitle "mIxed CASE" }}', "MIxed CASE"),
    ('[{{ trimSpace "  x \\n" }}]', "[x]"),
    ('{{ trim "-" "--x--" }} {{ trimPrefix "a" "abc" }} {{ trimSuffix "c" "abc" }}', "x bc ab"),
    ('{{ split "," "a,b,c" }}', "[a b c]"),
    ('{{ split "," "  " | len }}', "0"),
    ('{{ "a b" | split " " | join "-" }}', "a-b"),
    ('{{ join "," .tags }}', "web,db"),
    ('{{ splitToMap "," "=" "a=1,b=2,c" }}', "map[a:1 b:2]"),
    ('{{ replaceAll "a" "b" "banana" }}', "bbnbnb"),
    ('{{ "banana" | replaceAll "an" "" }}', "ba"),
    ('{{ regexReplaceAll "a(n)" "<$1>" "banana" }}', "b<n><n>a"),
    ('{{ regexReplaceAll "(?P<x>n)a" "${x}!" "banana" }}', "ban!n!"),
    ('{{ regexReplaceAll "a" "$$" "banana" }}', "b$n$n$"),
    ('{{ regexReplaceAll "(a)" "$1x" "ba" }}', "b"),
    ('{{ regexMatch "^b.n" "banana" }} {{ regexMatch "[[:digit:]]+" "abc" }}', "true false"),
    ('{{ indent 2 "a\\n\\nb" }}', "  a\n\n  b"),
    ('{{ "a\\nb" | indent 4 }}', "    a\n    b"),
    # containment
    ('{{ .tags | contains "web" }} {{ .tags | contains "x" }}', "true false"),
    ('{{ "foobar" | contains "oba" }}', "true"),
    ("{{ .ints | contains 2 }}", "true"),
    ("{{ .tags | containsAll .want }} {{ .tags | containsAll .other }}", "true false"),
    ("{{ .tags | containsAny .other }} {{ .tags | containsAny .none }}", "true false"),
    ("{{ .tags | containsNone .none }} {{ .tags | containsNotAll .other }}", "true true"),
    ('{{ in .tags "db" }}', "true"),
    # encodings and hashes
    ('{{ base64Encode "hello" }} {{ base64Decode "aGVsbG8=" }}', "aGVsbG8= hello"),
    ('{{ base64URLEncode "??>" }} {{ base64URLDecode "Pz8-" }}', "Pz8- ??>"),
    ('{{ sha256Hex "abc" }}', "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    ('{{ md5sum "abc" }}', "900150983cd24fb0d6963f7d28e17f72"),
    (
        '{{ hmacSHA256Hex "msg" "key" }}',
        "2d93cbc1be167bcb1637a4a23cbff01a7878f0c50ee833954ea5221bb1b8c628",
    ),
    # arithmetic: the piped value is the left operand
    ("{{ add 1 2 }} {{ 10 | subtract 3 }} {{ multiply 4 2.5 }}", "3 7 10"),
    ("{{ 7 | divide 2 }} {{ -7 | divide 2 }} {{ 7.0 | divide 2 }}", "3 -3 3.5"),
    ("{{ 7 | modulo 3 }} {{ -7 | modulo 3 }}", "1 -1"),
    ("{{ minimum 3 5 }} {{ maximum 3 5.5 }} {{ 9 | minimum 4 }}", "3 5.5 4"),
    ("{{ 3 | add 2 | multiply 10 }}", "50"),
    # loop
    ("{{ range loop 3 }}{{.}}{{end}}", "012"),
    ("{{ range $i := loop 2 5 }}{{$i}}{{end}}", "234"),
    ('{{ range loop "2" }}x{{end}}', "xx"),
    ("{{ range loop 0 }}x{{else}}none{{end}}", "none"),
    # scratch and executeTemplate
    (
        '{{ scratch.Set "k" "v" }}{{ scratch.Get "k" }} '
        '{{ scratch.Key "k" }} {{ scratch.Key "z" }}',
        "v true false",
    ),
    ('{{ scratch.SetX "k" 1 }}{{ scratch.SetX "k" 2 }}{{ scratch.Get "k" }}', "1"),
    (
        '{{ scratch.MapSet "m" "b" 2 }}{{ scratch.MapSet "m" "a" 1 }}{{ scratch.MapValues "m" }}',
        "[1 2]",
    ),
    ('{{ define "x" }}[{{ . }}]{{ end }}{{ executeTemplate "x" 5 }}', "[5]"),
    # maps
    ("{{ mergeMap .m1 .m2 }}", "map[a:1 b:3 n:map[x:1 y:2]]"),
    ("{{ mergeMapWithOverride .m1 .m2 }}", "map[a:2 b:3 n:map[x:1 y:2]]"),
]


@pytest.mark.parametrize(("template", "expected"), CASES, ids=[t for t, _ in CASES])
def test_function(template: str, expected: str) -> None:
    assert run(template) == expected


FAILURES: list[tuple[str, str]] = [
    ('{{ mustEnv "EMPTY" }}', "error calling mustEnv: required environment variable EMPTY"),
    ('{{ timestamp "a" "b" }}', "expected 0 or 1, but got 2"),
    ('{{ parseBool "yes" }}', 'parseBool: strconv.ParseBool: parsing "yes": invalid syntax'),
    ('{{ parseInt "1.5" }}', 'parseInt: strconv.ParseInt: parsing "1.5": invalid syntax'),
    ('{{ parseInt "99999999999999999999" }}', "value out of range"),
    ('{{ parseFloat "x" }}', 'strconv.ParseFloat: parsing "x": invalid syntax'),
    ('{{ parseJSON "[1, 2" }}', "error calling parseJSON: unexpected end of JSON input"),
    ('{{ parseJSON "[1e400]" }}', "cannot unmarshal number 1e400 into Go value of type float64"),
    ('{{ regexReplaceAll "(" "x" "y" }}', "error parsing regexp: missing closing ): `(`"),
    ('{{ base64Decode "!!" }}', "base64Decode: illegal base64 data at input byte 0"),
    ('{{ regexMatch "(" "x" }}', "error parsing regexp"),
    ('{{ indent -1 "x" }}', "indent value must be a positive integer"),
    ("{{ divide 0 1 }}", "integer divide by zero"),
    ('{{ add "a" 1 }}', "add: unknown type"),
    ("{{ modulo 1.5 3 }}", "modulo: unknown type"),
    ("{{ loop 1 2 3 }}", "loop: wrong number of arguments"),
    ('{{ executeTemplate "nope" }}', 'template "nope" not defined'),
    ('{{ toJSON (parseFloat "NaN") }}', "toJSON: json: unsupported value"),
    ('{{ plugin "x" }}', "error calling plugin: function is disabled"),
    ('{{ writeToFile "/tmp/x" "" "" "0644" "data" }}', "function is disabled"),
    ('{{ file "/etc/passwd" }}', "error calling file: function is not supported"),
    ('{{ sockaddr "GetPrivateIP" }}', "function is not supported"),
    ('{{ join "," .ints }}', "wrong type for value; expected []string"),
]


@pytest.mark.parametrize(("template", "message"), FAILURES, ids=[t for t, _ in FAILURES])
def test_function_failure(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        run(template)
    assert message in str(caught.value)


def test_env_never_reads_the_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENT_ONLY_SECRET", "leak")
    assert run('[{{ env "AGENT_ONLY_SECRET" }}]') == "[]"


def test_timestamp_in_a_zone() -> None:
    zone = timezone(timedelta(hours=-7), "MST")
    moment = datetime(2006, 1, 2, 15, 4, 5, tzinfo=zone)
    text = '{{ timestamp }}|{{ timestamp "2006-01-02T15:04:05-0700 MST Z07:00" }}'
    assert render(text, env={}, now=moment) == (
        "2006-01-02T15:04:05-07:00|2006-01-02T15:04:05-0700 MST -07:00"
    )


def test_scratch_is_fresh_for_each_render() -> None:
    text = '{{ scratch.Key "k" }}{{ scratch.Set "k" 1 }}'
    assert run(text) == "false"
    assert run(text) == "false"


def test_sprig_functions_are_prefixed() -> None:
    assert run('{{ sprig_upper "abc" }}') == "ABC"
    with pytest.raises(TemplateError, match='function "upper" not defined'):
        run('{{ upper "abc" }}')
