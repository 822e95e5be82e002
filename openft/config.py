"""Settings: the one configuration object, read from OPENFT_* environment variables, built once and passed down."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the service. Each field's description is the reference the README repeats."""

    model_config = SettingsConfigDict(env_prefix="OPENFT_", extra="ignore")

    data_dir: Path = Field(Path("./data"), description="Root of local state: the SQLite file, blobs and job directories.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/openft.db. PostgreSQL: postgresql+psycopg://…"
    )
    blob_url: str | None = Field(
        None, description="fsspec URL of the durable store (uploaded files, results, checkpoints and final models), "
        "e.g. s3://bucket/prefix; default <data_dir>/blobs."
    )
    blob_options: str = Field(
        "{}", description='fsspec storage options for blob_url as JSON, e.g. {"endpoint_url": "http://minio:9000", '
        '"client_kwargs": {"region_name": "eu-west-1"}} (default: the usual AWS variables: AWS_ENDPOINT_URL, '
        "AWS_DEFAULT_REGION, …). No secrets here: they travel to training nodes in spec.json; keys come from "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile) in each process's environment."
    )
    checkpoint_cache_bytes: int = Field(
        20 << 30, ge=0, description="Bytes of checkpoints fetched from a remote blob_url that each host keeps in "
        "<data_dir>/cache for training, sampling and export (least recently used ones are dropped first)."
    )
    host: str = Field("127.0.0.1", description="Address `openft serve` listens on.")
    port: int = Field(8000, description="Port `openft serve` listens on.")
    max_file_bytes: int = Field(512 * 1024 * 1024, description="Largest accepted upload, in bytes (OpenAI: 512 MB).")
    min_file_expiry_seconds: int = Field(
        3600, ge=1, description="Shortest expires_after.seconds an upload may ask for (OpenAI: 3600; lower only "
        "for tests)."
    )
    max_concurrent_jobs: int = Field(
        1, ge=1, description="Training attempts that may run at the same time, across all replicas sharing the database."
    )
    max_attempts: int = Field(3, ge=1, description="Attempts per job before a crashing job is failed.")
    min_examples: int = Field(10, ge=1, description="Fewest training examples a job accepts (OpenAI: 10).")
    scheduler_interval: float = Field(0.5, gt=0, description="Seconds between scheduler ticks.")
    events_poll_interval: float = Field(
        0.5, gt=0, description="Seconds between the database reads of a live event stream (`?stream=true`)."
    )
    enable_webhooks: bool = Field(True, description="Deliver queued webhooks from this process.")
    webhook_interval: float = Field(1.0, gt=0, description="Seconds between looks at the webhook delivery queue.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="How long a webhook receiver may take to answer.")
    webhook_retry_seconds: float = Field(
        5.0, gt=0, description="Delay before the first retry of a failed webhook; it doubles with each further "
        "failure (at most an hour)."
    )
    webhook_max_attempts: int = Field(12, ge=1, description="Attempts per webhook before it is given up.")
    wandb_api_key: str | None = Field(
        None, description="W&B API key for jobs that ask for the wandb integration (requests never carry one)."
    )
    wandb_mode: str | None = Field(None, description="W&B mode for those jobs: online (W&B's default), offline or "
                                   "disabled.")
    wandb_base_url: str | None = Field(None, description="W&B server URL (a self-hosted W&B); default W&B's cloud.")
    cancel_grace_seconds: float = Field(10.0, ge=0, description="How long a cancelled attempt may take to stop before it is killed.")
    base_learning_rate: float = Field(
        5e-4, gt=0, description="Learning rate that learning_rate_multiplier scales (LoRA); auto multiplier is 2.0."
    )
    inference_max_adapter_bytes: int = Field(
        1 << 30, ge=1, description="Memory the inference worker may spend on cached LoRA adapters (least recently "
        "used ones are dropped first)."
    )
    inference_max_bases: int = Field(2, ge=1, description="Base models the inference worker keeps loaded at once.")
    inference_backend: Literal["auto", "cpu", "vllm"] = Field(
        "auto", description="What generates: 'cpu' is openft's own batching engine (torch; on a GPU too when one "
        "is present), 'vllm' is vLLM on a CUDA GPU, 'auto' is vllm where CUDA and vLLM are both present, else cpu."
    )
    inference_workers: int = Field(
        1, ge=1, description="Inference worker processes; each batches its own requests and keeps its own model cache "
        "within the limits above."
    )
    inference_threads: int | None = Field(
        None, ge=1, description="CPU threads each inference worker computes with (default: torch's, every core). "
        "Fewer leave cores to training jobs, bounding how much sampling slows them."
    )
    inference_default_max_tokens: int = Field(
        1024, ge=1, description="Completion tokens per choice when a chat request sets neither max_tokens nor "
        "max_completion_tokens (never past the model's context)."
    )
    inference_max_batch_rows: int = Field(
        32, ge=1, description="Rows (choices of running requests) one inference worker decodes together."
    )
    inference_max_batch_tokens: int = Field(
        65536, ge=1, description="KV-cache budget of one inference worker in tokens: the running requests' prompt + "
        "completion bound, times n, summed. Requests that do not fit wait for running ones to finish."
    )
    inference_max_queue: int = Field(
        64, ge=0, description="Rows (choices of requests) that may wait per inference worker beyond a full batch; "
        "a request that would exceed it is answered 503 with Retry-After."
    )
    inference_request_timeout: float = Field(
        600.0, gt=0, description="Seconds a chat completion may take before it is stopped and answered 504."
    )
    inference_stall_timeout: float = Field(
        60.0, gt=0, description="Seconds an inference worker with requests in hand may stay silent (it beats every "
        "second while it works) before it is taken as hung, killed and restarted."
    )
    full_fine_tuning: bool = Field(
        False, description="Train every weight instead of a LoRA adapter (an extension: more memory, slower; the "
        "fine-tuned model is then a whole model folder)."
    )
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    max_length: int = Field(1024, ge=16, description="Tokens per training example; longer examples are truncated.")
    models: str = Field(
        "{}",
        description='Catalog of base models as JSON {"name": "/path/to/hf-folder", …}, merged with the models '
        "prepared by `openft models prepare` (kept in <data_dir>/models.json).",
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="Where training attempts run: `local` (a subprocess on this host) or `ray` (an actor on "
        "any node of the Ray cluster at ray_address that has the resources below)."
    )
    ray_address: str = Field("auto", description="Ray cluster to join with executor=ray: `auto`, `HOST:PORT` of the "
                             "head's GCS, or `ray://HOST:10001`.")
    ray_num_cpus: float = Field(1, ge=0, description="CPUs each training attempt asks Ray for.")
    ray_num_gpus: float = Field(0, ge=0, description="GPUs each training attempt asks Ray for.")
    ray_memory_bytes: int | None = Field(None, ge=1, description="Memory each training attempt asks Ray for (unset: derived from the job, its weights and the runtime).")
    ray_resources: str = Field("{}", description='Custom Ray resources each attempt asks for, as JSON, e.g. '
                               '{"a100": 1} to run only on nodes started with --resources \'{"a100": 4}\'.')
    ray_placement_timeout: float = Field(
        300, gt=0, description="Seconds an attempt may wait for a Ray node with its resources before it counts as a failed "
        "attempt (retried up to max_attempts)."
    )
    trainer_python: str | None = Field(None, description="Python interpreter for training processes; default: this one.")
    enable_scheduler: bool = Field(True, description="Run the scheduler inside the API process.")
    replica_id: str | None = Field(
        None, description="Name of this API replica in the job leases it holds; default <hostname>:<port>, so a "
        "replica restarted on the same host and port takes its jobs back at once. Unique per running replica."
    )
    lease_seconds: float = Field(
        30.0, gt=0, description="How long a replica's hold on a job lasts without renewal (renewed every tick): the "
        "bound on how soon another replica takes over the jobs of one that died."
    )
    grader_model_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint that score_model and label_model graders sample (default: this "
        "service, http://127.0.0.1:<port>/v1)."
    )
    grader_model_api_key: str | None = Field(
        None, description="Bearer key sent to an external OPENFT_GRADER_MODEL_BASE_URL, if it needs one. Unused when "
        "model graders sample this service: they then sample as the organization that runs them."
    )
    max_request_bytes: int = Field(
        8 << 20, ge=1024, description="Largest request body other than a file upload, in bytes; larger is a 413."
    )
    max_json_depth: int = Field(
        64, ge=4, description="Deepest nesting of arrays and objects in a JSON request body; deeper is a 400."
    )
    max_requests_per_key: int = Field(
        64, ge=1, description="Requests one organization may have in progress at once; more are answered 429 with "
        "Retry-After."
    )
    grader_concurrency: int = Field(
        4, ge=1, description="Graders that graders/run runs at once, over all organizations (each is a process)."
    )
    grader_concurrency_per_org: int = Field(
        2, ge=1, description="Graders that one organization's graders/run calls may run at once."
    )
    grader_queue_per_org: int = Field(
        8, ge=0, description="graders/run calls of one organization that may wait for a slot; more are a 429."
    )

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'openft.db').resolve()}"

    def resolved_replica_id(self) -> str:
        return self.replica_id or f"{socket.gethostname()}:{self.port}"

    def resolved_grader_base_url(self) -> str:
        return self.grader_model_base_url or f"http://127.0.0.1:{self.port}/v1"

    def resolved_blob_url(self) -> str:
        return self.blob_url or str((self.data_dir / "blobs").resolve())

    def checkpoint_store(self) -> dict:
        """Where training attempts publish checkpoints and where hosts cache them (``openft.durable.Config``)."""
        return {"url": self.resolved_blob_url(), "cache_dir": str((self.data_dir / "cache").resolve()),
                "cache_bytes": self.checkpoint_cache_bytes, "options": json.loads(self.blob_options)}

    @property
    def jobs_dir(self) -> Path:
        return (self.data_dir / "jobs").resolve()

    def catalog(self) -> dict[str, Path]:
        """Base models that can be fine-tuned and sampled: name → local Hugging Face folder."""
        prepared = self.data_dir / "models.json"
        entries = json.loads(prepared.read_text()) if prepared.exists() else {}
        entries.update(json.loads(self.models))
        return {name: Path(path) for name, path in entries.items()}
