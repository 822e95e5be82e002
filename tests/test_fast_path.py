"""The fast path changes no result: every per-step training loss that ``python -m openft.train`` reports (padding-free
packed batches, logits at trained positions only, its own cross-entropy) equals the loss computed the plain way —
a padded batch through the plain Hugging Face forward with full logits and the model's standard cross-entropy over
``labels`` — on the weights the trainer had at that step; and its first update equals a plain AdamW step.

One batch holds the whole training file, so each epoch is one step and each epoch checkpoint holds the weights a
next step starts from; LoRA dropout is 0, so train-mode forwards are deterministic and comparable.
"""

from __future__ import annotations

import json

import pytest
import torch

from openft import jobdir
from tests.test_trainer_sft import chat_rows, finish, new_job, per_step, start

N_EXAMPLES, EPOCHS, LEARNING_RATE = 8, 3, 2e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("fast-path")
    train = folder / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in chat_rows(N_EXAMPLES, seed=3)))
    job_dir = new_job(folder / "job", tiny_model, {"train": train, "valid": None},
                      hyperparameters={"n_epochs": EPOCHS, "batch_size": N_EXAMPLES, "learning_rate": LEARNING_RATE,
                                       "learning_rate_multiplier": 1.0},
                      lora={"r": 8, "alpha": 16, "dropout": 0.0}, validation_file=None)
    assert finish(start(job_dir), job_dir, timeout=600)["status"] == "succeeded"  # 600: a busy machine
    return job_dir, train


def plain_batch(tiny_model, train) -> dict[str, torch.Tensor]:
    """The training file as one right-padded batch with an attention mask; labels -100 on padding."""
    from transformers import AutoTokenizer

    from openft.train import data

    rows, _ = data.tokenize_file(train, AutoTokenizer.from_pretrained(tiny_model), max_length=96)
    width = max(len(r["input_ids"]) for r in rows)

    def pad(ids: list[int], value: int) -> list[int]:
        return list(ids) + [value] * (width - len(ids))

    return {"input_ids": torch.tensor([pad(r["input_ids"], 0) for r in rows]),
            "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in rows]),
            "labels": torch.tensor([pad(r["labels"], data.IGNORE) for r in rows])}


def model_at(tiny_model, job_dir, step: int):
    """The trainer's model before ``step``: the base (LoRA's B starts at 0) or the epoch checkpoint of step - 1."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    if step == 1:
        return base
    return PeftModel.from_pretrained(base, job_dir / jobdir.CHECKPOINTS / f"checkpoint-{step - 1}", is_trainable=True)


def test_every_step_loss_equals_the_plain_full_logits_loss(trained, tiny_model):
    job_dir, train = trained
    losses = per_step(job_dir, "train_loss")
    assert sorted(losses) == list(range(1, EPOCHS + 1))
    batch = plain_batch(tiny_model, train)
    for step, loss in losses.items():
        model = model_at(tiny_model, job_dir, step).train()
        with torch.no_grad():
            plain = model(**batch).loss  # full logits, shifted labels, mean over every trained token
        assert loss == pytest.approx(float(plain), rel=1e-5), step


def test_the_first_update_equals_a_plain_adamw_step(trained, tiny_model):
    """From the start weights (A as the trainer drew it, B = 0: the first step leaves A unchanged, its gradient is
    B-weighted), one plain step — loss, backward, gradient clipping at 1.0, AdamW with the Trainer's defaults —
    gives the weights of the trainer's checkpoint after step 1."""
    from safetensors.torch import load_file

    job_dir, train = trained
    model = model_at(tiny_model, job_dir, 2).train()  # checkpoint-1: A, and B after the first step
    after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in after) and any(t.abs().sum() > 0 for n, t in after.items() if "lora_B" in n)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    model(**plain_batch(tiny_model, train)).loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    saved = load_file(job_dir / jobdir.CHECKPOINTS / "checkpoint-1" / "adapter_model.safetensors")
    assert len(saved) == len(after)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.detach(), after[name], rtol=1e-4, atol=LEARNING_RATE * 1e-3)
