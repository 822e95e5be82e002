"""What every recipe's attempt shares: where it resumes from, the Trainer settings that make runs repeatable, the
callback that reports each step and honours the control file, and the verdict it ends with.

A recipe (``sft``, ``dpo``, ``rft``) reads top to bottom as: tokenize the files, load the model (``models``), build
its TRL trainer with ``training_args`` and a ``JobCallback``, ``train(resume_from_checkpoint=resume_dir(...))``,
then ``finish``. What differs between recipes is the trainer and the figures each step reports; the callback takes the
latter as a function.

Pause and exactness: control is honoured only at optimizer-step ends; a pause
asks the Trainer to save ``checkpoint-<step>`` (weights, optimizer, scheduler, RNG states, trainer state) and stop;
every setting that decides the numbers is derived from spec.json alone, so each attempt of a job repeats it.

Trainer settings that differ from TRL's defaults, and why: fp32 on a CPU (TRL defaults to bf16, 14× slower on CPUs
without native bf16; on a CUDA device with bf16, bf16 autocast over fp32 weights), PyTorch's fused AdamW (pinned; the
default with this PyTorch), no activation checkpointing (~40 % slower; memory is not the limit on the models
served), one batch per optimizer step with the last one partial (OpenAI's steps = ceil(examples / batch_size) ×
epochs), a linear decay to zero without warmup (jobs are tens of steps long, and LoRA's B = 0 start already makes
the first updates small), and checkpoints at epoch ends (OpenAI's schedule; ``rft`` checkpoints at its validation steps instead).
The Trainer's checkpoint of the last epoch is not written: the final weights go to ``checkpoints/final``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import TrainerCallback

from openft import durable, jobdir
from openft.train import JobError, models, reporting, wandb_report

FINAL_CHECKPOINT = f"{jobdir.CHECKPOINTS}/final"


def resume_dir(job_dir: Path, spec: dict) -> Path | None:
    if not spec.get("resume_from"):
        return None
    try:
        path = durable.attempt_folder(spec, spec["resume_from"], job_dir)
    except durable.Incomplete:
        path = None
    if path is None or not (path / "trainer_state.json").is_file():
        raise JobError(f"Checkpoint to resume from not found or incomplete: {spec['resume_from']}")
    return path


def announce_start(job_dir: Path, resume_from: Path | None) -> None:
    if resume_from is None:
        reporting.message(job_dir, "Fine-tuning job started")
    else:
        step = jobdir.read_json(resume_from / "trainer_state.json")["global_step"]
        reporting.message(job_dir, f"Resuming from checkpoint at step {step}", data={"step": step})


def tokenize(job_dir: Path, spec: dict, key: str, tokenize_file, tokenizer, warn: bool) -> list[dict]:
    """The examples of ``spec[key]`` through ``tokenize_file``; warns (once per job) how many were truncated."""
    rows, truncated = tokenize_file(spec[key], tokenizer, spec["max_length"])
    if truncated and warn:
        noun = "training" if key == "training_file" else "validation"
        text = f"{truncated} {noun} example(s) exceed {spec['max_length']} tokens and were truncated from the end"
        reporting.message(job_dir, text, level="warn")
    return rows


def training_args(config_class, job_dir: Path, spec: dict, **recipe_settings):
    """The recipe's TRL config (``SFTConfig``, ``DPOConfig``, ``GRPOConfig``) with the settings every recipe shares;
    ``recipe_settings`` add to them or replace them."""
    hp = spec["hyperparameters"]
    shared = dict(
        output_dir=str(job_dir / jobdir.CHECKPOINTS),
        per_device_train_batch_size=hp["batch_size"],
        gradient_accumulation_steps=1,
        dataloader_drop_last=False,
        num_train_epochs=hp["n_epochs"],
        learning_rate=hp["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        seed=spec["seed"],
        data_seed=spec["seed"],
        bf16=models.bf16_autocast(),
        fp16=False,
        optim="adamw_torch_fused",
        activation_checkpointing=False,
        logging_steps=1,
        save_strategy="epoch",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=True,
    )
    if any(f.name == "max_length" for f in dataclasses.fields(config_class)):
        shared["max_length"] = None  # data.py has truncated every example already
    return config_class(**(shared | recipe_settings))


def batches(rows: list[dict], batch_size: int) -> list[list[dict]]:
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def steps_per_epoch(n_examples: int, spec: dict) -> int:
    return math.ceil(n_examples / spec["hyperparameters"]["batch_size"])


@contextmanager
def evaluating(model) -> Iterator[None]:
    """Eval mode and no_grad: draws no RNG and leaves no trace in the training run."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def step_metrics(train: dict, step: int, per_epoch: int, valid_batches: list, evaluate: Callable) -> dict:
    """A step's figures: ``train`` as ``train_<name>``; with a validation file, ``evaluate`` on one validation batch
    (cycling deterministically through them) as ``valid_<name>``, and at epoch ends on all of them as
    ``full_valid_<name>``. ``evaluate(batches)`` returns the same names as ``train``."""
    metrics = {f"train_{name}": value for name, value in train.items()}
    if valid_batches:
        batch = valid_batches[(step - 1) % len(valid_batches)]
        metrics |= {f"valid_{name}": value for name, value in evaluate([batch]).items()}
        if step % per_epoch == 0:
            metrics |= {f"full_valid_{name}": value for name, value in evaluate(valid_batches).items()}
    return metrics


class JobCallback(TrainerCallback):
    """Reports each optimizer step, checkpoints at epoch ends, and honours the control file (pause | cancel).

    ``measure(trainer, step)`` returns the step's figures (everything but ``step`` and ``total_steps``); it runs
    in ``on_step_end``, after the optimizer step and before the Trainer logs or saves. ``save_reason`` is the
    ``reason`` of the checkpoints the Trainer saves on its own schedule (a recipe with another schedule overrides it).
    """

    save_reason = "epoch"

    def __init__(self, job_dir: Path, measure: Callable[[object, int], dict]):
        self.job_dir = job_dir
        self.measure = measure
        self.trainer = None  # set by the recipe once the trainer exists
        self.stop: str | None = None  # "pause" or "cancel" once the control file asked for it
        self.last_metrics: dict = {}
        self._clock = reporting.StepClock()
        self.wandb = wandb_report.open_report(job_dir)  # None unless the job asked for W&B

    def on_train_begin(self, args, state, control, **kwargs):
        self.startup_seconds, self.began, self.first_step = reporting.process_age(), time.monotonic(), state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        step, total = state.global_step, state.max_steps
        self.last_metrics = {"step": step, "total_steps": total, **self.measure(self.trainer, step)}
        reporting.metrics(self.job_dir, self.last_metrics)
        if self.wandb:
            self.wandb.log(self.last_metrics)
        now = time.monotonic()
        pace = self._clock.tick(step, now)
        if pace is None:  # only the first step so far: its own time, warm-up and all
            pace = now - self.began
        reporting.progress(self.job_dir, step, total, pace)

        command = jobdir.read_control(self.job_dir)
        if command == "cancel":
            self.stop = "cancel"
            control.should_training_stop = True
            control.should_save = False
        elif command == "pause" and step < total:  # at the last step, just finish
            self.stop = "pause"
            control.should_save = True  # the Trainer saves checkpoint-<global_step> right after this callback
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # No second save after a pause (already saved) or a cancel, and none of the last epoch (the final weights
        # are saved instead).
        if self.stop or state.global_step >= state.max_steps:
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.stop == "pause":
            return  # reported by finish, once train() has returned
        path = f"{jobdir.CHECKPOINTS}/checkpoint-{state.global_step}"
        reporting.checkpoint(self.job_dir, state.global_step, path, self.save_reason, self.last_metrics)


def finish(job_dir: Path, trainer, job: JobCallback, trained_tokens: int) -> dict:
    """The attempt's ``result.json`` content, once ``train()`` has returned; saves the final weights on success."""
    state = trainer.state
    if job.wandb:
        job.wandb.finish()
    if job.stop == "cancel":
        return {"status": "cancelled"}
    if job.stop == "pause":
        path = f"{jobdir.CHECKPOINTS}/checkpoint-{state.global_step}"
        reporting.checkpoint(job_dir, state.global_step, path, "pause", job.last_metrics)
        return {"status": "paused", "checkpoint": path}
    if state.global_step < state.max_steps:
        raise JobError(f"Training stopped at step {state.global_step} of {state.max_steps} without a reason")
    trainer.save_model(str(job_dir / FINAL_CHECKPOINT))  # the adapter (or full weights) + tokenizer
    reporting.checkpoint(job_dir, state.max_steps, FINAL_CHECKPOINT, "final", job.last_metrics)
    reporting.write_results_csv(job_dir)
    steps = state.max_steps - job.first_step
    reporting.throughput(job_dir, trained_tokens * steps // state.max_steps, steps, time.monotonic() - job.began,
                         job.startup_seconds)
    return {
        "status": "succeeded",
        "trained_tokens": trained_tokens,
        "checkpoint": FINAL_CHECKPOINT,
        "results_csv": jobdir.RESULTS_CSV,
    }
