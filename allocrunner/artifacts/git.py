"""Cloning a git artifact with the system ``git``, cancellable and time-bounded.

`clone` follows go-getter v1.7.0's GitGetter, as Nomad v1.6 configures it:

1. ``git`` must be on the PATH (``git must be available and on the PATH``);
2. an ``sshkey`` is written to a 0600 file beside the checkout (inside the staging
   directory, removed with it) and passed as ``GIT_SSH_COMMAND=ssh -i <file>``;
3. ``git clone``: with a depth, ``--depth N`` and, when a ref is given,
   ``--branch <ref>`` (so a shallow clone needs a branch or tag; a commit-looking ref
   gets a note saying so); then ``git checkout <ref>`` when a ref is given; then
   ``git submodule update --init --recursive`` (with the same depth).

Every git runs in a new session (its own process group, no controlling terminal),
with stdin on /dev/null and Nomad's minimal getter environment (the agent's PATH and
HOME, TMPDIR in the staging directory; no other variable of the agent's, so no stray
``GIT_DIR``), plus ``GIT_TERMINAL_PROMPT=0`` and ``GIT_ALLOW_PROTOCOL`` naming only
the transports this client accepts (so a submodule cannot reach for others).
Its output goes to a file in the staging directory; a failure is
`DownloadError` (``git clone exited with 128: <git's last lines>``). All the commands
of one clone share one deadline, the client's ``git_timeout`` (Nomad's default, 30
minutes).

Ending a git: the caller's thread waits on a pidfd of git and on an eventfd the
cancel token writes (`allocrunner.allocdir.inotify.CancelWake`); on a cancel or the
deadline it sends SIGKILL to git's process group. Whatever happens, once git is known
to have exited, and before it is reaped (so its pid, which is the group's id, cannot
be reused yet), the group is sent SIGKILL again, so no helper git started
(``git-remote-https``, ``ssh``) outlives the fetch; then git is reaped.

`check_links` then refuses a checkout (or the subdirectory to install) with a
symlink that is absolute or resolves outside it, as archives are checked
(`allocrunner.artifacts.unpack`).

A crash of the agent mid-clone leaves a ``.artifact-*`` staging directory (with the
key file, if any) in the destination directory and a git that ends with its transfer
(it has no terminal and no parent to wait on it); nothing is installed. Repository
size is not limited (git has no such option), only its time.

Threads: none of its own; a clone runs on its caller's thread (the cancel token's
callback writes one eventfd on the cancelling thread). Locks: none. Owner:
`allocrunner.artifacts.fetch`.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import IO

import attrs

from allocrunner._locking import calls_out
from allocrunner._sync import CancelToken
from allocrunner.allocdir.inotify import CancelWake
from allocrunner.artifacts.download import Cancelled, DownloadError, check_cancel
from allocrunner.artifacts.git_source import GitSource
from allocrunner.artifacts.unpack import UnpackError, check_link_inside

__all__ = ["check_links", "clone"]

_COMMIT_LIKE = re.compile(r"^[0-9a-fA-F]{7,40}$")
_OUTPUT_TAIL = 2048
_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_FALLBACK_POLL = 0.05  # seconds between checks where pidfds are missing


@calls_out
def clone(
    source: GitSource,
    dest: str,
    *,
    work_dir: str,
    cancel: CancelToken | None,
    timeout: float,
    allow_local: bool,
) -> None:
    """Clone `source` into the new directory `dest` and check out its ref; `work_dir`
    (the private staging directory) holds the key file and git's output."""
    git = shutil.which("git", path=os.environ.get("PATH") or _DEFAULT_PATH)
    if git is None:
        raise DownloadError("git must be available and on the PATH")
    check_cancel(cancel)
    run = _GitRun(git, work_dir, cancel, time.monotonic() + timeout)
    env = _environment(source, work_dir, allow_local)
    shallow: list[str] = []
    if source.depth > 0:
        shallow = ["--depth", str(source.depth)]
        if source.ref:
            shallow += ["--branch", source.ref]
    try:
        run(["clone", *shallow, "--", source.url, dest], cwd=work_dir, env=env)
    except Cancelled:
        raise
    except DownloadError as err:
        if source.depth > 0 and _COMMIT_LIKE.match(source.ref):
            raise DownloadError(
                f"{err} (with depth, ref must name a branch or a tag, not a commit)"
            ) from None
        raise
    if source.ref:
        run(["checkout", source.ref], cwd=dest, env=env)
    submodules = ["submodule", "update", "--init", "--recursive"]
    if source.depth > 0:
        submodules += ["--depth", str(source.depth)]
    run(submodules, cwd=dest, env=env)


def _environment(source: GitSource, work_dir: str, allow_local: bool) -> dict[str, str]:
    """Nomad's minimal getter environment (PATH, HOME, TMPDIR: nothing else of the
    agent's reaches git), no prompts, the transports allowed, and the key."""
    env = {
        "PATH": os.environ.get("PATH") or _DEFAULT_PATH,
        "TMPDIR": work_dir,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": "https:http:ssh:git" + (":file" if allow_local else ""),
    }
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    if source.ssh_key:
        key_file = os.path.join(work_dir, "ssh-key")
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(source.ssh_key)
        env["GIT_SSH_COMMAND"] = f"ssh -i {shlex.quote(key_file)}"
    return env


@attrs.frozen
class _GitRun:
    """Immutable. Runs the git commands of one clone under one deadline."""

    git: str
    work_dir: str
    cancel: CancelToken | None
    deadline: float  # time.monotonic()

    @calls_out
    def __call__(self, args: Sequence[str], *, cwd: str, env: Mapping[str, str]) -> None:
        what = f"git {args[0]}"
        log = os.path.join(self.work_dir, "git-output")
        with open(log, "w+b") as output:
            proc = subprocess.Popen(
                [self.git, *args],
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                ended = _wait(proc, self.cancel, self.deadline)
            finally:
                _end_group(proc)
            check_cancel(self.cancel)
            if not ended:
                raise DownloadError(f"{what} timed out")
            if proc.returncode != 0:
                raise DownloadError(f"{what} exited with {proc.returncode}: {_tail(output)}")


def _tail(output: IO[bytes]) -> str:
    """git's last output, on one line."""
    size = output.seek(0, os.SEEK_END)
    output.seek(max(0, size - _OUTPUT_TAIL))
    text = output.read().decode("utf-8", "replace")
    return " ".join(text.split()) or "no output"


def _wait(proc: subprocess.Popen[bytes], cancel: CancelToken | None, deadline: float) -> bool:
    """Wait until git exits (True), is cancelled or passes `deadline` (False; it is
    then killed). git is not reaped here."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        return _poll_wait(proc, cancel, deadline)
    wake = CancelWake(cancel) if cancel is not None else None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if wake is not None:
            poller.register(wake.fileno(), select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready = {fd for fd, _ in poller.poll(left * 1000)}
            if pidfd in ready:
                return True
            if wake is not None and wake.fileno() in ready:
                return False
    finally:
        if wake is not None:
            wake.close()
        os.close(pidfd)


def _exited(pid: int) -> bool:
    """Whether `pid` (a child) has exited, leaving it unreaped."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _poll_wait(proc: subprocess.Popen[bytes], cancel: CancelToken | None, deadline: float) -> bool:
    token = cancel if cancel is not None else CancelToken()
    while not _exited(proc.pid):
        left = deadline - time.monotonic()
        if left <= 0 or token.wait(min(left, _FALLBACK_POLL)):
            return False
    return True


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL git's process group while git is unreaped (its pid still names the
    group), wait for git, kill the group again (helpers it forked meanwhile), reap."""
    _kill_group(proc.pid)
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # quick: it was killed
    _kill_group(proc.pid)
    proc.wait()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@calls_out
def check_links(tree: str) -> None:
    """Refuse a checkout whose symlinks could lead out of `tree` (the part to
    install), as for archives: each must be relative and resolve inside it."""
    for current, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            path = os.path.join(current, name)
            if os.path.islink(path):
                _check_link(tree, os.path.relpath(path, tree))


def _check_link(tree: str, name: str) -> None:
    target = os.readlink(os.path.join(tree, name))
    if os.path.isabs(target):
        raise UnpackError(f"symlink {name} -> {target} is absolute")
    check_link_inside(tree, tuple(name.split("/")), target, name)
