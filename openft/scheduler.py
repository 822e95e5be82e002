"""The scheduler: validates files, starts queued jobs on an executor, ingests what attempts report, applies pause
and cancel, and recovers attempts that died. One `tick()` does all of it, top to bottom; the API process runs ticks
in a background thread.

Several replicas may share one database: each tick first takes or renews a lease on the live jobs it can drive
(`Store.claim_leases`), and touches only those; a replica that stops renewing (it died) loses its jobs to another
after `lease_seconds`. Starting an attempt is one atomic claim under the cluster-wide limit (`Store.claim_start`);
every status write is a row of the transition table (`jobs.move`) and every write a compare-and-set (status,
events offset), so even two replicas acting on one job at once never
record a transition or an event twice. A local attempt can be observed only from its own host, so its job is
leased only by replicas on that host.

Invariant: a job is `running` or `pausing` only while an attempt runs for it. An attempt that exits without
result.json (kill -9, OOM, a service restart that lost it) is re-queued from its last resumable checkpoint, at most
`max_attempts` times, each with an event; after that the job fails with a clear error. The resumed attempt re-runs
the steps after that checkpoint: ingest reports each step once (the first report stands) and lists each checkpoint
once. An attempt started just before the service died, whose handle was never stored, is adopted (`adopt`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from openft import durable, files, integrations, jobdir, jobs, models, uploads
from openft import tables as t
from openft.spec import AttemptSpec, Lineage, Lora, TrainingSpec, attempt_json
from openft.blobs import Blobs
from openft.errors import StorageFull
from openft.config import Settings
from openft.graders.worker import endpoint_for as grader_endpoint
from openft.ids import checkpoint_model_name, fine_tuned_model_name, new_id, now, short_id
from openft.store import Store

log = logging.getLogger("openft.scheduler")
KEEP_CHECKPOINTS = 3
# What an executor's poll may say of an attempt that ended without a result, beyond "exited".
_WHY = {"lost": "lost its node", "unplaced": "found no node with the resources it asks for in time"}


class Scheduler:
    def __init__(self, store: Store, blobs: Blobs, settings: Settings, executor):
        self.store, self.blobs, self.settings, self.executor = store, blobs, settings, executor
        self.replica = settings.resolved_replica_id()
        self.checkpoints = durable.open_store(settings.checkpoint_store())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the loop --------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.blobs.sweep_partials()
        files.sweep_orphans(self.store, self.blobs)
        uploads.sweep_leftovers(self.store, self.blobs)
        self._thread = threading.Thread(target=self._run, name="openft-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
            self.store.release_leases(self.replica)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bad tick must not stop the scheduler; the next one retries
                log.exception("scheduler tick failed")
            self._stop.wait(self.settings.scheduler_interval)

    def tick(self) -> None:
        for job in self.store.claim_leases(self.replica, self.executor.host, self.settings.lease_seconds):
            if job.status == "validating_files":
                self.validate(job)
            else:
                self.reconcile(job)
        self.start_queued()
        files.sweep_expired(self.store, self.blobs)
        uploads.sweep_expired(self.store, self.blobs)

    # ---- validating_files → queued | failed ------------------------------------------------------------------

    def validate(self, job: t.Job) -> None:
        kind = job.method["type"]
        report, _ = files.validate(self.store, self.blobs, job.training_file, "training_file",
                                   self.settings.min_examples, kind)
        if report.error is None and job.validation_file:
            checked, _ = files.validate(self.store, self.blobs, job.validation_file, "validation_file", 1, kind)
            report = checked if checked.error else report
        if report.error:
            event = {"message": report.error["message"], "level": "error"}
            jobs.move(self.store, job.id, job.status, "invalid", [event], error=report.error, finished_at=now())
            return
        hp = jobs.resolve_hyperparameters(job.method[kind]["hyperparameters"], report.n_examples, kind)
        method = {**job.method, kind: {**job.method[kind], "hyperparameters": hp}}
        steps = jobs.total_steps(hp, report.n_examples)
        spec = self._freeze(job, method)
        lr = spec.hyperparameters["learning_rate"]
        listed = ", ".join(f"{name}={value}" for name, value in hp.items())
        events = [
            {"message": f"Files validated: {report.n_examples} training examples"},
            {
                "message": f"Hyperparameters: {listed} (learning rate {lr:g}, {steps} steps)",
                "data": {**hp, "learning_rate": lr, "total_steps": steps},
            },
            {"message": "Files validated, moving job to queued state"},
        ]
        jobs.move(
            self.store, job.id, job.status, "validated", events,
            validated=True, n_examples=report.n_examples, hyperparameters=jobs.top_hyperparameters(method),
            method=method, spec=spec.to_json(),
        )

    def _freeze(self, job: t.Job, method: dict) -> TrainingSpec:
        """The job's training specification from the current settings: done once, when its files are validated."""
        kind = method["type"]
        hp = dict(method[kind]["hyperparameters"])
        hp["learning_rate"] = self.settings.base_learning_rate * hp["learning_rate_multiplier"]
        frozen = (job.spec or {}).get("lineage")
        if frozen:
            lineage = Lineage.from_json(frozen)
        else:  # a job created before lineages were frozen at creation
            lineage = models.lineage(models.resolve(self.store, self.settings, job.organization_id, job.model))
        s = self.settings
        return TrainingSpec(
            job_id=job.id, method=kind, base_model=job.model, lineage=lineage, hyperparameters=hp, seed=job.seed,
            lora=None if s.full_fine_tuning else Lora(r=s.lora_r, alpha=s.lora_alpha, dropout=s.lora_dropout),
            max_length=s.max_length, grader=method[kind].get("grader") if kind == "reinforcement" else None,
        )

    # ---- queued → running ------------------------------------------------------------------------------------

    def start_queued(self) -> None:
        while job := self.store.claim_start(self.replica, self.settings.lease_seconds,
                                            self.settings.max_concurrent_jobs, jobs.row("queued", "start")):
            try:
                handle = self.executor.start(self._prepare(job, job.attempt), job.attempt)
            except Exception as exc:
                log.exception("could not start %s", job.id)
                error = {"code": "server_error", "param": None, "message": f"Could not start training: {exc}"}
                jobs.move(self.store, job.id, job.status, "fail", [{"message": error["message"], "level": "error"}],
                          error=error, finished_at=now())
                continue
            if not self.store.set_worker(job.id, job.attempt, handle, self.executor.host):
                log.warning("%s moved on while attempt %d started; stopping that attempt", job.id, job.attempt)
                self.executor.kill(handle)

    def _prepare(self, job: t.Job, attempt: int) -> Path:
        """Write the job directory for one attempt: data files (once), spec.json (the job's frozen spec plus this
        attempt's paths, resume point and number), no stale control/result."""
        job_dir = self.settings.jobs_dir / job.id
        job_dir.mkdir(parents=True, exist_ok=True)
        for name in (jobdir.RESULT, jobdir.CONTROL):
            (job_dir / name).unlink(missing_ok=True)
        self._restore_events(job, job_dir)
        wanted = {"training_file": job.training_file, "validation_file": job.validation_file}
        paths = {}
        for param, file_id in wanted.items():
            if file_id:
                dest = job_dir / f"{param}.jsonl"
                if not dest.exists():
                    self.blobs.local_copy(self.store.file_blob_key(file_id), str(dest))
                paths[param] = str(dest)
        if not (job.spec or {}).get("hyperparameters"):  # validated before specs were frozen: freeze it now
            job.spec = self._freeze(job, job.method).to_json()
            jobs.move(self.store, job.id, job.status, "spec_frozen", spec=job.spec)
        frozen = TrainingSpec.from_json(job.spec)
        endpoint = None
        if frozen.method == "reinforcement":  # where graders sample is the service's, not the job's, concern
            endpoint = grader_endpoint(self.settings, job.organization_id, job.id)
        attempt_spec = AttemptSpec(training_file=paths["training_file"], validation_file=paths.get("validation_file"),
                                   resume_from=job.resume_from, attempt=attempt, grader_endpoint=endpoint,
                                   wandb=integrations.wandb_spec(job, self.settings),
                                   checkpoint_store=self.settings.checkpoint_store())
        spec = attempt_json(frozen, attempt_spec)
        jobdir.write_json_atomic(job_dir / jobdir.SPEC, spec)
        return job_dir

    def _restore_events(self, job: t.Job, job_dir: Path) -> None:
        """A job folder is scratch: one that lost its events file (a wiped disk, another host) gets back the metrics
        records the database holds, so that the attempt's results.csv covers every attempt's steps."""
        path = job_dir / jobdir.EVENTS
        if (path.stat().st_size if path.exists() else 0) >= job.events_offset:
            return
        events = self.store.events_after(job.id, 0, limit=1 << 30)
        lines = [json.dumps({"kind": "metrics", "message": e.message, "data": e.data, "ts": e.created_at},
                            separators=(",", ":")) + "\n" for e in events if e.type == "metrics"]
        data = "".join(lines).encode()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.store.ingest(job.id, job.status, job.events_offset, len(data), [], [])

    # ---- running / pausing / cancelled attempts --------------------------------------------------------------

    def reconcile(self, job: t.Job) -> None:
        job_dir = self.settings.jobs_dir / job.id
        if job.status == "cancelled":
            return self._stop_cancelled(job, job_dir)
        if job.worker is None:  # started, but the handle was never recorded (the service died in between)
            handle = self.executor.adopt(job_dir, job.attempt)
            if handle is None or not self.store.set_worker(job.id, job.attempt, handle, self.executor.host):
                return self._recover(job, job_dir, "the service stopped while starting it")
            job = self.store.get_job(None, job.id)
        if job.status == "pausing" and jobdir.read_control(job_dir) != "pause":
            self.executor.signal(job_dir, "pause")
        state = self.executor.poll(job.worker)
        alive = state == "running"
        self.ingest(job, job_dir)
        if alive:
            return
        job = self.store.get_job(None, job.id)
        self.ingest(job, job_dir)  # whatever it wrote between the poll and its exit
        job = self.store.get_job(None, job.id)
        result = jobdir.read_json(job_dir / jobdir.RESULT)
        if result is None:
            self._recover(job, job_dir, _WHY.get(state, "exited without a result"))
        elif result["status"] == "succeeded":
            self._succeed(job, job_dir, result)
        elif result["status"] == "paused":
            step = int(Path(result["checkpoint"]).name.rsplit("-", 1)[-1])
            at = next((c.path for c in self.store.checkpoints_of(job.id)
                       if c.reason == "pause" and c.step_number == step), result["checkpoint"])
            jobs.move(self.store, job.id, job.status, "paused", [{"message": f"Job paused at step {step}"}],
                      resume_from=at, worker=None, estimated_finish=None)
        else:
            error = result.get("error") or {"code": "server_error", "param": None, "message": "Training failed"}
            jobs.move(self.store, job.id, job.status, "fail", [{"message": error["message"], "level": "error"}],
                      error=error, finished_at=now(), worker=None, estimated_finish=None)

    def _stop_cancelled(self, job: t.Job, job_dir: Path) -> None:
        if job.worker and self.executor.poll(job.worker) == "running":
            self.executor.signal(job_dir, "cancel")
            if time.time() - (job.cancel_requested_at or 0) > self.settings.cancel_grace_seconds:
                self.executor.kill(job.worker)
            return
        # Cancelled jobs keep no checkpoints, nor need the weights they were trained on.
        self.store.delete_checkpoints([c.id for c in self.store.checkpoints_of(job.id)])
        self.checkpoints.remove_prefix(durable.job_key(job.id, jobdir.CHECKPOINTS))
        shutil.rmtree(job_dir / jobdir.CHECKPOINTS, ignore_errors=True)
        models.release(self.store, self.settings, job)
        jobs.move(self.store, job.id, job.status, "stopped", worker=None, cancel_requested_at=None)

    def _recover(self, job: t.Job, job_dir: Path, why: str) -> None:
        crashes = job.crashes + 1
        if crashes >= self.settings.max_attempts:
            message = f"Training failed: attempt {job.attempt} {why}, and {crashes} attempts have failed this way."
            tail = _log_tail(job_dir / f"attempt-{job.attempt}.log")
            error = {"code": "server_error", "param": None, "message": message + (f" Last output: {tail}" if tail else "")}
            jobs.move(self.store, job.id, job.status, "fail", [{"message": message, "level": "error"}],
                      error=error, finished_at=now(), worker=None, crashes=crashes)
            return
        resume = self._last_resumable(job)
        where = f"from the checkpoint at step {resume.step_number}" if resume else "from the beginning"
        then = "paused there (a pause was requested)" if job.status == "pausing" else "re-queued"
        message = (
            f"Training attempt {job.attempt} {why}; {then}, resuming {where} "
            f"(recovery {crashes} of {self.settings.max_attempts - 1})"
        )
        jobs.move(self.store, job.id, job.status, "crashed", [{"message": message, "level": "warn"}],
                  worker=None, crashes=crashes, resume_from=resume.path if resume else None, estimated_finish=None)

    def _last_resumable(self, job: t.Job) -> t.Checkpoint | None:
        """The newest checkpoint that carries the full trainer state (epoch or pause, never the final adapter) and
        is whole in the store."""
        done = [c for c in self.store.checkpoints_of(job.id) if c.reason in ("epoch", "eval", "pause")]
        done = [c for c in done if "trainer_state.json" in self.checkpoints.files(c.path)]
        return max(done, key=lambda c: c.step_number, default=None)

    def _succeed(self, job: t.Job, job_dir: Path, result: dict) -> None:
        final = next((c for c in self.store.checkpoints_of(job.id) if c.reason == "final"), None)
        if final is None:
            return self._recover(job, job_dir, "reported success without a final checkpoint")
        events = [
            {"message": f"New fine-tuned model created: {final.model_name}"},
            {"message": "The job has successfully completed"},
        ]
        try:
            results_file = self._store_results(job, job_dir / result.get("results_csv", jobdir.RESULTS_CSV))
        except StorageFull as exc:  # the model is whole; a table of metrics is not worth failing the job for
            results_file = None
            events.insert(0, {"message": f"The step metrics file was not stored: {exc.message}", "level": "warn"})
        jobs.move(
            self.store, job.id, job.status, "succeed", events,
            fine_tuned_model=final.model_name, trained_tokens=result.get("trained_tokens"), finished_at=now(),
            result_files=[results_file] if results_file else [], worker=None, estimated_finish=None,
        )

    def _store_results(self, job: t.Job, csv_path: Path) -> str | None:
        if not csv_path.exists():
            return None
        data = csv_path.read_bytes()
        file_id = new_id("file")
        self.blobs.put(file_id, data)
        self.store.add(t.File(
            id=file_id, organization_id=job.organization_id, user=job.user, bytes=len(data), created_at=now(),
            filename="step_metrics.csv", purpose="fine-tune-results", status="processed", blob_key=file_id,
        ))
        return file_id

    # ---- ingest ----------------------------------------------------------------------------------------------

    def ingest(self, job: t.Job, job_dir: Path) -> None:
        """Copy new records of events.jsonl into events, checkpoints and estimated_finish, in one transaction."""
        records, offset = jobdir.read_records(job_dir, job.events_offset)
        if not records:
            return
        last_step, listed = self._reported(job, records)
        events, checkpoints, fields = [], [], {}
        for r in records:
            if r["kind"] in ("message", "throughput"):
                events.append({"message": r["message"], "level": r.get("level", "info"), "data": r.get("data"), "ts": r["ts"]})
            elif r["kind"] == "metrics":
                if r["data"]["step"] <= last_step:  # a step re-run after a crash: reported once, by its first run
                    continue
                last_step = r["data"]["step"]
                events.append({"message": r["message"], "type": "metrics", "data": r["data"], "ts": r["ts"]})
            elif r["kind"] == "checkpoint":
                if _location(job_dir, r) in listed:  # rewritten by a re-run: the listed row stays the one
                    continue
                row = self._checkpoint_row(job, job_dir, r)
                listed.add(row.path)
                checkpoints.append(row)
                events.append({"message": f"Checkpoint created at step {row.step_number} with Snapshot ID: {row.model_name}", "ts": r["ts"]})
            elif r["kind"] == "progress":
                remaining = (r["total_steps"] - r["step"]) * r["seconds_per_step"]
                fields["estimated_finish"] = int(r["ts"] + remaining)
        if self.store.ingest(job.id, job.status, job.events_offset, offset, events, checkpoints, **fields):
            if checkpoints:
                self._rotate(job, job_dir)

    def _reported(self, job: t.Job, records: list[dict]) -> tuple[int, set[str]]:
        """What earlier attempts already recorded: the last step with metrics (0 if none), and the paths of the
        listed checkpoints. An attempt resumed after a crash re-runs the steps after its checkpoint; exact resume
        makes them the same steps, so each is reported once and every checkpoint listed once."""
        kinds = {r["kind"] for r in records}
        last = self.store.last_metrics_step(job.id) if "metrics" in kinds else 0
        listed = {c.path for c in self.store.checkpoints_of(job.id)} if "checkpoint" in kinds else set()
        return last, listed

    def _checkpoint_row(self, job: t.Job, job_dir: Path, r: dict) -> t.Checkpoint:
        base = TrainingSpec.from_json(job.spec).lineage.root_model if (job.spec or {}).get("hyperparameters") else \
            models.resolve(self.store, self.settings, job.organization_id, job.model).base
        if r["reason"] == "final":
            name = fine_tuned_model_name(base, job.organization_id, job.suffix, short_id())
        else:
            name = checkpoint_model_name(base, job.organization_id, job.suffix, r["step"])
        metrics = {"step": float(r["step"]), **(r.get("metrics") or {})}
        return t.Checkpoint(
            id=new_id("ftckpt"), job_id=job.id, organization_id=job.organization_id, created_at=int(r["ts"]),
            model_name=name, step_number=r["step"], metrics=metrics, reason=r["reason"],
            path=_location(job_dir, r),
        )

    def _rotate(self, job: t.Job, job_dir: Path) -> None:
        """Keep the checkpoints of the last 3 epochs, as OpenAI does, and of reinforcement jobs the 3 validation
        checkpoints with the best full_valid_mean_reward (pause checkpoints, the newest checkpoint, and the one the
        job resumes from are kept too: a crashed attempt restarts from the newest)."""
        rows = self.store.checkpoints_of(job.id)
        epochs = [c for c in rows if c.reason == "epoch"]
        evals = sorted((c for c in rows if c.reason == "eval"),
                       key=lambda c: (c.metrics.get("full_valid_mean_reward") or 0.0, c.step_number), reverse=True)
        old = epochs[:-KEEP_CHECKPOINTS] + evals[KEEP_CHECKPOINTS:]
        keep = {_where(job_dir, job.resume_from) if job.resume_from else None}
        if rows:
            keep.add(max(rows, key=lambda c: c.step_number).path)
        old = [c for c in old if c.path not in keep]
        self.store.delete_checkpoints([c.id for c in old])
        for c in old:
            self.checkpoints.remove(c.path, self.settings.jobs_dir)
            models.remove_exports(self.settings, c.model_name)


def _location(job_dir: Path, record: dict) -> str:
    """Where a checkpoint record's checkpoint is kept: the store location its trainer published it to, or its folder."""
    return record.get("location") or str(job_dir / record["path"])


def _where(job_dir: Path, resume_from: str) -> str:
    """A job's ``resume_from`` as a checkpoint row's path: a location, or (jobs paused before checkpoints were
    published) a folder relative to the job's folder."""
    return resume_from if "://" in resume_from or os.path.isabs(resume_from) else str(job_dir / resume_from)


def _log_tail(path: Path, limit: int = 500) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1][-limit:] if lines else ""
