"""The scheduler changes a job's status only along rows of the one transition table: a static check of its source,
and every status write recorded while a real scheduler (in this process, on a real database, with real training
attempts of the tiny model) validates, starts, pauses, resumes, cancels, fails and recovers jobs."""

from __future__ import annotations

import ast
import json
import os
import signal
import time
from pathlib import Path

from openft import jobs
from openft import protocol as p
from openft import tables as t
from openft.blobs import Blobs
from openft.config import Settings
from openft.executors import LocalExecutor
from openft.ids import new_id, now
from openft.scheduler import Scheduler
from openft.store import Scope, Store, migrate
from tests.conftest import _kill_trainers
from tests.helpers import chat_rows, jsonl

SCOPE = Scope(org="org_a")
ROWS = {(frm, to) for (frm, _action), to in jobs.TRANSITIONS.items()}
SOURCE = Path(jobs.__file__).with_name("scheduler.py")


def test_the_scheduler_source_writes_statuses_only_through_rows_of_the_table():
    tree = ast.parse(SOURCE.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert [c.lineno for c in calls if c.func.attr == "transition"] == []  # no status pair written by hand
    moves = [c for c in calls if c.func.attr == "move"]
    actions = {action for (_frm, action) in jobs.TRANSITIONS}
    assert len(moves) >= 9
    for call in moves:
        frm, action = call.args[2], call.args[3]
        assert ast.unparse(frm) == "job.status", f"line {call.lineno}: the move starts from the status it read"
        assert isinstance(action, ast.Constant) and action.value in actions, f"line {call.lineno}"
    claims = [c for c in calls if c.func.attr == "claim_start"]
    assert [ast.unparse(c.args[3]) for c in claims] == ["jobs.row('queued', 'start')"]


class RecordingStore(Store):
    """The real store, noting every status write that took effect as (from, to)."""

    moves: list[tuple[str, str]]

    def transition(self, job_id, frm, to, events=(), **fields):
        done = super().transition(job_id, frm, to, events, **fields)
        if done:
            self.moves.append((frm, to))
        return done

    def claim_start(self, owner, seconds, limit, move):
        job = super().claim_start(owner, seconds, limit, move)
        if job is not None:
            self.moves.append(move)
        return job


def _file(store: Store, blobs: Blobs, data: bytes) -> str:
    file_id = new_id("file")
    blobs.put(file_id, data)
    store.add(t.File(id=file_id, organization_id=SCOPE.org, bytes=len(data), created_at=now(), filename="t.jsonl",
                     purpose="fine-tune", status="processed", blob_key=file_id))
    return file_id


def _wait(store: Store, job_id: str, statuses: set[str], timeout: float = 120) -> t.Job:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = store.get_job(None, job_id)
        if job.status in statuses:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{job_id} is {job.status}, not {statuses}")


def _wait_for_step(settings: Settings, job_id: str, timeout: float = 120) -> None:
    """Until the attempt has reported a training step (a pause or kill then lands mid-training)."""
    events = settings.jobs_dir / job_id / "events.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if events.exists() and '"kind":"metrics"' in events.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{job_id} reported no step")


def test_every_status_write_of_a_real_scheduler_is_a_row_of_the_table(database_url, tiny_model, tmp_path):
    migrate(database_url)
    settings = Settings(data_dir=tmp_path, database_url=database_url, models=json.dumps({"tiny": str(tiny_model)}),
                        scheduler_interval=0.05, max_concurrent_jobs=2, cancel_grace_seconds=2)
    store, blobs = RecordingStore(database_url), Blobs(settings.resolved_blob_url())
    store.moves = []
    good, bad = _file(store, blobs, jsonl(chat_rows(16))), _file(store, blobs, b'{"not": "chat"}\n' * 12)
    hp = {"n_epochs": 2, "batch_size": 1}

    def create(file_id: str) -> str:
        req = p.CreateJobRequest(model="tiny", training_file=file_id, seed=1,
                                 method={"type": "supervised", "supervised": {"hyperparameters": hp}})
        return jobs.create(store, settings, SCOPE, req).id

    scheduler = Scheduler(store, blobs, settings, LocalExecutor())
    scheduler.start()
    try:
        plain, invalid, paused, crashed = create(good), create(bad), create(good), create(good)
        _wait(store, invalid, {"failed"})
        _wait(store, paused, {"running"})
        _wait_for_step(settings, paused)
        jobs.act(store, SCOPE, paused, "pause")
        _wait(store, paused, {"paused"})
        jobs.act(store, SCOPE, paused, "resume")
        _wait(store, crashed, {"running"})
        _wait_for_step(settings, crashed)
        _wait_until(lambda: store.get_job(None, crashed).worker is not None)
        os.kill(store.get_job(None, crashed).worker["pid"], signal.SIGKILL)
        _wait(store, crashed, {"queued", "running"})
        cancelled = create(good)
        _wait(store, cancelled, {"running"})
        jobs.act(store, SCOPE, cancelled, "cancel")
        for job_id in (plain, paused, crashed):
            assert _wait(store, job_id, {"succeeded", "failed"}, timeout=180).status == "succeeded"
        _wait_until(lambda: store.get_job(None, cancelled).cancel_requested_at is None)
    finally:
        scheduler.stop()
        _kill_trainers(tmp_path)
    assert [m for m in store.moves if m not in ROWS] == []
    # the runs above took the scheduler's main paths, so the check was not vacuous
    expected = {("validating_files", "queued"), ("validating_files", "failed"), ("queued", "running"),
                ("running", "succeeded"), ("pausing", "paused"), ("running", "queued"), ("cancelled", "cancelled")}
    assert expected <= set(store.moves)
    store.engine.dispose()


def _wait_until(condition, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.05)
