"""Does the quickstart's fine-tuned model answer as trained where the base model does not?

Run after the README quickstart, against the same server (`scripts/serve`):

    .venv/bin/python bench/exact_match.py [--model ft:…] [--base-url http://127.0.0.1:8000/v1]

For every example of the bundled dataset (training and validation files), it asks the base model and the fine-tuned
model (default: the newest succeeded job's) the example's prompt with greedy decoding, and counts answers equal to
the dataset's answer (after trimming whitespace). Prints exact-match before and after, per file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from openai import OpenAI

ROOT = Path(__file__).resolve().parents[1]
FILES = {"train": ROOT / "openft/examples/quickstart.jsonl", "validation": ROOT / "openft/examples/quickstart_validation.jsonl"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--model", help="the fine-tuned model (default: the newest succeeded job's)")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = args.model or next(j for j in client.fine_tuning.jobs.list(limit=100) if j.status == "succeeded")
    if not isinstance(model, str):
        base, model = model.model, model.fine_tuned_model
    else:
        base = model.split(":")[1]
    print(f"base model {base}, fine-tuned model {model}")
    for split, path in FILES.items():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        scores = {}
        for name in (base, model):
            start, hits = time.time(), 0
            for row in rows:
                prompt, expected = row["messages"][:-1], row["messages"][-1]["content"]
                answer = client.chat.completions.create(model=name, messages=prompt, temperature=0, max_tokens=64)
                hits += answer.choices[0].message.content.strip() == expected.strip()
            scores[name] = hits
            print(f"  {split:<10} {'fine-tuned' if name == model else 'base':<10} exact match {hits}/{len(rows)} "
                  f"({time.time() - start:.1f} s)")
        print(f"  {split:<10} before → after: {scores[base]}/{len(rows)} → {scores[model]}/{len(rows)}")


if __name__ == "__main__":
    main()
