"""Wire models: requests and responses exactly as OpenAI shapes them. No storage concerns here."""

from __future__ import annotations

import math
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

T = TypeVar("T")


def _auto_or(kind: type):
    """A hyperparameter that is "auto" or a number, validated in one piece: an error is located at the field
    itself (``method.supervised.hyperparameters.batch_size``), never at a member of a union, whose internal label
    (``literal['auto']``) would otherwise become the error's ``param``."""
    noun = "an integer" if kind is int else "a number"

    def check(value):
        if value is None or value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be 'auto' or {noun}, got {value!r}")
        if kind is int and value != int(value):
            raise ValueError(f"must be 'auto' or {noun}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"must be 'auto' or a finite number, got {value!r}")
        return kind(value)

    wire = Union[Literal["auto"], kind, None]
    return Annotated[wire, PlainValidator(check, json_schema_input_type=wire)]


Auto = _auto_or(int)
AutoFloat = _auto_or(float)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests ------------------------------------------------------------------------------------------------


class SupervisedHyperparameters(Strict):
    batch_size: Auto = "auto"
    learning_rate_multiplier: AutoFloat = "auto"
    n_epochs: Auto = "auto"


class DpoHyperparameters(SupervisedHyperparameters):
    beta: AutoFloat = "auto"


class MethodSection(Strict):
    hyperparameters: SupervisedHyperparameters | None = None


class DpoSection(Strict):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementHyperparameters(SupervisedHyperparameters):
    compute_multiplier: AutoFloat = "auto"
    eval_interval: Auto = "auto"
    eval_samples: Auto = "auto"
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"


class ReinforcementSection(Strict):
    grader: dict[str, Any] | None = None
    hyperparameters: ReinforcementHyperparameters | None = None
    response_format: dict[str, Any] | None = None


class Method(Strict):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: MethodSection | None = None
    dpo: DpoSection | None = None
    reinforcement: ReinforcementSection | None = None


class WandbIntegration(BaseModel):
    project: str
    name: str | None = None
    entity: str | None = None
    tags: list[str] | None = None


class Integration(Strict):
    type: Literal["wandb"]
    wandb: WandbIntegration


class CreatePermissionsRequest(Strict):
    project_ids: list[str] = Field(min_length=1, max_length=100)


class CreateJobRequest(Strict):
    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = Field(None, min_length=1, max_length=64)
    seed: int | None = Field(None, ge=0, le=2147483647)
    hyperparameters: SupervisedHyperparameters | None = None
    method: Method | None = None
    integrations: list[Integration] | None = Field(None, max_length=5)
    metadata: dict[str, str] | None = None
    dry_run: bool = False  # an extension: answer with a DryRun plan and create nothing


# ---- responses -----------------------------------------------------------------------------------------------


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    model: str
    organization_id: str
    status: Literal["validating_files", "queued", "running", "pausing", "paused", "succeeded", "failed", "cancelled"]
    training_file: str
    validation_file: str | None
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    fine_tuned_model: str | None
    finished_at: int | None
    estimated_finish: int | None
    result_files: list[str]
    trained_tokens: int | None
    seed: int
    error: JobError | None
    integrations: list[dict[str, Any]] | None
    metadata: dict[str, str] | None
    suffix: str | None
    user_provided_suffix: str | None


class JobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None


class JobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float | None]


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    expires_at: int | None = None
    status_details: str | None = None


class ExpiresAfter(Strict):
    anchor: str
    seconds: int


class CreateUploadRequest(Strict):
    bytes: int = Field(ge=0)
    filename: str
    mime_type: str
    purpose: str
    expires_after: ExpiresAfter | None = None


class CompleteUploadRequest(Strict):
    part_ids: list[str]
    md5: str | None = None


class Upload(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileObject | None = None


class UploadPart(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


class Deleted(BaseModel):
    id: str
    object: str
    deleted: bool


class Permission(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    created_at: int
    project_id: str


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class Page(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool


class IdPage(Page[T], Generic[T]):
    """Lists that carry first_id / last_id (files, checkpoints)."""

    first_id: str | None
    last_id: str | None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


# ---- MKA1's model object (GET /api/v1/llm/models) ---------------------------------------------------------------


class Mka1Lifecycle(BaseModel):
    status: Literal["active", "deprecated", "retired"] = "active"
    deprecated_at: str | None = None
    retires_at: str | None = None
    successor: str | None = None


class Mka1Capabilities(BaseModel):
    supports_temperature: bool
    supports_top_p: bool
    supports_reasoning: bool
    supports_reasoning_effort: bool
    supports_structured_outputs: bool | None


class Mka1Model(BaseModel):
    """MKA1's model object: OpenAI's four fields plus the model card (null where a fact is not recorded)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    model_type: Literal["llm"] = "llm"
    input_modalities: list[str]
    output_modalities: list[str]
    context_window: int | None
    max_image_resolution: dict[str, int] | None = None
    min_image_resolution: dict[str, int] | None = None
    embedding_dimension_range: dict[str, int] | None = None
    parameter_count: int | None
    active_parameter_count: int | None
    release_date: str | None = None
    serving_locations: list[str] | None = None
    developer: str | None
    base_model: str | None
    weights: Literal["open", "closed"] | None
    license: str | None
    languages: list[str] | None
    tts: dict[str, Any] | None = None
    limitations: str | None
    lifecycle: Mka1Lifecycle
    capabilities: Mka1Capabilities


class Mka1ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Mka1Model]


class FileSummary(BaseModel):
    id: str
    n_examples: int
    n_tokens: int
    n_truncated: int


class DryRun(BaseModel):
    """What a job would do, without creating it (an extension: ``"dry_run": true`` on job creation)."""

    object: Literal["fine_tuning.job.dry_run"] = "fine_tuning.job.dry_run"
    model: str
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    training_file: FileSummary
    validation_file: FileSummary | None
    total_steps: int
    trained_tokens: int
    estimated_seconds: int
    estimated_peak_memory_bytes: int
    calibration: dict[str, Any]


class CreateWebhookEndpointRequest(Strict):
    url: str = Field(min_length=1, max_length=2048)
    name: str | None = Field(None, max_length=256)
    event_types: list[str] | None = None


# ---- chat completions request (documentation: openft.infer.request's parser governs what is accepted) ---------


NonEmpty = Annotated[str, Field(min_length=1)]


class ChatFunctionCall(BaseModel):
    name: str
    arguments: str


class ChatToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: ChatFunctionCall


class ChatContentPart(BaseModel):
    type: Literal["text", "refusal"]
    text: str | None = None
    refusal: str | None = None


class ChatMessage(BaseModel):
    """A message; ``content`` may be null only for an assistant message that makes tool calls."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ChatContentPart] | None = None
    name: str | None = None
    tool_calls: list[ChatToolCall] | None = None
    tool_call_id: str | None = None


class ChatFunction(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatTool(BaseModel):
    type: Literal["function"] = "function"
    function: ChatFunction


class ChatNamedFunction(BaseModel):
    name: str


class ChatNamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: ChatNamedFunction


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completions request, as far as this server implements it. Other OpenAI fields (``user``,
    ``metadata``, ``stream_options`` …) are accepted and ignored; fields that would change the output but are not
    implemented (logprobs, penalties, logit_bias, structured response formats) are refused unless off."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ChatNamedToolChoice | None = None
    response_format: dict[str, Any] | None = Field(None, description="Only {'type': 'text'}.")
    user: str | None = None
    metadata: dict[str, str] | None = None
