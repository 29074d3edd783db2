"""AllocDir benchmarks: migration stream throughput and move_from cost.

1. ``snapshot`` piped into ``extract`` (two threads, one OS pipe) for a tree of 1,000
   small files plus one 200 MB file, against ``tar -c | tar -x`` of the same tree in
   the same run. Goal: at least 0.7x tar's throughput.
2. ``move_from`` of ``alloc/data`` and five task ``local/`` dirs, against bare
   ``os.rename`` calls moving the same dirs. Goal: within 2x.

Runs with the lock check off; data goes under /tmp and is removed afterwards.
"""

from __future__ import annotations

import os

os.environ["ALLOCRUNNER_LOCKCHECK"] = "0"

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from allocrunner import _locking
from allocrunner.allocdir import AllocDir

SMALL_FILES = 1000
SMALL_SIZE = 4096
BIG_SIZE = 200 * 1024 * 1024
STREAM_ROUNDS = 3
MOVE_ALLOCS = 100
MOVE_TASKS = 5
STREAM_GOAL = 0.7
MOVE_GOAL = 2.0


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _make_tree(base: Path) -> tuple[AllocDir, int]:
    src = AllocDir(base, "src")
    src.build()
    task = src.new_task_dir("web")
    task.build()
    total = 0
    for i in range(SMALL_FILES):
        sub = task.local_dir / f"d{i % 20:02d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:04d}").write_bytes(os.urandom(SMALL_SIZE))
        total += SMALL_SIZE
    chunk = os.urandom(1 << 20)
    with open(src.data_dir / "big.bin", "wb") as f:
        for _ in range(BIG_SIZE // len(chunk)):
            f.write(chunk)
    total += BIG_SIZE
    return src, total


def _tar_pipe(src: AllocDir, dest: Path) -> float:
    dest.mkdir()
    start = time.perf_counter()
    producer = subprocess.Popen(
        ["tar", "-C", str(src.path), "-cf", "-", "alloc/data", "web/local"],
        stdout=subprocess.PIPE,
    )
    consumer = subprocess.run(["tar", "-C", str(dest), "-xf", "-"], stdin=producer.stdout)
    assert producer.stdout is not None
    producer.stdout.close()
    producer.wait()
    elapsed = time.perf_counter() - start
    if producer.returncode or consumer.returncode:
        raise RuntimeError("tar baseline failed")
    return elapsed


def _ours_pipe(src: AllocDir, base: Path, alloc_id: str) -> float:
    dest = AllocDir(base, alloc_id)
    dest.build()
    failure: list[BaseException] = []
    read_fd, write_fd = os.pipe()

    def produce() -> None:
        try:
            with open(write_fd, "wb", buffering=0) as out:
                src.snapshot(out)
        except BaseException as err:
            failure.append(err)

    start = time.perf_counter()
    thread = threading.Thread(target=produce, name="bench-snapshot")
    thread.start()
    with open(read_fd, "rb", buffering=0) as stream:
        dest.extract(stream)
    thread.join()
    elapsed = time.perf_counter() - start
    if failure:
        raise failure[0]
    if (dest.data_dir / "big.bin").stat().st_size != BIG_SIZE:
        raise RuntimeError("extracted tree is incomplete")
    return elapsed


def bench_stream(base: Path) -> None:
    src, total = _make_tree(base)
    mb = total / 1e6
    tar_times: list[float] = []
    our_times: list[float] = []
    for i in range(STREAM_ROUNDS):
        # Each run starts with no dirty pages left by the one before, so that neither
        # side pays for the other's write-back; the best of the alternating runs counts.
        os.sync()
        dest = base / f"tar-{i}"
        tar_times.append(_tar_pipe(src, dest))
        shutil.rmtree(dest)
        os.sync()
        our_times.append(_ours_pipe(src, base, f"ours-{i}"))
        shutil.rmtree(base / f"ours-{i}")
    tar_rate = mb / min(tar_times)
    our_rate = mb / min(our_times)
    ratio = our_rate / tar_rate
    print(
        f"snapshot+extract  {mb:7.1f} MB ({SMALL_FILES} x {SMALL_SIZE} B + {BIG_SIZE >> 20} MiB)"
        f"  ours {our_rate:7.1f} MB/s  tar|tar {tar_rate:7.1f} MB/s"
        f"  ratio {ratio:4.2f}x (goal >= {STREAM_GOAL}x)  {_verdict(ratio >= STREAM_GOAL)}"
    )
    src.destroy()


def _move_fixture(base: Path, n: int, tag: str) -> list[tuple[AllocDir, AllocDir]]:
    pairs = []
    for i in range(n):
        src = AllocDir(base, f"{tag}-src-{i}")
        dst = AllocDir(base, f"{tag}-dst-{i}")
        src.build()
        dst.build()
        (src.data_dir / "state.db").write_bytes(b"x" * 1024)
        for t in range(MOVE_TASKS):
            task_dir = src.new_task_dir(f"task{t}")
            task_dir.build()
            (task_dir.local_dir / "file").write_bytes(b"y" * 128)
            dst.new_task_dir(f"task{t}").build()
        pairs.append((src, dst))
    return pairs


def bench_move(base: Path) -> None:
    tasks = [f"task{t}" for t in range(MOVE_TASKS)]
    ours = _move_fixture(base, MOVE_ALLOCS, "ours")
    bare = _move_fixture(base, MOVE_ALLOCS, "bare")
    os.sync()
    ours_time = bare_time = 0.0
    # Interleaved, one alloc at a time, so that load changes hit both sides alike.
    for (src, dst), (bare_src, bare_dst) in zip(ours, bare, strict=True):
        start = time.perf_counter()
        dst.move_from(src, tasks)
        middle = time.perf_counter()
        os.rename(bare_src.data_dir, bare_dst.data_dir)
        for name in tasks:
            os.rename(bare_src.path / name / "local", bare_dst.path / name / "local")
        end = time.perf_counter()
        ours_time += middle - start
        bare_time += end - middle
    for src, dst in ours:
        if not (dst.data_dir / "state.db").exists() or (src.data_dir).exists():
            raise RuntimeError("move_from did not move the data dir")
    per_ours = ours_time / MOVE_ALLOCS * 1e6
    per_bare = bare_time / MOVE_ALLOCS * 1e6
    ratio = ours_time / bare_time
    print(
        f"move_from         {1 + MOVE_TASKS} dirs x {MOVE_ALLOCS} allocs"
        f"  ours {per_ours:7.1f} us/alloc  os.rename {per_bare:7.1f} us/alloc"
        f"  ratio {ratio:4.2f}x (goal <= {MOVE_GOAL}x)  {_verdict(ratio <= MOVE_GOAL)}"
    )


def main() -> None:
    if _locking.CHECK:
        print("warning: lock check is on; figures include its cost")
    base = Path(tempfile.mkdtemp(prefix="allocdir-bench-", dir="/tmp"))
    try:
        bench_stream(base)
        bench_move(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
