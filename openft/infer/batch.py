"""Continuous batching on one base model: the running rows of every request for that base, decoded together.

A ``Batch`` holds one row per choice of every running request (a ``Group``: ``n`` rows with their own sampling
settings, generator and LoRA adapter). Each decode step is one forward pass of the base for all rows, each row
through its own adapter: rows of several adapters go through gathered LoRA matmuls over the adapters' stacked
weights (``openft.infer.lora``; PEFT's mixed-adapter forward for adapters that cannot be stacked, such as DoRA), and a
batch whose rows all use one adapter (or none) takes the plain forward with it active. A request
joins between steps: its prompt is prefilled alone (exactly as if it ran by itself), then its KV cache is merged into
the batch's by left-padding the shorter of the two; padding is masked out and every row keeps its own position ids,
so a row computes what it would compute alone (up to the order of floating-point sums in batched kernels, which
does not change a greedy answer in practice; the tests compare them exactly). Finished rows leave at once, and
padding columns no row needs any more are cut off, so the cache never holds more than the running rows need.

Sampling: temperature 0 takes the argmax; otherwise temperature, top-p and a draw from the request's own
``torch.Generator``, one draw per step for the request's remaining rows, so a ``seed`` repeats a request's answer
whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from openft.infer.lora import Stacks
from openft.infer.text import Choice

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch


@dataclass(eq=False)
class Group:
    """One request's rows in a batch."""

    rid: str
    adapter: str | None  # the PEFT adapter name, or None for the base
    prompt: list[int]
    choices: list[Choice]
    max_tokens: int
    temperature: float
    top_p: float
    generator: torch.Generator
    cost: int = 0  # tokens of KV cache budgeted for it
    finish: dict[int, str] = field(default_factory=dict)  # choice index -> "stop" / "length", once it ended

    @property
    def done(self) -> bool:
        return len(self.finish) == len(self.choices)


class Batch:
    """The running rows of one base model. ``base`` has ``model`` (transformers) and ``peft`` (the ``PeftModel``
    around it while adapters are loaded, else None), read at every step: adapters may be loaded while rows run."""

    def __init__(self, base):
        self.base = base
        self.rows: list[tuple[Group, int]] = []  # (group, choice index); a group's rows are contiguous
        self.cache = None
        self.mask: torch.Tensor | None = None  # [rows, cache length]: 1 for a real token, 0 for padding
        self.positions: torch.Tensor | None = None  # [rows]: the position id of each row's next token
        self.logits: torch.Tensor | None = None  # [rows, vocab]: what each row's next token is drawn from
        self.stacks: Stacks | None = None  # the LoRA weights of the rows' adapters, stacked; rebuilt for new ones
        self.unstackable: set[str] | None = None  # adapters last found to need PEFT's own forward (e.g. DoRA)

    @property
    def groups(self) -> list[Group]:
        return list(dict.fromkeys(group for group, _ in self.rows))

    @torch.inference_mode()
    def join(self, group: Group) -> None:
        """Prefill ``group``'s prompt alone and add its rows to the batch."""
        ids = torch.tensor([group.prompt], device=self._device())
        mask = torch.ones_like(ids)
        out = self._forward(ids, mask, None, None, [group.adapter])
        cache, logits = out.cache, out.logits[:, -1].float()
        n = len(group.choices)
        if n > 1:  # the prompt is computed once; every choice continues from a copy of its cache
            cache.batch_repeat_interleave(n)
            logits, mask = logits.expand(n, -1), mask.expand(n, -1)
        positions = torch.full((n,), len(group.prompt), dtype=torch.long, device=ids.device)
        self._merge(cache, mask, positions, logits)
        self.rows += [(group, i) for i in range(n)]

    @torch.inference_mode()
    def step(self) -> list[tuple[Group, int, int]]:
        """Draw every row's next token, drop the rows that ended, feed the rest one step. Returns
        ``(group, choice index, token)`` for every row; the caller records finishes in ``group.finish``."""
        if not self.rows:
            return []
        tokens = torch.empty(len(self.rows), dtype=torch.long, device=self.logits.device)
        for group in self.groups:
            index = [i for i, (g, _) in enumerate(self.rows) if g is group]
            tokens[index] = _pick(self.logits[index], group.temperature, group.top_p, group.generator)
        drawn = [(g, i, t) for (g, i), t in zip(self.rows, tokens.tolist())]
        return drawn

    @torch.inference_mode()
    def advance(self, drawn: list[tuple[Group, int, int]]) -> None:
        """After the caller has recorded finishes: drop finished rows, and run one step for the rest."""
        keep = [k for k, (g, i, _) in enumerate(drawn) if i not in g.finish]
        self.select(keep)
        if not self.rows:
            return
        tokens = torch.tensor([[drawn[k][2]] for k in keep], device=self.mask.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(keep), 1)], dim=1)
        out = self._forward(tokens, self.mask, self.positions[:, None], self.cache,
                            [g.adapter for g, _ in self.rows])
        self.cache, self.logits = out.cache, out.logits[:, -1].float()
        self.positions = self.positions + 1

    def select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (indexes into ``rows``), and cut padding columns no remaining row needs."""
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[k] for k in keep]
        if not keep:
            self.cache = self.mask = self.positions = self.logits = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.mask, self.positions, self.logits = self.mask[index], self.positions[index], self.logits[index]
        first = int(self.mask.any(dim=0).nonzero()[0])
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]

    def drop(self, group: Group) -> None:
        self.select([k for k, (g, _) in enumerate(self.rows) if g is not group])

    def _merge(self, cache, mask, positions, logits) -> None:
        if self.cache is None:
            self.cache, self.mask, self.positions, self.logits = cache, mask, positions, logits
            return
        old, new = self.mask.shape[1], mask.shape[1]
        length = max(old, new)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, length - old), _pad_left(theirs.keys, length - new)])
            mine.values = torch.cat([_pad_left(mine.values, length - old), _pad_left(theirs.values, length - new)])
        self.mask = torch.cat([F.pad(self.mask, (length - old, 0)), F.pad(mask, (length - new, 0))])
        self.positions = torch.cat([self.positions, positions])
        self.logits = torch.cat([self.logits, logits])

    def _forward(self, ids, mask, positions, cache, adapters: list[str | None]):
        """One forward pass. Rows of several adapters go through the adapters' stacked weights (or, where they cannot
        be stacked, PEFT's mixed-adapter forward); when every row uses the same one (or none), the plain forward with
        that adapter active does the same sums, as fast as a request served alone."""
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "cache": cache,
                  "use_cache": True, "logits_to_keep": 1}
        peft = self.base.peft
        if peft is None:
            return self.base.model(**inputs)
        distinct = set(adapters)
        if len(distinct) > 1:
            stacks = self._stacks(peft, distinct - {None})
            if stacks is None:
                return peft(**inputs, adapter_names=[a or BASE_ADAPTER for a in adapters])
            with stacks.rows(adapters, ids.device):
                return self.base.model(**inputs)
        only = distinct.pop()
        if only is None:
            with peft.disable_adapter():
                return self.base.model(**inputs)
        if peft.active_adapter != only:
            peft.set_adapter(only)
        return self.base.model(**inputs)

    def _stacks(self, peft, names: set[str]) -> Stacks | None:
        """Stacks covering ``names``: the current ones, else new ones for exactly ``names`` (built when a request of
        a new adapter joins; an adapter whose rows left stays until then). None: PEFT's forward is needed."""
        if self.stacks is not None and self.stacks.covers(peft, names):
            return self.stacks
        if names == self.unstackable:
            return None
        self.stacks = Stacks.build(peft, sorted(names))
        self.unstackable = names if self.stacks is None else None
        return self.stacks

    def _device(self) -> torch.device:
        return next(self.base.model.parameters()).device


def _pad_left(states: torch.Tensor, columns: int) -> torch.Tensor:
    """``[rows, heads, length, dim]`` with ``columns`` zero positions added in front (masked out)."""
    return F.pad(states, (0, 0, columns, 0)) if columns else states


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        # Keep the smallest set of most likely tokens whose mass reaches top_p (always at least the top one).
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        outside[..., 0] = False
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
