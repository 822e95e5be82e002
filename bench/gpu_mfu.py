"""MFU of openft's trainer on a CUDA GPU: SFT with LoRA and full fine-tuning of a ~0.5B-parameter Llama built from a
config (random weights: nothing is downloaded; throughput does not depend on what the weights know).

One command, from the repository root, on a machine with a CUDA GPU:

    .venv/bin/python bench/gpu_mfu.py [--peak-tflops 989] [--batch 16] [--examples 256]

Each method runs through ``python -m openft.train JOB_DIR``, the path every job takes (bf16 autocast, FlashAttention 2
where ``flash-attn`` is installed, Liger kernels where ``liger-kernel`` is, fused AdamW), on chat examples of 512–2048
tokens, 1 epoch. Steady state and tokens are taken as in ``bench/trainer_throughput.py`` (from the end of step 1).

MFU = real tokens/s × FLOPs per token / the GPU's peak dense bf16 FLOP/s. FLOPs per token: 6·N for full fine-tuning
(forward 2·N, backward 2·N for activations and 2·N for weight gradients) and 4·N for LoRA (no weight gradients for the
frozen weights), N the parameters a token passes through (the matmul weights, the LM head included), plus attention's
own score and value products (forward 4·layers·width·context/2 per token with causal masking, × 3 with the backward).
The peak comes from the GPU's name (H100/H200 SXM 989, A100 312, L40S 362, A10G 70 TFLOP/s) or ``--peak-tflops``.

The model: Llama, width 1024, 32 layers, 16 heads (4 KV heads), MLP 4096, SmolLM2's tokenizer and 49,152-token
vocabulary, tied embeddings: 0.54 B parameters. Without a CUDA device the script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from trainer_throughput import LORA, make_rows, run_openft, steady_tokens_per_second  # noqa: E402

PEAK_TFLOPS = {"H100": 989, "H200": 989, "H800": 989, "A100": 312, "A800": 312, "L40S": 362, "A10G": 70, "L4": 121}
SHAPE = {"hidden_size": 1024, "num_hidden_layers": 32, "num_attention_heads": 16, "num_key_value_heads": 4,
         "intermediate_size": 4096}


def build_model(folder: Path) -> tuple[Path, dict]:
    """The random ~0.5B Llama with SmolLM2's tokenizer, saved as a model folder openft trains from."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from openft.train.convert import convert_gguf, smollm2_gguf_path

    smollm2 = convert_gguf(smollm2_gguf_path(), folder / "smollm2")
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, max_position_embeddings=8192,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **SHAPE)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    out = folder / "llama-0.5b"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, config.to_dict()


def flops_per_token(n: int, config: dict, context: float, lora: bool) -> float:
    layers, width = config["num_hidden_layers"], config["hidden_size"]
    attention = 4 * layers * width * context / 2  # QKᵀ and ·V, causal: half the context on average
    return (4 if lora else 6) * n + 3 * attention


def main() -> int:
    import torch
    from transformers import AutoTokenizer

    from openft.train.data import tokenize_row
    from openft.modelcard import parameter_count as n_parameters

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--runs", type=int, default=2, help="runs per method (default 2)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/gpu_mfu.py needs a CUDA GPU; this machine has none (torch.cuda.is_available() is False).",
              file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if peak is None:
        print(f"unknown peak for {name!r}: pass --peak-tflops", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-mfu-") as tmp:
        work = Path(tmp)
        model, config = build_model(work)
        n = n_parameters(model)  # tied: the embedding is the LM head, a matmul every token passes through
        tokenizer = AutoTokenizer.from_pretrained(model)
        rows = make_rows(tokenizer, args.examples, (512, 2048))
        train_file = work / "train.jsonl"
        train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
        lengths = [len(tokenize_row(row, tokenizer)["input_ids"]) for row in rows]
        context = sum(x * x for x in lengths) / sum(lengths)  # the context a token sees, token-weighted
        print(f"{name}; model {n / 1e9:.2f} B parameters; {len(rows)} examples of 512–2048 tokens, batch "
              f"{args.batch}; peak {peak} TFLOP/s bf16", flush=True)
        for method, lora in (("LoRA", LORA), ("full", None)):
            rates = [steady_tokens_per_second(run_openft(model, train_file, work, args.batch, lora))
                     for _ in range(args.runs)]
            rate = statistics.median(rates)
            mfu = rate * flops_per_token(n, config, context, lora is not None) / (peak * 1e12)
            print(f"SFT {method}: {rate:,.0f} tokens/s (runs: {', '.join(f'{r:,.0f}' for r in rates)}), "
                  f"MFU {mfu:.1%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
