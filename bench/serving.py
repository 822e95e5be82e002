"""Serving throughput: 16 concurrent chat requests over 4 LoRA adapters, decoded together by the inference worker's
continuous batching, against the same 16 requests sent one at a time; and one request's latency alone.

One command, from the repository root (no server needed: it drives the inference worker through the same client the
API uses):

    .venv/bin/python bench/serving.py [--model FOLDER] [--requests 16] [--adapters 4] [--max-tokens 64]
                                      [--rounds 3] [--backend cpu|vllm]

The model defaults to SmolLM2-135M-Instruct as `openft models prepare` writes it (converted here once if missing).
The adapters are rank-8 LoRA adapters on every linear layer with random weights (throughput does not depend on what
they learned). Every request is greedy with a fixed ``max_tokens`` and ``ignore_eos``-free prompts that differ, so
both runs generate the same tokens; the script checks that the answers are identical and prints:

* aggregate generated tokens/s, concurrent vs one at a time, and their ratio, for ``--rounds`` rounds that alternate
  which of the two runs first (median, min and max of the ratios: the machine may be shared);
* single-request latency: one request alone through the batching engine (a batch of one, the plain forward with
  its adapter active) vs the same request through the decoding loop the worker used before batching (the adapter
  selected with ``set_adapter``, a plain forward per token), both in this process on the same loaded model, and
  their ratio;
* one decode step of the same rows in this process: PEFT's mixed-adapter forward vs openft's stacked LoRA
  (``openft.infer.lora``) vs all rows through one adapter (no mixing at all), alternating.

``--backend vllm`` runs the same measurement on vLLM (a CUDA machine with vLLM installed).
"""

from __future__ import annotations

import argparse
import asyncio
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the worker does: idle OpenMP threads sleep, not spin
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is the capital of France?", "Write a haiku about rockets.", "How many legs does a spider have?",
             "Name three colours of the rainbow.", "What day comes after Monday?", "Explain what a LoRA adapter is.",
             "Give me a short greeting.", "What is two plus three?"]


def model_folder(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    folder = Path(os.environ.get("OPENFT_DATA_DIR", ROOT / "data")) / "models" / "SmolLM2-135M-Instruct"
    if not (folder / "config.json").exists():
        from openft.train.convert import convert_gguf, smollm2_gguf_path

        print(f"converting SmolLM2-135M-Instruct to {folder} (once)…", flush=True)
        convert_gguf(smollm2_gguf_path(), folder)
    return folder


def make_adapters(base: Path, count: int, out: Path) -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = []
    for k in range(count):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(k + 1)
            model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
                r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
        model.save_pretrained(out / f"adapter{k}")
        paths.append(str(out / f"adapter{k}"))
    return paths


async def measure(args, base: Path, adapters: list[str]) -> None:
    from openft.infer.client import InferenceClient

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    client = InferenceClient(env=env, backend=args.backend, max_batch_rows=max(32, args.requests),
                             request_timeout=3600)
    jobs = [({"base": str(base), "adapter": adapters[k % len(adapters)]},
             {"messages": [{"role": "user", "content": QUESTIONS[k % len(QUESTIONS)] + f" (#{k})"}],
              "temperature": 0, "max_tokens": args.max_tokens}) for k in range(args.requests)]

    async def one(model, request):
        start = time.perf_counter()
        result = await client.chat(model, request)
        return result, time.perf_counter() - start

    try:
        for model, _ in jobs[: len(adapters)]:  # load every adapter once, outside the timings
            await client.chat(model, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
        rounds = []  # (serial, together) per round, alternating which runs first
        for k in range(args.rounds):
            order = ("serial", "together") if k % 2 == 0 else ("together", "serial")
            runs = {}
            for kind in order:
                start = time.perf_counter()
                if kind == "serial":
                    replies = [await one(*job) for job in jobs]
                else:
                    replies = await asyncio.gather(*(one(*job) for job in jobs))
                runs[kind] = (replies, time.perf_counter() - start)
            rounds.append((runs["serial"], runs["together"]))
            print(f"round {k + 1} of {args.rounds}: {runs['serial'][1]:.1f} s one at a time, "
                  f"{runs['together'][1]:.1f} s concurrent", flush=True)
    finally:
        await client.close()

    same = all([a["choices"] for a, _ in serial] == [b["choices"] for b, _ in together]
               for (serial, _), (together, _) in rounds)
    tokens = sum(r["usage"]["completion_tokens"] for r, _ in rounds[0][0][0])
    print(f"{args.requests} requests over {len(adapters)} adapters, {args.max_tokens} tokens each, "
          f"backend {args.backend}, {tokens} tokens generated per run; answers identical: {same}")
    ratios = []
    for k, ((serial, serial_time), (together, together_time)) in enumerate(rounds, start=1):
        ratios.append(serial_time / together_time)
        print(f"round {k}: one at a time {tokens / serial_time:7.1f} tokens/s, concurrent {tokens / together_time:7.1f}"
              f" tokens/s -> {ratios[-1]:.2f}x; mean latency per request {statistics.mean(t for _, t in serial):.2f}"
              f" s vs {statistics.mean(t for _, t in together):.2f} s")
    print(f"concurrent / one at a time: median {statistics.median(ratios):.2f}x "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}, {len(ratios)} rounds)")


def single_request_latency(base: Path, adapter: str, max_tokens: int) -> None:
    """One request, batching engine (batch of one) vs the pre-batching loop, same process, same weights."""
    import torch

    from openft.infer.engine import Engine

    engine = Engine()
    request = {"messages": [{"role": "user", "content": QUESTIONS[0]}], "temperature": 0, "max_tokens": max_tokens}
    engine.chat(str(base), adapter, {**request, "max_tokens": 1})  # load
    batched, before = [], []
    for _ in range(3):
        start = time.perf_counter()
        answer = engine.chat(str(base), adapter, request)
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        ids = _previous_loop(engine, base, adapter, request, max_tokens)
        before.append(time.perf_counter() - start)
    loaded = engine._bases[next(iter(engine._bases))]
    same = loaded.tokenizer.decode(ids, skip_special_tokens=True).startswith(answer["choices"][0]["message"]["content"])
    now, then = statistics.median(batched), statistics.median(before)
    print(f"single-request latency ({max_tokens} tokens): batching engine {now:.2f} s vs previous loop {then:.2f} s "
          f"-> {now / then:.2f}x (same tokens: {same}); torch threads {torch.get_num_threads()}")


def mixed_step(base: Path, adapters: list[str], rows: int, context: int = 64, rounds: int = 7) -> None:
    """One decode step of ``rows`` rows over ``adapters`` (round robin) after ``context`` tokens: PEFT's mixed-adapter
    forward vs openft's stacked LoRA vs every row through one adapter (the plain forward: no mixing cost at all),
    alternating, same process, same weights."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from openft.infer.lora import Stacks

    names = [f"a{k}" for k in range(len(adapters))]
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapters[0], adapter_name=names[0])
    for name, path in zip(names[1:], adapters[1:]):
        peft.load_adapter(path, adapter_name=name)
    peft.eval()
    model, per_row = peft.base_model.model, [names[k % len(names)] for k in range(rows)]
    stacks = Stacks.build(peft, names)
    with torch.inference_mode():
        prompt = torch.randint(0, 1000, (rows, context), generator=torch.Generator().manual_seed(0))
        cache = model(input_ids=prompt, use_cache=True).cache
        inputs = {"input_ids": prompt[:, -1:], "position_ids": torch.full((rows, 1), context), "use_cache": True,
                  "logits_to_keep": 1, "attention_mask": torch.ones(rows, context + 1, dtype=torch.long)}

        def peft_mixed():
            return peft(**inputs, cache=cache, adapter_names=per_row)

        def stacked():
            with stacks.rows(per_row, prompt.device):
                return model(**inputs, cache=cache)

        def one_adapter():
            peft.set_adapter(names[0])
            return model(**inputs, cache=cache)

        ways = {"PEFT mixed": peft_mixed, "stacked": stacked, "one adapter": one_adapter}
        times: dict[str, list[float]] = {way: [] for way in ways}
        for k in range(rounds):
            for way, run in ways.items() if k % 2 == 0 else reversed(ways.items()):
                cache.crop(context - cache.get_seq_length())  # back to the prompt: the same step every time
                start = time.perf_counter()
                run()
                times[way].append(time.perf_counter() - start)
    ratios = {way: [t / p for t, p in zip(times[way], times["PEFT mixed"])] for way in ways}
    print(f"one decode step, {rows} rows over {len(names)} adapters, {context} tokens of context, "
          f"{rounds} alternating rounds (median; min-max of the per-round ratios to PEFT mixed):")
    for way in ways:
        print(f"  {way:12s} {statistics.median(times[way]) * 1000:7.1f} ms  -> "
              f"{statistics.median(ratios[way]):.2f}x ({min(ratios[way]):.2f}-{max(ratios[way]):.2f})")


def _previous_loop(engine, base: Path, adapter: str, request: dict, max_tokens: int) -> list[int]:
    """The worker's decoding before batching: select the adapter, prefill, then one plain forward per token."""
    import torch

    loaded = engine._bases[next(iter(engine._bases))]
    loaded.peft.set_adapter(next(iter(loaded.peft.peft_config)))
    with torch.inference_mode():
        ids = torch.tensor([engine.prompt_ids(str(base), request)])
        mask = torch.ones_like(ids)
        out = loaded.model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
        tokens = []
        for step in range(max_tokens):
            token = out.logits[:, -1].argmax(-1)
            tokens.append(int(token))
            if step + 1 == max_tokens or tokens[-1] in loaded.eos_ids:
                break
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)
            out = loaded.model(input_ids=token[:, None], attention_mask=mask, cache=out.cache, use_cache=True,
                               logits_to_keep=1)
    return tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--backend", choices=["cpu", "vllm"], default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    base = model_folder(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = make_adapters(base, args.adapters, Path(tmp))
        asyncio.run(measure(args, base, adapters))
        if args.backend == "cpu":
            single_request_latency(base, adapters[0], args.max_tokens)
            mixed_step(base, adapters, args.requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
