"""What does the service add to a training job, over running the trainer by hand?

    .venv/bin/python bench/service_overhead.py [--model tiny|smollm2] [--examples 48] [--epochs 3] [--pairs 3]

Starts a real `openft serve` (default settings but its own data directory, SQLite) and trains the same SFT job
`--pairs` times each way, alternating: through the API (the official openai SDK: upload once, then `create` →
`succeeded`, polled every 0.1 s) and with the bare trainer (`python -m openft.train JOB_DIR` on a copy of the
spec.json and training file the service wrote for its first job: same model, data, hyperparameters and seed),
timed from start to exit. Prints each pair's wall times and ratio API/bare, and their median and spread. The model is
the tests' tiny random Llama (built here) or SmolLM2-135M-Instruct (converted once into `data/models` if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import Server, _kill_trainers  # noqa: E402
from tests.helpers import chat_rows, upload, wait_for  # noqa: E402
from tests.tinymodel import build_tiny_model  # noqa: E402


def through_api(client, file_id: str, hp: dict) -> tuple[float, str]:
    start = time.perf_counter()
    job = client.fine_tuning.jobs.create(model="base", training_file=file_id, seed=7, hyperparameters=hp)
    wait_for(client, job.id, "succeeded", timeout=3600)  # polls every 0.1 s
    return time.perf_counter() - start, job.id


def bare_trainer(template: Path, work: Path) -> float:
    """The trainer on a fresh copy of a job directory's spec and data (no checkpoints, no events, no result)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = json.loads((template / "spec.json").read_text())
    shutil.copy(spec["training_file"], work / "training_file.jsonl")
    spec.update(training_file=str(work / "training_file.jsonl"), resume_from=None, attempt=1)
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    # In its own session, as the local executor starts an attempt: with the kernel's autogroup scheduling a new
    # session is a scheduling group of its own, so on a busy machine this matters as much as the service does.
    subprocess.run([sys.executable, "-m", "openft.train", str(work)], env=env, check=True, start_new_session=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    result = json.loads((work / "result.json").read_text())
    if result["status"] != "succeeded":
        raise RuntimeError(f"the bare trainer ended {result}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="openft-bench-overhead-"))
    if args.model == "tiny":
        base = build_tiny_model(work / "tiny")
    else:
        from bench.serving import model_folder

        base = model_folder(None)
    hp = {"n_epochs": args.epochs, "batch_size": args.batch_size}
    print(f"{args.model}: {args.examples} examples, {hp}; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    (work / "data").mkdir()
    server = Server(work / "data", f"sqlite:///{work / 'data' / 'openft.db'}", {"base": str(base)},
                    scheduler_interval=0.5)  # the default (the tests' servers tick faster)
    try:
        server.start()
        client = server.client()
        file_id = upload(client, chat_rows(args.examples))
        template, ratios = None, []
        for pair in range(args.pairs):
            api, job_id = through_api(client, file_id, hp)
            template = template or server.data_dir / "jobs" / job_id
            bare = bare_trainer(template, work / "bare")
            ratios.append(api / bare)
            print(f"pair {pair + 1}: API {api:.1f} s, bare trainer {bare:.1f} s, ratio {api / bare:.3f}", flush=True)
        print(f"API / bare trainer: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, "
              f"max {max(ratios):.3f}) over {len(ratios)} pairs; load average {os.getloadavg()[0]:.1f}")
    finally:
        server.stop(signal.SIGKILL)
        _kill_trainers(server.data_dir)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
