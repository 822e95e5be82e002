"""What publishing a checkpoint costs a training attempt, on the default local store and on S3.

    .venv/bin/python bench/checkpoint_publish.py [--rounds 15] [--s3]

Before checkpoints were published, announcing one cost an fsync of its folder (``reporting.fsync_tree``); now it
is that plus ``openft.durable.Store.publish``. The checkpoint is a LoRA checkpoint of a 135M-parameter model as
the trainer writes it (adapter 3.5 MiB, optimizer 7 MiB, tokenizer 2 MiB, small state files), filled with random
bytes. Rounds alternate A (fsync only) and B (fsync + publish to ``<tmp>/blobs``, hard links) on fresh folders;
it prints the median and spread of each and the ratio B/A. ``--s3`` adds C (fsync + publish to moto's S3 server
on loopback: an upload, for scale) and C/A.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openft import durable  # noqa: E402
from openft.train.reporting import fsync_tree  # noqa: E402

FILES = {"adapter_model.safetensors": 3_700_000, "optimizer.pt": 7_400_000, "tokenizer.json": 2_100_000,
         "scheduler.pt": 1_500, "rng_state.pth": 14_000, "trainer_state.json": 3_000, "training_args.bin": 6_000,
         "adapter_config.json": 900, "tokenizer_config.json": 4_000, "chat_template.jinja": 700, "README.md": 5_000}


def checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, size in FILES.items():
        (folder / name).write_bytes(os.urandom(size))
    return folder


def timed(work: Path, store: durable.Store | None, i: int) -> float:
    folder = checkpoint(work / f"ckpt-{i}")
    start = time.perf_counter()
    fsync_tree(folder)
    if store is not None:
        store.publish(folder, f"jobs/bench/checkpoints/checkpoint-{i}")
    return time.perf_counter() - start


def moto(work: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "tests.s3server", str(port), str(work)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    return proc, f"http://127.0.0.1:{port}"


def summary(name: str, times: list[float]) -> str:
    ms = [t * 1000 for t in times]
    return f"{name}: median {statistics.median(ms):.1f} ms (min {min(ms):.1f}, max {max(ms):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="publish-bench-"))
    config = {"cache_dir": str(work / "cache"), "cache_bytes": 1 << 30, "options": {}}
    local = durable.open_store({**config, "url": str(work / "blobs")})
    stores = {"A fsync only": None, "B fsync + publish (local)": local}
    proc = None
    if args.s3:
        proc, endpoint = moto(work)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        stores["C fsync + publish (S3)"] = durable.open_store(
            {**config, "url": "s3://bench/openft", "options": {"endpoint_url": endpoint}})
    try:
        times: dict[str, list[float]] = {name: [] for name in stores}
        n = 0
        for _ in range(args.rounds):
            for name, store in stores.items():  # alternating, so that the machine's load weighs on each alike
                n += 1
                times[name].append(timed(work, store, n))
        for name in stores:
            print(summary(name, times[name]))
        base = statistics.median(times["A fsync only"])
        for name in list(stores)[1:]:
            print(f"{name[0]}/A = {statistics.median(times[name]) / base:.2f}")
    finally:
        if proc:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
