"""A job's training specification is frozen when its files are validated: an operator who changes the learning
rate or the LoRA rank between a pause and a resume (a restart with other settings) leaves the resumed job exactly
as it would have been, per-step losses equal to an uninterrupted run."""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import sqlite_only
from tests.helpers import chat_rows, step_losses, upload, wait_for, wait_for_step

HP = {"n_epochs": 2, "batch_size": 1}  # 40 steps: long enough that the pause lands mid-job on a busy machine


@sqlite_only  # what is tested here is not in SQL
def test_settings_changed_between_pause_and_resume_do_not_change_the_job(make_server):
    server = make_server().start()
    client = server.client()
    train = upload(client, chat_rows(20))

    def create():
        return client.fine_tuning.jobs.create(model="tiny", training_file=train, seed=5, hyperparameters=HP)

    reference = wait_for(client, create().id, "succeeded")
    job = create()
    wait_for_step(client, job.id, 3)
    client.fine_tuning.jobs.pause(job.id)
    wait_for(client, job.id, "paused")
    server.stop(signal.SIGTERM)

    changed = make_server(base_learning_rate=1e-2, lora_r=4, lora_alpha=4, max_length=32).start()
    client = changed.client()
    client.fine_tuning.jobs.resume(job.id)
    wait_for(client, job.id, "succeeded")
    spec = json.loads((changed.data_dir / "jobs" / job.id / "spec.json").read_text())
    assert spec["attempt"] == 2 and spec["resume_from"]
    assert spec["hyperparameters"]["learning_rate"] == 5e-4 * 2.0 and spec["lora"]["r"] == 8
    assert spec["max_length"] == 1024
    losses = step_losses(client, job.id)
    assert sorted(losses) == list(range(1, 41))
    assert losses == step_losses(client, reference.id)


def test_spec_json_is_the_frozen_spec_plus_the_attempts_fields_and_reads_back_typed():
    from openft.spec import AttemptSpec, Lineage, Lora, TrainingSpec, attempt_json, read_attempt

    frozen = TrainingSpec(job_id="ftjob_x", method="supervised", base_model="ft:tiny:acme::abc",
                          lineage=Lineage("tiny", "/models/tiny", ("/jobs/a/checkpoints/final",)),
                          hyperparameters={"n_epochs": 2, "learning_rate": 1e-3}, seed=4, lora=Lora(8, 16, 0.05),
                          max_length=64)
    assert TrainingSpec.from_json(json.loads(json.dumps(frozen.to_json()))) == frozen
    attempt = AttemptSpec(training_file="/jobs/x/training_file.jsonl", validation_file=None,
                          resume_from="checkpoints/checkpoint-3", attempt=2)
    written = json.loads(json.dumps(attempt_json(frozen, attempt)))
    assert written["parent_adapters"] == ["/jobs/a/checkpoints/final"] and written["lora"]["r"] == 8
    assert read_attempt(written) == (frozen, attempt)
    with pytest.raises(KeyError):
        read_attempt({k: v for k, v in written.items() if k != "hyperparameters"})
