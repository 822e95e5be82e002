"""P1 trainer throughput: openft's trainer (``python -m openft.train JOB_DIR``, the path every job takes) against
plain TRL ``SFTTrainer`` with its defaults in fp32, on the same model, data, LoRA, learning rate, batch and epochs;
real (non-padding) tokens per second in steady state, and the share of this machine's hardware limit.

One command, from the repository root:

    .venv/bin/python bench/trainer_throughput.py [--model FOLDER] [--pairs 2]

The model defaults to SmolLM2-135M-Instruct as ``openft models prepare`` writes it (converted here once if missing).
The data: 64 chat examples of 60–200 tokens (made here from a fixed seed); LoRA r 8, alpha 16, dropout 0.05
(openft's defaults) on every linear layer; learning rate 1e-3; batch 4; 1 epoch (16 steps). The two trainers run
alternately, A B A B …, each in its own process, so a load that comes and goes hits both alike.

Steady state: from the end of step 1 (warm-up: lazy initialisation, first allocations) to the end of the last step.
Tokens in that window are the run's real tokens × (steps − 1) / steps (each trainer counts its own: openft its
rendered examples, TRL the attention mask of its padded batches); per-step counts vary by a batch's length, which
averages out over 15 steps to about 1 %.

Hardware limit: the measured fp32 matmul rate (FLOP/s of square 2048 × 2048 matmuls, ``torch.mm``, best of several,
measured between the runs) divided by 4·N FLOPs per token, N the model's parameters (the embedding is tied to the
LM head, so N counts the matmul weights a token passes through). Per token and matmul weight: forward 2 FLOPs
(multiply + add), backward 2 more for the gradient with respect to the activations; the frozen base weights need no
weight gradient (the 2 FLOPs that would make full fine-tuning's 6·N), and LoRA's rank-8 matrices add under 1 %.
Attention's own score/value products (≈ 4·layers·context·width per token, ~3 % here) and elementwise work are left
out, so the limit is slightly generous to the trainers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
N_EXAMPLES, BATCH, EPOCHS, LEARNING_RATE, SEED = 64, 4, 1, 1e-3, 42
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
WORDS = ("the a of to in is it you that he was for on are with as his they be at one have this from or had by "
         "word but what some we can out other were all there when up use your how said an each she which do their "
         "time if will way about many then them write would like so these her long make thing see him two has look "
         "more day could go come did number sound no most people my over know water than call first who may down "
         "side been now find any new work part take get place made live where after back little only round man year "
         "came show every good me give our under name very through just form sentence great think say help low line "
         "differ turn cause much mean before move right boy old too same tell does set three want air well also play "
         "small end put home read hand port large spell add even land here must big high such follow act why ask "
         "men change went light kind off need house picture try us again animal point mother world near build self "
         "earth father head stand own page should country found answer school grow study still learn plant cover "
         "food sun four between state keep eye never last let thought city tree cross farm hard start might story "
         "saw far sea draw left late run while press close night real life few north open seem together next white "
         "children begin got walk example ease paper group always music those both mark often letter until mile "
         "river car feet care second book carry took science eat room friend began idea fish mountain stop once "
         "base hear horse cut sure watch color face wood main enough plain girl usual young ready above ever red "
         "list though feel talk bird soon body dog family direct pose leave song measure door product black short "
         "numeral class wind question happen complete ship area half rock order fire south problem piece told knew "
         "pass since top whole king space heard best hour better true during hundred five remember step early hold "
         "west ground interest reach fast verb sing listen six table travel less morning ten simple several vowel "
         "toward war lay against pattern slow center love person money serve appear road map rain rule govern pull "
         "cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star "
         "box noun field rest correct able pound done beauty drive stood contain front teach week final gave green "
         "oh quick develop ocean warm free minute strong special mind behind clear tail produce fact street inch "
         "multiply nothing course stay wheel full force blue object decide surface deep moon island foot system "
         "busy test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape "
         "equate hot miss brought heat snow tire bring yes distant fill east paint language among").split()


def make_rows(tokenizer, n: int = N_EXAMPLES, lengths: tuple[int, int] = (60, 200)) -> list[dict]:
    """``n`` chat examples, each of ``lengths`` tokens as openft renders it (uniform in that range, fixed seed)."""
    from openft.train.data import tokenize_row

    rng = random.Random(SEED)

    def render(words: list[str], n: int) -> list[dict]:
        split = max(1, n // 3)  # a third question, two thirds answer
        return [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": " ".join(words[:split]).capitalize() + "?"},
                {"role": "assistant", "content": " ".join(words[split:n]).capitalize() + "."}]

    rows = []
    for _ in range(n):
        target, words = rng.randint(*lengths), [rng.choice(WORDS) for _ in range(2 * lengths[1])]
        low, high = 1, len(words)  # the fewest words that render to at least ``target`` tokens
        while low < high:
            mid = (low + high) // 2
            if len(tokenize_row({"messages": render(words, mid)}, tokenizer)["input_ids"]) >= target:
                high = mid
            else:
                low = mid + 1
        rows.append({"messages": render(words, low)})
    return rows


def matmul_flops_per_second(seconds: float = 3.0) -> float:
    """fp32 FLOP/s of 2048³ matmuls on this machine now: the best of repeated timings over ``seconds``."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best, end = float("inf"), time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def run_openft(model: Path, train_file: Path, work: Path, batch: int = BATCH, lora: dict | None = LORA) -> dict:
    """One run through ``python -m openft.train`` (``lora`` None: full fine-tuning); step end times come from its
    metrics records."""
    from openft import jobdir

    job_dir = Path(tempfile.mkdtemp(prefix="openft-", dir=work))
    spec = {"job_id": "ftjob_" + "0" * 32, "method": "supervised", "base_model": "SmolLM2-135M-Instruct",
            "base_model_path": str(model), "training_file": str(train_file), "validation_file": None,
            "hyperparameters": {"n_epochs": EPOCHS, "batch_size": batch, "learning_rate_multiplier": 1.0,
                                "learning_rate": LEARNING_RATE},
            "seed": SEED, "lora": lora, "max_length": 4096, "resume_from": None, "attempt": 1}
    jobdir.write_json_atomic(job_dir / jobdir.SPEC, spec)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(job_dir / "trainer.log", "wb") as log:
        subprocess.run([sys.executable, "-m", "openft.train", str(job_dir)], cwd=ROOT, env=env, stdout=log,
                       stderr=subprocess.STDOUT, check=False)
    result = jobdir.read_json(job_dir / jobdir.RESULT)
    if not result or result["status"] != "succeeded":
        raise RuntimeError(f"openft run failed: {(job_dir / 'trainer.log').read_text()[-3000:]}")
    ends = [r["ts"] for r in jobdir.read_records(job_dir, 0)[0] if r["kind"] == "metrics"]
    return {"tokens": result["trained_tokens"], "ends": ends}


def run_trl(model: Path, train_file: Path, work: Path) -> dict:
    """One run of plain TRL in a child process (this file with ``--trl``)."""
    out = work / f"trl-{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, __file__, "--trl", str(model), str(train_file), str(out)], cwd=ROOT, check=True)
    return json.loads(out.read_text())


def trl_child(model: str, train_file: str, out: str) -> None:
    """What a user would script: SFTTrainer with its defaults, fp32, and the same LoRA and settings."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from openft.train.data import read_jsonl

    record = {"tokens": 0, "ends": []}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record["ends"].append(time.time())

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            record["tokens"] += int(inputs["attention_mask"].sum())  # real tokens: padding excluded
            return super().training_step(model, inputs, *args, **kwargs)

    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Counting(
            model=model,
            args=SFTConfig(output_dir=output_dir, per_device_train_batch_size=BATCH, num_train_epochs=EPOCHS,
                           learning_rate=LEARNING_RATE, seed=SEED, bf16=False, report_to="none"),
            train_dataset=Dataset.from_list(list(read_jsonl(train_file))),
            peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                   target_modules="all-linear", task_type="CAUSAL_LM"),
            callbacks=[Clock()],
        )
        trainer.train()
    Path(out).write_text(json.dumps(record))


def steady_tokens_per_second(run: dict) -> float:
    ends = run["ends"]
    return run["tokens"] * (len(ends) - 1) / len(ends) / (ends[-1] - ends[0])


def n_parameters(model: Path) -> int:
    from openft.modelcard import parameter_count

    return parameter_count(model) or 0


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} (min {min(values):.1f}, max {max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct, converted once)")
    parser.add_argument("--pairs", type=int, default=2, help="A/B pairs to run (default 2)")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from serving import model_folder
    from transformers import AutoTokenizer

    model = model_folder(args.model)
    n = n_parameters(model)
    with tempfile.TemporaryDirectory(prefix="trainer-throughput-") as tmp:
        work = Path(tmp)
        train_file = work / "train.jsonl"
        rows = make_rows(AutoTokenizer.from_pretrained(model))
        train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"model {model.name}: {n / 1e6:.1f} M parameters; {len(rows)} examples, batch {BATCH}, "
              f"{EPOCHS} epoch, LoRA {LORA}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
              flush=True)
        openft, trl, rates, ratios = [], [], [], []
        for pair in range(args.pairs):
            rates.append(matmul_flops_per_second())
            a = steady_tokens_per_second(run_openft(model, train_file, work))
            b = steady_tokens_per_second(run_trl(model, train_file, work))
            openft.append(a)
            trl.append(b)
            ratios.append(a / b)
            print(f"pair {pair + 1}: openft {a:.1f} tokens/s, TRL {b:.1f} tokens/s, ratio {a / b:.2f}; "
                  f"matmul {rates[-1] / 1e9:.1f} GFLOP/s; load average {os.getloadavg()[0]:.2f}", flush=True)
        rates.append(matmul_flops_per_second())
    limit = statistics.median(rates) / (4 * n)
    print(f"openft tokens/s: {spread(openft)}")
    print(f"TRL tokens/s:    {spread(trl)}")
    print(f"ratio openft / TRL: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
    print(f"hardware limit: {statistics.median(rates) / 1e9:.1f} GFLOP/s fp32 matmul / (4 × {n / 1e6:.1f} M) = "
          f"{limit:.0f} tokens/s; openft at {statistics.median(openft) / limit:.0%}, "
          f"TRL at {statistics.median(trl) / limit:.0%}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--trl":
        trl_child(*sys.argv[2:])
        raise SystemExit(0)
    raise SystemExit(main())
