"""The client fs and logs API: JSON shapes, errors and statuses, frames, origin and
offset rules across rotated log files, and following live output."""

from __future__ import annotations

import base64
import json
import os
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.agent import fsapi
from allocrunner.agent.errors import ApiError
from allocrunner.allocdir import AllocDir
from allocrunner.drivers.logs import RotatingLogWriter
from allocrunner.testing import wait_for

ALLOC_ID = "6f0c1b2a-3d4e-4f50-8a61-7b8c9d0e1f23"
INFO_KEYS = ["Name", "IsDir", "Size", "FileMode", "ModTime", "ContentType"]


@pytest.fixture
def alloc_dir(tmp_path: Path) -> AllocDir:
    ad = AllocDir(tmp_path / "allocs", ALLOC_ID)
    ad.build()
    ad.new_task_dir("web").build()
    return ad


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "host.txt").write_text("host secret")
    return path


@pytest.fixture
def cancel() -> Iterator[CancelToken]:
    token = CancelToken()
    yield token
    token.cancel("test over")


def api_status(call, *args, **kwargs) -> int:
    """The status of the ApiError that `call` raises (consuming an iterator it returns)."""
    with pytest.raises(ApiError) as info:
        result = call(*args, **kwargs)
        if not isinstance(result, (bytes, list, dict)):
            list(result)
    return info.value.status


def frames(items: Iterator[bytes]) -> list[dict]:
    return [json.loads(item) for item in items]


def frame_data(frame: dict) -> bytes:
    return base64.b64decode(frame.get("Data", ""))


def fsapi_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fsapi-")]


def log_writer(alloc_dir: AllocDir, *, max_bytes: int, stream: str = "stdout", max_files=50):
    return RotatingLogWriter(
        str(alloc_dir.logs_dir), "web", stream, max_files=max_files, max_bytes=max_bytes
    )


# --- ls and stat ---------------------------------------------------------------------


def test_ls_root_shapes(alloc_dir: AllocDir) -> None:
    for path in ("", "/", "."):
        listing = fsapi.ls(alloc_dir, path)
        assert [entry["Name"] for entry in listing] == ["alloc", "web"]
        for entry in listing:
            assert list(entry) == INFO_KEYS
            assert entry["IsDir"] is True
            assert entry["ContentType"] == ""
    assert fsapi.ls(alloc_dir, "/alloc")[0]["FileMode"] == "drwxrwxrwx"


def test_ls_entry_matches_the_file(alloc_dir: AllocDir) -> None:
    target = alloc_dir.data_dir / "a.txt"
    target.write_bytes(b"12345")
    os.symlink("a.txt", alloc_dir.data_dir / "link")
    listing = {entry["Name"]: entry for entry in fsapi.ls(alloc_dir, "alloc/data")}
    entry = listing["a.txt"]
    assert (entry["IsDir"], entry["Size"], entry["FileMode"]) == (False, 5, "-rw-r--r--")
    mod_time = datetime.fromisoformat(entry["ModTime"])
    expected = datetime.fromtimestamp(target.stat().st_mtime_ns / 1e9, tz=UTC)
    assert abs(mod_time - expected) < timedelta(microseconds=2)
    assert listing["link"]["FileMode"].startswith("L")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("alloc/data/missing", 404),
        ("alloc/data/a.txt", 400),  # not a directory
        ("..", 403),
        ("/../", 403),
        ("alloc/../../x", 403),
        ("web/secrets", 403),
        ("web/SECRETS", 403),
        ("alloc/data/out", 403),  # a symlink leading outside
    ],
)
def test_ls_errors(alloc_dir: AllocDir, outside: Path, path: str, status: int) -> None:
    (alloc_dir.data_dir / "a.txt").write_bytes(b"x")
    os.symlink(outside, alloc_dir.data_dir / "out")
    assert api_status(fsapi.ls, alloc_dir, path) == status


def test_stat_file_shape(alloc_dir: AllocDir) -> None:
    (alloc_dir.data_dir / "a.txt").write_bytes(b"hello\n")
    info = fsapi.stat(alloc_dir, "/alloc/data/a.txt")
    assert list(info) == INFO_KEYS
    assert info["Name"] == "a.txt"
    assert (info["IsDir"], info["Size"], info["FileMode"]) == (False, 6, "-rw-r--r--")
    assert info["ContentType"] == "text/plain; charset=utf-8"


def test_stat_content_types(alloc_dir: AllocDir) -> None:
    data = alloc_dir.data_dir
    (data / "conf.json").write_bytes(b"\x00\x01 not json at all")
    (data / "empty").write_bytes(b"")
    (data / "page").write_bytes(b"  <html><body>hi</body></html>")
    (data / "bin").write_bytes(bytes(range(256)))
    (data / "image").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    types = {name: fsapi.stat(alloc_dir, f"alloc/data/{name}")["ContentType"] for name in
             ("conf.json", "empty", "page", "bin", "image")}  # fmt: skip
    assert types == {
        "conf.json": "application/json",
        "empty": "application/octet-stream",
        "page": "text/html; charset=utf-8",
        "bin": "application/octet-stream",
        "image": "image/png",
    }
    assert fsapi.stat(alloc_dir, "alloc/data")["ContentType"] == "application/octet-stream"
    assert fsapi.stat(alloc_dir, "/")["Name"] == ALLOC_ID


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("", 400),
        ("alloc/missing", 404),
        ("../allocs", 403),
        ("web/secrets", 403),
        ("web/Secrets/token", 403),
        ("alloc/data/out/host.txt", 403),
    ],
)
def test_stat_errors(alloc_dir: AllocDir, outside: Path, path: str, status: int) -> None:
    os.symlink(outside, alloc_dir.data_dir / "out")
    assert api_status(fsapi.stat, alloc_dir, path) == status


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC), "2024-05-01T10:00:00Z"),
        (datetime(2024, 5, 1, 10, 0, 0, 120000, tzinfo=UTC), "2024-05-01T10:00:00.12Z"),
        (datetime(2024, 5, 1, 10, 0, 0, 123456, tzinfo=UTC), "2024-05-01T10:00:00.123456Z"),
    ],
)
def test_go_time_in_utc(monkeypatch: pytest.MonkeyPatch, moment, expected) -> None:
    with local_zone(monkeypatch, "UTC"):
        assert fsapi.go_time(moment) == expected


def test_go_time_in_a_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    moment = datetime(2024, 5, 1, 10, 0, 0, 5000, tzinfo=UTC)
    with local_zone(monkeypatch, "IST-5:30"):
        assert fsapi.go_time(moment) == "2024-05-01T15:30:00.005+05:30"
    with local_zone(monkeypatch, "XYZ+3"):
        assert fsapi.go_time(moment) == "2024-05-01T07:00:00.005-03:00"
    back = datetime.fromisoformat("2024-05-01T07:00:00.005-03:00")
    assert back == moment.astimezone(timezone(timedelta(hours=-3)))


class local_zone:
    """Switch the process's local time zone (TZ) for a block."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tz: str) -> None:
        self.monkeypatch = monkeypatch
        self.tz = tz

    def __enter__(self) -> None:
        self.monkeypatch.setenv("TZ", self.tz)
        time.tzset()

    def __exit__(self, *exc: object) -> None:
        self.monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"plain words\n", "text/plain; charset=utf-8"),
        (b"\n <!DOCTYPE html><html>", "text/html; charset=utf-8"),
        (b"<p>para</p>", "text/html; charset=utf-8"),
        (b"<pre>x", "text/plain; charset=utf-8"),  # <P must end the tag name
        (b"<?xml version='1.0'?>", "text/xml; charset=utf-8"),
        (b"%PDF-1.7", "application/pdf"),
        (b"GIF89a....", "image/gif"),
        (b"\xff\xd8\xff\xe0", "image/jpeg"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wave"),
        (b"\x1f\x8b\x08\x00", "application/x-gzip"),
        (b"PK\x03\x04", "application/zip"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", "video/mp4"),
        (b"\xef\xbb\xbfbom", "text/plain; charset=utf-8"),
        (b"text\x00with nul", "application/octet-stream"),
    ],
)
def test_sniff_content_type(data: bytes, expected: str) -> None:
    assert fsapi.sniff_content_type(data) == expected


# --- cat and readat ------------------------------------------------------------------


def test_cat_yields_bounded_chunks(alloc_dir: AllocDir) -> None:
    content = os.urandom(3 * fsapi.FRAME_SIZE + 100)
    (alloc_dir.data_dir / "big").write_bytes(content)
    chunks = list(fsapi.cat(alloc_dir, "/alloc/data/big"))
    assert len(chunks) == 4
    assert all(len(chunk) <= fsapi.FRAME_SIZE for chunk in chunks)
    assert b"".join(chunks) == content
    (alloc_dir.data_dir / "empty").write_bytes(b"")
    assert list(fsapi.cat(alloc_dir, "alloc/data/empty")) == []


def test_cat_closed_early_releases_the_file(alloc_dir: AllocDir) -> None:
    (alloc_dir.data_dir / "big").write_bytes(bytes(2 * fsapi.FRAME_SIZE))
    before = len(os.listdir("/proc/self/fd"))
    chunks = fsapi.cat(alloc_dir, "alloc/data/big")
    next(chunks)
    assert len(os.listdir("/proc/self/fd")) == before + 1
    chunks.close()
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("", 400),
        ("alloc/data", 400),
        ("alloc/data/fifo", 400),
        ("alloc/data/missing", 404),
        ("/../../etc/passwd", 403),
        ("web/secrets/token", 403),
        ("alloc/data/out/host.txt", 403),
        ("alloc/data/abs", 403),
    ],
)
@pytest.mark.parametrize("call", ["cat", "readat", "stream"])
def test_file_reading_errors(
    alloc_dir: AllocDir, outside: Path, cancel: CancelToken, call: str, path: str, status: int
) -> None:
    os.mkfifo(alloc_dir.data_dir / "fifo")
    os.symlink(outside, alloc_dir.data_dir / "out")
    os.symlink(outside / "host.txt", alloc_dir.data_dir / "abs")
    (alloc_dir.path / "web" / "secrets" / "token").write_text("s3cr3t")
    if call == "cat":
        assert api_status(fsapi.cat, alloc_dir, path) == status
    elif call == "readat":
        assert api_status(fsapi.readat, alloc_dir, path, 0, 10) == status
    else:
        assert api_status(fsapi.stream, alloc_dir, path, cancel=cancel) == status


def test_readat_offsets_and_limits(alloc_dir: AllocDir) -> None:
    (alloc_dir.data_dir / "f").write_bytes(b"0123456789")
    read = lambda offset, limit: fsapi.readat(alloc_dir, "/alloc/data/f", offset, limit)  # noqa: E731
    assert read(0, 4) == b"0123"
    assert read(3, 4) == b"3456"
    assert read(8, 4) == b"89"
    assert read(10, 4) == b""
    assert read(50, 4) == b""
    assert read(2, 0) == b"23456789"  # 0: no limit, as in Nomad
    big = os.urandom(3 << 20)
    (alloc_dir.data_dir / "big").write_bytes(big)
    assert fsapi.readat(alloc_dir, "alloc/data/big", 5, 0) == big[5:]


@pytest.mark.parametrize(("offset", "limit"), [(-1, 4), (0, -1), (True, 4), ("1", 4), (0, 1.5)])
def test_readat_bad_parameters(alloc_dir: AllocDir, offset: object, limit: object) -> None:
    (alloc_dir.data_dir / "f").write_bytes(b"0123456789")
    assert api_status(fsapi.readat, alloc_dir, "alloc/data/f", offset, limit) == 400


def test_parse_helpers() -> None:
    assert [fsapi.parse_bool("follow", t) for t in ("1", "t", "TRUE", "True", "0", "F")] == [
        True, True, True, True, False, False,
    ]  # fmt: skip
    assert fsapi.parse_int("offset", "-12") == -12
    assert fsapi.parse_int("offset", "+7") == 7
    for bad in ("yes", "", "tRuE"):
        assert api_status(fsapi.parse_bool, "follow", bad) == 400
    for bad in ("", "1_000", " 1", "0x10", "1.0"):
        assert api_status(fsapi.parse_int, "offset", bad) == 400


# --- stream --------------------------------------------------------------------------


def test_stream_frames_round_trip(alloc_dir: AllocDir, cancel: CancelToken) -> None:
    content = os.urandom(2 * fsapi.FRAME_SIZE + 1234)
    (alloc_dir.data_dir / "f").write_bytes(content)
    got = frames(fsapi.stream(alloc_dir, "/alloc/data/f", follow=False, cancel=cancel))
    assert len(got) == 3
    for frame in got:
        assert set(frame) == {"Offset", "Data", "File"}
        assert frame["File"] == "/alloc/data/f"
        data = frame_data(frame)
        assert len(data) <= fsapi.FRAME_SIZE
        assert content[frame["Offset"] - len(data) : frame["Offset"]] == data
    assert b"".join(frame_data(f) for f in got) == content


@pytest.mark.parametrize(
    ("origin", "offset", "expected"),
    [
        ("start", 0, b"0123456789"),
        ("start", 4, b"456789"),
        ("start", 10, b""),
        ("start", 99, b""),
        ("", 4, b"456789"),
        ("end", 0, b""),
        ("end", 3, b"789"),
        ("end", 99, b"0123456789"),
    ],
)
def test_stream_origin_and_offset(
    alloc_dir: AllocDir, cancel: CancelToken, origin: str, offset: int, expected: bytes
) -> None:
    (alloc_dir.data_dir / "f").write_bytes(b"0123456789")
    got = frames(
        fsapi.stream(
            alloc_dir, "alloc/data/f", origin=origin, offset=offset, follow=False, cancel=cancel
        )
    )
    assert b"".join(frame_data(f) for f in got) == expected


@pytest.mark.parametrize(
    "kwargs", [{"origin": "middle"}, {"offset": -1}, {"offset": "3"}, {"follow": "true"}]
)
def test_stream_bad_parameters(alloc_dir: AllocDir, cancel: CancelToken, kwargs: dict) -> None:
    (alloc_dir.data_dir / "f").write_bytes(b"0123456789")
    assert api_status(fsapi.stream, alloc_dir, "alloc/data/f", cancel=cancel, **kwargs) == 400


def test_stream_follows_appends_truncation_and_deletion(
    alloc_dir: AllocDir, cancel: CancelToken
) -> None:
    path = alloc_dir.data_dir / "f"
    path.write_bytes(b"first\n")
    it = fsapi.stream(alloc_dir, "alloc/data/f", cancel=cancel)  # follow is the default
    assert json.loads(next(it)) == {"Offset": 6, "Data": b64(b"first\n"), "File": "alloc/data/f"}

    with open(path, "ab") as fh:
        fh.write(b"second\n")
    start = time.monotonic()
    assert json.loads(next(it)) == {"Offset": 13, "Data": b64(b"second\n"), "File": "alloc/data/f"}
    assert time.monotonic() - start < 0.1

    with open(path, "r+b") as fh:
        fh.truncate(0)
    assert json.loads(next(it)) == {"File": "alloc/data/f", "FileEvent": "file truncated"}
    with open(path, "ab") as fh:
        fh.write(b"again")
    assert json.loads(next(it)) == {"Offset": 5, "Data": b64(b"again"), "File": "alloc/data/f"}

    path.unlink()
    assert json.loads(next(it)) == {
        "Offset": 5,
        "File": "alloc/data/f",
        "FileEvent": "file deleted",
    }
    assert list(it) == []
    assert fsapi_threads() == []


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_stream_heartbeats_while_idle(alloc_dir: AllocDir, cancel: CancelToken) -> None:
    (alloc_dir.data_dir / "f").write_bytes(b"x")
    it = fsapi.stream(alloc_dir, "alloc/data/f", cancel=cancel, heartbeat=0.05)
    assert frame_data(json.loads(next(it))) == b"x"
    assert next(it) == b"{}"
    assert next(it) == b"{}"
    it.close()
    assert fsapi_threads() == []


def test_stream_closed_early_joins_its_threads(alloc_dir: AllocDir, cancel: CancelToken) -> None:
    path = alloc_dir.data_dir / "f"
    path.write_bytes(b"x")
    it = fsapi.stream(alloc_dir, "alloc/data/f", cancel=cancel, heartbeat=0.05)
    next(it)
    assert next(it) == b"{}"  # suspended while following: the watcher thread is running
    assert len(fsapi_threads()) == 1
    it.close()
    assert fsapi_threads() == []
    assert not cancel.cancelled()


def test_stream_ends_promptly_when_cancelled(alloc_dir: AllocDir, cancel: CancelToken) -> None:
    (alloc_dir.data_dir / "f").write_bytes(b"x")
    it = fsapi.stream(alloc_dir, "alloc/data/f", cancel=cancel)
    next(it)
    ended = consume_in_thread(it)
    wait_for(lambda: assert_(len(fsapi_threads()) == 1, "not following yet"))
    fired = time.monotonic()
    cancel.cancel("client went away")
    items, finished = ended.result()
    assert items == []
    assert finished - fired < 0.1
    assert fsapi_threads() == []


class consume_in_thread:
    """Drain an iterator on a named thread; `result()` joins it and returns the items
    with arrival times and the time the iterator ended (re-raising its failure)."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self.items: queue.Queue[tuple[bytes, float]] = queue.Queue()
        self.finished = 0.0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(it,), name="test-consumer")
        self.thread.start()

    def _run(self, it: Iterator[bytes]) -> None:
        try:
            for item in it:
                self.items.put((item, time.monotonic()))
        except BaseException as err:
            self.error = err
        finally:
            self.finished = time.monotonic()

    def result(self, timeout: float = 5.0) -> tuple[list[tuple[bytes, float]], float]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the iterator did not end"
        if self.error is not None:
            raise self.error
        items = []
        while not self.items.empty():
            items.append(self.items.get_nowait())
        return items, self.finished


def assert_(condition: bool, message: str) -> None:
    assert condition, message


# --- logs ----------------------------------------------------------------------------


@pytest.fixture
def rotated(alloc_dir: AllocDir) -> bytes:
    """stdout of "web" in files of 10 bytes: .0 and .1 full, .2 with 5 bytes."""
    content = b"0123456789abcdefghijKLMNO"
    writer = log_writer(alloc_dir, max_bytes=10)
    writer.write(content)
    writer.close()
    assert sorted(os.listdir(alloc_dir.logs_dir)) == [f"web.stdout.{i}" for i in range(3)]
    return content


def test_logs_framed_across_rotated_files(
    alloc_dir: AllocDir, cancel: CancelToken, rotated: bytes
) -> None:
    got = frames(fsapi.logs(alloc_dir, "web", cancel=cancel))
    assert got == [
        {"Offset": 10, "Data": b64(b"0123456789"), "File": "alloc/logs/web.stdout.0"},
        {"Offset": 10, "Data": b64(b"abcdefghij"), "File": "alloc/logs/web.stdout.1"},
        {"Offset": 5, "Data": b64(b"KLMNO"), "File": "alloc/logs/web.stdout.2"},
    ]


def test_logs_plain(alloc_dir: AllocDir, cancel: CancelToken, rotated: bytes) -> None:
    assert b"".join(fsapi.logs(alloc_dir, "web", plain=True, cancel=cancel)) == rotated


@pytest.mark.parametrize(
    ("origin", "offset", "expected"),
    [
        ("end", 0, b""),
        ("end", 3, b"MNO"),
        ("end", 5, b"KLMNO"),
        ("end", 6, b"jKLMNO"),  # back into .1
        ("end", 15, b"abcdefghijKLMNO"),
        ("end", 16, b"9abcdefghijKLMNO"),  # back into .0
        ("end", 25, b"0123456789abcdefghijKLMNO"),
        ("end", 1000, b"0123456789abcdefghijKLMNO"),  # clamped to the oldest kept byte
        ("start", 0, b"0123456789abcdefghijKLMNO"),
        ("start", 4, b"456789abcdefghijKLMNO"),
        ("start", 12, b"cdefghijKLMNO"),  # forward into .1
        ("start", 23, b"NO"),
        ("start", 1000, b""),
    ],
)
def test_logs_origin_and_offset_across_files(
    alloc_dir: AllocDir,
    cancel: CancelToken,
    rotated: bytes,
    origin: str,
    offset: int,
    expected: bytes,
) -> None:
    got = fsapi.logs(alloc_dir, "web", origin=origin, offset=offset, plain=True, cancel=cancel)
    assert b"".join(got) == expected


def test_logs_origin_end_frames_name_their_file(
    alloc_dir: AllocDir, cancel: CancelToken, rotated: bytes
) -> None:
    got = frames(fsapi.logs(alloc_dir, "web", origin="end", offset=7, cancel=cancel))
    assert got == [
        {"Offset": 10, "Data": b64(b"ij"), "File": "alloc/logs/web.stdout.1"},
        {"Offset": 5, "Data": b64(b"KLMNO"), "File": "alloc/logs/web.stdout.2"},
    ]


def test_logs_without_follow_stop_at_the_newest_file_when_called(
    alloc_dir: AllocDir, cancel: CancelToken, rotated: bytes
) -> None:
    it = fsapi.logs(alloc_dir, "web", plain=True, cancel=cancel)
    writer = log_writer(alloc_dir, max_bytes=10)
    writer.write(b"PQRSTuvwxyz")  # fills .2, then starts .3
    writer.close()
    assert b"".join(it) == rotated + b"PQRST"


def test_logs_streams_are_separate(alloc_dir: AllocDir, cancel: CancelToken) -> None:
    out = log_writer(alloc_dir, max_bytes=100)
    err = log_writer(alloc_dir, max_bytes=100, stream="stderr")
    out.write(b"to stdout")
    err.write(b"to stderr")
    out.close()
    err.close()
    got = fsapi.logs(alloc_dir, "web", log_type="stderr", plain=True, cancel=cancel)
    assert b"".join(got) == b"to stderr"


@pytest.mark.parametrize(
    ("task", "kwargs", "status"),
    [
        ("", {}, 400),
        ("web", {"log_type": "stdin"}, 400),
        ("web", {"log_type": ""}, 400),
        ("web", {"origin": "middle"}, 400),
        ("web", {"offset": -1}, 400),
        ("web", {"follow": 1}, 400),
        ("web", {"plain": "true"}, 400),
        ("db", {"tasks": ("web",)}, 400),
        ("../web", {}, 400),
        ("db", {}, 404),  # no log files
        ("web", {"log_type": "stderr"}, 404),
        ("web", {"tasks": ("web",), "log_type": "stderr"}, 404),
    ],
)
def test_logs_bad_requests(
    alloc_dir: AllocDir, cancel: CancelToken, rotated: bytes, task: str, kwargs: dict, status: int
) -> None:
    assert api_status(fsapi.logs, alloc_dir, task, cancel=cancel, **kwargs) == status


def test_logs_without_a_logs_dir_are_not_found(tmp_path: Path, cancel: CancelToken) -> None:
    bare = AllocDir(tmp_path / "allocs", "unbuilt")
    assert api_status(fsapi.logs, bare, "web", cancel=cancel) == 404


def test_logs_follow_one_write_across_many_rotations(
    alloc_dir: AllocDir, cancel: CancelToken
) -> None:
    writer = log_writer(alloc_dir, max_bytes=64, max_files=100)
    writer.write(b"start|")
    it = fsapi.logs(alloc_dir, "web", follow=True, cancel=cancel)
    first = json.loads(next(it))
    assert frame_data(first) == b"start|"
    burst = os.urandom(1000)  # fills 16 files at once
    writer.write(burst)
    writer.close()
    got: list[dict] = []
    wait_for(lambda: assert_(received(it, got) >= len(b"start|" + burst), "burst not read"))
    it.close()
    data = [f for f in [first, *got] if "Data" in f]
    assert b"".join(frame_data(f) for f in data) == b"start|" + burst
    for frame in data:  # Offset and File place every frame's data exactly
        content = (alloc_dir.logs_dir / frame["File"].rsplit("/", 1)[1]).read_bytes()
        chunk = frame_data(frame)
        assert content[frame["Offset"] - len(chunk) : frame["Offset"]] == chunk
    assert fsapi_threads() == []


def received(it: Iterator[bytes], got: list[dict]) -> int:
    """Take one frame from `it` into `got`; the bytes of data received so far."""
    got.append(json.loads(next(it)))
    return len(b"start|") + sum(len(frame_data(f)) for f in got)


LINES = 20
LINE_INTERVAL = 0.1  # 10 lines a second


def test_logs_follow_a_live_writer_across_rotations(
    alloc_dir: AllocDir, cancel: CancelToken
) -> None:
    """A writer appends 10 lines a second into files of 64 bytes (a rotation every
    two or three lines, lines split across files, old files purged); every line
    reaches the reader once, in order, while the writer is still writing, and cancel
    ends the stream within 100 ms."""
    writer = log_writer(alloc_dir, max_bytes=64, max_files=3)
    written: dict[int, float] = {}
    stop_writer = CancelToken()

    def line(number: int) -> bytes:
        return f"line {number:04d} {'.' * (number % 7)}\n".encode()

    def write_lines() -> None:
        for number in range(1, LINES):
            if stop_writer.wait(LINE_INTERVAL):
                return
            writer.write(line(number))
            written[number] = time.monotonic()

    writer.write(line(0))
    written[0] = time.monotonic()
    it = fsapi.logs(alloc_dir, "web", follow=True, plain=True, cancel=cancel)
    reader = consume_in_thread(it)
    writing = threading.Thread(target=write_lines, name="test-log-writer")
    writing.start()
    try:
        writing.join(LINES * LINE_INTERVAL + 5)
        wait_for(lambda: assert_(lines_in(reader) == LINES, "not every line arrived"))
    finally:
        stop_writer.cancel()
        writing.join()
        writer.close()
        fired = time.monotonic()
        cancel.cancel("client went away")
    chunks, finished = reader.result()
    assert finished - fired < 0.1

    arrivals: list[tuple[bytes, float]] = []
    pending = b""
    for chunk, at in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        arrivals += [(text + b"\n", at) for text in complete]
    assert pending == b""
    assert [text for text, _ in arrivals] == [line(n) for n in range(LINES)]
    # Followed live, not read at the end: the first half of the lines reached the
    # reader before the writer wrote its last line. (How fast is a benchmark's
    # business: `python -m benchmarks bench_agent` measures the follow latency.)
    last_write = written[LINES - 1]
    late = [n for n, (_, at) in enumerate(arrivals[: LINES // 2]) if at >= last_write]
    assert not late, f"lines {late} arrived only after the writer had finished"
    assert len(os.listdir(alloc_dir.logs_dir)) == 3  # files were purged on the way
    assert fsapi_threads() == []


def lines_in(reader: consume_in_thread) -> int:
    """Lines received so far (peeking without taking from the queue)."""
    with reader.items.mutex:
        return sum(chunk.count(b"\n") for chunk, _ in reader.items.queue)


def test_logs_follow_closed_early_joins_its_threads(
    alloc_dir: AllocDir, cancel: CancelToken, rotated: bytes
) -> None:
    it = fsapi.logs(
        alloc_dir, "web", follow=True, origin="end", offset=2, cancel=cancel, heartbeat=0.05
    )
    assert frame_data(json.loads(next(it))) == b"NO"
    assert next(it) == b"{}"  # suspended while following: both watchers are running
    assert {t.name.split("-")[1] for t in fsapi_threads()} == {"changes", "next"}
    it.close()
    assert fsapi_threads() == []


def test_logs_follow_reports_a_deleted_file_and_ends_when_nothing_is_newer(
    alloc_dir: AllocDir, cancel: CancelToken, rotated: bytes
) -> None:
    it = fsapi.logs(alloc_dir, "web", follow=True, origin="end", offset=1, cancel=cancel)
    assert frame_data(json.loads(next(it))) == b"O"
    (alloc_dir.logs_dir / "web.stdout.2").unlink()
    deleted = {"Offset": 5, "File": "alloc/logs/web.stdout.2", "FileEvent": "file deleted"}
    assert frames(it) == [deleted]
    assert fsapi_threads() == []


def test_logs_follow_heartbeats(alloc_dir: AllocDir, cancel: CancelToken, rotated: bytes) -> None:
    it = fsapi.logs(
        alloc_dir, "web", follow=True, origin="end", offset=0, cancel=cancel, heartbeat=0.05
    )
    assert next(it) == b"{}"
    cancel.cancel()
    assert list(it) == []
