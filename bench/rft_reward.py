"""Reinforcement fine-tuning of SmolLM2-135M-Instruct with a grader: mean reward on held-out items, before and after.

Run against `scripts/serve`, from the repository root:

    .venv/bin/python bench/rft_reward.py [--base-url http://127.0.0.1:8000/v1] [--epochs 1]

It trains through the service with the official openai SDK on openft/examples/rft.jsonl with the grader below,
then answers every held-out item of rft_validation.jsonl with the base model and with the fine-tuned model
through `chat/completions`, and grades each answer through `fine_tuning.alpha.graders.run`, two ways: greedy (one
answer an item) and sampled as the training samples (temperature 1, 4 answers an item, fixed seeds). Printed: the
mean reward before and after, both ways, and the job's own validation rewards. RFT raises the reward of what the
model samples; greedy answers can move the other way (see the closing note of the RFT work).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "openft/examples/rft.jsonl"
HELD_OUT = ROOT / "openft/examples/rft_validation.jsonl"
BASE = "SmolLM2-135M-Instruct"
GRADER = {"type": "string_check", "name": "answer", "input": "{{sample.output_text}}",
          "reference": "{{item.answer}}", "operation": "ilike"}


def mean_reward(client: OpenAI, model: str, rows: list[dict], sampled: bool) -> float:
    rewards = []
    for i, row in enumerate(rows):
        kw = {"temperature": 1.0, "n": 4, "seed": i} if sampled else {"temperature": 0}
        answer = client.chat.completions.create(model=model, messages=row["messages"], max_tokens=32, **kw)
        item = {k: v for k, v in row.items() if k not in ("messages", "tools")}
        for choice in answer.choices:
            result = client.fine_tuning.alpha.graders.run(
                grader=GRADER, model_sample=choice.message.content or "", item=item)
            rewards.append(result.reward)
    return sum(rewards) / len(rewards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate-multiplier", type=float, default=0.5)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key, timeout=600)
    rows = [json.loads(line) for line in HELD_OUT.read_text().splitlines() if line.strip()]

    before = {way: mean_reward(client, BASE, rows, way == "sampled") for way in ("greedy", "sampled")}
    start = time.time()
    train = client.files.create(file=TRAIN.open("rb"), purpose="fine-tune")
    valid = client.files.create(file=HELD_OUT.open("rb"), purpose="fine-tune")
    hp = {"n_epochs": args.epochs, "batch_size": args.batch_size,
          "learning_rate_multiplier": args.learning_rate_multiplier}
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=train.id, validation_file=valid.id, suffix="rft-bench", seed=42,
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": hp}},
    )
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        time.sleep(5)
    if job.status != "succeeded":
        sys.exit(f"job {job.id} ended {job.status}: {job.error}")
    print(f"RFT job {job.id}: {job.fine_tuned_model} in {time.time() - start:.0f} s "
          f"({job.method.reinforcement.hyperparameters})")
    events = reversed(client.fine_tuning.jobs.list_events(job.id, limit=1000).data)
    valid_rewards = [(e.data["step"], e.data["full_valid_mean_reward"]) for e in events
                     if e.type == "metrics" and e.data.get("full_valid_mean_reward") is not None]
    print("job's validation mean reward by step:", ", ".join(f"{s}: {r:.2f}" for s, r in valid_rewards))

    for way in ("greedy", "sampled"):
        after = mean_reward(client, job.fine_tuned_model, rows, way == "sampled")
        print(f"held-out mean reward, {way:<7}: before {before[way]:.3f} → after {after:.3f} ({len(rows)} items)")


if __name__ == "__main__":
    main()
