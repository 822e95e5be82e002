"""Preference fine-tuning (method "dpo"): TRL's DPOTrainer with LoRA (or full fine-tuning when ``spec["lora"]``
is null), driven through the job directory exactly as ``sft`` is.

One call of ``run`` is one attempt: a fresh start, or a resume from a checkpoint of an earlier attempt. The job
directory protocol, the pause/resume recipe, the Trainer settings and the verdict are shared with SFT (``attempt``);
the starting model, with an earlier fine-tune merged in (``spec["parent_adapters"]``), comes from ``models``.

The reference model is the starting model itself. With LoRA it is the policy with its adapter disabled (TRL does
this when it is given a PEFT model and no ``ref_model``), so no second copy of the weights is held. Full
fine-tuning needs a frozen copy: it is loaded here exactly like the policy (base, plus the parent merged in), never
from a checkpoint, so that a resumed attempt compares against the same reference.

Specific to DPO: the sigmoid loss of the DPO paper with ``beta`` from ``spec["hyperparameters"]``; dropout
disabled in policy and reference (TRL's DPO default: a pair's two log-ratios must come from the same function, so
``lora.dropout`` does not apply); the pairs are tokenised and truncated by ``data`` (TRL's own preprocessing is
skipped); a step's batch is ``batch_size`` pairs.

The cheap path (replacing TRL's loss, which pads 2 × ``batch_size`` sequences to the longest, runs the prompt twice
per pair and computes entropy, mean logits and top-1 accuracy over the vocabulary at every completion position):
each pair is one row, its prompt once and both completions after it (``shared_prefix``), and only the positions
that predict a completion token go through the LM head. The reference log-probs come from the same rows, without
gradients, with the adapter disabled (LoRA) or from the frozen copy (full fine-tuning). The per-step figures equal
those of the plain computation (full logits, log-softmax, gather; tests/test_prefs_fast_path.py) within float
tolerance.

What each step reports (``metrics`` records, ``data``), beside ``step`` and ``total_steps``:

* ``train_loss``: the batch's mean DPO loss, −log σ(β·((log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r)))),
  over its pairs (c chosen = preferred, r rejected = non-preferred; log π is a completion's summed token log-prob);
* ``train_reward_margin``: the mean of β·(log-ratio of c − log-ratio of r), DPO's implicit reward margin;
* ``train_reward_accuracy``: the fraction of pairs whose chosen reward exceeds the rejected one;
* ``train_mean_token_accuracy``: the same number as ``train_reward_accuracy``, under the name SFT uses, so that
  results.csv's ``train_accuracy`` column and every consumer of SFT metrics have a meaningful figure;
* ``train_chosen_logps``, ``train_rejected_logps``: the mean summed log-prob of the chosen / rejected completions
  under the policy;
* with a validation file, the same six figures as ``valid_<name>`` for one validation batch per step (cycling
  through them in order) and as ``full_valid_<name>`` over the whole validation set at each epoch end, averaged
  over pairs. They are computed in eval mode without gradients and draw no RNG, so they do not change the run.

``trained_tokens`` counts, per epoch, both sequences of every pair: 2 × prompt + chosen + rejected tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers.utils import logging as hf_logging
from trl import DPOConfig, DPOTrainer

from openft.train import attempt, data, models, shared_prefix


def run(job_dir: Path, spec: dict) -> dict:
    """Run one attempt of the job in ``job_dir``; returns the ``result.json`` content it ends with."""
    hf_logging.disable_progress_bar()
    resume_dir = attempt.resume_dir(job_dir, spec)
    attempt.announce_start(job_dir, resume_dir)
    tokenizer = models.load_tokenizer(spec)

    warn = resume_dir is None  # an attempt that resumes has said it all before
    tokenize_file = data.tokenize_preference_file
    train_pairs = attempt.tokenize(job_dir, spec, "training_file", tokenize_file, tokenizer, warn)
    valid_pairs = []
    if spec.get("validation_file"):
        valid_pairs = attempt.tokenize(job_dir, spec, "validation_file", tokenize_file, tokenizer, warn)

    valid_batches = attempt.batches(valid_pairs, spec["hyperparameters"]["batch_size"])
    per_epoch = attempt.steps_per_epoch(len(train_pairs), spec)

    def measure(trainer: ReportingDPOTrainer, step: int) -> dict:
        figures = trainer.last_figures
        return attempt.step_metrics(figures, step, per_epoch, valid_batches, lambda b: _evaluate(trainer, b))

    lora = models.lora_config(spec)
    job = attempt.JobCallback(job_dir, measure)
    trainer = ReportingDPOTrainer(
        model=models.load_base_model(spec),
        ref_model=None if lora else _frozen(models.load_base_model(spec)),
        args=attempt.training_args(
            DPOConfig,
            job_dir,
            spec,
            beta=spec["hyperparameters"]["beta"],
            loss_type=["sigmoid"],
            disable_dropout=True,
        ),
        data_collator=collate,
        train_dataset=Dataset.from_list(train_pairs),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[job],
    )
    job.trainer = trainer
    trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)

    per_pass = sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in train_pairs)
    return attempt.finish(job_dir, trainer, job, per_pass * spec["hyperparameters"]["n_epochs"])


class ReportingDPOTrainer(DPOTrainer):
    """DPOTrainer on pairs that ``data`` has tokenised, batched by ``collate`` and scored by ``pair_logps`` (the
    cheap path of the module docstring); keeps the last batch's figures for reporting."""

    last_figures: dict | None = None
    last_eval_figures: dict | None = None

    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset  # already {"prompt_ids", "chosen_ids", "rejected_ids"}, truncated to max_length

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # One batch per optimizer step, so the batch mean is the step's loss (num_items_in_batch is not needed).
        with torch.no_grad():
            if self.ref_model is None:  # LoRA: the reference is the policy without its adapter
                with self.accelerator.unwrap_model(model).disable_adapter():
                    ref_chosen, ref_rejected = pair_logps(model, inputs)
            else:
                ref_chosen, ref_rejected = pair_logps(self.ref_model, inputs)
        chosen, rejected = pair_logps(model, inputs)
        loss, figures = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
        if self.model.training:
            self.last_figures = figures
        else:
            self.last_eval_figures = figures
        return (loss, None) if return_outputs else loss


def collate(pairs: list[dict]) -> dict[str, torch.Tensor]:
    """Pairs ``{"prompt_ids", "chosen_ids", "rejected_ids"}`` → one row each (``shared_prefix``): the prompt once,
    then the chosen completion (completion 2i), then the rejected one (2i + 1), which never sees the chosen."""
    return shared_prefix.collate([(p["prompt_ids"], [p["chosen_ids"], p["rejected_ids"]]) for p in pairs])


def pair_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed token log-probs of every chosen and every rejected completion of a ``collate`` batch."""
    pairs = batch["input_ids"].shape[0]
    per_completion = shared_prefix.sums(shared_prefix.token_logps(model, batch), batch["owners"], 2 * pairs)
    return per_completion[0::2], per_completion[1::2]


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta: float) -> tuple[torch.Tensor, dict]:
    """DPO's sigmoid loss (mean over pairs) and the batch's figures (see the module docstring)."""
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    margins = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(margins).mean()
    accuracy = float((chosen_rewards > rejected_rewards).float().mean())
    return loss, {
        "loss": float(loss.detach()),
        "mean_token_accuracy": accuracy,
        "reward_margin": float(margins.detach().mean()),
        "reward_accuracy": accuracy,
        "chosen_logps": float(chosen.detach().mean()),
        "rejected_logps": float(rejected.detach().mean()),
    }


def _evaluate(trainer: ReportingDPOTrainer, batches: list[list[dict]]) -> dict:
    """The figures of ``batches`` averaged over their pairs (each batch's figures are means over its pairs)."""
    model = trainer.model
    totals: dict[str, float] = {}
    pairs = 0
    with attempt.evaluating(model):
        for rows in batches:
            inputs = {k: v.to(model.device) for k, v in trainer.data_collator(rows).items()}
            trainer.compute_loss(model, inputs)
            for name, value in trainer.last_eval_figures.items():
                totals[name] = totals.get(name, 0.0) + value * len(rows)
            pairs += len(rows)
    return {name: total / pairs for name, total in totals.items()}


def _frozen(model):
    """The reference model of full fine-tuning: never trained, so it needs no gradients."""
    model.requires_grad_(False)
    return model
