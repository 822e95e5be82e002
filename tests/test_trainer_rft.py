"""``python -m openft.train JOB_DIR`` with method "reinforcement": real GRPO training of the tiny model in real
subprocesses, rewarded by real graders, driven only through the job directory, as the service drives it.

The promises checked: every step reports OpenAI's RFT figures and validation steps the full validation reward;
checkpoints come at validation steps; a job paused in its second epoch and resumed in a new process, and one whose
worker is killed and restarted from its last checkpoint, match an uninterrupted run bitwise — which
needs the prompt order of every epoch to be drawn afresh from the seed; grader failures score 0 and are counted.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import pytest

from openft import jobdir
from tests.test_trainer_sft import assert_same_weights, finish, records, resume, run, start, wait_for_step

N_TRAIN, N_VALID, BATCH_SIZE, EPOCHS = 6, 3, 2, 3
STEPS_PER_EPOCH = math.ceil(N_TRAIN / BATCH_SIZE)  # 3
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS  # 9
EVAL_INTERVAL, EVAL_SAMPLES = 2, 2
# The random tiny model babbles: whether its babble contains a few letters is a reward that varies.
STRING_GRADER = {"type": "string_check", "name": "has_letters", "input": "{{sample.output_text}}",
                 "reference": "{{item.letters}}", "operation": "like"}
PYTHON_GRADER = {"type": "python", "name": "vowels", "source": (
    "def grade(sample, item):\n"
    "    if item['n'] == 4:\n"
    "        raise ValueError('row 4 cannot be graded')\n"
    "    text = sample['output_text']\n"
    "    return sum(c in 'aeiou' for c in text) / max(len(text), 1)\n")}


def rft_rows(n: int, offset: int) -> list[dict]:
    letters = ["e", "th", "q", "an"]
    return [{"messages": [{"role": "developer", "content": "Answer in one word."},
                          {"role": "user", "content": f"Name colour number {i}."}],
             "letters": letters[i % len(letters)], "n": i} for i in range(offset, offset + n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    out = {}
    for name, rows in (("train", rft_rows(N_TRAIN, 0)), ("valid", rft_rows(N_VALID, 10))):
        out[name] = folder / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def new_job(job_dir: Path, tiny_model: Path, files: dict, **overrides) -> Path:
    job_dir.mkdir(parents=True)
    spec = {
        "job_id": "ftjob_" + "2" * 32,
        "method": "reinforcement",
        "base_model": "tiny",
        "base_model_path": str(tiny_model),
        "training_file": str(files["train"]),
        "validation_file": str(files["valid"]),
        "hyperparameters": {"n_epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate_multiplier": 1.0,
                            "learning_rate": 2e-2, "compute_multiplier": 0.5, "eval_interval": EVAL_INTERVAL,
                            "eval_samples": EVAL_SAMPLES, "reasoning_effort": "low"},
        "grader": STRING_GRADER,
        "seed": 42,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1},  # dropout > 0: exactness needs the RNG state restored
        "max_length": 96,
        "resume_from": None,
        "attempt": 1,
        **overrides,
    }
    jobdir.write_json_atomic(job_dir / jobdir.SPEC, spec)
    return job_dir


def metrics(job_dir: Path) -> dict[int, dict]:
    """Every step's metrics data; where a step ran in two attempts, the latest attempt's."""
    return {r["data"]["step"]: r["data"] for r in records(job_dir, "metrics")}


def per_step(job_dir: Path, key: str) -> dict[int, object]:
    return {step: d.get(key) for step, d in metrics(job_dir).items()}


def final_weights(job_dir: Path, name: str = "adapter_model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(job_dir / "checkpoints" / "final" / name)


def assert_matches(job_dir: Path, baseline: Path) -> None:
    for key in ("train_loss", "train_mean_reward", "completion_tokens_mean", "scores", "full_valid_mean_reward"):
        assert per_step(job_dir, key) == per_step(baseline, key), key
    assert_same_weights(final_weights(job_dir), final_weights(baseline))
    assert (job_dir / "results.csv").read_text() == (baseline / "results.csv").read_text()
    assert jobdir.read_json(job_dir / jobdir.RESULT) == jobdir.read_json(baseline / jobdir.RESULT)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jobs")


@pytest.fixture(scope="module")
def baseline(jobs, tiny_model, files) -> Path:
    """One uninterrupted run that the exactness tests compare against."""
    job_dir = new_job(jobs / "baseline", tiny_model, files)
    assert run(job_dir)["status"] == "succeeded"
    return job_dir


def test_uninterrupted_run_reports_rewards_validates_checkpoints_at_validation_steps_and_succeeds(baseline):
    result = jobdir.read_json(baseline / jobdir.RESULT)
    assert result["status"] == "succeeded" and result["checkpoint"] == "checkpoints/final"
    assert records(baseline, "message")[0]["message"] == "Fine-tuning job started"

    data = metrics(baseline)
    assert sorted(data) == list(range(1, TOTAL_STEPS + 1))
    generations = 2  # compute_multiplier 0.5
    for step, d in data.items():
        assert d["total_steps"] == TOTAL_STEPS
        # batch_size prompts × 2 completions, each rewarded 0 or 1
        assert d["train_mean_reward"] * BATCH_SIZE * generations == round(d["train_mean_reward"] * 4)
        assert d["train_mean_parse_error"] == 0 and d["train_mean_grader_error"] == 0
        assert isinstance(d["train_loss"], float) and 0 < d["completion_tokens_mean"] <= 32  # effort "low"
        assert d["scores"]["train_reward_mean"] == d["train_mean_reward"]
        assert d["scores"]["graders"][0]["name"] == "has_letters"
        assert d["errors"]["graders"][0]["train_other_error_count"] == 0
        assert d["step_time_s"] >= d["generation_time_s"] > 0 and d["grading_time_s"] > 0
        assert "train_mean_token_accuracy" not in d
        validated = step % EVAL_INTERVAL == 0 or step == TOTAL_STEPS
        assert ("full_valid_mean_reward" in d) == validated == ("valid_reward_mean" in d["scores"])
    assert len({d["train_mean_reward"] for d in data.values()}) > 1, "a reward that never varies teaches nothing"

    messages = [r["message"] for r in records(baseline, "metrics")]
    assert messages[0] == f"Step 1/{TOTAL_STEPS} , train mean reward={data[1]['train_mean_reward']:.4f}"
    assert messages[1] == (f"Step 2/{TOTAL_STEPS} , train mean reward={data[2]['train_mean_reward']:.4f}, "
                           f"full validation mean reward={data[2]['full_valid_mean_reward']:.4f}, "
                           "full validation mean parse error=0.0000")

    checkpoints = records(baseline, "checkpoint")
    assert [(c["step"], c["path"], c["reason"]) for c in checkpoints] == [
        (step, f"checkpoints/checkpoint-{step}", "eval") for step in (2, 4, 6, 8)] + [
        (TOTAL_STEPS, "checkpoints/final", "final")]
    for c in checkpoints:  # the numbers the service keeps the best 3 by, and nothing that is not a number
        assert c["metrics"]["full_valid_mean_reward"] == data[c["step"]]["full_valid_mean_reward"]
        assert all(isinstance(v, (int, float)) for v in c["metrics"].values())
    assert {"adapter_model.safetensors", "tokenizer.json"} <= set(os.listdir(baseline / "checkpoints" / "final"))
    # GRPO moved the adapter (LoRA's B starts at 0).
    assert any(name.endswith("lora_B.weight") and w.abs().sum() > 0 for name, w in final_weights(baseline).items())

    with open(baseline / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    for row, (step, d) in zip(rows[1:], sorted(data.items()), strict=True):
        valid = d.get("full_valid_mean_reward")
        assert row == [str(step), f"{d['train_loss']:.5f}", f"{d['train_mean_reward']:.5f}", "",
                       "" if valid is None else f"{valid:.5f}"]


def test_pause_in_the_second_epoch_then_resume_in_new_process_matches_uninterrupted_run(jobs, tiny_model, files,
                                                                                      baseline):
    job_dir = new_job(jobs / "paused", tiny_model, files)
    proc = start(job_dir)
    wait_for_step(proc, job_dir, STEPS_PER_EPOCH + 1)
    jobdir.write_control(job_dir, "pause")  # honoured at the end of step 4, or 5 or 6 on a busy machine
    paused = finish(proc, job_dir)

    step = records(job_dir, "checkpoint")[-1]["step"]
    assert STEPS_PER_EPOCH < step <= 2 * STEPS_PER_EPOCH, "the pause should land inside the second epoch"
    assert paused == {"status": "paused", "checkpoint": f"checkpoints/checkpoint-{step}"}
    assert records(job_dir, "checkpoint")[-1]["reason"] == "pause"
    assert max(metrics(job_dir)) == step

    assert resume(job_dir, paused["checkpoint"], attempt=2)["status"] == "succeeded"
    assert records(job_dir, "message")[-1]["message"] == f"Resuming from checkpoint at step {step}"
    assert_matches(job_dir, baseline)


def test_worker_killed_with_sigkill_resumes_from_last_checkpoint_and_matches(jobs, tiny_model, files, baseline):
    job_dir = new_job(jobs / "killed", tiny_model, files)
    proc = start(job_dir)
    wait_for_step(proc, job_dir, EVAL_INTERVAL + 1)  # past the first validation checkpoint, in epoch 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert jobdir.read_json(job_dir / jobdir.RESULT) is None

    last = records(job_dir, "checkpoint")[-1]
    assert last["reason"] == "eval" and max(metrics(job_dir)) > last["step"]
    assert resume(job_dir, last["path"], attempt=2)["status"] == "succeeded"  # runs into later epochs again
    assert_matches(job_dir, baseline)


def test_full_fine_tuning_with_a_python_grader_counts_grader_errors_as_zero_rewards(jobs, tiny_model, files):
    """Without a validation file, checkpoints still come every eval_interval steps."""
    job_dir = new_job(jobs / "python", tiny_model, files, grader=PYTHON_GRADER, lora=None, validation_file=None)

    assert run(job_dir)["status"] == "succeeded"
    data = metrics(job_dir)
    assert sorted(data) == list(range(1, TOTAL_STEPS + 1))
    assert not any("full_valid_mean_reward" in d for d in data.values())
    # Row 4 is in one batch per epoch: its 2 completions of the batch's 4 fail to grade and score 0.
    failed = {step: d["train_mean_grader_error"] for step, d in data.items() if d["train_mean_grader_error"]}
    assert len(failed) == EPOCHS and set(failed.values()) == {0.5}
    for step in failed:
        errors = data[step]["errors"]["graders"][0]
        assert (errors["name"], errors["type"]) == ("vowels", "python")
        assert errors["train_other_error_count"] == 2 and errors["train_other_error_mean"] == 0.5
    assert any(0 < d["train_mean_reward"] < 1 for d in data.values())  # fractional rewards, from the sandbox
    warnings = [r["message"] for r in records(job_dir, "message") if r["level"] == "warn"]
    assert any("python_grader_runtime_error" in w and "row 4 cannot be graded" in w for w in warnings)
    assert [(c["step"], c["reason"]) for c in records(job_dir, "checkpoint")] == [
        (2, "eval"), (4, "eval"), (6, "eval"), (8, "eval"), (TOTAL_STEPS, "final")]
    assert "model.safetensors" in os.listdir(job_dir / "checkpoints" / "final")


def test_each_epoch_orders_prompts_from_the_seed_and_keeps_the_short_last_batch():
    from openft.train.rft import PromptSampler

    sampler = PromptSampler(5, generations=2, seed=7)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    fresh = PromptSampler(5, generations=2, seed=7)
    fresh.set_epoch(2)
    assert list(fresh) == epochs[2]  # a process that starts in epoch 3 draws what an uninterrupted one draws
    assert epochs[0] != epochs[1]
    for order in epochs:
        assert len(order) == len(sampler) == 10 and sorted(order) == sorted(list(range(5)) * 2)
        assert all(order[k] == order[k + 1] for k in range(0, 10, 2))  # each prompt's completions side by side


def test_completions_become_grader_samples_with_tool_calls_and_json_and_figures_per_sub_grader(tmp_path):
    from openft.train.rft import Grader

    multi = {"type": "multi", "name": "both", "calculate_output": "0.5 * city + 0.5 * tool",
             "graders": {"city": {"type": "string_check", "name": "city", "input": "{{sample.output_json.city}}",
                                  "reference": "{{item.city}}", "operation": "eq"},
                         "tool": {"type": "string_check", "name": "tool", "reference": "get_weather",
                                  "input": "{{sample.output_tools[0].function.name}}", "operation": "eq"}}}
    grader = Grader(tmp_path, {"grader": multi})
    texts = ['{"city": "Paris"}',
             'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
             "Paris"]
    graded = grader.grade(texts, [{"city": "Paris"}] * 3, [[1, 2], [3], [4, 5, 6]])
    assert [o.reward for o in graded.outcomes] == [0.0, 0.0, 0.0]  # each lacks one part: the formula fails
    assert [o.sub_rewards for o in graded.outcomes] == [{"city": 1.0, "tool": 0.0}, {"city": 0.0, "tool": 1.0},
                                                        {"city": 0.0, "tool": 0.0}]

    figures = grader.figures(graded, "valid", "full_valid_mean")
    assert figures["full_valid_mean_reward"] == 0.0
    assert figures["full_valid_mean_grader_error"] == 1.0
    assert figures["full_valid_mean_parse_error"] == pytest.approx(2 / 3)  # output_json of non-JSON text
    assert figures["scores"]["graders"] == [{"name": "city", "type": "string_check", "valid_reward_mean": 1 / 3},
                                            {"name": "tool", "type": "string_check", "valid_reward_mean": 1 / 3}]
    errors = figures["errors"]["graders"][0]
    assert (errors["valid_sample_parse_error_count"], errors["valid_invalid_variable_error_count"]) == (2, 1)
    assert "completion_tokens_mean" not in figures
    assert grader.figures(graded, "train", "train_mean")["completion_tokens_mean"] == 2.0
    # The first failure of each kind is said once, as a warning event.
    warnings = [r["message"] for r in records(tmp_path, "message")]
    assert len(warnings) == 2 and all("score 0" in w for w in warnings)
