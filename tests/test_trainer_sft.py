"""``python -m openft.train JOB_DIR`` end to end: real training of the tiny model in real subprocesses, driven only
through the job directory (spec.json and control in; events.jsonl, checkpoints, results.csv and result.json out),
exactly as the service drives it.

The central promise: a job that is paused and resumed, or whose worker is killed and restarted
from its last checkpoint, produces bitwise the same per-step losses and final weights as an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openft import jobdir

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, BATCH_SIZE, EPOCHS = 24, 4, 3
STEPS_PER_EPOCH = N_TRAIN // BATCH_SIZE  # 6
TOTAL_STEPS = STEPS_PER_EPOCH * EPOCHS  # 18
WORDS = "the quick brown fox jumps over a lazy dog in Paris when it is sunny and warm or cold with rain".split()


def chat_rows(n: int, seed: int) -> list[dict]:
    """Chat rows of varied length; every 4th has a second exchange whose answer has weight 0, one has a tool call."""
    rng = random.Random(seed)

    def words(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    rows = []
    for i in range(n):
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": words(2, 25)}]
        messages.append({"role": "assistant", "content": words(1, 40)})
        if i % 4 == 1:
            messages += [{"role": "user", "content": words(1, 5)}, {"role": "assistant", "content": "no", "weight": 0}]
        rows.append({"messages": messages})
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    rows[3] = {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "21.0"},
            {"role": "assistant", "content": "It is sunny and warm."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    }
    return rows


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    out = {}
    for name, rows in (("train", chat_rows(N_TRAIN, seed=1)), ("valid", chat_rows(5, seed=2))):
        out[name] = folder / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def new_job(job_dir: Path, tiny_model: Path, files: dict, **overrides) -> Path:
    job_dir.mkdir(parents=True)
    spec = {
        "job_id": "ftjob_" + "0" * 32,
        "method": "supervised",
        "base_model": "tiny",
        "base_model_path": str(tiny_model),
        "training_file": str(files["train"]),
        "validation_file": str(files["valid"]),
        "hyperparameters": {"n_epochs": EPOCHS, "batch_size": BATCH_SIZE, "learning_rate_multiplier": 1.0,
                            "learning_rate": 2e-3},
        "seed": 42,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1},  # dropout > 0: exactness needs the RNG state restored
        "max_length": 96,  # some rows are longer: truncation is part of what must repeat exactly
        "resume_from": None,
        "attempt": 1,
        **overrides,
    }
    jobdir.write_json_atomic(job_dir / jobdir.SPEC, spec)
    return job_dir


def start(job_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    with open(job_dir / "trainer.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "openft.train", str(job_dir)], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, job_dir: Path, timeout: float = 120) -> dict:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:  # a hang is a failure, not a leftover process
            proc.kill()
    result = jobdir.read_json(job_dir / jobdir.RESULT)
    assert result is not None, (job_dir / "trainer.log").read_text()[-3000:]
    return result


def run(job_dir: Path) -> dict:
    return finish(start(job_dir), job_dir)


def resume(job_dir: Path, checkpoint: str, attempt: int) -> dict:
    """What the service does for the next attempt: clear control and the old verdict, point spec at the checkpoint."""
    (job_dir / jobdir.CONTROL).unlink(missing_ok=True)
    (job_dir / jobdir.RESULT).unlink(missing_ok=True)
    spec = jobdir.read_json(job_dir / jobdir.SPEC)
    jobdir.write_json_atomic(job_dir / jobdir.SPEC, {**spec, "resume_from": checkpoint, "attempt": attempt})
    return run(job_dir)


def records(job_dir: Path, kind: str) -> list[dict]:
    return [r for r in jobdir.read_records(job_dir, 0)[0] if r["kind"] == kind]


def wait_for_step(proc: subprocess.Popen, job_dir: Path, step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["data"]["step"] >= step for r in records(job_dir, "metrics")):
        assert proc.poll() is None, f"the trainer exited before step {step}"
        assert time.monotonic() < deadline
        time.sleep(0.005)


def per_step(job_dir: Path, key: str) -> dict[int, float]:
    """``key`` of every step's metrics; where a step ran in two attempts, the latest attempt's value."""
    return {r["data"]["step"]: r["data"][key] for r in records(job_dir, "metrics")}


def final_weights(job_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(job_dir / "checkpoints" / "final" / "adapter_model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_model, files) -> Path:
    """One uninterrupted run that the other tests compare against."""
    job_dir = new_job(tmp_path_factory.mktemp("jobs") / "baseline", tiny_model, files)
    assert run(job_dir)["status"] == "succeeded"
    return job_dir


def test_uninterrupted_run_reports_every_step_checkpoints_each_epoch_and_succeeds(baseline, tiny_model, files):
    from transformers import AutoTokenizer

    from openft.train import data

    result = jobdir.read_json(baseline / jobdir.RESULT)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows, truncated = data.tokenize_file(files["train"], tokenizer, max_length=96)
    assert truncated > 0
    assert result == {"status": "succeeded", "trained_tokens": sum(len(r["input_ids"]) for r in rows) * EPOCHS,
                      "checkpoint": "checkpoints/final", "results_csv": "results.csv"}

    assert records(baseline, "message")[0]["message"] == "Fine-tuning job started"
    metrics = records(baseline, "metrics")
    assert [m["data"]["step"] for m in metrics] == list(range(1, TOTAL_STEPS + 1))
    assert all(m["data"]["total_steps"] == TOTAL_STEPS for m in metrics)
    assert metrics[0]["message"] == "Step 1/18: training loss={:.4f}, validation loss={:.4f}".format(
        metrics[0]["data"]["train_loss"], metrics[0]["data"]["valid_loss"])
    assert metrics[5]["message"].endswith(", full validation loss={:.4f}".format(metrics[5]["data"]["full_valid_loss"]))
    assert metrics[-1]["data"]["full_valid_loss"] < metrics[5]["data"]["full_valid_loss"]  # it learns something
    progress = records(baseline, "progress")
    assert [p["step"] for p in progress] == list(range(1, TOTAL_STEPS + 1))
    assert all(p["total_steps"] == TOTAL_STEPS and p["seconds_per_step"] > 0 for p in progress)

    checkpoints = [(c["step"], c["path"], c["reason"]) for c in records(baseline, "checkpoint")]
    assert checkpoints == [(6, "checkpoints/checkpoint-6", "epoch"), (12, "checkpoints/checkpoint-12", "epoch"),
                           (18, "checkpoints/final", "final")]
    assert records(baseline, "checkpoint")[-1]["metrics"]["step"] == 18
    assert not (baseline / "checkpoints" / "checkpoint-18").exists()  # the final adapter replaces it
    assert {"adapter_model.safetensors", "tokenizer.json"} <= set(os.listdir(baseline / "checkpoints" / "final"))


def test_validation_metrics_appear_on_every_step_and_over_the_whole_set_at_epoch_ends(baseline):
    for m in records(baseline, "metrics"):
        d = m["data"]
        assert 0 <= d["valid_mean_token_accuracy"] <= 1 and d["valid_loss"] > 0
        at_epoch_end = d["step"] % STEPS_PER_EPOCH == 0
        assert ("full_valid_loss" in d) == at_epoch_end == ("full_valid_mean_token_accuracy" in d)


def test_results_csv_has_openai_columns_and_one_row_per_step(baseline):
    with open(baseline / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, TOTAL_STEPS + 1))
    losses = per_step(baseline, "train_loss")
    assert all(r[1] == f"{losses[int(r[0])]:.5f}" and len(r[3].split(".")[1]) == 5 for r in rows[1:])


def test_pause_mid_epoch_then_resume_in_new_process_matches_uninterrupted_run(tmp_path, tiny_model, files, baseline):
    job_dir = new_job(tmp_path / "job", tiny_model, files)
    proc = start(job_dir)
    wait_for_step(proc, job_dir, 2)
    jobdir.write_control(job_dir, "pause")  # as the service does; honoured at the end of step 2 or 3
    paused = finish(proc, job_dir)

    step = records(job_dir, "checkpoint")[-1]["step"]
    assert 2 <= step < STEPS_PER_EPOCH, "the pause should land inside the first epoch"
    assert paused == {"status": "paused", "checkpoint": f"checkpoints/checkpoint-{step}"}
    assert records(job_dir, "checkpoint")[-1]["reason"] == "pause"
    assert max(per_step(job_dir, "train_loss")) == step  # stopped right at the checkpoint
    complete = {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
    assert complete <= set(os.listdir(job_dir / paused["checkpoint"]))

    assert resume(job_dir, paused["checkpoint"], attempt=2)["status"] == "succeeded"
    assert records(job_dir, "message")[-1]["message"] == f"Resuming from checkpoint at step {step}"
    assert per_step(job_dir, "train_loss") == per_step(baseline, "train_loss")
    assert per_step(job_dir, "valid_loss") == per_step(baseline, "valid_loss")
    assert_same_weights(final_weights(job_dir), final_weights(baseline))
    assert (job_dir / "results.csv").read_text() == (baseline / "results.csv").read_text()


def test_worker_killed_with_sigkill_resumes_from_last_checkpoint_and_matches(tmp_path, tiny_model, files, baseline):
    job_dir = new_job(tmp_path / "job", tiny_model, files)
    proc = start(job_dir)
    wait_for_step(proc, job_dir, STEPS_PER_EPOCH + 2)  # past the epoch-1 checkpoint, inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert jobdir.read_json(job_dir / jobdir.RESULT) is None  # a death: the scheduler's case

    # The scheduler resumes from the last reported checkpoint; steps run after it are run again.
    last = records(job_dir, "checkpoint")[-1]
    assert last["reason"] == "epoch" and max(per_step(job_dir, "train_loss")) > last["step"]
    assert resume(job_dir, last["path"], attempt=2)["status"] == "succeeded"
    assert per_step(job_dir, "train_loss") == per_step(baseline, "train_loss")
    assert per_step(job_dir, "valid_loss") == per_step(baseline, "valid_loss")
    assert_same_weights(final_weights(job_dir), final_weights(baseline))
    assert (job_dir / "results.csv").read_text() == (baseline / "results.csv").read_text()


def test_cancel_stops_at_the_next_step_end_without_saving_anything(tmp_path, tiny_model, files):
    job_dir = new_job(tmp_path / "job", tiny_model, files)
    jobdir.write_control(job_dir, "cancel")  # already there when training starts: honoured at step 1's end

    assert run(job_dir) == {"status": "cancelled"}
    assert list(per_step(job_dir, "train_loss")) == [1]
    assert records(job_dir, "checkpoint") == []
    assert not any(p.is_dir() for p in (job_dir / "checkpoints").glob("checkpoint-*"))


def test_pause_at_the_last_step_completes_the_job(tmp_path, tiny_model, files):
    one_step = {"n_epochs": 1, "batch_size": N_TRAIN, "learning_rate_multiplier": 1.0, "learning_rate": 2e-3}
    job_dir = new_job(tmp_path / "job", tiny_model, files, hyperparameters=one_step, validation_file=None)
    jobdir.write_control(job_dir, "pause")

    assert run(job_dir)["status"] == "succeeded"
    assert [(c["step"], c["reason"]) for c in records(job_dir, "checkpoint")] == [(1, "final")]
    assert "valid_loss" not in records(job_dir, "metrics")[0]["data"]
    assert (job_dir / "results.csv").read_text().splitlines()[1].endswith(",,")


def test_broken_spec_fails_with_a_clear_error_instead_of_hanging(tmp_path, tiny_model, files):
    job_dir = new_job(tmp_path / "job", tiny_model, files, base_model_path=str(tmp_path / "missing"))

    result = run(job_dir)

    assert result["status"] == "failed"
    assert result["error"]["code"] == "server_error" and result["error"]["param"] is None
    assert str(tmp_path / "missing") in result["error"]["message"]
    assert records(job_dir, "message")[-1]["level"] == "error"
