"""Scoring several completions of one prompt in one row: the cheap path of DPO (a pair's chosen and rejected
completions) and RFT (a prompt's sampled completions).

A group — a prompt and its completions — becomes one row: the prompt once, then each completion in turn. Each
completion is positioned (``position_ids``) and masked (a 4-D attention mask) as if it followed the prompt
directly: it attends to the prompt and to its own earlier tokens, never to another completion. Since attention
depends only on what a token sees and at which positions, every completion token gets the log-probability it gets
in a row of its own (up to float rounding), while the prompt is computed once per group instead of once per
completion and no row is padded to the longest completion of the batch.

Only the positions that predict a completion token go through the LM head (``logits_to_keep`` as a mask), and the
log-probability of the token is its logit less the log-sum-exp of the row: nothing of size sequence × vocabulary
is built, and no entropy or accuracy is computed over the vocabulary.
"""

from __future__ import annotations

import torch


def collate(groups: list[tuple[list[int], list[list[int]]]]) -> dict[str, torch.Tensor]:
    """Groups ``(prompt_ids, [completion_ids, …])`` → right-padded rows of ``input_ids``, ``position_ids`` and a
    boolean ``attention_mask`` (rows, 1, width, width); padding attends to itself only. For every completion
    token: ``sources``, the flat position (row × width + column) of the logits that predict it; ``targets``, the
    token; ``owners``, its completion's number, counting the completions of all groups in order."""
    n = len(groups)
    width = max(len(prompt) + sum(map(len, completions)) for prompt, completions in groups)
    input_ids = torch.zeros((n, width), dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(n, 1, 1)
    sources, targets, owners = [], [], []
    owner = 0
    for i, (prompt, completions) in enumerate(groups):
        p = len(prompt)
        row = list(prompt)
        mask[i, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
        for completion in completions:
            start, c = len(row), len(completion)
            row += completion
            position_ids[i, start : start + c] = torch.arange(p, p + c)
            mask[i, start : start + c, :p] = True
            mask[i, start : start + c, start : start + c] = torch.ones(c, c, dtype=torch.bool).tril()
            # The first token is predicted at the prompt's last position, each later one at the token before it.
            for k, token in enumerate(completion):
                source = p - 1 if k == 0 else start + k - 1
                if source >= 0:  # no prompt: the first token has nothing to be predicted from (TRL skips it too)
                    sources.append(i * width + source)
                    targets.append(token)
                    owners.append(owner)
            owner += 1
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        position_ids[i, :p] = torch.arange(p)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask[:, None],
        "sources": torch.tensor(sources, dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
        "owners": torch.tensor(owners, dtype=torch.long),
    }


def token_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The log-probability of every completion token of a ``collate`` batch (in ``targets`` order)."""
    input_ids, sources = batch["input_ids"], batch["sources"]
    keep = torch.zeros(input_ids.numel(), dtype=torch.bool, device=input_ids.device)
    keep[sources] = True
    rows = (keep.cumsum(0) - 1)[sources]  # each source's row among the kept logits
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(batch["attention_mask"].shape, dtype=dtype, device=input_ids.device)
    mask.masked_fill_(~batch["attention_mask"], torch.finfo(dtype).min)  # additive: eager and SDPA alike
    logits = model(input_ids=input_ids, position_ids=batch["position_ids"], attention_mask=mask,
                   logits_to_keep=keep.view_as(input_ids), use_cache=False).logits.float()  # (kept, vocab)
    return logits[rows, batch["targets"]] - torch.logsumexp(logits, dim=-1)[rows]


def sums(values: torch.Tensor, owners: torch.Tensor, completions: int) -> torch.Tensor:
    """Per-token ``values`` summed per completion (``owners`` as ``collate`` numbers them)."""
    total = torch.zeros(completions, dtype=values.dtype, device=values.device)
    return total.index_add(0, owners, values)
