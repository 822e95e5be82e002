"""Batches and their scoring: padding-free collation and the loss and token accuracy over label positions only.

Padding-free: a batch is its examples concatenated into one row, with ``position_ids`` restarting at 0 for each
example and no attention mask. transformers derives a block-diagonal causal mask from those positions (SDPA and
eager alike), so examples never attend to each other; measured 17–40 % faster than padding on
CPU, with the same summed loss.

Scoring: only the positions whose next token is trained go through the LM head (``logits_to_keep`` as a boolean
mask), so the cost of the head, the cross-entropy and the accuracy scale with the trained tokens, not with
sequence × vocabulary. This replaces TRL's SFT loss, which also computes entropy and full-vocabulary accuracy on
every position (30–40 % of a step on CPU). The loss is the mean over the batch's trained tokens. On a CUDA device
with ``liger-kernel`` installed, the LM head and the cross-entropy of those positions run as Liger's fused kernel
(chunked: the logits are never held), and the accuracy's argmax is taken chunk by chunk without gradients.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from openft.train.data import IGNORE


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Examples ``{"input_ids", "labels"}`` → one padding-free row of ``input_ids``, ``labels``, ``position_ids``."""
    input_ids, labels, position_ids = [], [], []
    for example in examples:
        input_ids += example["input_ids"]
        # An example's first token is never a target: what precedes it in the row is another example.
        labels += [IGNORE] + list(example["labels"][1:])
        position_ids += range(len(example["input_ids"]))
    return {
        "input_ids": torch.tensor([input_ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([position_ids]),
    }


@dataclass
class Score:
    """A batch's loss (mean over its trained tokens, differentiable) and what accuracy and aggregation need."""

    loss: torch.Tensor
    loss_sum: float
    correct: int
    tokens: int


def score(model, batch: dict[str, torch.Tensor]) -> Score:
    labels = batch["labels"]
    # keep[b, p]: the logits at position p predict labels[b, p + 1], which is trained.
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE
    targets = labels[:, 1:][keep[:, :-1]]
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    tokens = targets.numel()
    fused = fused_linear_cross_entropy() if labels.is_cuda else None
    if fused is None:
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits.float()  # (targets, vocab)
        loss_sum = F.cross_entropy(logits, targets, reduction="sum")
        with torch.no_grad():
            correct = int((logits.argmax(dim=-1) == targets).sum())
    else:  # the LM head and the loss in one kernel, never holding the (targets, vocab) logits
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state[keep]  # (targets, width)
        head = base.get_output_embeddings().weight
        loss_sum = fused(head, hidden, targets)
        with torch.no_grad():
            correct = sum(int((chunk @ head.T.to(chunk.dtype)).argmax(dim=-1).eq(goal).sum())
                          for chunk, goal in zip(hidden.split(1024), targets.split(1024)))
    return Score(loss=loss_sum / max(tokens, 1), loss_sum=float(loss_sum.detach()), correct=correct, tokens=tokens)


@functools.cache
def fused_linear_cross_entropy():
    """Liger's fused linear cross-entropy (summed), where the optional ``liger-kernel`` package is installed (it
    needs CUDA); None otherwise."""
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")
