"""How long do validation and token counting of a 100,000-example training file take, and does memory grow with it?

    .venv/bin/python bench/validation_scale.py [--sizes 25000 100000] [--model PATH]

Writes chat-format training files of each size (a system prompt, a question and a 20–120-word answer, some with a
second, trained turn), stores each as the service stores an upload (blob store + files row, SQLite), and in a fresh
process per size runs what the service runs on it: the job validation (`files.validate`, what the scheduler runs
before a job queues) and a whole dry run (`dryrun.plan`: the same validation, then token counting by the trainer's
own code in its `python -m openft.train.plan` child), on SmolLM2-135M-Instruct's tokenizer (converted once into
`data/models` if missing) unless `--model` names another folder. Prints per size the wall times, the API process's
peak memory over its resident size before the call (VmHWM − VmRSS) and the counting child's peak resident size,
then the ratios largest/smallest: time per example (≈ 1 for linear time) and peak memory (≈ 1 when memory does not
grow with the file).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("the model learns to answer questions briefly and politely with facts about rivers mountains cities "
         "numbers colours history science music and food while keeping every reply short clear and kind").split()


def write_file(path: Path, n: int) -> None:
    rng = random.Random(n)
    with open(path, "w") as out:
        for i in range(n):
            answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120)))
            messages = [{"role": "system", "content": "You answer in a few sentences."},
                        {"role": "user", "content": f"Tell me about item {i}."},
                        {"role": "assistant", "content": answer}]
            if i % 4 == 0:
                messages[2]["weight"] = 0
                messages += [{"role": "user", "content": "Shorter, please."},
                             {"role": "assistant", "content": " ".join(answer.split()[:12])}]
            out.write(json.dumps({"messages": messages}) + "\n")


def _memory_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)


def child(file: Path, model: Path, dry_run: bool = True) -> dict:
    """In a fresh process: store the file as an upload, then time and measure validation and a dry run."""
    from openft import dryrun, files
    from openft import protocol as p
    from openft.app import build_services
    from openft.config import Settings
    from openft.ids import new_id
    from openft.store import Scope

    data_dir = Path(tempfile.mkdtemp(prefix="openft-bench-valid-"))
    try:
        settings = Settings(data_dir=data_dir, models=json.dumps({"base": str(model)}))
        svc = build_services(settings)
        who = Scope("org_local")
        file_id = new_id("file")
        with open(file, "rb") as f:
            size = svc.blobs.put_stream(file_id, iter(lambda: f.read(1 << 20), b""))
        files.add_row(svc, who, file_id, "train.jsonl", "fine-tune", size, None)
        out = {}
        _reset_peak()
        rss, start = _memory_kib("VmRSS"), time.perf_counter()
        report, _ = files.validate(svc.store, svc.blobs, file_id, "training_file", settings.min_examples, "supervised")
        out["validate_s"] = time.perf_counter() - start
        out["validate_peak_mib"] = (_memory_kib("VmHWM") - rss) / 1024
        assert report.error is None, report.error
        out["bytes"] = size
        if not dry_run:
            out["dry_run_error"] = "not run (--validate-only)"
            return out
        _reset_peak()
        rss, start = _memory_kib("VmRSS"), time.perf_counter()
        try:
            plan = dryrun.plan(svc.store, svc.blobs, settings, who,
                               p.CreateJobRequest(model="base", training_file=file_id, dry_run=True))
        except Exception as e:  # e.g. the counting child's timeout on a very busy machine: say so, keep the rest
            out["dry_run_error"] = f"{type(e).__name__} after {time.perf_counter() - start:.0f} s: {e}"[:300]
            return out
        out["dry_run_s"] = time.perf_counter() - start
        out["dry_run_peak_mib"] = (_memory_kib("VmHWM") - rss) / 1024
        out["count_child_peak_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out["n_examples"], out["n_tokens"] = plan.training_file.n_examples, plan.training_file.n_tokens
        return out
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000])
    parser.add_argument("--model", help="a Hugging Face model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--validate-only", action="store_true", help="the job validation only, no dry run")
    parser.add_argument("--child", nargs=2, metavar=("FILE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]), not args.validate_only)))
        return
    from bench.serving import model_folder

    model = model_folder(args.model)
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; tokenizer of {model.name}")
    work = Path(tempfile.mkdtemp(prefix="openft-bench-valid-"))
    results = {}
    try:
        for n in sorted(args.sizes):
            path = work / f"train-{n}.jsonl"
            write_file(path, n)
            flags = ["--validate-only"] if args.validate_only else []
            out = subprocess.run([sys.executable, __file__, "--child", str(path), str(model), *flags],
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            if out.returncode != 0:
                raise SystemExit(f"{n} examples failed:\n{out.stderr[-3000:]}")
            results[n] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{n}: {results[n]}", flush=True)
            path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'examples':>9}{'MB':>7}{'tokens':>12}{'validate s':>12}{'peak MiB':>10}{'dry run s':>11}{'peak MiB':>10}"
          f"{'counting child peak MiB':>25}")
    for n, r in results.items():
        if "dry_run_error" in r:
            print(f"{n:>9}{r['bytes'] / 1e6:>7.1f}{'':>12}{r['validate_s']:>12.1f}{r['validate_peak_mib']:>10.1f}"
                  f"  dry run failed: {r['dry_run_error']}")
            continue
        print(f"{n:>9}{r['bytes'] / 1e6:>7.1f}{r['n_tokens']:>12}{r['validate_s']:>12.1f}{r['validate_peak_mib']:>10.1f}"
              f"{r['dry_run_s']:>11.1f}{r['dry_run_peak_mib']:>10.1f}{r['count_child_peak_mib']:>25.0f}")
    if len(results) > 1:
        small, large = results[min(results)], results[max(results)]
        if "dry_run_error" in small or "dry_run_error" in large:
            scale = max(results) / min(results)
            print(f"largest/smallest: validate time per example {large['validate_s'] / small['validate_s'] / scale:.2f}, "
                  f"peak memory {large['validate_peak_mib'] / max(small['validate_peak_mib'], 1):.2f}")
            return
        scale = max(results) / min(results)
        print(f"largest/smallest ({scale:.0f}× the examples): time per example, validate "
              f"{large['validate_s'] / small['validate_s'] / scale:.2f}, dry run {large['dry_run_s'] / small['dry_run_s'] / scale:.2f}; "
              f"peak memory, validate {large['validate_peak_mib'] / max(small['validate_peak_mib'], 1):.2f}, "
              f"dry run {large['dry_run_peak_mib'] / max(small['dry_run_peak_mib'], 1):.2f}, "
              f"counting child {large['count_child_peak_mib'] / small['count_child_peak_mib']:.2f}")


if __name__ == "__main__":
    main()
