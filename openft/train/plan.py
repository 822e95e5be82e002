"""``python -m openft.train.plan``: count a job's tokens the way its trainer will, for a dry run.

Reads ``{"method", "base_model_path", "max_length", "hyperparameters", "files": {param: path}}`` as JSON on stdin
and prints, per file, ``{"n_examples", "n_tokens", "n_truncated", "max_example_tokens"}``, plus the base model's
size (``n_parameters``, from the safetensors headers; no weights are loaded). It runs in its own process because
the trainer's tokenizer code imports torch, which the API process never does.

Tokens are counted as the trainer counts ``trained_tokens``: supervised, every token of an example; DPO, the
prompt twice plus both completions; reinforcement, the prompt only (completions are sampled during training).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from openft import modelcard

os.environ["HF_HUB_OFFLINE"] = "1"


def count(method: str, path: str, tokenizer, max_length: int, spec: dict) -> dict:
    from openft.train import data

    if method == "dpo":
        pairs, truncated = data.tokenize_preference_file(path, tokenizer, max_length)
        sizes = [2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs]
    elif method == "reinforcement":
        from openft.train.rft import generation_settings

        _, completion = generation_settings(spec)
        prompts, truncated = data.tokenize_prompt_file(path, tokenizer, max_length - completion)
        sizes = [len(p["prompt_ids"]) for p in prompts]
    else:
        rows, truncated = data.tokenize_file(path, tokenizer, max_length)
        sizes = [len(r["input_ids"]) for r in rows]
    return {"n_examples": len(sizes), "n_tokens": sum(sizes), "n_truncated": truncated,
            "max_example_tokens": max(sizes, default=0)}


def main() -> int:
    from openft.train import models

    spec = json.load(sys.stdin)
    tokenizer = models.load_tokenizer(spec)
    out = {name: count(spec["method"], path, tokenizer, spec["max_length"], spec)
           for name, path in spec["files"].items()}
    config = json.loads((Path(spec["base_model_path"]) / "config.json").read_text())
    out["model"] = {"n_parameters": modelcard.parameter_count(Path(spec["base_model_path"])) or 0,
                    "hidden_size": config.get("hidden_size"), "num_hidden_layers": config.get("num_hidden_layers"),
                    "vocab_size": config.get("vocab_size"), "intermediate_size": config.get("intermediate_size")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.stdout.flush()
    raise SystemExit(main())
