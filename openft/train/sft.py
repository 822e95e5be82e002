"""Supervised fine-tuning (method "supervised"): TRL's SFTTrainer with LoRA (or full fine-tuning when
``spec["lora"]`` is null), driven through the job directory.

One call of ``run`` is one attempt: a fresh start, or a resume from a checkpoint of an earlier attempt. What all
recipes share — the pause/resume recipe, the Trainer settings and why, the callback, the verdict — lives in
``attempt``; the model (with an earlier fine-tune merged in, ``spec["parent_adapters"]``) comes from ``models``.

Specific to SFT: batches are padding-free and the loss covers trained tokens only (see ``batching``), which
replaces TRL's SFT loss (it also computes entropy and full-vocabulary accuracy on every position, 30–40 % of a
step on CPU). Each step reports ``train_loss`` (mean over the batch's trained tokens) and
``train_mean_token_accuracy``, and with a validation file the same as ``valid_*`` and ``full_valid_*``.

On a CUDA device (see ``models`` and ``attempt``): bf16 autocast, FlashAttention 2 where installed (SDPA otherwise),
fused AdamW, and with ``liger-kernel`` installed its kernels in the model and its fused linear cross-entropy for the
loss. Neither package is a dependency; without them the same code runs on PyTorch's kernels.
"""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from transformers.utils import logging as hf_logging
from trl import SFTConfig, SFTTrainer

from openft.train import attempt, batching, data, models


def run(job_dir: Path, spec: dict) -> dict:
    """Run one attempt of the job in ``job_dir``; returns the ``result.json`` content it ends with."""
    hf_logging.disable_progress_bar()
    resume_dir = attempt.resume_dir(job_dir, spec)
    attempt.announce_start(job_dir, resume_dir)
    tokenizer = models.load_tokenizer(spec)

    warn = resume_dir is None  # an attempt that resumes has said it all before
    train_rows = attempt.tokenize(job_dir, spec, "training_file", data.tokenize_file, tokenizer, warn)
    valid_rows = []
    if spec.get("validation_file"):
        valid_rows = attempt.tokenize(job_dir, spec, "validation_file", data.tokenize_file, tokenizer, warn)

    valid_batches = attempt.batches(valid_rows, spec["hyperparameters"]["batch_size"])
    per_epoch = attempt.steps_per_epoch(len(train_rows), spec)

    def measure(trainer: LabelOnlySFTTrainer, step: int) -> dict:
        score = trainer.last_score
        train = {"loss": float(score.loss.detach()), "mean_token_accuracy": score.correct / max(score.tokens, 1)}
        return attempt.step_metrics(train, step, per_epoch, valid_batches, lambda b: _evaluate(trainer.model, b))

    job = attempt.JobCallback(job_dir, measure)
    trainer = LabelOnlySFTTrainer(
        model=models.load_base_model(spec),
        args=attempt.training_args(SFTConfig, job_dir, spec, **liger_settings()),
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tokenizer,
        data_collator=batching.collate,
        peft_config=models.lora_config(spec),
        callbacks=[job],
    )
    job.trainer = trainer
    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)

    trained_tokens = sum(len(row["input_ids"]) for row in train_rows) * spec["hyperparameters"]["n_epochs"]
    return attempt.finish(job_dir, trainer, job, trained_tokens)


def liger_settings() -> dict:
    """On a CUDA device with ``liger-kernel``: its RMSNorm, RoPE and SwiGLU kernels patched into the model, as TRL
    applies them (the loss is ``batching``'s, which uses Liger's fused linear cross-entropy itself)."""
    if not torch.cuda.is_available() or batching.fused_linear_cross_entropy() is None:
        return {}
    return {"use_liger_kernel": True,
            "liger_kernel_config": {"fused_linear_cross_entropy": False, "cross_entropy": False}}


class LabelOnlySFTTrainer(SFTTrainer):
    """SFTTrainer with the cheap label-position loss of ``batching``; keeps the last batch's score for reporting."""

    last_score: batching.Score | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # One batch per optimizer step, so the batch mean is the step's loss (num_items_in_batch is not needed).
        self.last_score = batching.score(model, inputs)
        return (self.last_score.loss, None) if return_outputs else self.last_score.loss


def _evaluate(model, batches: list[list[dict]]) -> dict:
    """Token-weighted loss and accuracy over ``batches``."""
    loss_sum, correct, tokens = 0.0, 0, 0
    with attempt.evaluating(model):
        for rows in batches:
            batch = {k: v.to(model.device) for k, v in batching.collate(rows).items()}
            score = batching.score(model, batch)
            loss_sum, correct, tokens = loss_sum + score.loss_sum, correct + score.correct, tokens + score.tokens
    return {"loss": loss_sum / max(tokens, 1), "mean_token_accuracy": correct / max(tokens, 1)}
