"""The W&B integration, in W&B's offline mode with the run files read back: every step once in one run across a
pause and resume, with the hyperparameters and the job id; a W&B failure is an event, never a failed job."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2 as pb

from tests.conftest import sqlite_only
from tests.helpers import chat_rows, step_losses, upload, wait_for, wait_for_step

pytestmark = sqlite_only  # the trainer's side: no SQL in it


def read_run(path: Path) -> list:
    """The records of a W&B run file (a LevelDB-style log: 32 KiB blocks of crc32, length, type, then bytes)."""
    data, records, pos, pending = path.read_bytes(), [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history(records: list) -> dict[int, dict[str, str]]:
    steps = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            assert r.history.step.num not in steps, f"step {r.history.step.num} logged twice"
            steps[r.history.step.num] = {"/".join(i.nested_key) or i.key: i.value_json for i in r.history.item}
    return steps


def test_a_paused_and_resumed_job_is_one_wandb_run_with_every_step_once(make_server):
    server = make_server(wandb_mode="offline").start()
    client = server.client()
    wandb = {"project": "openft-ci", "name": "pause-resume", "tags": ["ci"]}
    job = client.fine_tuning.jobs.create(
        model="tiny", training_file=upload(client, chat_rows(12)), seed=5,
        integrations=[{"type": "wandb", "wandb": wandb}],
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 1}}},
    )
    wait_for_step(client, job.id, 2)
    client.fine_tuning.jobs.pause(job.id)
    wait_for(client, job.id, "paused")
    client.fine_tuning.jobs.resume(job.id)
    wait_for(client, job.id, "succeeded")

    run_id = job.id.removeprefix("ftjob_")
    files = sorted((server.data_dir / "jobs" / job.id / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"))
    assert len(files) == 2  # one per attempt, both of the same run id
    steps: dict[int, dict] = {}
    for f in files:
        records = read_run(f)
        attempt = history(records)
        assert not set(attempt) & set(steps), "a step was logged by both attempts"
        steps |= attempt
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert run.run_id == run_id and run.project == "openft-ci" and run.display_name == "pause-resume"
        assert list(run.tags) == ["ci"]
        config = {i.key: i.value_json for i in run.config.update}
        assert config["job_id"] == f'"{job.id}"' and config["n_epochs"] == "3" and config["batch_size"] == "1"
    assert sorted(steps) == list(range(1, 37))
    losses = step_losses(client, job.id)
    assert {s: float(v["train_loss"]) for s, v in steps.items()} == losses

    # A W&B failure (its tags allow 64 characters) is a warning event; the job succeeds.
    bad = client.fine_tuning.jobs.create(
        model="tiny", training_file=upload(client, chat_rows(10)), hyperparameters={"n_epochs": 1},
        integrations=[{"type": "wandb", "wandb": {"project": "openft-ci", "tags": ["x" * 100]}}],
    )
    wait_for(client, bad.id, "succeeded")
    warnings = [e.message for e in client.fine_tuning.jobs.list_events(bad.id, limit=100) if e.level == "warn"]
    assert any(m.startswith("W&B reporting stopped: could not start the run") for m in warnings), warnings
