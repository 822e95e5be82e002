"""Table rows (SQLAlchemy 2 declarative). Wire shapes live in protocol.py; these are storage only.

Every table has an integer `seq` primary key that orders rows for cursor pagination, and a public string `id`.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger keeps room on PostgreSQL.
SeqType = BigInteger().with_variant(Integer, "sqlite")


# Python None is stored as SQL NULL (not the JSON text 'null'), so `IS NULL` filters work.
NullableJSON = JSON(none_as_null=True)


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class File(Base):
    __tablename__ = "files"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str | None] = mapped_column(String(150))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="processed")
    blob_key: Mapped[str] = mapped_column(Text)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)  # hidden from then on; bytes kept while a job needs them


class Upload(Base):
    """OpenAI's Upload: a file sent in parts (``upload_parts``), assembled into a ``files`` row at completion."""

    __tablename__ = "uploads"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str | None] = mapped_column(String(150))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(String(32))
    mime_type: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)  # what the client announced; checked at completion
    file_lifetime: Mapped[int | None] = mapped_column(BigInteger)  # expires_after.seconds for the File
    status: Mapped[str] = mapped_column(String(16))  # pending | completed | cancelled
    file_id: Mapped[str | None] = mapped_column(String(64))


class UploadPart(Base):
    __tablename__ = "upload_parts"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    upload_id: Mapped[str] = mapped_column(String(64), ForeignKey("uploads.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(Text)


class Job(Base):
    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str | None] = mapped_column(String(150))
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(Text)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    method: Mapped[dict] = mapped_column(NullableJSON)  # as requested, "auto" until resolved
    hyperparameters: Mapped[dict] = mapped_column(NullableJSON)
    metadata_: Mapped[dict | None] = mapped_column("metadata", NullableJSON)
    integrations: Mapped[list | None] = mapped_column(NullableJSON)
    fine_tuned_model: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    estimated_finish: Mapped[int | None] = mapped_column(BigInteger)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    result_files: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[dict | None] = mapped_column(NullableJSON)
    # Scheduler bookkeeping (never on the wire).
    validated: Mapped[bool] = mapped_column(Boolean, default=False)
    n_examples: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    crashes: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[dict | None] = mapped_column(NullableJSON)  # the executor's handle of the live attempt
    events_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    resume_from: Mapped[str | None] = mapped_column(Text)
    # The frozen training specification (openft.spec.TrainingSpec as JSON): {"lineage": …} from creation, the
    # whole spec once the files are validated. Every attempt runs from it.
    spec: Mapped[dict | None] = mapped_column(NullableJSON)
    cancel_requested_at: Mapped[float | None] = mapped_column(Float)
    # Only the host named here can observe the attempt (a local subprocess); null when any replica can (Ray).
    worker_host: Mapped[str | None] = mapped_column(String(255))
    # The replica that drives this job, until lease_expires (unix seconds); see Store.claim_leases.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires: Mapped[float | None] = mapped_column(Float)


class Event(Base):
    __tablename__ = "events"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict | None] = mapped_column(NullableJSON)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.id"), index=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    model_name: Mapped[str] = mapped_column(Text, unique=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(NullableJSON)
    reason: Mapped[str] = mapped_column(String(16))  # epoch | pause | final
    path: Mapped[str] = mapped_column(Text)  # absolute directory of the weights


class Permission(Base):
    """A fine-tuned model or checkpoint shared with another organization (OpenAI's "project")."""

    __tablename__ = "checkpoint_permissions"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)  # the owner
    model_name: Mapped[str] = mapped_column(Text, index=True)
    project_id: Mapped[str] = mapped_column(String(64), index=True)  # the grantee organization
    created_at: Mapped[int] = mapped_column(BigInteger)


Index("ix_events_job_seq", Event.job_id, Event.seq)
# The scheduler's queries select live jobs by status (and cancelled ones by a pending clean-up): with this index
# their cost grows with the live jobs, not with every job ever made.
Index("ix_jobs_status_cancel_seq", Job.status, Job.cancel_requested_at, Job.seq)


class WebhookEndpoint(Base):
    """Where an organization wants its jobs' webhooks (OpenAI's webhook endpoint); the secret signs them."""

    __tablename__ = "webhook_endpoints"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    organization_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)


class WebhookDelivery(Base):
    """One webhook to one endpoint, queued with the status change that causes it and kept until delivered."""

    __tablename__ = "webhook_deliveries"
    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)  # the event id, also the webhook-id header
    endpoint_id: Mapped[str] = mapped_column(String(64), index=True)
    type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger)
