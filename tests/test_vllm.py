"""The vLLM backend (OPENFT_INFERENCE_BACKEND=vllm) behind the same worker protocol and client: runs only on a
machine with a CUDA GPU and vLLM installed, and is skipped elsewhere with the reason printed (`pytest -rs`).

On SmolLM2-135M-Instruct (converted from the bundled GGUF) with two random LoRA adapters: concurrent requests over
the base and both adapters all answer, the adapters change the answer, a greedy stream adds up to the greedy
non-streamed answer, and the same seed repeats a sampled answer.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from openft.infer import vllm_engine
from openft.infer.client import InferenceClient

REPO = Path(__file__).resolve().parents[1]
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

if not vllm_engine.available():
    pytest.skip("the vLLM backend needs a CUDA GPU and vLLM installed, which this machine lacks",
                allow_module_level=True)


@pytest.fixture(scope="module")
def smollm(tmp_path_factory) -> dict[str, str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from openft.train.convert import convert_gguf, smollm2_gguf_path

    root = tmp_path_factory.mktemp("vllm")
    base = convert_gguf(smollm2_gguf_path(), root / "base")
    paths = {"base": str(base)}
    for seed in (1, 2):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
                r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
        model.save_pretrained(root / f"adapter{seed}")
        paths[f"adapter{seed}"] = str(root / f"adapter{seed}")
    return paths


def test_the_vllm_backend_serves_base_and_adapters_concurrently(smollm, tmp_path):
    greedy = {"messages": QUESTION, "temperature": 0, "max_tokens": 24}

    async def scenario():
        client = InferenceClient(backend="vllm", env={**os.environ, "PYTHONPATH": str(REPO)},
                                 log_path=tmp_path / "worker.log", stall_timeout=600)
        try:
            models = [{"base": smollm["base"], "adapter": smollm.get(name)} for name in ("base", "adapter1",
                                                                                       "adapter2")]
            models[0]["adapter"] = None
            answers = await asyncio.gather(*(client.chat(m, greedy) for m in models for _ in range(2)))
            texts = [a["choices"][0]["message"]["content"] for a in answers]
            assert texts[0] == texts[1] and texts[2] == texts[3] and texts[4] == texts[5]
            assert len({texts[0], texts[2], texts[4]}) == 3  # each adapter changes the answer
            events = [e async for e in client.chat_stream(models[1], greedy)]
            assert "".join(e.get("delta", {}).get("content", "") for e in events) == texts[2]
            sampled = {**greedy, "temperature": 1.0, "seed": 7, "n": 2}
            assert await client.chat(models[2], sampled) == await client.chat(models[2], sampled)
        finally:
            await client.close()

    asyncio.run(scenario())
