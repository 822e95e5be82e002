"""The process boundary between the service and a training attempt: one job directory.

Both sides import this module and nothing else of each other's (it needs only the standard library).

Layout of ``JOB_DIR``::

    spec.json        written by the service before each attempt: the fully resolved job (see ``Spec`` keys below)
    control          written by the service: "pause" or "cancel"; the trainer polls it at every optimizer step
    events.jsonl     appended by the trainer, read by the service from a stored byte offset (one record a line)
    checkpoints/     Trainer checkpoints (``checkpoint-<step>``) and the final adapter (``final``): scratch, once
                     published to the checkpoint store (``openft.durable``)
    results.csv      the per-step metrics table (OpenAI's columns), written by the trainer at the end
    result.json      written last and atomically by an attempt that ends on its own (see ``write_result``)

``spec.json`` is the job's frozen training specification plus the attempt's own fields (``openft.spec``: typed,
read back with ``read_attempt``). Keys: ``job_id``, ``method`` ("supervised", "dpo" or "reinforcement"),
``base_model`` (the model the job was created on), ``root_model`` (the catalog name at the root of its lineage),
``base_model_path`` (a local Hugging Face folder), ``training_file`` and ``validation_file`` (local paths or null),
``hyperparameters`` (resolved numbers: ``n_epochs``, ``batch_size``, ``learning_rate_multiplier``,
``learning_rate``, for "dpo" ``beta``, for "reinforcement" ``compute_multiplier`` (float), ``eval_interval`` (int,
steps between validations), ``eval_samples`` (int, completions per validation prompt) and ``reasoning_effort``
("default", "low", "medium" or "high"); how ``openft.train.rft`` maps them onto sampling is in its docstring),
``seed``, ``lora`` (``r``, ``alpha``, ``dropout``; null means full fine-tuning), ``max_length``, ``resume_from``
(a checkpoint's location in the checkpoint store, or a directory relative to JOB_DIR, or null), ``attempt``
(1, 2, …), ``parent_adapters`` (LoRA adapter locations or absolute folders to merge into the base, in order, before
training: the lineage of an ``ft:`` model the job trains on; empty for a catalog model; ``base_model_path`` may be a
location too: a fully fine-tuned model), ``checkpoint_store`` (where checkpoints are published and fetched
locations are cached: ``openft.durable.Config`` as an object; null: checkpoints stay in JOB_DIR only). For "reinforcement" also: ``grader`` (a grader
object as validated by ``openft.graders.validate_grader``) and ``grader_endpoint`` (``{"base_url": str,
"api_key": str | null}``, the OpenAI-compatible endpoint score_model and label_model graders ask; may be absent,
then the graders' default). ``wandb``: null, or where a job with the wandb integration reports
(``openft.integrations``).

Records in ``events.jsonl`` (every record has ``kind`` and ``ts``, a unix time in float seconds):

* ``{"kind": "message", "level": "info"|"warn"|"error", "message": str, "data": {...}}`` – a job event
* ``{"kind": "metrics", "message": "Step 3/20: training loss=1.23", "data": {"step", "total_steps",
  "train_loss", "train_mean_token_accuracy", ["valid_loss", "valid_mean_token_accuracy",
  "full_valid_loss", "full_valid_mean_token_accuracy"]}}`` – one per optimizer step; ``valid_*`` is one
  validation batch, ``full_valid_*`` the whole validation set at epoch ends. For "dpo", ``train_mean_token_accuracy``
  is the reward accuracy, and ``data`` also holds ``train_reward_margin``, ``train_reward_accuracy``,
  ``train_chosen_logps`` and ``train_rejected_logps``, each with its ``valid_``/``full_valid_`` counterpart when
  there is a validation file (definitions in ``openft.train.dpo``). For "reinforcement" the message reads
  ``"Step 3/20 , train mean reward=0.4200[, full validation mean reward=…, full validation mean parse error=…]"``
  and ``data`` holds ``step``, ``total_steps``, ``train_loss`` (the GRPO loss), ``train_mean_reward``,
  ``train_mean_parse_error``, ``train_mean_grader_error``, ``completion_tokens_mean``, ``scores``, ``errors``,
  ``step_time_s``, ``generation_time_s``, ``grading_time_s``, and at validation steps ``full_valid_mean_reward``,
  ``full_valid_mean_parse_error``, ``full_valid_mean_grader_error`` and ``eval_time_s`` (no
  ``train_mean_token_accuracy``; definitions in ``openft.train.rft``)
* ``{"kind": "checkpoint", "step": int, "path": "checkpoints/checkpoint-3", "reason": "epoch"|"eval"|"pause"|"final",
  "metrics": {...}, "location": str}`` – a complete, fsync'd checkpoint whose model can be sampled, and (with a
  ``checkpoint_store``) its ``location`` there, written only once it is wholly published; ``metrics`` are the step's
  numeric metrics (nested ones such as ``scores`` stay in the metrics record). "eval" checkpoints are those of
  "reinforcement" jobs, at each validation step but the last, in place of epoch ends
* ``{"kind": "progress", "step": int, "total_steps": int, "seconds_per_step": float}`` – for ``estimated_finish``
* ``{"kind": "throughput", "message": str, "data": {"throughput": {"method", "tokens", "steps", "loop_seconds",
  "tokens_per_second", "startup_seconds", "peak_memory_bytes"}}}`` – a successful attempt's measured speed, recorded
  as a job event; it calibrates dry-run estimates (``openft.dryrun``)

``result.json``: ``{"status": "succeeded", "trained_tokens": int, "checkpoint": "checkpoints/final",
"results_csv": "results.csv"}``, ``{"status": "paused", "checkpoint": "checkpoints/checkpoint-N"}``,
``{"status": "cancelled"}`` or ``{"status": "failed", "error": {"code", "message", "param"}}``.
An attempt that exits without a result.json died (crash, kill -9, OOM) and is recovered by the scheduler.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

SPEC = "spec.json"
CONTROL = "control"
EVENTS = "events.jsonl"
CHECKPOINTS = "checkpoints"
RESULTS_CSV = "results.csv"
RESULT = "result.json"


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` so that a reader sees either nothing or the whole file, durably."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def append_record(job_dir: Path, record: dict) -> None:
    """Append one record to events.jsonl, flushed to disk (the service may read it at any moment)."""
    record = {"ts": time.time(), **record}
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(job_dir / EVENTS, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_records(job_dir: Path, offset: int) -> tuple[list[dict], int]:
    """Records appended since byte ``offset``; returns them and the new offset (a partial last line waits)."""
    try:
        with open(job_dir / EVENTS, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1
    records = [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
    return records, offset + end


def read_control(job_dir: Path) -> str | None:
    try:
        return (job_dir / CONTROL).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def write_control(job_dir: Path, command: str) -> None:
    tmp = job_dir / (CONTROL + ".tmp")
    tmp.write_text(command, encoding="utf-8")
    os.replace(tmp, job_dir / CONTROL)


def write_result(job_dir: Path, result: dict) -> None:
    write_json_atomic(job_dir / RESULT, result)
