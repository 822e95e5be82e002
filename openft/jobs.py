"""The job domain: statuses, the one transition table, create / pause / resume / cancel, and resolving "auto".

Every status write — a user's action or the scheduler's — is a row of `TRANSITIONS`, applied by `move` (or, for
starting an attempt, `Store.claim_start` given `row("queued", "start")`) as a compare-and-set in SQL, so racing
pause, cancel and finish requests cannot corrupt a job: the loser re-reads the job and decides again.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import time

from openft import models
from openft import protocol as p
from openft import tables as t
from openft.config import Settings
from openft.errors import Conflict, InvalidRequest, NotFound
from openft.graders.validate import validate_grader
from openft.ids import new_id, now
from openft.spec import Lineage
from openft.store import Scope, Store

TERMINAL = {"succeeded", "failed", "cancelled"}
STATUSES = ["validating_files", "queued", "running", "pausing", "paused", *sorted(TERMINAL)]

# (status, action) -> next status. User actions: pause, resume, cancel (a missing pair is a 409 conflict; a pair
# that maps a status onto itself is an idempotent no-op). The rest are the scheduler's moves (a missing pair is a
# bug: `move` refuses it); its self-loops write fields of a job whose status stays.
TRANSITIONS: dict[tuple[str, str], str] = {
    ("validating_files", "pause"): "paused",
    ("queued", "pause"): "paused",
    ("running", "pause"): "pausing",
    ("pausing", "pause"): "pausing",
    ("paused", "pause"): "paused",
    ("paused", "resume"): "queued",
    ("paused", "revalidate"): "validating_files",  # resume of a job paused before its files were validated
    **{(s, "cancel"): "cancelled" for s in ("validating_files", "queued", "running", "pausing", "paused")},
    ("cancelled", "cancel"): "cancelled",
    ("validating_files", "validated"): "queued",
    ("validating_files", "invalid"): "failed",
    ("queued", "start"): "running",
    ("running", "succeed"): "succeeded",
    ("pausing", "succeed"): "succeeded",  # the pause arrived at the last step
    ("pausing", "paused"): "paused",
    ("running", "crashed"): "queued",  # a dead attempt is retried from its last checkpoint
    ("pausing", "crashed"): "paused",  # …or parked there, if the user had asked for a pause
    ("queued", "fail"): "failed",
    ("running", "fail"): "failed",
    ("pausing", "fail"): "failed",
    ("running", "spec_frozen"): "running",  # a job validated before specs were frozen gets its spec at start
    ("cancelled", "stopped"): "cancelled",  # the cancelled job's attempt has stopped and its checkpoints are gone
}
USER_ACTIONS = ("pause", "resume", "cancel")

# The learning rate is this × Settings.base_learning_rate (5e-4: 1e-3 for LoRA SFT and DPO). LoRA trains at about
# ten times a full fine-tune's rate (1e-4..2e-4 is usual on large data); small files get few steps (batch size 1,
# below), and 1e-3 memorises them: bench/knowledge_injection.py (24 made-up facts, n_epochs 6, the rest auto) reaches
# 24/24 exact match on the trained questions (seeds 42 and 7; 2e-3 also 24/24, 5e-4 only 19/24). Reinforcement gets
# a quarter of it: at 1e-3, GRPO on SmolLM2-135M raised the sampled reward while its greedy answers got worse; at
# 2.5e-4 the sampled reward rose and greedy answers held (bench/rft_reward.py).
AUTO_LR_MULTIPLIER = {"supervised": 2.0, "dpo": 2.0, "reinforcement": 0.5}
AUTO_BETA = 0.1  # DPO's beta when "auto" (TRL's default and OpenAI's examples)
AUTO_COMPUTE_MULTIPLIER = 1.0
METHODS = {
    "supervised": p.SupervisedHyperparameters,
    "dpo": p.DpoHyperparameters,
    "reinforcement": p.ReinforcementHyperparameters,
}
HP_LIMITS = {"n_epochs": (1, 50), "batch_size": (1, 256), "eval_interval": (1, 100000), "eval_samples": (1, 64)}


class IllegalMove(RuntimeError):
    """The scheduler asked for a status change that is not a row of the transition table: a bug, never a user's."""


def next_status(job: t.Job, action: str) -> str:
    to = TRANSITIONS.get((job.status, action))
    if to is None:
        raise Conflict(f"Cannot {action} fine-tuning job {job.id}: its status is {job.status}.")
    return to


def row(frm: str, action: str) -> tuple[str, str]:
    """The (from, to) statuses of one row of the table; a pair that is not a row is refused."""
    to = TRANSITIONS.get((frm, action))
    if to is None:
        raise IllegalMove(f"No transition from {frm} on {action}.")
    return frm, to


def move(store: Store, job_id: str, frm: str, action: str, events: list[dict] = (), **fields) -> bool:
    """Apply the row (frm, action) to a job still in status frm, with the events it causes; False if the job had
    moved on (the caller re-reads it)."""
    frm, to = row(frm, action)
    return store.transition(job_id, frm, to, events, **fields)


# ---- create ----------------------------------------------------------------------------------------------------


def check_request(store: Store, settings: Settings, scope: Scope, req: p.CreateJobRequest) -> tuple[dict, Lineage]:
    """Everything about a job request that can be checked before its files are read: its method, and the weights
    it starts from (a catalog model, one of this org's ft: models or one shared with it), frozen here."""
    try:
        start = models.lineage(models.resolve(store, settings, scope.org, req.model))
    except NotFound:
        raise InvalidRequest(
            f"Model {req.model} is not available for fine-tuning or does not exist.",
            param="model",
            code="model_not_available",
        ) from None
    _check_file(store, scope, req.training_file, "training_file")
    if req.validation_file:
        _check_file(store, scope, req.validation_file, "validation_file")
    _check_suffix(req.suffix)
    _check_metadata(req.metadata)
    return _normalize_method(req), start


def create(store: Store, settings: Settings, scope: Scope, req: p.CreateJobRequest) -> t.Job:
    method, start = check_request(store, settings, scope, req)
    seed = req.seed if req.seed is not None else random.randint(0, 2147483647)
    job = t.Job(
        id=new_id("ftjob"),
        organization_id=scope.org,
        user=scope.user,
        created_at=now(),
        status="validating_files",
        model=req.model,
        training_file=req.training_file,
        validation_file=req.validation_file,
        suffix=req.suffix,
        seed=seed,
        method=method,
        hyperparameters=top_hyperparameters(method),
        metadata_=req.metadata,
        integrations=[i.model_dump(exclude_none=True) for i in req.integrations] if req.integrations else None,
        result_files=[],
        spec={"lineage": dataclasses.asdict(start)},
    )
    files = f"training file: {req.training_file}"
    if req.validation_file:
        files += f" and validation file: {req.validation_file}"
    store.add_job(job, [f"Created fine-tuning job: {job.id}", f"Validating {files}"])
    return store.get_job(None, job.id)


def _check_file(store: Store, scope: Scope, file_id: str, param: str) -> None:
    f = store.get_file(scope, file_id)
    if f is None:
        raise InvalidRequest(f"Invalid {param}: no such file {file_id}.", param=param, code="file_not_found")
    if f.purpose != "fine-tune":
        raise InvalidRequest(
            f"Invalid {param}: file {file_id} has purpose '{f.purpose}', expected 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )


SUFFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _check_suffix(suffix: str | None) -> None:
    # the suffix becomes part of a model name, a folder and an export's file name: no separators, no '..'
    if suffix is not None and (not SUFFIX.fullmatch(suffix) or ".." in suffix):
        raise InvalidRequest("suffix must be 1 to 64 letters, digits, '-', '_' or '.' (and no '..').",
                             param="suffix")


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16:
        raise InvalidRequest(f"metadata has {len(metadata)} pairs; at most 16 are allowed.", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64:
            raise InvalidRequest(f"metadata key '{key[:20]}…' is longer than 64 characters.", param="metadata")
        if len(value) > 512:
            raise InvalidRequest(f"metadata value of '{key}' is longer than 512 characters.", param="metadata")


def _normalize_method(req: p.CreateJobRequest) -> dict:
    """The method as stored and echoed: always `{"type", "<type>": {"hyperparameters": {...}}}`."""
    top = req.hyperparameters
    kind = req.method.type if req.method else "supervised"
    if kind not in METHODS:
        raise InvalidRequest(
            f"Method '{kind}' is not supported by this server yet; use one of {', '.join(METHODS)}.",
            param="method.type",
        )
    section = getattr(req.method, kind, None) if req.method else None
    section_hp = section.hyperparameters if section else None
    if top is not None and kind != "supervised":
        raise InvalidRequest(
            f"hyperparameters (deprecated) applies to supervised jobs only; use method.{kind}.hyperparameters.",
            param="hyperparameters",
        )
    if top is not None and section_hp is not None and top != section_hp:
        raise InvalidRequest(
            "hyperparameters (deprecated) and method.supervised.hyperparameters disagree; send only one.",
            param="hyperparameters",
        )
    hp = section_hp or top or METHODS[kind]()
    param = "hyperparameters" if req.method is None else f"method.{kind}.hyperparameters"
    values = hp.model_dump()
    for name, value in values.items():
        _check_hyperparameter(f"{param}.{name}", name, value)
    normalized = {"type": kind, kind: {"hyperparameters": values}}
    if kind == "reinforcement":
        if section is None or section.grader is None:
            raise InvalidRequest("method.reinforcement.grader is required.", param="method.reinforcement.grader")
        normalized[kind]["grader"] = validate_grader(section.grader, "method.reinforcement.grader")
        normalized[kind]["response_format"] = section.response_format
    return normalized


def top_hyperparameters(method: dict) -> dict:
    """The deprecated top-level ``hyperparameters``: the method's, without method-specific ones such as beta."""
    hp = method[method["type"]]["hyperparameters"]
    return {k: hp[k] for k in ("batch_size", "learning_rate_multiplier", "n_epochs")}


def _check_hyperparameter(param: str, name: str, value) -> None:
    if value == "auto":
        return
    if value is None:
        raise InvalidRequest(f"{param} must be 'auto' or a number.", param=param)
    if name in HP_LIMITS:
        lo, hi = HP_LIMITS[name]
        if not (isinstance(value, int) and lo <= value <= hi):
            raise InvalidRequest(f"{param} must be an integer from {lo} to {hi}, got {value}.", param=param)
    elif name == "reasoning_effort":
        return  # a Literal: pydantic has checked it
    elif name == "compute_multiplier" and not (1e-5 <= value <= 10):
        raise InvalidRequest(f"{param} must be from 0.00001 to 10, got {value}.", param=param)
    elif name == "beta" and not (0 < value <= 2):
        raise InvalidRequest(f"{param} must be greater than 0 and at most 2, got {value}.", param=param)
    elif not (value > 0 and math.isfinite(value)):
        raise InvalidRequest(f"{param} must be a number greater than 0, got {value}.", param=param)


# ---- "auto" ----------------------------------------------------------------------------------------------------


def resolve_hyperparameters(requested: dict, n_examples: int, method: str = "supervised") -> dict:
    """Turn "auto" into numbers once, from the number of training examples.

    n_epochs: OpenAI's heuristic (3, more for small files so that about 100 examples are seen, fewer for huge ones).
    batch_size: about 0.2 % of the examples, from 1 to 256 (OpenAI's rule: files under 500 examples train one
    example a step, the most steps their epochs allow). learning_rate_multiplier: 2.0, 0.5 for reinforcement
    (scales Settings.base_learning_rate). DPO's beta: 0.1. Reinforcement: compute_multiplier 1.0, eval_interval a
    quarter of the job's steps (at least 1), eval_samples 1.
    """
    hp = dict(requested)
    if hp["n_epochs"] == "auto":
        n_epochs = 3
        if n_examples * 3 < 100:
            n_epochs = min(25, 100 // n_examples)
        elif n_examples * 3 > 25000:
            n_epochs = max(1, 25000 // n_examples)
        hp["n_epochs"] = n_epochs
    if hp["batch_size"] == "auto":
        hp["batch_size"] = max(1, min(256, math.ceil(n_examples * 0.002)))
    if hp["learning_rate_multiplier"] == "auto":
        hp["learning_rate_multiplier"] = AUTO_LR_MULTIPLIER[method]
    if hp.get("beta") == "auto":
        hp["beta"] = AUTO_BETA
    if hp.get("compute_multiplier") == "auto":
        hp["compute_multiplier"] = AUTO_COMPUTE_MULTIPLIER
    if hp.get("eval_interval") == "auto":  # about 4 validations a job, at least one step apart
        hp["eval_interval"] = max(1, total_steps(hp, n_examples) // 4)
    if hp.get("eval_samples") == "auto":
        hp["eval_samples"] = 1
    return hp


def total_steps(hp: dict, n_examples: int) -> int:
    return math.ceil(n_examples / hp["batch_size"]) * hp["n_epochs"]


# ---- pause / resume / cancel -----------------------------------------------------------------------------------


def get(store: Store, scope: Scope, job_id: str) -> t.Job:
    job = store.get_job(scope, job_id)
    if job is None:
        raise NotFound(f"Could not find fine tune: {job_id}", param="fine_tune_id", code="fine_tune_not_found")
    return job


def act(store: Store, scope: Scope, job_id: str, action: str) -> t.Job:
    """Apply a user action (pause, resume, cancel) with compare-and-set; a lost race re-reads and decides again."""
    for _ in range(20):
        job = get(store, scope, job_id)
        if action == "resume" and job.status == "paused" and not job.validated:
            action = "revalidate"
        to = next_status(job, action)
        if to == job.status:
            return job
        fields, message = _effects(job, to)
        if move(store, job.id, job.status, action, [{"message": message}], **fields):
            return get(store, scope, job_id)
    raise Conflict(f"Fine-tuning job {job_id} is changing status; try again.")


def _effects(job: t.Job, to: str) -> tuple[dict, str]:
    if to == "cancelled":
        return {"finished_at": now(), "estimated_finish": None, "cancel_requested_at": time.time()}, "Job cancelled"
    if to == "pausing":
        return {}, "Pause requested: the job pauses after the current step and saves a checkpoint"
    if to == "paused":
        return {"estimated_finish": None}, "Job paused"
    return {}, "Job resumed, moving job to queued state" if to == "queued" else "Job resumed, validating files"


# ---- wire ------------------------------------------------------------------------------------------------------


def to_wire(job: t.Job) -> p.FineTuningJob:
    return p.FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        model=job.model,
        organization_id=job.organization_id,
        status=job.status,
        training_file=job.training_file,
        validation_file=job.validation_file,
        hyperparameters=job.hyperparameters,
        method=job.method,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        estimated_finish=job.estimated_finish if job.status == "running" else None,
        result_files=job.result_files or [],
        trained_tokens=job.trained_tokens,
        seed=job.seed,
        error=job.error,
        integrations=job.integrations,
        metadata=job.metadata_,
        suffix=job.suffix,
        user_provided_suffix=job.suffix,
    )


def event_to_wire(ev: t.Event) -> p.JobEvent:
    return p.JobEvent(
        id=ev.id, created_at=ev.created_at, level=ev.level, message=ev.message, type=ev.type, data=ev.data
    )


def checkpoint_to_wire(c: t.Checkpoint) -> p.JobCheckpoint:
    return p.JobCheckpoint(
        id=c.id,
        created_at=c.created_at,
        fine_tuned_model_checkpoint=c.model_name,
        fine_tuning_job_id=c.job_id,
        step_number=c.step_number,
        metrics=c.metrics,
    )
