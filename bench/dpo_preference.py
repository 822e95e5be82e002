"""DPO on SmolLM2-135M-Instruct with the bundled preference pairs: reward margin and preference accuracy on held-out
pairs, before and after.

Run against `scripts/serve` (same checkout, default data folder), from the repository root:

    .venv/bin/python bench/dpo_preference.py [--base-url http://127.0.0.1:8000/v1] [--epochs 2]

It trains through the service with the official openai SDK (openft/examples/preference.jsonl, 40 pairs), exports
the result merged (`openft export`), and scores the 10 held-out pairs of preference_validation.jsonl with plain
transformers: for each pair, the sum of log-probabilities of the preferred and of the non-preferred answer given
the prompt. Before = the base model, after = the DPO model. Printed per model: the mean log-prob margin (preferred
minus non-preferred) and the preference accuracy (pairs where the preferred answer is the more likely), and for the
DPO model DPO's own figures against the base as reference: reward margin beta·(Δ preferred − Δ non-preferred) and
reward accuracy (their share above 0). Before training these are 0 and 0 % by definition.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from openft.train.data import render_preference

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "openft/examples/preference.jsonl"
HELD_OUT = ROOT / "openft/examples/preference_validation.jsonl"
BASE = "SmolLM2-135M-Instruct"


def logps(model, tokenizer, rows: list[dict]) -> list[tuple[float, float]]:
    """(log p(preferred | prompt), log p(non-preferred | prompt)) for each row."""
    out = []
    for row in rows:
        prompt, chosen, rejected = render_preference(row, tokenizer)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        pair = []
        for completion in (chosen, rejected):
            ids = tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, :-1].float()
            targets = torch.tensor(ids[1:])
            token_logps = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
            pair.append(float(token_logps[len(prompt_ids) - 1:].sum()))
        out.append(tuple(pair))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.1)
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)

    start = time.time()
    train = client.files.create(file=TRAIN.open("rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=BASE, training_file=train.id, suffix="dpo-bench", seed=42,
        method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": args.epochs, "batch_size": 4,
                                                             "beta": args.beta}}},
    )
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
    if job.status != "succeeded":
        sys.exit(f"job {job.id} ended {job.status}: {job.error}")
    print(f"DPO job {job.id}: {job.fine_tuned_model} in {time.time() - start:.0f} s "
          f"({job.method.dpo.hyperparameters})")

    base_path = Path(_catalog_path())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "merged"
        subprocess.run([str(ROOT / ".venv/bin/openft"), "export", job.fine_tuned_model, "--format", "merged",
                        "--out", str(out)], check=True, cwd=ROOT)
        rows = [json.loads(line) for line in HELD_OUT.read_text().splitlines() if line.strip()]
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        before = logps(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval(), tokenizer, rows)
        after = logps(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), tokenizer, rows)

    n = len(rows)
    for name, scores in (("before (base)", before), ("after (DPO)", after)):
        margins = [c - r for c, r in scores]
        print(f"{name:<14} log-prob margin {sum(margins) / n:+.3f}  preference accuracy "
              f"{sum(m > 0 for m in margins)}/{n}")
    rewards = [args.beta * ((ca - cb) - (ra - rb)) for (cb, rb), (ca, ra) in zip(before, after)]
    print(f"{'DPO rewards':<14} reward margin {sum(rewards) / n:+.3f} (before: 0)  reward accuracy "
          f"{sum(r > 0 for r in rewards)}/{n} (before: 0/{n})")


def _catalog_path() -> str:
    out = subprocess.run([str(ROOT / ".venv/bin/openft"), "models", "list"], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout
    return dict(line.split("\t", 1) for line in out.splitlines())[BASE]


if __name__ == "__main__":
    main()
