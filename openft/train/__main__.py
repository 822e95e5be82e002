"""``python -m openft.train JOB_DIR``: run one attempt of the job in JOB_DIR and always leave a verdict.

The attempt ends in exactly one of: result.json written by the recipe's outcome (succeeded, paused, cancelled),
result.json ``failed`` with an error event for any exception, or no result.json, which the scheduler recovers from
the last checkpoint like a crash: a kill from outside, or a checkpoint the store did not take (``openft.durable``;
a store that is down may be back for the next attempt). The process exits with ``os._exit`` once everything is flushed and fsync'd, which skips
~1 s of interpreter and library teardown — that second is pause latency the user waits for.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

# Before any Hugging Face import: nothing in training may reach for a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Before torch starts OpenMP: idle OpenMP threads sleep instead of spinning. With spinning threads, the tiny
# model's steps on a 2-core machine shared with other busy processes took 1.4-1.8 s instead of 0.07-0.13 s.
# (Not measured on an idle machine, where spinning may win a little on tiny models; matmuls dominate real ones.)
# An operator's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from openft import durable, jobdir  # noqa: E402  (the environment above must be set first)
from openft.spec import attempt_json, read_attempt  # noqa: E402
from openft.train import JobError  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m openft.train JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[0]).resolve()
    try:
        result = run_attempt(job_dir)
    except durable.Unavailable as exc:
        traceback.print_exc()
        jobdir.append_record(job_dir, {"kind": "message", "level": "warn", "message": str(exc), "data": {}})
        return 3
    except Exception as exc:  # noqa: BLE001 - every failure must end in result.json, whatever it is
        traceback.print_exc()
        error = _error(exc)
        jobdir.append_record(job_dir, {"kind": "message", "level": "error", "message": error["message"], "data": {}})
        jobdir.write_result(job_dir, {"status": "failed", "error": error})
        return 1
    jobdir.write_result(job_dir, result)
    return 0


def run_attempt(job_dir: Path) -> dict:
    spec = jobdir.read_json(job_dir / jobdir.SPEC)
    if spec is None:
        raise JobError(f"{job_dir / jobdir.SPEC} does not exist")
    try:  # every setting comes from the job's frozen spec; only the attempt's own fields are added to it
        spec = attempt_json(*read_attempt(spec))
    except (KeyError, TypeError) as exc:
        raise JobError(f"{job_dir / jobdir.SPEC} is not a training specification: {exc!r}") from None
    from openft.train.recipes import RECIPES  # inside the try: even a broken install ends in result.json

    recipe = RECIPES.get(spec.get("method"))
    if recipe is None:
        raise JobError(f"Unsupported fine-tuning method: {spec.get('method')!r}")
    return recipe(job_dir, spec)


# What a full disk, a file size limit or a failing device says, as OSError or through a library's own exception.
STORAGE_FAULTS = ("No space left on device", "File too large", "Disk quota exceeded", "Input/output error")


def _error(exc: Exception) -> dict:
    """The job's ``error``: a JobError names the problem; a storage fault says so; anything else is a server
    error."""
    if isinstance(exc, JobError):
        return {"code": exc.code, "message": str(exc), "param": None}
    fault = next((f for f in STORAGE_FAULTS if f in str(exc)), None)
    if fault:
        message = (f"Training failed: the job's storage could not be written ({fault}). The checkpoints listed "
                   f"before it are intact. Details: {type(exc).__name__}: {exc}")
        return {"code": "server_error", "message": message[:2000], "param": None}
    return {"code": "server_error", "message": f"Training failed: {type(exc).__name__}: {exc}", "param": None}


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
