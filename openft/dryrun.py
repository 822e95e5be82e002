"""A plan before training (an extension): what a job request would do, without creating the job.

``plan`` runs the checks job creation runs, then what the scheduler would do with the files (the same validation,
so a bad file gets the same ``code``, ``param`` and line-level message a job's ``error`` would carry), resolves
"auto" hyperparameters, counts tokens exactly as the trainer will (``openft.train.plan``, in a child process:
tokenizers come with torch, which this process never imports), and estimates wall time and peak memory.

The time estimate is calibrated on this server's hardware: every successful training attempt reports its measured
throughput (tokens per second over its whole loop, validation and checkpoints included) and start-up time, and
the median of the newest ones for the same base model and method is used. Before any job of that model has run,
a fallback assumes a throughput inversely proportional to the model's size (``FALLBACK_TOKEN_PARAMS_PER_SECOND``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from openft import files, jobs, models
from openft import protocol as p
from openft.blobs import Blobs
from openft.config import Settings
from openft.errors import InvalidRequest
from openft.store import Scope, Store

# Tokens per second × parameters. SmolLM2-135M with LoRA trained at 23-25 tokens/s (start-up 18-23 s) on a 2-core
# CPU shared with other busy processes, and at 100-140 tokens/s on an idle one; the fallback takes 50.
FALLBACK_TOKEN_PARAMS_PER_SECOND = 50 * 135e6
FALLBACK_STARTUP_SECONDS = 20.0
FALLBACK_RUNTIME_BYTES = 1 << 30  # interpreter, torch and transformers before any weights
COUNT_TIMEOUT_SECONDS = 600


def plan(store: Store, blobs: Blobs, settings: Settings, scope: Scope, req: p.CreateJobRequest) -> p.DryRun:
    method, _ = jobs.check_request(store, settings, scope, req)
    kind = method["type"]
    files = {"training_file": req.training_file, "validation_file": req.validation_file}
    keys = {param: _validated(store, blobs, file_id, param, settings, kind)
            for param, file_id in files.items() if file_id}
    ref = models.materialize(settings, models.resolve(store, settings, scope.org, req.model))
    counts = _count_tokens(settings, blobs, kind, ref.base_path, method[kind]["hyperparameters"], keys)
    n_examples = counts["training_file"]["n_examples"]
    hp = jobs.resolve_hyperparameters(method[kind]["hyperparameters"], n_examples, kind)
    method = {**method, kind: {**method[kind], "hyperparameters": hp}}
    steps = jobs.total_steps(hp, n_examples)
    trained = counts["training_file"]["n_tokens"] * hp["n_epochs"]
    seconds, calibration = _estimate_seconds(store, settings, ref.base, kind, trained, counts["model"])
    memory = _estimate_memory(store, ref.base, kind, settings, hp["batch_size"], counts)
    summary = {param: p.FileSummary(id=files[param], **{k: c[k] for k in ("n_examples", "n_tokens", "n_truncated")})
               for param, c in counts.items() if param != "model"}
    return p.DryRun(
        model=req.model, method=method, hyperparameters=jobs.top_hyperparameters(method),
        training_file=summary["training_file"], validation_file=summary.get("validation_file"),
        total_steps=steps, trained_tokens=trained, estimated_seconds=round(seconds),
        estimated_peak_memory_bytes=memory, calibration=calibration,
    )


def _validated(store: Store, blobs: Blobs, file_id: str, param: str, settings: Settings, kind: str) -> str:
    """The blob key of the file's bytes, or the 400 whose code, param and message a job on it would fail with."""
    minimum = settings.min_examples if param == "training_file" else 1
    report, key = files.validate(store, blobs, file_id, param, minimum, kind)
    if report.error:
        raise InvalidRequest(report.error["message"], param=report.error["param"], code=report.error["code"])
    return key


def _count_tokens(settings: Settings, blobs: Blobs, kind: str, base_path: Path, hp: dict, keys: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="openft-plan-") as tmp:
        paths = {}
        for param, key in keys.items():
            paths[param] = str(Path(tmp) / f"{param}.jsonl")
            blobs.local_copy(key, paths[param])
        request = {"method": kind, "base_model_path": str(base_path), "max_length": settings.max_length,
                   "hyperparameters": hp, "files": paths}
        python = settings.trainer_python or sys.executable
        out = subprocess.run([python, "-m", "openft.train.plan"], input=json.dumps(request), capture_output=True,
                             text=True, timeout=COUNT_TIMEOUT_SECONDS)
    if out.returncode != 0:
        raise RuntimeError(f"counting tokens failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _samples(store: Store, base: str, kind: str) -> list[dict]:
    return [s for s in store.throughput_samples(base, 20) if s.get("method") == kind and s.get("tokens_per_second")][:5]


def _estimate_seconds(store: Store, settings: Settings, base: str, kind: str, tokens: int, model: dict):
    samples = _samples(store, base, kind)
    if samples:
        rate = statistics.median(s["tokens_per_second"] for s in samples)
        startup = statistics.median(s["startup_seconds"] or FALLBACK_STARTUP_SECONDS for s in samples)
        calibration = {"source": "measured", "jobs": len(samples)}
    else:
        rate = FALLBACK_TOKEN_PARAMS_PER_SECOND / max(model["n_parameters"], 1)
        startup = FALLBACK_STARTUP_SECONDS
        calibration = {"source": "default", "jobs": 0}
    # Two scheduler ticks: one validates the files, the next starts the attempt.
    seconds = 2 * settings.scheduler_interval + startup + tokens / rate
    return seconds, {**calibration, "tokens_per_second": round(rate, 1), "startup_seconds": round(startup, 1)}


def _estimate_memory(store: Store, base: str, kind: str, settings: Settings, batch_size: int, counts: dict) -> int:
    """fp32 weights (+ gradients and Adam's two moments for full fine-tuning) + activations of the largest batch
    + the runtime, which is measured (the newest job's peak less its weights) where a job of this model has run."""
    m = counts["model"]
    weights = 4 * m["n_parameters"] * (4 if settings.full_fine_tuning else 1)
    tokens = batch_size * max(c["max_example_tokens"] for k, c in counts.items() if k != "model")
    per_token = (m["num_hidden_layers"] or 0) * (12 * (m["hidden_size"] or 0) + 3 * (m["intermediate_size"] or 0))
    activations = 4 * tokens * (per_token + 3 * (m["vocab_size"] or 0))
    measured = [s["peak_memory_bytes"] - weights for s in _samples(store, base, kind) if s.get("peak_memory_bytes")]
    runtime = max(measured[0], 0) if measured else FALLBACK_RUNTIME_BYTES
    return int(weights + activations + runtime)
