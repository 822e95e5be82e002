"""The whole lifecycle on the tiny model through the official SDKs, under both prefixes: upload → create → events →
pause → paused with a checkpoint → resume → succeeded; every job object validates against the seed's schema."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.conftest import sqlite_only
from tests.helpers import all_events, chat_rows, upload, wait_for, wait_for_step


SEED_COPY = Path(__file__).with_name("fine_tuning_job.schema.yaml")
ROOT = Path(__file__).resolve().parents[1]


def job_schema() -> dict:
    """The seed's FineTuningJob schema, its status enum extended with pausing and paused."""
    components = yaml.safe_load(SEED_COPY.read_text())
    components["JobStatus"]["enum"] += ["pausing", "paused"]
    schema = dict(components["FineTuningJob"])
    schema["$defs"] = components
    return json_refs_to_defs(schema)


def json_refs_to_defs(node):
    if isinstance(node, dict):
        return {k: ("#/$defs/" + v.rsplit("/", 1)[1] if k == "$ref" else json_refs_to_defs(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [json_refs_to_defs(v) for v in node]
    return node


SCHEMA = job_schema()


def assert_valid_job(job) -> None:
    jsonschema.validate(job.model_dump(mode="json") if hasattr(job, "model_dump") else job, SCHEMA)


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1/llm"])
def test_upload_create_pause_resume_succeed_through_the_openai_sdk(server, prefix):
    client = server.client(prefix)
    train, valid = upload(client, chat_rows(24)), upload(client, chat_rows(6, offset=100), "valid.jsonl")
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=train, validation_file=valid, suffix="life", seed=7, metadata={"run": prefix},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1}}},
    )
    assert_valid_job(job)
    assert job.id.startswith("ftjob_") and re.fullmatch(r"ftjob_[0-9a-f]{32}", job.id)
    assert job.status == "validating_files" and job.seed == 7 and job.metadata == {"run": prefix}

    wait_for(client, job.id, "running")
    wait_for_step(client, job.id, 3)
    pausing = client.fine_tuning.jobs.pause(job.id)
    assert_valid_job(pausing)
    assert pausing.status in ("pausing", "paused")
    paused = wait_for(client, job.id, "paused")
    assert_valid_job(paused)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number >= 3
    assert checkpoints[0].fine_tuned_model_checkpoint.endswith(f":ckpt-step-{checkpoints[0].step_number}")
    assert paused.estimated_finish is None

    resumed = client.fine_tuning.jobs.resume(job.id)
    assert_valid_job(resumed)
    assert resumed.status == "queued"
    done = wait_for(client, job.id, "succeeded")
    assert_valid_job(done)
    assert done.fine_tuned_model.startswith("ft:tiny:org-local:life:") and done.trained_tokens > 0
    assert done.hyperparameters.n_epochs == 3 and done.hyperparameters.batch_size == 1
    assert done.finished_at and done.error is None

    messages = [e.message for e in all_events(client, job.id)]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert messages[-2:] == [f"New fine-tuned model created: {done.fine_tuned_model}", "The job has successfully completed"]
    for wanted in ("Files validated, moving job to queued state", "Fine-tuning job started", "Job paused at step"):
        assert any(m.startswith(wanted) for m in messages), wanted
    metrics = [e for e in all_events(client, job.id) if e.type == "metrics"]
    assert {m.data["step"] for m in metrics} == set(range(1, 73))
    assert all(m.data["total_steps"] == 72 and "valid_loss" in m.data for m in metrics)

    final = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
    assert final.fine_tuned_model_checkpoint == done.fine_tuned_model and final.step_number == 72
    models = {m.id for m in client.models.list()}
    assert done.fine_tuned_model in models and "tiny" in models

    rows = list(csv.reader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 73))
    assert client.files.retrieve(done.result_files[0]).purpose == "fine-tune-results"
    for listed in client.fine_tuning.jobs.list():
        assert_valid_job(listed)


def test_the_seeds_own_pause_call_through_the_mka1_sdk_returns_a_job_it_parses(server):
    from meetkai_mka1 import SDK

    client = server.client("/api/v1/llm")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(12)),
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    wait_for(client, job.id, "running")
    with SDK(bearer_auth="unused", server_url=server.url) as sdk:
        res = sdk.llm.fine_tuning.pause(fine_tuning_job_id=job.id)
        assert res.id == job.id and res.status in ("pausing", "paused")
        assert res.object == "fine_tuning.job" and res.organization_id == "org_local"
    wait_for(client, job.id, "paused")
    with SDK(bearer_auth="unused", server_url=server.url) as sdk:
        assert sdk.llm.fine_tuning.retrieve(fine_tuning_job_id=job.id).status == "paused"
        assert sdk.llm.fine_tuning.cancel(fine_tuning_job_id=job.id).status == "cancelled"
    assert_no_checkpoints_soon(client, server.data_dir / "jobs" / job.id / "checkpoints", job.id)


def test_cancel_stops_a_running_job_and_removes_its_checkpoints(server):
    client = server.client()
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(12)),
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    wait_for_step(client, job.id, 14)  # past the first epoch checkpoint
    assert client.fine_tuning.jobs.checkpoints.list(job.id).data  # the first epoch's checkpoint
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    assert_no_checkpoints_soon(client, server.data_dir / "jobs" / job.id / "checkpoints", job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if job.id.encode() in _read(p)]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def assert_no_checkpoints_soon(client, checkpoint_dir: Path, job_id: str) -> None:
    """Cancelled jobs keep no checkpoints: the scheduler removes their rows and weights within a few ticks."""
    for _ in range(100):
        if client.fine_tuning.jobs.checkpoints.list(job_id).data == [] and not any(checkpoint_dir.glob("*")):
            return
        time.sleep(0.1)
    raise AssertionError("checkpoints of a cancelled job were kept")


@sqlite_only
def test_the_readme_quickstart_runs_against_the_service(make_server):
    """The quickstart script (the README's code, see test_boundaries) end to end, on the tiny model instead of
    SmolLM2 and with faster polling: upload, create, pause mid-training, resume, succeed, print the results."""
    server = make_server().start()
    script = (ROOT / "examples" / "quickstart.py").read_text()
    for old, new in (("http://127.0.0.1:8000/v1", server.url + "/v1"), ('"SmolLM2-135M-Instruct"', '"tiny"'),
                     ("time.sleep(1)", "time.sleep(0.02)")):
        assert old in script
        script = script.replace(old, new)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    paused = next(line for line in lines if line.startswith("paused at step"))
    assert ":ckpt-step-" in paused
    assert any(line.startswith("succeeded ft:tiny:org-local:acme:") for line in lines)
    assert "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" in done.stdout
