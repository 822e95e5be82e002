"""How close are the dry run's `estimated_seconds` and a running job's `estimated_finish` to the truth?

    .venv/bin/python bench/dry_run_estimate.py [--data-dir /tmp/openft-bench]

Starts its own server (SmolLM2-135M-Instruct, prepared once into the data directory), then on the quickstart data
(30 examples, batch 4, validation file) runs: a dry run with nothing measured yet (the fallback), job A (5 epochs);
a dry run calibrated by job A, job B (a different size: 3 epochs). For each job it prints the dry run's estimate
over the real wall time (created → finished), and `estimated_finish` (read once 10 % of the steps are done) over
the real finish, both as ratios (1.00 is exact; the baseline is the job's own measured time in this run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"


def run_job(client: OpenAI, train: str, valid: str, epochs: int) -> dict:
    body = {"model": MODEL, "training_file": train, "validation_file": valid,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 4}}}}
    plan = client.post("/fine_tuning/jobs", body={**body, "dry_run": True}, cast_to=object)
    job = client.fine_tuning.jobs.create(**body)
    early = None
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        if early is None and job.estimated_finish:
            steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=5).data
                     if e.type == "metrics"]
            if steps and steps[0] >= 0.1 * plan["total_steps"]:
                early = (time.time(), job.estimated_finish)
        time.sleep(1)
    assert job.status == "succeeded", job.error
    wall = job.finished_at - job.created_at
    print(f"{epochs} epochs, {plan['total_steps']} steps, {plan['trained_tokens']} tokens: wall {wall} s; "
          f"dry run ({plan['calibration']['source']}) {plan['estimated_seconds']} s, ratio "
          f"{plan['estimated_seconds'] / wall:.2f}", flush=True)
    if early:
        taken_at, finish = early
        print(f"  estimated_finish at 10 %: {finish - taken_at:.0f} s to go, real {job.finished_at - taken_at:.0f} s, "
              f"ratio {(finish - taken_at) / max(job.finished_at - taken_at, 1):.2f}", flush=True)
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/tmp/openft-bench-dry-run")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    data = Path(args.data_dir)
    env = {**os.environ, "OPENFT_DATA_DIR": str(data), "OPENFT_PORT": str(args.port)}
    db = data / "openft.db"
    db.unlink(missing_ok=True)  # a fresh calibration: nothing measured yet
    subprocess.run([sys.executable, "-m", "openft.cli", "models", "prepare"], env=env, check=True)
    server = subprocess.Popen([sys.executable, "-m", "openft.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(600):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=600)
        examples = ROOT / "openft" / "examples"
        train = client.files.create(file=open(examples / "quickstart.jsonl", "rb"), purpose="fine-tune").id
        valid = client.files.create(file=open(examples / "quickstart_validation.jsonl", "rb"), purpose="fine-tune").id
        run_job(client, train, valid, 5)
        run_job(client, train, valid, 3)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
