"""The model a job starts from: the catalog base model, its tokenizer, an earlier fine-tune merged in, and LoRA.

Every attempt of a job (the first and each resume) loads the model the same way, from the ORIGINAL base folder:
the Trainer then restores the trained weights from its checkpoint. Loading a checkpoint as the base instead would
break exactness, and for DPO it would make the reference model equal the policy.

A job that continues an earlier fine-tuned model (``spec["parent_adapters"]``: the lineage of that ``ft:`` model,
the PEFT adapter folders of its jobs' ``checkpoints/final``, oldest first) gets the base with those adapters merged
into its weights one after the other (``merge_and_unload``), each onto the weights it was trained on. The merged
model is then the starting point of everything: the new LoRA is created on top of it, and DPO's reference model
is this merged model (LoRA disabled, or the frozen copy of full fine-tuning), as OpenAI's "SFT first, then DPO
from the ft: model" workflow expects. LoRA updates add to the weights, so the result equals stacking the
adapters unmerged at inference (up to float rounding).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from openft import durable
from openft.train import JobError


def load_tokenizer(spec: dict):
    tokenizer = AutoTokenizer.from_pretrained(_base_path(spec))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # saved with every checkpoint
    return tokenizer


def load_base_model(spec: dict):
    """The fp32 base model of ``spec``, with the adapters of ``spec["parent_adapters"]`` merged in, in order."""
    model = AutoModelForCausalLM.from_pretrained(_base_path(spec), dtype=torch.float32,
                                                 attn_implementation=attention_implementation())
    parents = [_folder(spec, parent) for parent in spec.get("parent_adapters") or []]
    for parent in parents:
        if not (parent / "adapter_config.json").is_file():
            raise JobError(f"The fine-tuned model to start from has no adapter at {parent}")
        model = PeftModel.from_pretrained(model, parent).merge_and_unload()
    if parents:
        model.requires_grad_(True)  # PEFT froze the base for inference; full fine-tuning trains every weight
    return model


def bf16_autocast() -> bool:
    """Whether steps run under bf16 autocast (weights, gradients and optimizer state stay fp32): on a CUDA device
    with native bf16 only. A CPU trains in fp32."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def attention_implementation() -> str:
    """FlashAttention 2 on a CUDA device with bf16 and the ``flash-attn`` package (padding-free batches then attend
    per example through its variable-length kernel); SDPA everywhere else (on a CPU, PyTorch's flash kernel)."""
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if bf16_autocast() and is_flash_attn_2_available() else "sdpa"


def lora_config(spec: dict) -> LoraConfig | None:
    """The job's LoRA, or None for full fine-tuning (``spec["lora"]`` is null)."""
    lora = spec.get("lora")
    if lora is None:
        return None
    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules="all-linear",  # every linear layer but the LM head
        task_type="CAUSAL_LM",
    )


def _base_path(spec: dict) -> Path:
    base = _folder(spec, spec["base_model_path"])
    if not (base / "config.json").is_file():
        raise JobError(f"Base model folder not found or incomplete: {spec['base_model_path']}")
    return base


def _folder(spec: dict, where: str) -> Path:
    """A local folder for weights spec.json names: a catalog folder, or a checkpoint fetched from the store."""
    try:
        return durable.attempt_folder(spec, where)
    except durable.Incomplete as exc:
        raise JobError(f"The model to start from is not available: {exc}") from None
