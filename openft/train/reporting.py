"""What a training attempt tells the service: the records of events.jsonl, durable checkpoints, and results.csv.

Every record format is defined in ``openft.jobdir``; this module only builds them (OpenAI's wording for metrics
messages) and makes files durable before they are announced, because the service may act on a
record (e.g. resume from a checkpoint) after this process has been killed.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from openft import durable, jobdir

RESULTS_HEADER = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


def message(job_dir: Path, text: str, level: str = "info", data: dict | None = None) -> None:
    jobdir.append_record(job_dir, {"kind": "message", "level": level, "message": text, "data": data or {}})


def metrics(job_dir: Path, data: dict) -> None:
    """One optimizer step's metrics (``data`` holds step, total_steps, train_loss, … as in jobdir)."""
    if "train_mean_reward" in data:  # reinforcement fine-tuning: OpenAI words its steps by reward
        text = f"Step {data['step']}/{data['total_steps']} , train mean reward={data['train_mean_reward']:.4f}"
        if "full_valid_mean_reward" in data:
            text += (f", full validation mean reward={data['full_valid_mean_reward']:.4f}"
                     f", full validation mean parse error={data['full_valid_mean_parse_error']:.4f}")
        jobdir.append_record(job_dir, {"kind": "metrics", "message": text, "data": data})
        return
    text = f"Step {data['step']}/{data['total_steps']}: training loss={data['train_loss']:.4f}"
    if "valid_loss" in data:
        text += f", validation loss={data['valid_loss']:.4f}"
    if "full_valid_loss" in data:
        text += f", full validation loss={data['full_valid_loss']:.4f}"
    jobdir.append_record(job_dir, {"kind": "metrics", "message": text, "data": data})


class StepClock:
    """The attempt's pace, for ``estimated_finish``: seconds per step over every step since the attempt's first
    (that one carries warm-up: lazy initialisation, first allocations), so the time of per-step validation and of
    epoch-end work (full validation, checkpoint) counts in proportion once it has happened (until the first epoch
    end, that work is not yet in the figure)."""

    def __init__(self):
        self.first_end: float | None = None
        self.first_step = 0

    def tick(self, step: int, now: float) -> float | None:
        """Record the end of ``step``; returns the seconds per step to expect, or None after the first step."""
        if self.first_end is None:
            self.first_end, self.first_step = now, step
            return None
        return (now - self.first_end) / (step - self.first_step)


def progress(job_dir: Path, step: int, total_steps: int, seconds_per_step: float) -> None:
    record = {"kind": "progress", "step": step, "total_steps": total_steps, "seconds_per_step": seconds_per_step}
    jobdir.append_record(job_dir, record)


def checkpoint(job_dir: Path, step: int, path: str, reason: str, step_metrics: dict) -> None:
    """Announce the checkpoint at ``job_dir/path``, made durable first: only complete checkpoints are reported.
    Durable means on this disk (fsync'd) and, where spec.json names a ``checkpoint_store``, published there
    (``openft.durable``): the record then carries its ``location``.

    Its metrics are the step's numbers (OpenAI's checkpoint ``metrics`` hold floats only: nested objects such as
    RFT's ``scores`` stay in the metrics event)."""
    fsync_tree(job_dir / path)
    fields = {k: v for k, v in step_metrics.items()
              if k != "total_steps" and (v is None or isinstance(v, (int, float)))}
    record = {"kind": "checkpoint", "step": step, "path": path, "reason": reason, "metrics": fields}
    spec = jobdir.read_json(job_dir / jobdir.SPEC) or {}
    if spec.get("checkpoint_store"):
        store = durable.open_store(spec["checkpoint_store"])
        record["location"] = store.publish(job_dir / path, durable.job_key(spec["job_id"], path))
    jobdir.append_record(job_dir, record)


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path``, then its parent (the Trainer writes without fsync)."""
    for folder, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        jobdir.fsync_dir(Path(folder))
    jobdir.fsync_dir(path.parent)


def write_results_csv(job_dir: Path) -> None:
    """results.csv from every metrics record of every attempt; where a step ran twice, the latest record wins."""
    records, _ = jobdir.read_records(job_dir, 0)
    by_step = {r["data"]["step"]: r["data"] for r in records if r["kind"] == "metrics"}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULTS_HEADER)
    for step in sorted(by_step):
        d = by_step[step]
        if "train_mean_reward" in d:  # reinforcement: rewards stand in the accuracy columns (see openft.train.rft)
            row = [d["train_loss"], d["train_mean_reward"], None, d.get("full_valid_mean_reward")]
        else:
            row = [d["train_loss"], d["train_mean_token_accuracy"], d.get("valid_loss"),
                   d.get("valid_mean_token_accuracy")]
        writer.writerow([step] + ["" if value is None else f"{value:.5f}" for value in row])
    tmp = job_dir / (jobdir.RESULTS_CSV + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(out.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, job_dir / jobdir.RESULTS_CSV)
    jobdir.fsync_dir(job_dir)


def throughput(job_dir: Path, tokens: int, steps: int, loop_seconds: float, startup_seconds: float | None) -> None:
    """The attempt's measured speed, which calibrates dry-run estimates for its base model on this hardware.

    ``loop_seconds`` runs from the first step to the final weights on disk, so validation and checkpoint time are
    in it; ``startup_seconds`` from the process's start (interpreter, imports, model load, tokenizing) to the first
    step. The peak memory is the process's resident peak (CPU) or the accelerator's allocation peak (CUDA)."""
    import resource

    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
    rate = tokens / loop_seconds if loop_seconds > 0 else None
    method = (jobdir.read_json(job_dir / jobdir.SPEC) or {}).get("method")
    data = {"method": method, "tokens": tokens, "steps": steps, "loop_seconds": round(loop_seconds, 3),
            "tokens_per_second": rate, "peak_memory_bytes": peak,
            "startup_seconds": None if startup_seconds is None else round(startup_seconds, 3)}
    text = f"Measured throughput: {tokens} tokens in {loop_seconds:.1f} s" + (f" ({rate:.0f} tokens/s)" if rate else "")
    jobdir.append_record(job_dir, {"kind": "throughput", "message": text, "data": {"throughput": data}})


def process_age() -> float | None:
    """Seconds since this process started (Linux: from /proc), or None where that is not known."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None
