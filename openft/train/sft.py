"""Supervised fine-tuning (method "supervised"): LoRA on TRL's SFTTrainer, driven through the job directory.

One call of ``run`` is one attempt: a fresh start, or a resume from a checkpoint of an earlier attempt. The
recipe follows the prototype that proved pause/resume exact (notes/training-prototype.md §2–3):

* the ORIGINAL base model is always loaded and the Trainer's own checkpoint machinery restores adapter,
  optimizer, scheduler, RNG states and data position (``resume_from_checkpoint``);
* control is honoured only at optimizer-step ends; a pause asks the Trainer to save ``checkpoint-<step>`` and stop;
* every setting that decides the numbers is derived from spec.json alone, so each attempt of a job repeats it.

Settings that differ from TRL's defaults, and why: fp32 (TRL defaults to bf16, 14× slower on CPUs without native
bf16), no activation checkpointing (~40 % slower, memory is not the limit for LoRA on small models), one batch
per optimizer step with the last one partial (OpenAI's steps = ceil(examples / batch_size) × epochs), a linear
decay to zero without warmup (jobs are tens of steps long, and LoRA's B = 0 start already makes the first updates
small), a loss over trained tokens only (see ``batching``), and checkpoints at epoch ends (OpenAI's schedule).

The Trainer's checkpoint of the last epoch is not written: the final adapter goes to ``checkpoints/final``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.utils import logging as hf_logging
from trl import SFTConfig, SFTTrainer

from openft import jobdir
from openft.train import JobError, batching, data, reporting

FINAL_CHECKPOINT = f"{jobdir.CHECKPOINTS}/final"


def run(job_dir: Path, spec: dict) -> dict:
    """Run one attempt of the job in ``job_dir``; returns the ``result.json`` content it ends with."""
    hf_logging.disable_progress_bar()
    resume_dir = _resume_dir(job_dir, spec)
    _announce_start(job_dir, resume_dir)
    base = Path(spec["base_model_path"])
    if not (base / "config.json").is_file():
        raise JobError(f"Base model folder not found or incomplete: {base}")
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # saved with every checkpoint; batches themselves need no padding

    warn = resume_dir is None  # an attempt that resumes has said it all before
    train_rows = _tokenize(job_dir, spec, tokenizer, "training_file", warn)
    valid_rows = _tokenize(job_dir, spec, tokenizer, "validation_file", warn) if spec.get("validation_file") else []

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    batch_size = spec["hyperparameters"]["batch_size"]
    job = JobCallback(job_dir, valid_rows, batch_size, steps_per_epoch=math.ceil(len(train_rows) / batch_size))
    trainer = LabelOnlySFTTrainer(
        model=model,
        args=_training_args(job_dir, spec),
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tokenizer,
        data_collator=batching.collate,
        peft_config=_lora_config(spec),
        callbacks=[job],
    )
    job.trainer = trainer
    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)

    trained_tokens = sum(len(row["input_ids"]) for row in train_rows) * spec["hyperparameters"]["n_epochs"]
    return _finish(job_dir, trainer, job, trained_tokens)


def _resume_dir(job_dir: Path, spec: dict) -> Path | None:
    if not spec.get("resume_from"):
        return None
    resume_dir = job_dir / spec["resume_from"]
    if not (resume_dir / "trainer_state.json").is_file():
        raise JobError(f"Checkpoint to resume from not found or incomplete: {spec['resume_from']}")
    return resume_dir


def _announce_start(job_dir: Path, resume_dir: Path | None) -> None:
    if resume_dir is None:
        reporting.message(job_dir, "Fine-tuning job started")
    else:
        step = jobdir.read_json(resume_dir / "trainer_state.json")["global_step"]
        reporting.message(job_dir, f"Resuming from checkpoint at step {step}", data={"step": step})


def _tokenize(job_dir: Path, spec: dict, tokenizer, key: str, warn: bool) -> list[dict]:
    rows, truncated = data.tokenize_file(spec[key], tokenizer, spec["max_length"])
    if truncated and warn:
        noun = "training" if key == "training_file" else "validation"
        text = f"{truncated} {noun} example(s) exceed {spec['max_length']} tokens and were truncated from the end"
        reporting.message(job_dir, text, level="warn")
    return rows


def _lora_config(spec: dict) -> LoraConfig:
    lora = spec["lora"]
    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _training_args(job_dir: Path, spec: dict) -> SFTConfig:
    hp = spec["hyperparameters"]
    return SFTConfig(
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
        bf16=False,
        fp16=False,
        activation_checkpointing=False,
        max_length=None,  # data.py has truncated every row already
        logging_steps=1,
        save_strategy="epoch",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
        disable_tqdm=True,
    )


class LabelOnlySFTTrainer(SFTTrainer):
    """SFTTrainer with the cheap label-position loss of ``batching``; keeps the last batch's score for reporting."""

    last_score: batching.Score | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # One batch per optimizer step, so the batch mean is the step's loss (num_items_in_batch is not needed).
        self.last_score = batching.score(model, inputs)
        return (self.last_score.loss, None) if return_outputs else self.last_score.loss


class JobCallback(TrainerCallback):
    """Reports each optimizer step, checkpoints at epoch ends, and honours the control file (pause | cancel)."""

    def __init__(self, job_dir: Path, valid_rows: list[dict], batch_size: int, steps_per_epoch: int):
        self.job_dir = job_dir
        self.valid_batches = [valid_rows[i : i + batch_size] for i in range(0, len(valid_rows), batch_size)]
        self.steps_per_epoch = steps_per_epoch
        self.trainer: LabelOnlySFTTrainer | None = None
        self.stop: str | None = None  # "pause" or "cancel" once the control file asked for it
        self.last_metrics: dict = {}
        self._step_times: deque[float] = deque(maxlen=10)
        self._last_mark: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last_mark is None:
            self._last_mark = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        self.last_metrics = self._step_metrics(state)
        reporting.metrics(self.job_dir, self.last_metrics)
        now = time.monotonic()
        self._step_times.append(now - self._last_mark)
        self._last_mark = now
        average = sum(self._step_times) / len(self._step_times)
        reporting.progress(self.job_dir, state.global_step, state.max_steps, average)

        command = jobdir.read_control(self.job_dir)
        if command == "cancel":
            self.stop = "cancel"
            control.should_training_stop = True
            control.should_save = False
        elif command == "pause" and state.global_step < state.max_steps:  # at the last step, just finish
            self.stop = "pause"
            control.should_save = True  # the Trainer saves checkpoint-<global_step> right after this callback
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # No second save after a pause (already saved) or a cancel, and none of the last epoch (the final adapter
        # is saved instead).
        if self.stop or state.global_step >= state.max_steps:
            control.should_save = False
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.stop == "pause":
            return  # reported by _finish, once train() has returned
        path = f"{jobdir.CHECKPOINTS}/checkpoint-{state.global_step}"
        reporting.checkpoint(self.job_dir, state.global_step, path, "epoch", self.last_metrics)

    def _step_metrics(self, state) -> dict:
        score = self.trainer.last_score
        step, total = state.global_step, state.max_steps
        metrics = {
            "step": step,
            "total_steps": total,
            "train_loss": float(score.loss.detach()),
            "train_mean_token_accuracy": score.correct / max(score.tokens, 1),
        }
        if self.valid_batches:
            batch = self.valid_batches[(step - 1) % len(self.valid_batches)]  # cycles deterministically
            metrics["valid_loss"], metrics["valid_mean_token_accuracy"] = self._evaluate([batch])
            if step % self.steps_per_epoch == 0:
                loss, accuracy = self._evaluate(self.valid_batches)
                metrics["full_valid_loss"], metrics["full_valid_mean_token_accuracy"] = loss, accuracy
        return metrics

    def _evaluate(self, batches: list[list[dict]]) -> tuple[float, float]:
        """Token-weighted loss and accuracy over ``batches``; eval mode and no_grad draw no RNG and leave no trace."""
        model = self.trainer.model
        was_training = model.training
        model.eval()
        loss_sum, correct, tokens = 0.0, 0, 0
        with torch.no_grad():
            for rows in batches:
                batch = {k: v.to(model.device) for k, v in batching.collate(rows).items()}
                score = batching.score(model, batch)
                loss_sum, correct, tokens = loss_sum + score.loss_sum, correct + score.correct, tokens + score.tokens
        model.train(was_training)
        return loss_sum / max(tokens, 1), correct / max(tokens, 1)


def _finish(job_dir: Path, trainer: LabelOnlySFTTrainer, job: JobCallback, trained_tokens: int) -> dict:
    state = trainer.state
    if job.stop == "cancel":
        return {"status": "cancelled"}
    if job.stop == "pause":
        path = f"{jobdir.CHECKPOINTS}/checkpoint-{state.global_step}"
        reporting.checkpoint(job_dir, state.global_step, path, "pause", job.last_metrics)
        return {"status": "paused", "checkpoint": path}
    if state.global_step < state.max_steps:
        raise JobError(f"Training stopped at step {state.global_step} of {state.max_steps} without a reason")
    trainer.save_model(str(job_dir / FINAL_CHECKPOINT))  # adapter + tokenizer
    reporting.checkpoint(job_dir, state.max_steps, FINAL_CHECKPOINT, "final", job.last_metrics)
    reporting.write_results_csv(job_dir)
    return {
        "status": "succeeded",
        "trained_tokens": trained_tokens,
        "checkpoint": FINAL_CHECKPOINT,
        "results_csv": jobdir.RESULTS_CSV,
    }
