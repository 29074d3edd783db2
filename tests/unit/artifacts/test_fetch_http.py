"""fetch_artifact over HTTP: checksums, headers, errors, archives, modes, cancel."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from allocrunner._sync import CancelToken
from allocrunner.artifacts import (
    ArtifactCancelled,
    ArtifactConfig,
    ArtifactError,
    ArtifactSpec,
    fetch_artifact,
)
from tests.unit.artifacts.conftest import ArtifactServer, Member, Served, make_tar, make_zip

BODY = b"#!/bin/sh\necho hello\n" * 100


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.rglob(".artifact-*")]


def test_good_checksum_and_headers_seen_by_the_server(
    server: ArtifactServer, task_dir: Path
) -> None:
    server.routes["/bin/tool.sh"] = Served(BODY)
    spec = ArtifactSpec(
        source=server.url("/bin/tool.sh"),
        options={"checksum": "sha256:" + hashlib.sha256(BODY).hexdigest()},
        headers={"X-Token": "s3cret", "User-Agent": "nomad-test"},
    )
    fetch_artifact(spec, task_dir, allow_local=False)
    installed = task_dir / "local" / "tool.sh"
    assert installed.read_bytes() == BODY
    assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    [(path, headers)] = server.requests
    assert path == "/bin/tool.sh"  # the checksum option is not sent to the server
    assert headers["X-Token"] == "s3cret"
    assert headers["User-Agent"] == "nomad-test"
    assert leftovers(task_dir) == []


def test_bad_checksum_installs_nothing(server: ArtifactServer, task_dir: Path) -> None:
    server.routes["/tool"] = Served(BODY)
    (task_dir / "local" / "tool").write_bytes(b"old")
    spec = ArtifactSpec(source=server.url("/tool"), options={"checksum": "sha256:" + "00" * 32})
    with pytest.raises(ArtifactError) as err:
        fetch_artifact(spec, task_dir, allow_local=False)
    message = str(err.value)
    assert message.startswith(f'failed to download artifact "{server.url("/tool")}": ')
    assert "checksums did not match for tool" in message
    assert hashlib.sha256(BODY).hexdigest() in message
    assert err.value.recoverable
    assert (task_dir / "local" / "tool").read_bytes() == b"old"
    assert leftovers(task_dir) == []


@pytest.mark.parametrize(
    "checksum",
    [
        "md5:" + hashlib.md5(BODY).hexdigest(),
        "sha1:" + hashlib.sha1(BODY).hexdigest(),
        "SHA512:" + hashlib.sha512(BODY).hexdigest(),
        hashlib.sha1(BODY).hexdigest(),  # a bare value: its length says sha1
        hashlib.md5(BODY).hexdigest(),
    ],
)
def test_checksum_in_the_query_as_go_getter_reads_it(
    server: ArtifactServer, task_dir: Path, checksum: str
) -> None:
    server.routes["/tool"] = Served(BODY)
    spec = ArtifactSpec(source=server.url(f"/tool?checksum={checksum}&v=2"))
    fetch_artifact(spec, task_dir, allow_local=False)
    assert (task_dir / "local" / "tool").read_bytes() == BODY
    assert server.requests[0][0] == "/tool?v=2"


@pytest.mark.parametrize(
    ("checksum", "reason"),
    [
        ("sha3:00", "unsupported checksum type: sha3"),
        ("sha256:abcd", "invalid sha256 checksum"),
        ("nothex", "not hexadecimal"),
        ("abcd", "Unknown type for checksum abcd"),
    ],
)
def test_malformed_checksums_are_refused_before_downloading(
    server: ArtifactServer, task_dir: Path, checksum: str, reason: str
) -> None:
    server.routes["/tool"] = Served(BODY)
    spec = ArtifactSpec(source=server.url("/tool"), options={"checksum": checksum})
    with pytest.raises(ArtifactError, match=reason) as err:
        fetch_artifact(spec, task_dir, allow_local=False)
    assert not err.value.recoverable
    assert server.requests == []


def test_404_names_the_source(server: ArtifactServer, task_dir: Path) -> None:
    source = server.url("/missing.tar.gz")
    with pytest.raises(ArtifactError) as err:
        fetch_artifact(ArtifactSpec(source=source), task_dir, allow_local=False)
    assert str(err.value) == f'failed to download artifact "{source}": bad response code: 404'
    assert err.value.source == source
    assert err.value.recoverable
    assert leftovers(task_dir) == []


def test_connection_refused(task_dir: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ArtifactError, match="error downloading"):
        fetch_artifact(
            ArtifactSpec(source=f"http://127.0.0.1:{port}/x"), task_dir, allow_local=False
        )


def test_tar_gz_unpacks_into_the_destination(server: ArtifactServer, task_dir: Path) -> None:
    archive = make_tar(
        [
            Member("app", kind="dir", mode=0o755),
            Member("app/bin/run", b"run", mode=0o4755),  # setuid is dropped
            Member("app/conf/a.conf", b"a=1"),
            Member("app/current", kind="symlink", link="bin/run"),
            Member("app/run-again", kind="hardlink", link="app/bin/run"),
        ]
    )
    server.routes["/release.tar.gz"] = Served(archive)
    (task_dir / "local" / "keep.txt").write_text("kept")
    fetch_artifact(ArtifactSpec(source=server.url("/release.tar.gz")), task_dir, allow_local=False)
    local = task_dir / "local"
    assert (local / "app" / "bin" / "run").read_bytes() == b"run"
    assert stat.S_IMODE((local / "app" / "bin" / "run").stat().st_mode) == 0o755
    assert (local / "app" / "conf" / "a.conf").read_text() == "a=1"
    assert os.readlink(local / "app" / "current") == "bin/run"
    assert (local / "app" / "run-again").read_bytes() == b"run"
    assert (local / "keep.txt").read_text() == "kept"  # merged, not replaced
    assert leftovers(task_dir) == []


@pytest.mark.parametrize(
    ("suffix", "compression"), [("tgz", "gz"), ("tar", ""), ("tar.xz", "xz"), ("tbz2", "bz2")]
)
def test_tar_flavours(
    server: ArtifactServer, task_dir: Path, suffix: str, compression: str
) -> None:
    server.routes[f"/a.{suffix}"] = Served(make_tar([Member("f.txt", b"x")], compression))
    fetch_artifact(ArtifactSpec(source=server.url(f"/a.{suffix}")), task_dir, allow_local=False)
    assert (task_dir / "local" / "f.txt").read_bytes() == b"x"


def test_zip_unpacks_into_a_custom_destination(server: ArtifactServer, task_dir: Path) -> None:
    archive = make_zip(
        [
            Member("site", kind="dir"),
            Member("site/index.html", b"<h1>hi</h1>"),
            Member("site/bin/tool", b"tool", mode=0o750),
            Member("site/latest", kind="symlink", link="index.html"),
        ]
    )
    server.routes["/site.zip"] = Served(archive)
    spec = ArtifactSpec(source=server.url("/site.zip"), destination="local/www")
    fetch_artifact(spec, task_dir, allow_local=False)
    www = task_dir / "local" / "www"
    assert (www / "site" / "index.html").read_bytes() == b"<h1>hi</h1>"
    assert stat.S_IMODE((www / "site" / "bin" / "tool").stat().st_mode) == 0o750
    assert (www / "site" / "latest").read_bytes() == b"<h1>hi</h1>"


def test_archive_false_keeps_the_archive_as_a_file(server: ArtifactServer, task_dir: Path) -> None:
    archive = make_tar([Member("f.txt", b"x")])
    server.routes["/a.tar.gz"] = Served(archive)
    spec = ArtifactSpec(source=server.url("/a.tar.gz"), options={"archive": "false"})
    fetch_artifact(spec, task_dir, allow_local=False)
    assert (task_dir / "local" / "a.tar.gz").read_bytes() == archive
    assert server.requests[0][0] == "/a.tar.gz"


def test_archive_option_names_the_kind(server: ArtifactServer, task_dir: Path) -> None:
    server.routes["/download"] = Served(make_zip([Member("z.txt", b"z")]))
    spec = ArtifactSpec(source=server.url("/download"), options={"archive": "zip"})
    fetch_artifact(spec, task_dir, allow_local=False)
    assert (task_dir / "local" / "z.txt").read_bytes() == b"z"


def test_file_mode_writes_the_destination_file(server: ArtifactServer, task_dir: Path) -> None:
    server.routes["/config"] = Served(b"conf")
    spec = ArtifactSpec(source=server.url("/config"), mode="file", destination="local/app.conf")
    fetch_artifact(spec, task_dir, allow_local=False)
    assert (task_dir / "local" / "app.conf").read_bytes() == b"conf"
    # the default destination of file mode is local/<base name>
    fetch_artifact(
        ArtifactSpec(source=server.url("/config"), mode="file"), task_dir, allow_local=False
    )
    assert (task_dir / "local" / "config").read_bytes() == b"conf"


def test_file_mode_decompresses_a_single_file(server: ArtifactServer, task_dir: Path) -> None:
    import gzip

    server.routes["/data.json.gz"] = Served(gzip.compress(b'{"a": 1}'))
    spec = ArtifactSpec(
        source=server.url("/data.json.gz"), mode="file", destination="local/data.json"
    )
    fetch_artifact(spec, task_dir, allow_local=False)
    assert (task_dir / "local" / "data.json").read_bytes() == b'{"a": 1}'
    with pytest.raises(
        ArtifactError, match="gzip-compressed files can only unarchive to a single file"
    ):
        fetch_artifact(
            ArtifactSpec(source=server.url("/data.json.gz")), task_dir, allow_local=False
        )


def test_file_mode_refuses_an_archive_of_several_files(
    server: ArtifactServer, task_dir: Path
) -> None:
    server.routes["/two.tar.gz"] = Served(make_tar([Member("a", b"a"), Member("b", b"b")]))
    spec = ArtifactSpec(source=server.url("/two.tar.gz"), mode="file", destination="local/one")
    with pytest.raises(ArtifactError, match="expected a single file, got multiple"):
        fetch_artifact(spec, task_dir, allow_local=False)
    assert not (task_dir / "local" / "one").exists()


def test_filename_query_names_the_file_in_any_mode(server: ArtifactServer, task_dir: Path) -> None:
    server.routes["/download"] = Served(b"bin")
    spec = ArtifactSpec(source=server.url("/download"), options={"filename": "tool"})
    fetch_artifact(spec, task_dir, allow_local=False)
    assert (task_dir / "local" / "tool").read_bytes() == b"bin"
    spec = ArtifactSpec(source=server.url("/download"), options={"filename": "../escape"})
    with pytest.raises(ArtifactError, match="path traversal"):
        fetch_artifact(spec, task_dir, allow_local=False)


def test_dir_mode_needs_an_archive(server: ArtifactServer, task_dir: Path) -> None:
    server.routes["/plain"] = Served(b"x")
    spec = ArtifactSpec(source=server.url("/plain"), mode="dir")
    with pytest.raises(ArtifactError, match="mode dir needs an archive"):
        fetch_artifact(spec, task_dir, allow_local=False)


def test_a_body_over_the_limit_is_refused(server: ArtifactServer, task_dir: Path) -> None:
    server.routes["/big"] = Served(b"x" * 100_000)
    config = ArtifactConfig(http_max_bytes=50_000)
    with pytest.raises(ArtifactError, match="exceeds the limit of 50000 bytes"):
        fetch_artifact(
            ArtifactSpec(source=server.url("/big")), task_dir, allow_local=False, config=config
        )
    assert not (task_dir / "local" / "big").exists()
    assert leftovers(task_dir) == []


def test_cancel_interrupts_a_stalled_download(server: ArtifactServer, task_dir: Path) -> None:
    stall = threading.Event()
    server.routes["/slow.bin"] = Served(b"y" * 200_000, stall=stall)
    cancel = CancelToken()
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            fetch_artifact(
                ArtifactSpec(source=server.url("/slow.bin")),
                task_dir,
                allow_local=False,
                cancel=cancel,
            )
        except BaseException as err:  # reported by the assertions below
            errors.append(err)

    worker = threading.Thread(target=fetch, name="artifact-fetch")
    worker.start()
    assert server.body_started.wait(10)
    cancel.cancel("task is stopping")
    worker.join(5)  # the socket is shut down: the read returns at once
    assert not worker.is_alive()
    stall.set()
    [error] = errors
    assert isinstance(error, ArtifactCancelled)
    assert "task is stopping" in str(error)
    assert not error.recoverable
    assert not (task_dir / "local" / "slow.bin").exists()
    assert leftovers(task_dir) == []


def test_a_cancelled_token_fetches_nothing(server: ArtifactServer, task_dir: Path) -> None:
    server.routes["/x"] = Served(b"x")
    cancel = CancelToken()
    cancel.cancel("stop")
    with pytest.raises(ArtifactCancelled):
        fetch_artifact(
            ArtifactSpec(source=server.url("/x")), task_dir, allow_local=False, cancel=cancel
        )
    assert server.requests == []


def test_redirects_are_followed_to_http_only(server: ArtifactServer, task_dir: Path) -> None:
    server.routes["/v2/tool"] = Served(BODY)
    server.routes["/latest/tool"] = Served(status=302, location=server.url("/v2/tool"))
    fetch_artifact(ArtifactSpec(source=server.url("/latest/tool")), task_dir, allow_local=False)
    assert (task_dir / "local" / "tool").read_bytes() == BODY
    server.routes["/ftp/tool"] = Served(status=302, location="ftp://127.0.0.1/tool")
    with pytest.raises(ArtifactError, match="redirect to ftp: is not followed"):
        fetch_artifact(ArtifactSpec(source=server.url("/ftp/tool")), task_dir, allow_local=False)
    server.routes["/file/tool"] = Served(status=302, location="file:///etc/passwd")
    with pytest.raises(ArtifactError, match="bad response code: 302"):  # urllib refuses it
        fetch_artifact(ArtifactSpec(source=server.url("/file/tool")), task_dir, allow_local=False)
    assert sorted(p.name for p in (task_dir / "local").iterdir()) == ["tool"]


def test_a_subdir_of_an_archive_is_installed_alone(server: ArtifactServer, task_dir: Path) -> None:
    archive = make_tar([Member("repo/README", b"r"), Member("repo/dist/app", b"app")])
    server.routes["/repo.tar.gz"] = Served(archive)
    spec = ArtifactSpec(source=server.url("/repo.tar.gz//repo/dist"), destination="local/app")
    fetch_artifact(spec, task_dir, allow_local=False)
    assert sorted(p.name for p in (task_dir / "local" / "app").iterdir()) == ["app"]
    assert server.requests[0][0] == "/repo.tar.gz"
    spec = ArtifactSpec(source=server.url("/repo.tar.gz//repo/missing"))
    with pytest.raises(ArtifactError, match="subdirectory repo/missing is not a directory"):
        fetch_artifact(spec, task_dir, allow_local=False)
    spec = ArtifactSpec(source=server.url("/repo.tar.gz//../etc"))
    with pytest.raises(ArtifactError, match="path traversal"):
        fetch_artifact(spec, task_dir, allow_local=False)
