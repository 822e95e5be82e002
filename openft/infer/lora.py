"""Rows of different LoRA adapters in one forward pass, with gathered matmuls ("BGMV", as Punica and S-LoRA do it).

For the adapters of a batch's rows, every LoRA-wrapped linear layer of the model keeps their weights stacked: A as
``[adapters + 1, in, r]`` and B as ``[adapters + 1, r, out]``, each adapter's scaling (``alpha / r``, or
``alpha / sqrt(r)`` for rsLoRA) folded into its B, ranks padded with zeros to the largest, and slot 0 all zeros: the
base model's rows, and any adapter that does not cover the layer, add nothing there. A forward pass then computes, in
every such layer, ``base(x) + (x @ A[slot]) @ B[slot]`` for all rows at once (``slot``: each row's adapter), two
batched matmuls whatever the number of adapters, where PEFT's own mixed-adapter forward selects, multiplies and adds
back each adapter's rows separately in every layer. Inference only: no dropout.

``Stacks.build`` returns None where this does not apply and the caller keeps PEFT's forward: an adapter with a
variant (DoRA and the like) or a LoRA bias, or a model holding PEFT layers other than LoRA linears (LoRA on
embeddings or convolutions, ``modules_to_save``, trainable tokens).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper


class Stacks:
    """The stacked LoRA weights of ``names`` (PEFT adapter names) in the layers of ``peft``'s model."""

    def __init__(self, peft, names: Sequence[str], layers: list[tuple[LoraLinear, torch.Tensor, torch.Tensor]],
                 plain: list[LoraLinear]):
        self.peft = peft
        self.loaded = frozenset(peft.peft_config)  # adapters loaded at build time: a load or eviction rebuilds
        self.names = tuple(names)
        self._slot = {name: k + 1 for k, name in enumerate(self.names)}  # 0: no adapter
        self._forwards = [(layer, _gathered(layer.base_layer, a, b, self)) for layer, a, b in layers]
        # No adapter of the batch covers these: the wrapped layer alone (its bound call, not the module itself, which
        # setting as an attribute would register as a submodule instead of shadowing ``forward``).
        self._forwards += [(layer, layer.base_layer.__call__) for layer in plain]
        self.slots: torch.Tensor | None = None  # [rows]: each row's slot, during ``rows``

    @classmethod
    @torch.no_grad()
    def build(cls, peft, names: Sequence[str]) -> Stacks | None:
        """Stack ``names``' weights, or None if one of them (or the model) needs PEFT's own forward."""
        modules = list(peft.base_model.model.modules())
        if any(isinstance(m, AuxiliaryTrainingWrapper) or (isinstance(m, BaseTunerLayer)
                                                           and not isinstance(m, LoraLinear)) for m in modules):
            return None
        layers, plain = [], []
        for layer in (m for m in modules if isinstance(m, LoraLinear)):
            mine = [name for name in names if name in layer.lora_A]
            if any(name in layer.lora_variant or layer.lora_bias.get(name) for name in mine):
                return None
            if not mine:
                plain.append(layer)
                continue
            weight = layer.lora_A[mine[0]].weight
            rank = max(layer.r[name] for name in mine)
            a = weight.new_zeros(len(names) + 1, layer.in_features, rank)
            b = weight.new_zeros(len(names) + 1, rank, layer.out_features)
            for k, name in enumerate(names, start=1):
                if name in mine:
                    r = layer.r[name]
                    a[k, :, :r] = layer.lora_A[name].weight.T
                    b[k, :r] = layer.lora_B[name].weight.T * layer.scaling[name]
            layers.append((layer, a, b))
        return cls(peft, names, layers, plain)

    def covers(self, peft, names: set[str]) -> bool:
        """Whether these stacks serve rows of ``names`` on ``peft`` as it is now (loading or evicting an adapter can
        wrap or unwrap layers, so it takes new stacks)."""
        return peft is self.peft and self.loaded == peft.peft_config.keys() and names <= self._slot.keys()

    @contextmanager
    def rows(self, adapters: Sequence[str | None], device: torch.device) -> Iterator[None]:
        """Within: the model's LoRA layers compute each row through its adapter in ``adapters`` (None: the base)."""
        self.slots = torch.tensor([self._slot[a] if a is not None else 0 for a in adapters], device=device)
        for layer, forward in self._forwards:
            layer.forward = forward  # an instance attribute: shadows the class's forward until deleted below
        try:
            yield
        finally:
            for layer, _ in self._forwards:
                del layer.forward
            self.slots = None


def _gathered(base: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, stacks: Stacks):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = base(x, *args, **kwargs)
        slots = stacks.slots
        delta = torch.bmm(torch.bmm(x.to(a.dtype), a[slots]), b[slots])  # x: [rows, tokens, in]
        return result + delta.to(result.dtype)
    return forward
