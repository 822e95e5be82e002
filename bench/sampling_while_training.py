"""Sampling a job's checkpoints while it trains: how much it slows the training.

Run against `scripts/serve` (same checkout, default data folder), from the repository root:

    .venv/bin/python bench/sampling_while_training.py [--base-url http://127.0.0.1:8000/v1] [--epochs 3]
                                                      [--samplers 2]

Two identical SFT jobs on SmolLM2-135M-Instruct with the bundled quickstart dataset, one after the other: the first
undisturbed (the baseline), the second while ``--samplers`` clients sample it without pause (the job's newest
checkpoint once one is listed, the base model before; 32 tokens per request). Printed: seconds per training step
for each (from the metrics events' timestamps), their ratio (the slowdown), and how many completions were served
during the second job.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
BASE = "SmolLM2-135M-Instruct"
QUESTION = [{"role": "user", "content": "When are you open?"}]


def train(client: OpenAI, file_id: str, epochs: int, on_running=None) -> float:
    """Run one job to the end; returns its mean seconds per step (first metrics event to last)."""
    job = client.fine_tuning.jobs.create(model=BASE, training_file=file_id, seed=1, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 4}}})
    started = False
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        if job.status == "running" and not started and on_running is not None:
            on_running(job.id)
            started = True
        time.sleep(1)
    if job.status != "succeeded":
        raise SystemExit(f"job {job.status}: {job.error}")
    events = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=1000) if e.type == "metrics"]
    times = sorted(e.created_at for e in events)
    return (times[-1] - times[0]) / max(1, len(times) - 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samplers", type=int, default=2)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused", timeout=600)
    with open(ROOT / "openft/examples/quickstart.jsonl", "rb") as f:
        file_id = client.files.create(file=f, purpose="fine-tune").id

    alone = train(client, file_id, args.epochs)
    stop, served = threading.Event(), [0]

    def sample(job_id: str) -> None:
        while not stop.is_set():
            checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
            model = checkpoints[0].fine_tuned_model_checkpoint if checkpoints else BASE
            try:
                client.chat.completions.create(model=model, messages=QUESTION, max_tokens=32, temperature=0)
                served[0] += 1
            except Exception as exc:  # noqa: BLE001 - a checkpoint pruned between list and sample: try the next
                print("sample failed:", exc)

    threads: list[threading.Thread] = []

    def start(job_id: str) -> None:
        threads.extend(threading.Thread(target=sample, args=(job_id,), daemon=True) for _ in range(args.samplers))
        for thread in threads:
            thread.start()

    try:
        sampled = train(client, file_id, args.epochs, on_running=start)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    print(f"seconds per step: alone {alone:.2f}, while sampled by {args.samplers} clients {sampled:.2f} "
          f"-> {sampled / alone:.2f}x ({served[0]} completions served meanwhile)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
