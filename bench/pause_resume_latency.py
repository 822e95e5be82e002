"""How soon does a training job pause when asked, and how soon does it train again when resumed?

    .venv/bin/python bench/pause_resume_latency.py [--model tiny|smollm2] [--rounds 3]

Starts a real `openft serve` (default settings, SQLite, its own data directory) and one SFT job long enough for
`--rounds` pause/resume cycles, driven with the official openai SDK (status polled every 0.1 s). Each round:

* pause (P3): from the `pause` call to the job reading `paused`, against what the trainer must do before it can
  stop: finish the step in progress (its remainder) and write the checkpoint. Both come from the trainer's own
  timestamped records in the job directory (the first step record after the request, then the pause checkpoint
  record). The goal is latency ≤ remainder + checkpoint write + 1 s; printed as the ratio latency / that budget.
* the anchor of P4, measured while the job is paused: a fresh Python process that imports the trainer's libraries
  and loads the base model and its tokenizer (`openft.train.models`), as any attempt must before it trains.
* resume (P4): from the `resume` call to the first step record of the new attempt, and its ratio to that anchor
  (what the resume adds beyond loading: the scheduler's pick-up, the tokenised data, the checkpoint's weights and
  optimizer state, one step).

Prints every round and the medians with their spread.
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

from openft import jobdir  # noqa: E402
from tests.conftest import Server, _kill_trainers  # noqa: E402
from tests.helpers import chat_rows, upload, wait_for  # noqa: E402
from tests.tinymodel import build_tiny_model  # noqa: E402

LOAD = """
import json, sys, time
start = time.perf_counter()
from openft.train import models
spec = {"base_model_path": sys.argv[1], "parent_adapters": []}
models.load_tokenizer(spec), models.load_base_model(spec)
print(json.dumps(time.perf_counter() - start))
"""


def records(job_dir: Path, kind: str, after: float) -> list[dict]:
    return [r for r in jobdir.read_records(job_dir, 0)[0] if r["kind"] == kind and r["ts"] > after]


def wait_record(job_dir: Path, kind: str, after: float, timeout: float = 1800) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = records(job_dir, kind, after)
        if found:
            return found[0]
        time.sleep(0.05)
    raise RuntimeError(f"no {kind} record within {timeout} s")


def model_load_seconds(base: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", LOAD, str(base)], env=env, check=True, capture_output=True, text=True,
                         start_new_session=True)  # as the executor starts an attempt (its own scheduling group)
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_round(client, job_id: str, job_dir: Path, base: Path) -> dict:
    wait_record(job_dir, "metrics", time.time() + 1)  # mid-training, at least a second after the last resume
    asked = time.time()
    client.fine_tuning.jobs.pause(job_id)
    wait_for(client, job_id, "paused", timeout=1800)
    paused = time.time()
    step_end = records(job_dir, "metrics", asked)[0]["ts"]
    checkpoint = next(r for r in records(job_dir, "checkpoint", asked) if r["reason"] == "pause")["ts"]
    steps = [r["ts"] for r in jobdir.read_records(job_dir, 0)[0] if r["kind"] == "metrics" and r["ts"] < asked]
    load = model_load_seconds(base)
    resumed = time.time()
    client.fine_tuning.jobs.resume(job_id)
    first_step = wait_record(job_dir, "metrics", resumed)["ts"]
    return {"pause": paused - asked, "remainder": step_end - asked, "checkpoint": checkpoint - step_end,
            "step": statistics.median(b - a for a, b in zip(steps[-6:], steps[-5:])), "load": load,
            "resume": first_step - resumed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="openft-bench-pause-"))
    if args.model == "tiny":
        base = build_tiny_model(work / "tiny")
    else:
        from bench.serving import model_folder

        base = model_folder(None)
    print(f"{args.model}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    (work / "data").mkdir()
    server = Server(work / "data", f"sqlite:///{work / 'data' / 'openft.db'}", {"base": str(base)},
                    scheduler_interval=0.5)  # the default (the tests' servers tick faster)
    rows = []
    try:
        server.start()
        client = server.client()
        job = client.fine_tuning.jobs.create(model="base", training_file=upload(client, chat_rows(100)), seed=3,
                                             hyperparameters={"n_epochs": 50, "batch_size": 1})
        job_dir = server.data_dir / "jobs" / job.id
        wait_for(client, job.id, "running", timeout=600)
        for k in range(args.rounds):
            r = one_round(client, job.id, job_dir, base)
            r["budget"] = r["remainder"] + r["checkpoint"] + 1.0
            rows.append(r)
            print(f"round {k + 1}: pause {r['pause']:.2f} s (step remainder {r['remainder']:.2f} + checkpoint "
                  f"{r['checkpoint']:.2f} + 1 = {r['budget']:.2f} s; ratio {r['pause'] / r['budget']:.2f}; steps take "
                  f"{r['step']:.2f} s) | resume → first step {r['resume']:.2f} s, model load {r['load']:.2f} s "
                  f"(ratio {r['resume'] / r['load']:.2f})", flush=True)
        client.fine_tuning.jobs.cancel(job.id)
    finally:
        server.stop(signal.SIGKILL)
        _kill_trainers(server.data_dir)
        shutil.rmtree(work, ignore_errors=True)

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    print(f"P3 pause latency / (step remainder + checkpoint write + 1 s): median "
          f"{spread([r['pause'] / r['budget'] for r in rows])}; pause latency {spread([r['pause'] for r in rows])} s")
    print(f"P4 resume → first new step / model load: median {spread([r['resume'] / r['load'] for r in rows])}; "
          f"resume {spread([r['resume'] for r in rows])} s, model load {spread([r['load'] for r in rows])} s; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
