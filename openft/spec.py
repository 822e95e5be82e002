"""A job's training specification: everything that decides its numbers, resolved once and frozen with the job.

The model lineage (base folder and parent adapters) is fixed when the job is created, so that deleting or
un-sharing the model it trains on later changes nothing; the rest (method, resolved hyperparameters and the
learning rate, LoRA or full fine-tuning, max_length, seed, grader) is fixed when its files are validated. Every
attempt runs from this stored spec: an operator who changes ``OPENFT_BASE_LEARNING_RATE`` or ``OPENFT_LORA_R``
between a pause and a resume does not change the job. The scheduler adds only what belongs to one attempt
(``AttemptSpec``: local file paths, the checkpoint to resume from, the attempt number, the grader endpoint).

Standard library only: the scheduler (web side) writes it, the trainer reads it, neither imports the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Lora:
    r: int
    alpha: int
    dropout: float


@dataclass(frozen=True)
class Lineage:
    """The weights a job starts from: a base folder, plus LoRA adapter folders merged into it in order."""

    root_model: str  # the catalog name at the root, which names the job's fine-tuned models
    base_model_path: str
    parent_adapters: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()  # the organizations whose fine-tuned weights are in it (sharing forbids export)

    @classmethod
    def from_json(cls, data: dict) -> "Lineage":
        return cls(data["root_model"], data["base_model_path"], tuple(data["parent_adapters"]),
                   tuple(data.get("owners", ())))


@dataclass(frozen=True)
class TrainingSpec:
    job_id: str
    method: str  # "supervised", "dpo" or "reinforcement"
    base_model: str  # the model the job was created on (a catalog name or an ft: model)
    lineage: Lineage
    hyperparameters: dict  # resolved numbers, with "learning_rate" = base learning rate × multiplier
    seed: int
    lora: Lora | None  # None: full fine-tuning
    max_length: int
    grader: dict | None = None  # reinforcement only

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainingSpec":
        lora = Lora(**data["lora"]) if data.get("lora") else None
        return cls(**{**data, "lineage": Lineage.from_json(data["lineage"]), "lora": lora})


@dataclass(frozen=True)
class AttemptSpec:
    """What one attempt adds to the frozen spec; ``spec.json`` is the two together."""

    training_file: str
    validation_file: str | None
    resume_from: str | None
    attempt: int
    grader_endpoint: dict | None = None
    wandb: dict | None = None  # where the attempt reports to W&B (server credentials included); None: it does not
    checkpoint_store: dict | None = None  # where checkpoints are published (openft.durable.Config); None: nowhere


def attempt_json(spec: TrainingSpec, attempt: AttemptSpec) -> dict:
    """The contents of ``spec.json``: the two parts as one flat object (keys described in ``openft.jobdir``)."""
    out = {
        "job_id": spec.job_id, "method": spec.method, "base_model": spec.base_model,
        "root_model": spec.lineage.root_model, "base_model_path": spec.lineage.base_model_path,
        "parent_adapters": list(spec.lineage.parent_adapters), "hyperparameters": dict(spec.hyperparameters),
        "seed": spec.seed, "lora": dataclasses.asdict(spec.lora) if spec.lora else None,
        "max_length": spec.max_length, **dataclasses.asdict(attempt),
    }
    if spec.grader is not None:
        out["grader"] = spec.grader
    return out


def read_attempt(data: dict) -> tuple[TrainingSpec, AttemptSpec]:
    """``spec.json`` back as its two typed parts; one that lacks a required key raises KeyError or TypeError."""
    lineage = Lineage(root_model=data.get("root_model") or data["base_model"], base_model_path=data["base_model_path"],
                      parent_adapters=tuple(data.get("parent_adapters") or ()))
    lora = Lora(**data["lora"]) if data.get("lora") else None
    spec = TrainingSpec(job_id=data["job_id"], method=data["method"], base_model=data["base_model"], lineage=lineage,
                        hyperparameters=dict(data["hyperparameters"]), seed=data["seed"], lora=lora,
                        max_length=data["max_length"], grader=data.get("grader"))
    attempt = AttemptSpec(training_file=data["training_file"], validation_file=data.get("validation_file"),
                          resume_from=data.get("resume_from"), attempt=data.get("attempt") or 1,
                          grader_endpoint=data.get("grader_endpoint"), wandb=data.get("wandb"),
                          checkpoint_store=data.get("checkpoint_store"))
    return spec, attempt
