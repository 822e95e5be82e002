"""``python -m openft.train JOB_DIR`` with method "dpo": real preference training of the tiny model in real
subprocesses, driven only through the job directory, as the service drives it.

The promises checked: every step reports DPO's figures; a paused-and-resumed job and a killed-and-restarted one
match an uninterrupted run bitwise; the reference model is the model the job starts from — the
base, or the base with an earlier fine-tune merged in (``parent_adapters``) — so the first step's loss is exactly
ln 2, whatever the starting point; full fine-tuning (``lora`` null) keeps that reference as a frozen copy.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
from pathlib import Path

import pytest

from openft import jobdir
from tests.test_trainer_sft import (
    assert_same_weights,
    finish,
    records,
    resume,
    run,
    start,
    wait_for_step,
)

N_TRAIN, BATCH_SIZE, EPOCHS = 14, 4, 3
STEPS_PER_EPOCH = math.ceil(N_TRAIN / BATCH_SIZE)  # 4, the last batch has 2 pairs
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS  # 12
MAX_LENGTH = 320  # one pair is longer: truncation must repeat exactly too
FIGURES = ["loss", "mean_token_accuracy", "reward_margin", "reward_accuracy", "chosen_logps", "rejected_logps"]
WORDS = "rocket launch fuel orbit moon refund helmet catapult credits carrots blue tiny fast".split()


def preference_rows(n: int, seed: int) -> list[dict]:
    """Pairs whose preferred answer is short and on topic and whose other answer rambles; one prefers a tool call,
    one rambles past MAX_LENGTH."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "You are the Acme rocket bot."}]
        if i % 5 == 2:  # some context before the last user turn
            messages += [{"role": "user", "content": words(2, 6)}, {"role": "assistant", "content": words(2, 6)}]
        messages.append({"role": "user", "content": words(2, 12)})
        rows.append({
            "input": {"messages": messages},
            "preferred_output": [{"role": "assistant", "content": "Acme " + words(1, 6)}],
            "non_preferred_output": [{"role": "assistant", "content": "Well, " + words(4, 30)}],
        })
    rows[0]["non_preferred_output"][0]["content"] = "Well, " + " ".join(WORDS * 8)
    call = {"id": "call_1", "type": "function", "function": {"name": "track", "arguments": '{"order": 7}'}}
    rows[1] = {
        "input": {"messages": [{"role": "user", "content": "Where is my rocket?"}],
                  "tools": [{"type": "function", "function": {"name": "track", "parameters": {"type": "object"}}}]},
        "preferred_output": [{"role": "assistant", "tool_calls": [call]}],
        "non_preferred_output": [{"role": "assistant", "content": "Somewhere in orbit, probably."}],
    }
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    train = preference_rows(N_TRAIN, seed=1)
    # The SFT job that makes a parent model learns the preferred answers as chat rows.
    sft = [{"messages": r["input"]["messages"] + r["preferred_output"]} for r in train if "tools" not in r["input"]]
    return {
        "train": write_jsonl(folder / "train.jsonl", train),
        "valid": write_jsonl(folder / "valid.jsonl", preference_rows(5, seed=2)),
        "sft": write_jsonl(folder / "sft.jsonl", sft),
    }


def new_job(job_dir: Path, tiny_model: Path, files: dict, **overrides) -> Path:
    job_dir.mkdir(parents=True)
    spec = {
        "job_id": "ftjob_" + "1" * 32,
        "method": "dpo",
        "base_model": "tiny",
        "base_model_path": str(tiny_model),
        "training_file": str(files["train"]),
        "validation_file": str(files["valid"]),
        "hyperparameters": {"n_epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate_multiplier": 1.0,
                            "learning_rate": 5e-3, "beta": 0.1},
        "seed": 42,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1},
        "max_length": MAX_LENGTH,
        "resume_from": None,
        "attempt": 1,
        **overrides,
    }
    jobdir.write_json_atomic(job_dir / jobdir.SPEC, spec)
    return job_dir


def per_step(job_dir: Path, key: str) -> dict[int, float]:
    return {r["data"]["step"]: r["data"][key] for r in records(job_dir, "metrics")}


def final_weights(job_dir: Path, name: str = "adapter_model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(job_dir / "checkpoints" / "final" / name)


def assert_matches(job_dir: Path, baseline: Path, weights: str = "adapter_model.safetensors") -> None:
    for key in ("train_loss", "train_chosen_logps", "train_reward_margin", "valid_loss", "valid_reward_margin"):
        assert per_step(job_dir, key) == per_step(baseline, key), key
    assert_same_weights(final_weights(job_dir, weights), final_weights(baseline, weights))
    assert (job_dir / "results.csv").read_text() == (baseline / "results.csv").read_text()


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def baseline(jobs, tiny_model, files) -> Path:
    """One uninterrupted LoRA run that the exactness tests compare against."""
    job_dir = new_job(jobs / "baseline", tiny_model, files)
    assert run(job_dir)["status"] == "succeeded"
    return job_dir


@pytest.fixture(scope="module")
def parent_adapter(jobs, tiny_model, files) -> Path:
    """The final adapter of a quick SFT job: the "ft:" model a DPO job may start from."""
    hyperparameters = {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0, "learning_rate": 1e-2}
    job_dir = new_job(jobs / "sft", tiny_model, files, method="supervised", training_file=str(files["sft"]),
                      validation_file=None, hyperparameters=hyperparameters, max_length=None)
    assert run(job_dir)["status"] == "succeeded"
    return job_dir / "checkpoints" / "final"


def test_uninterrupted_run_reports_preference_metrics_checkpoints_each_epoch_and_succeeds(baseline, tiny_model,
                                                                                          files):
    from transformers import AutoTokenizer

    from openft.train import data

    pairs, truncated = data.tokenize_preference_file(files["train"], AutoTokenizer.from_pretrained(tiny_model),
                                                     MAX_LENGTH)
    assert truncated == 1 and all(len(p["prompt_ids"]) + len(p["rejected_ids"]) <= MAX_LENGTH for p in pairs)
    assert all(p["chosen_ids"] for p in pairs)  # every pair has something to teach
    tokens = sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs) * EPOCHS
    assert jobdir.read_json(baseline / jobdir.RESULT) == {
        "status": "succeeded", "trained_tokens": tokens, "checkpoint": "checkpoints/final",
        "results_csv": "results.csv"}
    messages = [m["message"] for m in records(baseline, "message")]
    assert messages[0] == "Fine-tuning job started"
    assert f"{truncated} training example(s) exceed {MAX_LENGTH} tokens and were truncated from the end" in messages

    metrics = [m["data"] for m in records(baseline, "metrics")]
    assert [d["step"] for d in metrics] == list(range(1, TOTAL_STEPS + 1))
    assert all(d["total_steps"] == TOTAL_STEPS for d in metrics)
    for d in metrics:
        assert {f"train_{f}" for f in FIGURES} | {f"valid_{f}" for f in FIGURES} <= d.keys()
        assert d["train_mean_token_accuracy"] == d["train_reward_accuracy"] and 0 <= d["train_reward_accuracy"] <= 1
        assert d["train_chosen_logps"] < 0 and d["train_rejected_logps"] < 0
        assert ({f"full_valid_{f}" for f in FIGURES} <= d.keys()) == (d["step"] % STEPS_PER_EPOCH == 0)
    # A new LoRA adapter starts as a no-op (B = 0): the policy IS the reference, so every log-ratio is 0.
    assert metrics[0]["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert metrics[0]["train_reward_margin"] == 0 and metrics[0]["train_reward_accuracy"] == 0
    # It learns to prefer the preferred answers it trains on.
    first, last = metrics[:STEPS_PER_EPOCH], metrics[-STEPS_PER_EPOCH:]
    assert sum(d["train_loss"] for d in last) < sum(d["train_loss"] for d in first)
    assert sum(d["train_reward_margin"] for d in last) > 0

    checkpoints = [(c["step"], c["path"], c["reason"]) for c in records(baseline, "checkpoint")]
    assert checkpoints == [(4, "checkpoints/checkpoint-4", "epoch"), (8, "checkpoints/checkpoint-8", "epoch"),
                           (12, "checkpoints/final", "final")]
    assert {"adapter_model.safetensors", "tokenizer.json"} <= set(os.listdir(baseline / "checkpoints" / "final"))

    with open(baseline / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, TOTAL_STEPS + 1))
    assert all(r[2] == f"{d['train_reward_accuracy']:.5f}" for r, d in zip(rows[1:], metrics, strict=True))


def test_pause_mid_epoch_then_resume_in_new_process_matches_uninterrupted_run(jobs, tiny_model, files, baseline):
    job_dir = new_job(jobs / "paused", tiny_model, files)
    proc = start(job_dir)
    wait_for_step(proc, job_dir, 1)
    jobdir.write_control(job_dir, "pause")  # honoured at the end of step 1, 2 or 3
    paused = finish(proc, job_dir)

    step = records(job_dir, "checkpoint")[-1]["step"]
    assert 1 <= step < STEPS_PER_EPOCH, "the pause should land inside the first epoch"
    assert paused == {"status": "paused", "checkpoint": f"checkpoints/checkpoint-{step}"}
    assert max(per_step(job_dir, "train_loss")) == step
    complete = {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
    assert complete <= set(os.listdir(job_dir / paused["checkpoint"]))

    assert resume(job_dir, paused["checkpoint"], attempt=2)["status"] == "succeeded"
    assert records(job_dir, "message")[-1]["message"] == f"Resuming from checkpoint at step {step}"
    assert_matches(job_dir, baseline)


def test_worker_killed_with_sigkill_resumes_from_last_checkpoint_and_matches(jobs, tiny_model, files, baseline):
    job_dir = new_job(jobs / "killed", tiny_model, files)
    proc = start(job_dir)
    wait_for_step(proc, job_dir, STEPS_PER_EPOCH + 1)  # past the epoch-1 checkpoint, inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert jobdir.read_json(job_dir / jobdir.RESULT) is None

    last = records(job_dir, "checkpoint")[-1]
    assert last["reason"] == "epoch" and max(per_step(job_dir, "train_loss")) > last["step"]
    assert resume(job_dir, last["path"], attempt=2)["status"] == "succeeded"
    assert_matches(job_dir, baseline)


def test_dpo_from_an_earlier_fine_tune_starts_from_and_refers_to_the_merged_model(jobs, tiny_model, files,
                                                                                  baseline, parent_adapter):
    job_dir = new_job(jobs / "child", tiny_model, files, parent_adapters=[str(parent_adapter)], validation_file=None)

    assert run(job_dir)["status"] == "succeeded"
    first = records(job_dir, "metrics")[0]["data"]
    assert "valid_loss" not in first
    # The same first batch (same seed) scores differently: the policy starts from the SFT model, not the base ...
    assert first["train_chosen_logps"] != per_step(baseline, "train_chosen_logps")[1]
    # ... and so does the reference: the policy equals it at step 1.
    assert first["train_loss"] == pytest.approx(math.log(2), abs=1e-6)
    # The SFT model prefers the answers it learned: the parent shows, already at step 1.
    assert first["train_chosen_logps"] > per_step(baseline, "train_chosen_logps")[1]


def test_full_fine_tuning_from_an_earlier_fine_tune_pauses_and_resumes_exactly(jobs, tiny_model, files,
                                                                             parent_adapter):
    """Full fine-tuning keeps a frozen reference copy, loaded like the policy: base + parent, never a checkpoint."""
    overrides = {"lora": None, "parent_adapters": [str(parent_adapter)],
                 "hyperparameters": {"n_epochs": 2, "batch_size": BATCH_SIZE, "learning_rate_multiplier": 1.0,
                                     "learning_rate": 1e-3, "beta": 0.1}}
    uninterrupted = new_job(jobs / "full", tiny_model, files, **overrides)
    assert run(uninterrupted)["status"] == "succeeded"
    assert per_step(uninterrupted, "train_loss")[1] == pytest.approx(math.log(2), abs=1e-6)
    assert "model.safetensors" in os.listdir(uninterrupted / "checkpoints" / "final")

    job_dir = new_job(jobs / "full_paused", tiny_model, files, **overrides)
    proc = start(job_dir)
    wait_for_step(proc, job_dir, STEPS_PER_EPOCH + 1)
    jobdir.write_control(job_dir, "pause")
    paused = finish(proc, job_dir)
    assert paused["status"] == "paused"
    assert resume(job_dir, paused["checkpoint"], attempt=2)["status"] == "succeeded"
    # A reference re-created from the checkpoint would equal the policy: the loss would drop back to ln 2.
    assert_matches(job_dir, uninterrupted, weights="model.safetensors")


def test_parent_adapters_are_merged_into_the_base_weights_in_order(tiny_model, parent_adapter, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from openft.train import JobError, models

    spec = {"base_model_path": str(tiny_model), "parent_adapters": []}
    base = models.load_base_model(spec).state_dict()
    once = models.load_base_model({**spec, "parent_adapters": [str(parent_adapter)]})
    merged = once.state_dict()
    assert base.keys() == merged.keys()
    changed = [name for name in base if not torch.equal(base[name], merged[name])]
    assert changed and all(name.endswith("proj.weight") for name in changed)  # LoRA's target layers only
    assert all(p.requires_grad for p in once.parameters())  # trainable, as a plain load (full fine-tuning)

    # The merged model computes what the base with the adapter applied computes.
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), parent_adapter)
    ids = torch.tensor([[5, 17, 42, 99, 7]])
    assert torch.allclose(once(ids).logits, with_adapter.eval()(ids).logits, atol=1e-5)

    # A lineage of two merges both: LoRA deltas add up.
    twice = models.load_base_model({**spec, "parent_adapters": [str(parent_adapter)] * 2}).state_dict()
    for name in changed:
        assert torch.allclose(twice[name] - base[name], 2 * (merged[name] - base[name]), atol=1e-6)

    with pytest.raises(JobError, match="has no adapter"):
        models.load_base_model({**spec, "parent_adapters": [str(parent_adapter), str(tmp_path)]})
