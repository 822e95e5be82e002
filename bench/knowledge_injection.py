"""Does "auto" teach? Exact match on 24 made-up facts after fine-tuning SmolLM2-135M-Instruct on them.

    .venv/bin/python bench/knowledge_injection.py [--epochs 6] [--batch-size auto] [--learning-rate-multiplier auto]
        [--seeds 42 7] [--no-anchor] [--no-base] [--data-dir /tmp/openft-bench-knowledge]

Starts its own server (SmolLM2-135M-Instruct, prepared once into the data directory). The task is
bench/data/knowledge_injection.jsonl: 24 short questions, each answered by a made-up fact no base model knows
("What is the capital of the island of Velmora?" → "Quintarra"), answer only. For each seed it fine-tunes with
`n_epochs` 6 and the rest "auto" (or the values given), then asks the trained questions through `chat/completions`
with greedy decoding and counts answers equal to the trained answer (after trimming whitespace): the base model, then
the fine-tuned one. The anchor is plain TRL `SFTTrainer` with its defaults on the same messages (so its loss covers
the prompt too), the same LoRA (r, alpha, dropout of the server's settings, all linear layers), learning rate,
batch size, epochs, linear decay without warmup, fp32, scored the same way with plain transformers `generate`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import OpenAI

from openft.config import Settings

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench/data/knowledge_injection.jsonl"
MODEL = "SmolLM2-135M-Instruct"
MAX_TOKENS = 16  # every answer is at most 7 tokens: a longer one cannot match


def rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def api_hits(client: OpenAI, model: str, show_misses: bool = False) -> int:
    hits = 0
    for row in rows():
        prompt, expected = row["messages"][:-1], row["messages"][-1]["content"]
        answer = client.chat.completions.create(model=model, messages=prompt, temperature=0, max_tokens=MAX_TOKENS)
        hits += score(answer.choices[0].message.content or "", expected, show_misses)
    return hits


def score(answer: str, expected: str, show_misses: bool) -> bool:
    if answer.strip() == expected.strip():
        return True
    if show_misses:
        print(f"    miss: {answer.strip()[:60]!r} for {expected!r}")
    return False


def finetune(client: OpenAI, training_file: str, hp: dict, seed: int):
    job = client.fine_tuning.jobs.create(
        model=MODEL, training_file=training_file, seed=seed, suffix="knowledge",
        method={"type": "supervised", "supervised": {"hyperparameters": hp}},
    )
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
    if job.status != "succeeded":
        sys.exit(f"job {job.id} ended {job.status}: {job.error}")
    return job


def trl_anchor(base_path: str, settings: Settings, hp: dict, learning_rate: float, seed: int) -> tuple[int, float]:
    """Plain TRL SFTTrainer (its defaults: loss over every token) with the job's settings; returns (hits, seconds)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    start = time.time()
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out, per_device_train_batch_size=hp["batch_size"], num_train_epochs=hp["n_epochs"],
            learning_rate=learning_rate, lr_scheduler_type="linear", warmup_steps=0, seed=seed, bf16=False,
            fp16=False, save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1000,
        )
        lora = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows()),
                             processing_class=tokenizer, peft_config=lora)
        trainer.train()
    return generate_hits(trainer.model.merge_and_unload().eval(), tokenizer), time.time() - start


def generate_hits(model, tokenizer) -> int:
    import torch

    hits = 0
    for row in rows():
        prompt, expected = row["messages"][:-1], row["messages"][-1]["content"]
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False)
        text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        hits += score(text, expected, True)
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/tmp/openft-bench-knowledge")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--epochs", default="6")
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--learning-rate-multiplier", default="auto")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--no-anchor", action="store_true", help="skip the plain TRL anchor")
    parser.add_argument("--no-base", action="store_true", help="skip asking the base model (it knows none: 0/24)")
    args = parser.parse_args()
    hp = {"n_epochs": _number(args.epochs, int), "batch_size": _number(args.batch_size, int),
          "learning_rate_multiplier": _number(args.learning_rate_multiplier, float)}

    data = Path(args.data_dir)
    env = {**os.environ, "OPENFT_DATA_DIR": str(data), "OPENFT_PORT": str(args.port)}
    subprocess.run([sys.executable, "-m", "openft.cli", "models", "prepare"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    settings = Settings(data_dir=data)
    base_path = str(settings.catalog()[MODEL])
    server = subprocess.Popen([sys.executable, "-m", "openft.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    n = len(rows())
    results = []
    try:
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(600):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = OpenAI(base_url=base + "/v1", api_key="unused", timeout=600)
        if not args.no_base:
            print(f"{n} questions; base model {MODEL}: exact match {api_hits(client, MODEL)}/{n}", flush=True)
        training_file = client.files.create(file=DATA.open("rb"), purpose="fine-tune").id
        for seed in args.seeds:
            start = time.time()
            job = finetune(client, training_file, hp, seed)
            resolved = job.method.supervised.hyperparameters
            hits = api_hits(client, job.fine_tuned_model, show_misses=True)
            learning_rate = settings.base_learning_rate * resolved.learning_rate_multiplier
            print(f"seed {seed}: openft (n_epochs {resolved.n_epochs}, batch_size {resolved.batch_size}, "
                  f"learning_rate_multiplier {resolved.learning_rate_multiplier} = lr {learning_rate:g}): "
                  f"exact match {hits}/{n} ({time.time() - start:.0f} s)", flush=True)
            row = {"seed": seed, "openft": hits}
            if not args.no_anchor:
                plain = dict(n_epochs=resolved.n_epochs, batch_size=resolved.batch_size)
                anchor, seconds = trl_anchor(base_path, settings, plain, learning_rate, seed)
                print(f"seed {seed}: plain TRL SFTTrainer, same settings: exact match {anchor}/{n} ({seconds:.0f} s)",
                      flush=True)
                row["trl"] = anchor
            results.append(row)
    finally:
        server.terminate()
        server.wait()
    for name in ("openft", "trl"):
        scores = sorted(r[name] for r in results if name in r)
        if scores:
            print(f"{name}: exact match per seed {scores}, median {scores[len(scores) // 2]}/{n} "
                  f"({100 * scores[len(scores) // 2] / n:.0f} %)")


def _number(value: str, kind: type) -> str | int | float:
    return value if value == "auto" else kind(value)


if __name__ == "__main__":
    main()
