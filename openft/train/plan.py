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
        counts = _counted(data.iter_preference_file(path, tokenizer, max_length))
    elif method == "reinforcement":
        from openft.train.rft import generation_settings

        _, completion = generation_settings(spec)
        counts = _counted(data.iter_prompt_file(path, tokenizer, max_length - completion))
    else:
        counts = data.count_file(path, tokenizer, max_length)
    n_examples = n_tokens = truncated = longest = 0
    for tokens, cut in counts:  # a row at a time: memory does not grow with the file
        n_examples, n_tokens, truncated, longest = n_examples + 1, n_tokens + tokens, truncated + cut, max(longest, tokens)
    return {"n_examples": n_examples, "n_tokens": n_tokens, "n_truncated": truncated, "max_example_tokens": longest}


def _counted(rows):
    """(tokens, truncated) of each tokenized row."""
    return ((_tokens(row), cut) for row, cut in rows)


def _tokens(row: dict) -> int:
    """A tokenized row's tokens as the trainer counts them (a preference pair: the prompt twice, both completions)."""
    if "chosen_ids" in row:
        return 2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])
    return len(row["input_ids"] if "input_ids" in row else row["prompt_ids"])


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
