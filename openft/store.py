"""The only SQL: rows in, rows out, status changes as compare-and-set. SQLite by default, PostgreSQL by URL.

Rows returned are detached ORM objects (expire_on_commit=False), safe to read after their session closes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, create_engine, delete, event, func, or_, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from openft import tables as t
from openft.ids import new_id, now


@dataclass(frozen=True)
class Scope:
    """Who is asking: an organization, and optionally the end user it acts for (X-On-Behalf-Of)."""

    org: str
    user: str | None = None


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # WAL lets the API read while the scheduler writes
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _live_file() -> tuple:
    """A file is visible until it is deleted or expires."""
    return t.File.deleted.is_(False), or_(t.File.expires_at.is_(None), t.File.expires_at > int(time.time()))


# Jobs a scheduler must look after: validating, with an attempt (or owed one), or cancelled with clean-up pending.
# Every branch is an equality on status (ix_jobs_status_cancel_seq), so the scan is over live jobs only.
_NEEDS_DRIVER = t.Job.status.in_(("validating_files", "running", "pausing")) | (
    (t.Job.status == "cancelled") & t.Job.cancel_requested_at.is_not(None))
# Jobs that hold (or are about to hold) a training slot.
_BUSY = t.Job.status.in_(("running", "pausing")) | (
    (t.Job.status == "cancelled") & t.Job.cancel_requested_at.is_not(None) & t.Job.worker.is_not(None))
_START_LOCK = 7271002  # the advisory-lock key of claim_start


# GET job is the API's hottest read: its statements are built once (with bound parameters), which spares building
# and cache-keying the expression on every request.
_JOB = select(t.Job).where(t.Job.id == bindparam("job_id"))
_JOB_OF_ORG = _JOB.where(t.Job.organization_id == bindparam("org"))
_JOB_OF_USER = _JOB_OF_ORG.where(t.Job.user == bindparam("user"))


def _scoped(stmt, table, scope: Scope):
    stmt = stmt.where(table.organization_id == scope.org)
    return stmt.where(table.user == scope.user) if scope.user is not None else stmt


def _page(session: Session, stmt, table, after: str | None, limit: int, newest_first: bool = True):
    """Cursor paging by `seq`: the rows after the row whose id is `after`, and whether more follow."""
    if after is not None:  # looked up under the page's own filters: another organization's id is just unknown
        anchor = session.scalar(stmt.with_only_columns(table.seq).where(table.id == after))
        if anchor is not None:
            stmt = stmt.where(table.seq < anchor if newest_first else table.seq > anchor)
    stmt = stmt.order_by(table.seq.desc() if newest_first else table.seq.asc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return rows[:limit], len(rows) > limit


class Store:
    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    # ---- keys ----
    def add_key(self, org: str, key: str) -> None:
        with self.session.begin() as s:
            s.add(t.ApiKey(id=new_id("key"), organization_id=org, key_hash=hash_key(key), created_at=now()))

    def org_for_key(self, key: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(t.ApiKey.organization_id).where(t.ApiKey.key_hash == hash_key(key)))

    def has_keys(self) -> bool:
        with self.session() as s:
            return s.scalar(select(t.ApiKey.seq).limit(1)) is not None

    # ---- files ----
    def add(self, row) -> None:
        with self.session.begin() as s:
            s.add(row)

    def get_file(self, scope: Scope, file_id: str) -> t.File | None:
        with self.session() as s:
            stmt = _scoped(select(t.File).where(t.File.id == file_id, *_live_file()), t.File, scope)
            return s.scalar(stmt)

    def list_files(self, scope: Scope, after, limit, order, purpose):
        with self.session() as s:
            stmt = _scoped(select(t.File).where(*_live_file()), t.File, scope)
            if purpose:
                stmt = stmt.where(t.File.purpose == purpose)
            return _page(s, stmt, t.File, after, limit, newest_first=(order == "desc"))

    def delete_file(self, file_id: str) -> None:
        with self.session.begin() as s:
            s.execute(update(t.File).where(t.File.id == file_id).values(deleted=True))

    def expired_files(self) -> list[t.File]:
        """Files past their expiry whose bytes are not yet removed."""
        with self.session() as s:
            stmt = select(t.File).where(t.File.deleted.is_(False), t.File.expires_at <= int(time.time()))
            return list(s.scalars(stmt))

    def file_in_use(self, file_id: str) -> bool:
        """Whether an unfinished job trains or validates on the file."""
        with self.session() as s:
            stmt = select(t.Job.id).where(or_(t.Job.training_file == file_id, t.Job.validation_file == file_id),
                                          t.Job.status.not_in(("succeeded", "failed", "cancelled"))).limit(1)
            return s.scalar(stmt) is not None

    def live_blob_keys(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` belong to a file that is not deleted."""
        with self.session() as s:
            stmt = select(t.File.blob_key).where(t.File.blob_key.in_(keys), t.File.deleted.is_(False))
            return set(s.scalars(stmt))

    def upload_statuses(self, upload_ids: list[str]) -> dict[str, str]:
        with self.session() as s:
            return dict(s.execute(select(t.Upload.id, t.Upload.status).where(t.Upload.id.in_(upload_ids))).all())

    def file_blob_key(self, file_id: str) -> str | None:
        """The bytes of a file, whoever owns it (the scheduler validates files of every organization)."""
        with self.session() as s:
            return s.scalar(select(t.File.blob_key).where(t.File.id == file_id))

    # ---- uploads ----
    def get_upload(self, scope: Scope, upload_id: str) -> t.Upload | None:
        with self.session() as s:
            return s.scalar(_scoped(select(t.Upload).where(t.Upload.id == upload_id), t.Upload, scope))

    def upload_parts(self, upload_id: str) -> list[t.UploadPart]:
        with self.session() as s:
            stmt = select(t.UploadPart).where(t.UploadPart.upload_id == upload_id).order_by(t.UploadPart.seq)
            return list(s.scalars(stmt))

    def set_upload_status(self, upload_id: str, frm: str, to: str, **fields) -> bool:
        """Compare-and-set an upload's status: of two racing completes or cancels, one wins."""
        with self.session.begin() as s:
            stmt = update(t.Upload).where(t.Upload.id == upload_id, t.Upload.status == frm).values(status=to, **fields)
            return s.execute(stmt).rowcount == 1

    def expired_uploads(self) -> list[t.Upload]:
        with self.session() as s:
            stmt = select(t.Upload).where(t.Upload.status == "pending", t.Upload.expires_at <= int(time.time()))
            return list(s.scalars(stmt))

    # ---- jobs ----
    def get_job(self, scope: Scope | None, job_id: str) -> t.Job | None:
        params = {"job_id": job_id}
        if scope is None:
            stmt = _JOB
        elif scope.user is None:
            stmt, params["org"] = _JOB_OF_ORG, scope.org
        else:
            stmt, params["org"], params["user"] = _JOB_OF_USER, scope.org, scope.user
        with self.session() as s:
            return s.scalar(stmt, params)

    def list_jobs(self, scope: Scope, after, limit, metadata: dict[str, str] | None, metadata_null: bool):
        with self.session() as s:
            stmt = _scoped(select(t.Job), t.Job, scope)
            if metadata_null:
                stmt = stmt.where(t.Job.metadata_.is_(None))
            if not metadata:
                return _page(s, stmt, t.Job, after, limit)
            rows, _ = _page(s, stmt, t.Job, after, 10**9)
            # JSON containment differs by dialect; metadata holds at most 16 pairs, so filter here.
            rows = [r for r in rows if r.metadata_ and all(r.metadata_.get(k) == v for k, v in metadata.items())]
            return rows[:limit], len(rows) > limit

    # ---- scheduling: leases, the cluster-wide start claim ----
    def claim_leases(self, owner: str, host: str, seconds: float) -> list[t.Job]:
        """Take or renew the lease on every job that needs a driver and is free, expired or already ``owner``'s
        (skipping jobs whose attempt only another host can observe), and return the jobs ``owner`` now drives.
        Rows another replica is claiming right now are skipped, not waited for (SKIP LOCKED on PostgreSQL)."""
        clock = time.time()
        free = t.Job.lease_owner.is_(None) | (t.Job.lease_owner == owner) | (t.Job.lease_expires < clock)
        observable = t.Job.worker_host.is_(None) | (t.Job.worker_host == host)
        with self.session.begin() as s:
            ids = list(s.scalars(select(t.Job.id).where(_NEEDS_DRIVER, free, observable)
                                 .order_by(t.Job.seq).with_for_update(skip_locked=True)))
            if ids:
                s.execute(update(t.Job).where(t.Job.id.in_(ids)).values(lease_owner=owner, lease_expires=clock + seconds))
            return list(s.scalars(select(t.Job).where(_NEEDS_DRIVER, t.Job.lease_owner == owner).order_by(t.Job.seq)))

    def release_leases(self, owner: str) -> None:
        """Hand ``owner``'s jobs over now (a replica shutting down cleanly); another replica claims them next tick."""
        with self.session.begin() as s:
            s.execute(update(t.Job).where(t.Job.lease_owner == owner).values(lease_owner=None, lease_expires=None))

    def claim_start(self, owner: str, seconds: float, limit: int, move: tuple[str, str]) -> t.Job | None:
        """Move one job from ``move``'s first status (queued) to its second (running: the transition table's row,
        `jobs.row("queued", "start")`) for ``owner`` if fewer than ``limit`` attempts run in the whole cluster.

        The count and the claim happen under one cluster-wide lock (a PostgreSQL advisory lock held to the end of
        the transaction; SQLite serves one replica), so two replicas never both take the last free slot. The job
        taken is the oldest queued job of the organization with the fewest attempts running: creation order within
        an organization, and no organization starves behind another's queue."""
        with self.session.begin() as s:
            if s.bind.dialect.name == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _START_LOCK})
            running = dict(s.execute(select(t.Job.organization_id, func.count()).where(_BUSY)
                                     .group_by(t.Job.organization_id)).all())
            if sum(running.values()) >= limit:
                return None
            frm, to = move
            oldest = s.execute(select(t.Job.organization_id, func.min(t.Job.seq)).where(t.Job.status == frm)
                               .group_by(t.Job.organization_id)).all()
            if not oldest:
                return None
            _, seq = min(oldest, key=lambda row: (running.get(row[0], 0), row[1]))
            claimed = s.execute(
                update(t.Job).where(t.Job.seq == seq, t.Job.status == frm)
                .values(status=to, attempt=t.Job.attempt + 1, worker=None, worker_host=None,
                        lease_owner=owner, lease_expires=time.time() + seconds)
            )
            return s.scalar(select(t.Job).where(t.Job.seq == seq)) if claimed.rowcount == 1 else None

    def set_worker(self, job_id: str, attempt: int, handle: dict, host: str | None) -> bool:
        """Record the handle of a just-started attempt, unless the job moved on meanwhile (another replica, finding
        it without a handle after this one's lease lapsed, re-queued it): then the caller must stop the attempt."""
        with self.session.begin() as s:
            result = s.execute(update(t.Job).where(
                t.Job.id == job_id, t.Job.attempt == attempt, t.Job.worker.is_(None),
                t.Job.status.in_(("running", "pausing", "cancelled")),
            ).values(worker=handle, worker_host=host))
            return result.rowcount == 1

    def transition(self, job_id: str, frm: str, to: str, events: list[dict] = (), **fields) -> bool:
        """Compare-and-set the status (and other fields) with the events it causes, in one transaction."""
        with self.session.begin() as s:
            result = s.execute(
                update(t.Job).where(t.Job.id == job_id, t.Job.status == frm).values(status=to, **fields)
            )
            if result.rowcount != 1:
                return False
            for ev in events:
                s.add(_event_row(job_id, ev))
            if to != frm and to in WEBHOOK_STATUSES:
                _enqueue_webhooks(s, job_id, f"fine_tuning.job.{to}")
            return True

    def ingest(self, job_id: str, status: str, start: int, offset: int, events: list[dict],
               checkpoints: list[t.Checkpoint], **fields) -> bool:
        """Record what an attempt reported between bytes `start` and `offset` of its events file, atomically; a
        compare-and-set on `start` makes a second reader of the same bytes (another replica) record nothing."""
        with self.session.begin() as s:
            result = s.execute(
                update(t.Job).where(t.Job.id == job_id, t.Job.status == status, t.Job.events_offset == start)
                .values(events_offset=offset, **fields)
            )
            if result.rowcount != 1:
                return False
            s.add_all([_event_row(job_id, ev) for ev in events] + list(checkpoints))
            return True

    # ---- webhooks ----
    def list_webhook_endpoints(self, org: str | None = None) -> list[t.WebhookEndpoint]:
        with self.session() as s:
            stmt = select(t.WebhookEndpoint).order_by(t.WebhookEndpoint.seq)
            return list(s.scalars(stmt if org is None else stmt.where(t.WebhookEndpoint.organization_id == org)))

    def get_webhook_endpoint(self, org: str, endpoint_id: str) -> t.WebhookEndpoint | None:
        with self.session() as s:
            return s.scalar(select(t.WebhookEndpoint).where(t.WebhookEndpoint.id == endpoint_id,
                                                            t.WebhookEndpoint.organization_id == org))

    def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        """The endpoint and what is still queued for it."""
        with self.session.begin() as s:
            s.execute(delete(t.WebhookDelivery).where(t.WebhookDelivery.endpoint_id == endpoint_id,
                                                      t.WebhookDelivery.status == "pending"))
            s.execute(delete(t.WebhookEndpoint).where(t.WebhookEndpoint.id == endpoint_id))

    def claim_webhook_deliveries(self, at: float, lease: float, limit: int = 20) -> list[tuple]:
        """Pending deliveries that are due, each with its endpoint, claimed until ``at + lease`` by compare-and-set
        on ``next_attempt_at`` (another replica's dispatcher cannot claim the same one meanwhile)."""
        claimed = []
        with self.session() as s:
            due = list(s.execute(
                select(t.WebhookDelivery, t.WebhookEndpoint)
                .join(t.WebhookEndpoint, t.WebhookEndpoint.id == t.WebhookDelivery.endpoint_id)
                .where(t.WebhookDelivery.status == "pending", t.WebhookDelivery.next_attempt_at <= at)
                .order_by(t.WebhookDelivery.next_attempt_at, t.WebhookDelivery.seq).limit(limit)
            ))
        for delivery, endpoint in due:
            with self.session.begin() as s:
                won = s.execute(update(t.WebhookDelivery).where(
                    t.WebhookDelivery.id == delivery.id, t.WebhookDelivery.status == "pending",
                    t.WebhookDelivery.next_attempt_at == delivery.next_attempt_at,
                ).values(next_attempt_at=at + lease)).rowcount == 1
            if won:
                claimed.append((delivery, endpoint))
        return claimed

    def record_webhook_attempt(self, delivery_id: str, status: str, next_attempt_at: float, error: str | None) -> None:
        with self.session.begin() as s:
            s.execute(update(t.WebhookDelivery).where(t.WebhookDelivery.id == delivery_id).values(
                status=status, attempts=t.WebhookDelivery.attempts + 1, next_attempt_at=next_attempt_at,
                last_error=error, delivered_at=now() if status == "delivered" else None))

    def webhook_deliveries(self, endpoint_id: str) -> list[t.WebhookDelivery]:
        with self.session() as s:
            stmt = select(t.WebhookDelivery).where(t.WebhookDelivery.endpoint_id == endpoint_id)
            return list(s.scalars(stmt.order_by(t.WebhookDelivery.seq)))

    # ---- events and checkpoints ----
    def add_job(self, job: t.Job, messages: list[str]) -> None:
        """A new job and its first events, in one transaction (a crash in between leaves neither)."""
        with self.session.begin() as s:
            s.add(job)
            s.flush()
            s.add_all([_event_row(job.id, {"message": m}) for m in messages])

    def last_metrics_step(self, job_id: str) -> int:
        """The step of the job's newest metrics event (0 when it has none)."""
        with self.session() as s:
            data = s.scalar(select(t.Event.data).where(t.Event.job_id == job_id, t.Event.type == "metrics")
                            .order_by(t.Event.seq.desc()).limit(1))
            return int(data["step"]) if data else 0

    def list_events(self, job_id: str, after, limit):
        with self.session() as s:
            return _page(s, select(t.Event).where(t.Event.job_id == job_id), t.Event, after, limit)

    def event_seq(self, job_id: str, event_id: str) -> int:
        """The position of one of the job's events (0, the start, for an id it does not have)."""
        with self.session() as s:
            return s.scalar(select(t.Event.seq).where(t.Event.job_id == job_id, t.Event.id == event_id)) or 0

    def events_after(self, job_id: str, seq: int, limit: int = 1000) -> list[t.Event]:
        """The job's events after position ``seq``, oldest first."""
        with self.session() as s:
            stmt = select(t.Event).where(t.Event.job_id == job_id, t.Event.seq > seq).order_by(t.Event.seq)
            return list(s.scalars(stmt.limit(limit)))

    def job_status(self, job_id: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(t.Job.status).where(t.Job.id == job_id))

    def throughput_samples(self, base: str, limit: int = 5) -> list[dict]:
        """The newest measured-throughput records of jobs trained on ``base`` (or on a fine-tune of it)."""
        with self.session() as s:
            stmt = (
                select(t.Event.data).join(t.Job, t.Job.id == t.Event.job_id)
                .where((t.Job.model == base) | t.Job.model.startswith(f"ft:{base}:", autoescape=True))
                .where(t.Event.message.startswith("Measured throughput:"))
                .order_by(t.Event.seq.desc()).limit(limit)
            )
            return [row["throughput"] for row in s.scalars(stmt) if row and "throughput" in row]

    def list_checkpoints(self, job_id: str, after, limit):
        with self.session() as s:
            return _page(s, select(t.Checkpoint).where(t.Checkpoint.job_id == job_id), t.Checkpoint, after, limit)

    def checkpoints_of(self, job_id: str) -> list[t.Checkpoint]:
        with self.session() as s:
            stmt = select(t.Checkpoint).where(t.Checkpoint.job_id == job_id).order_by(t.Checkpoint.seq)
            return list(s.scalars(stmt))

    def delete_checkpoints(self, ids: list[str]) -> None:
        """Delete checkpoint rows and every permission that shares them."""
        with self.session.begin() as s:
            for row in s.scalars(select(t.Checkpoint).where(t.Checkpoint.id.in_(ids))):
                s.execute(delete(t.Permission).where(t.Permission.model_name == row.model_name,
                                                     t.Permission.organization_id == row.organization_id))
                s.delete(row)

    def org_models(self, org: str) -> list[t.Checkpoint]:
        with self.session() as s:
            stmt = select(t.Checkpoint).where(t.Checkpoint.organization_id == org).order_by(t.Checkpoint.seq)
            return list(s.scalars(stmt))

    def job_specs(self) -> list[tuple[str, str, dict]]:
        """(id, status, spec) of every job with a stored spec, of every organization: which weights they need."""
        with self.session() as s:
            stmt = select(t.Job.id, t.Job.status, t.Job.spec).where(t.Job.spec.is_not(None))
            return [tuple(row) for row in s.execute(stmt)]

    def checkpoint_paths(self, paths: list[str]) -> set[str]:
        """Those of ``paths`` that a checkpoint row (a listed model) still points at."""
        with self.session() as s:
            return set(s.scalars(select(t.Checkpoint.path).where(t.Checkpoint.path.in_(paths))))

    def has_checkpoints(self, job_id: str) -> bool:
        with self.session() as s:
            return s.scalar(select(t.Checkpoint.id).where(t.Checkpoint.job_id == job_id).limit(1)) is not None

    def model_by_name(self, org: str, name: str) -> t.Checkpoint | None:
        with self.session() as s:
            stmt = select(t.Checkpoint).where(t.Checkpoint.organization_id == org, t.Checkpoint.model_name == name)
            return s.scalar(stmt)

    # ---- checkpoint permissions ----
    def add_permissions(self, rows: list[t.Permission]) -> None:
        with self.session.begin() as s:
            s.add_all(rows)

    def list_permissions(self, org: str, model: str, project_id: str | None, after, limit, newest_first: bool):
        with self.session() as s:
            stmt = select(t.Permission).where(t.Permission.organization_id == org, t.Permission.model_name == model)
            if project_id is not None:
                stmt = stmt.where(t.Permission.project_id == project_id)
            return _page(s, stmt, t.Permission, after, limit, newest_first)

    def delete_permission(self, org: str, model: str, permission_id: str) -> bool:
        with self.session.begin() as s:
            row = s.scalar(select(t.Permission).where(
                t.Permission.id == permission_id, t.Permission.organization_id == org,
                t.Permission.model_name == model))
            if row is None:
                return False
            s.delete(row)
            return True

    def shared_model(self, grantee: str, name: str) -> t.Checkpoint | None:
        """The model ``name`` if its owner shared it with organization ``grantee``."""
        with self.session() as s:
            shared = select(t.Permission.organization_id).where(
                t.Permission.model_name == name, t.Permission.project_id == grantee)
            stmt = select(t.Checkpoint).where(t.Checkpoint.model_name == name,
                                              t.Checkpoint.organization_id.in_(shared))
            return s.scalar(stmt)

    def models_shared_with(self, grantee: str) -> list[t.Checkpoint]:
        with self.session() as s:
            names = select(t.Permission.model_name).where(t.Permission.project_id == grantee)
            owners = select(t.Permission.organization_id).where(t.Permission.project_id == grantee)
            stmt = select(t.Checkpoint).where(t.Checkpoint.model_name.in_(names),
                                              t.Checkpoint.organization_id.in_(owners)).order_by(t.Checkpoint.seq)
            return list(s.scalars(stmt))


# A job reaching one of these statuses sends the webhook fine_tuning.job.<status> to its organization's endpoints.
WEBHOOK_STATUSES = {"succeeded", "failed", "cancelled", "paused"}


def _enqueue_webhooks(s: Session, job_id: str, type_: str) -> None:
    """Queue the webhook in the transaction of the status change: both are recorded, or neither."""
    org = s.scalar(select(t.Job.organization_id).where(t.Job.id == job_id))
    for endpoint in s.scalars(select(t.WebhookEndpoint).where(t.WebhookEndpoint.organization_id == org)):
        if type_ in endpoint.event_types:
            s.add(t.WebhookDelivery(id=new_id("evt"), endpoint_id=endpoint.id, type=type_, job_id=job_id,
                                    created_at=now(), status="pending", attempts=0, next_attempt_at=0.0))


def _event_row(job_id: str, ev: dict) -> t.Event:
    return t.Event(
        id=new_id("ftevent"),
        job_id=job_id,
        created_at=int(ev.get("ts") or now()),
        level=ev.get("level", "info"),
        message=ev["message"],
        type=ev.get("type", "message"),
        data=ev.get("data") if ev.get("data") is not None else {},
    )
