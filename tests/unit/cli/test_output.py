"""The command line's text: Nomad's layouts, times and event descriptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from allocrunner.cli.output import (
    event_description,
    format_kv,
    format_table,
    format_time,
    go_duration,
    human_size,
    parse_rfc3339,
    pretty_time_ago,
)


def test_tables_align_all_but_the_last_column():
    text = format_table([["ID", "Status", "Name"], ["ab12", "running", ""], ["c", "", "web"]])
    assert text.splitlines() == [
        "ID    Status   Name",
        "ab12  running  <none>",
        "c     <none>   web",
    ]


def test_key_values_align_the_equals_sign():
    assert format_kv([("ID", "x"), ("Client Status", "running")]).splitlines() == [
        "ID            = x",
        "Client Status = running",
    ]


def test_event_descriptions_follow_nomad():
    assert event_description({"Type": "Started"}) == "Task started by client"
    assert event_description({"Type": "Started", "DisplayMessage": "shown"}) == "shown"
    assert event_description({"Type": "Terminated", "ExitCode": 3}) == "Exit Code: 3"
    assert (
        event_description({"Type": "Terminated", "ExitCode": 0, "Signal": 9, "Message": "x"})
        == 'Exit Code: 0, Signal: 9, Exit Message: "x"'
    )
    assert (
        event_description({"Type": "Killing", "KillTimeout": 5_000_000_000})
        == "Sent interrupt. Waiting 5s before force killing"
    )
    assert event_description({"Type": "Restarting", "StartDelay": 1_500_000_000}) == (
        "Task restarting in 1.5s"
    )
    assert event_description({"Type": "Signaling", "Details": {"signal": "SIGHUP"}}) == (
        "Task being sent signal SIGHUP"
    )
    assert event_description({"Type": "Not Restarting"}) == "Task exceeded restart policy"
    assert event_description({"Type": "Custom", "Message": "m"}) == "m"


def test_go_durations():
    assert [go_duration(n) for n in (0, 250_000_000, 5_000_000_000, 90_000_000_000)] == [
        "0s",
        "250ms",
        "5s",
        "1m30s",
    ]
    assert go_duration(3_723_000_000_000) == "1h2m3s"


def test_times_and_ages():
    assert format_time(None) == ""
    utc = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert format_time(utc).startswith("2024-05-01T") or format_time(utc).startswith("2024-04")
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert pretty_time_ago(now - timedelta(seconds=192), now) == "3m12s ago"
    assert pretty_time_ago(now - timedelta(hours=1, minutes=5, seconds=7), now) == "1h5m ago"
    assert pretty_time_ago(now, now) == "0s ago"
    assert pretty_time_ago(now + timedelta(seconds=5), now) == "5s from now"
    assert parse_rfc3339("2024-05-01T12:00:00.123456789Z") == datetime(
        2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_rfc3339("0001-01-01T00:00:00Z") is None


def test_sizes():
    assert [human_size(n) for n in (12, 4096, 3 * 1024 * 1024)] == ["12 B", "4.0 KiB", "3.0 MiB"]
