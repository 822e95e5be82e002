"""Exactness and recovery through the real service: a paused-and-resumed job, and a job whose worker was killed
with SIGKILL, equal an uninterrupted run bitwise; a service restart mid-training loses no job, event or
checkpoint."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.chaos import rerun_steps, trainer_pids
from tests.conftest import sqlite_only
from tests.helpers import all_events, chat_rows, step_losses, upload, wait_for, wait_for_step

HP = {"n_epochs": 3, "batch_size": 1}  # 24 examples: 24 steps an epoch, 72 in all
STEPS = 72


def start_job(client, seed: int = 1234):
    train = upload(client, chat_rows(24))
    return client.fine_tuning.jobs.create(model="tiny", training_file=train, seed=seed, hyperparameters=HP)


def final_weights(server, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(server.data_dir / "jobs" / job_id / "checkpoints" / "final" / "adapter_model.safetensors")


def assert_same_run(server, client, reference_id: str, job_id: str) -> None:
    ref_losses, losses = step_losses(client, reference_id), step_losses(client, job_id)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses == ref_losses  # exact float equality, step by step
    ref, got = final_weights(server, reference_id), final_weights(server, job_id)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


@sqlite_only
def test_pause_mid_epoch_then_resume_matches_an_uninterrupted_run(server):
    client = server.client()
    reference = start_job(client)
    wait_for(client, reference.id, "succeeded")

    job = start_job(client)
    wait_for_step(client, job.id, 4)
    client.fine_tuning.jobs.pause(job.id)
    wait_for(client, job.id, "paused")
    paused_at = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    assert paused_at % 24 != 0 and paused_at < STEPS  # mid-epoch
    assert trainer_pids(server.data_dir, job.id) == []  # the worker exited and freed the machine
    client.fine_tuning.jobs.resume(job.id)
    wait_for(client, job.id, "succeeded")
    assert_same_run(server, client, reference.id, job.id)


@sqlite_only
def test_worker_killed_with_sigkill_resumes_from_its_last_checkpoint_and_matches(server):
    client = server.client()
    reference = start_job(client)
    wait_for(client, reference.id, "succeeded")

    job = start_job(client)
    wait_for_step(client, job.id, 28)  # past the epoch-1 checkpoint at step 24
    for pid in trainer_pids(server.data_dir, job.id):
        os.kill(pid, signal.SIGKILL)
    wait_for(client, job.id, "succeeded")
    messages = [e.message for e in all_events(client, job.id)]
    recovered = [m for m in messages if "exited without a result" in m]
    assert len(recovered) == 1 and "resuming from the checkpoint at step" in recovered[0]
    assert_same_run(server, client, reference.id, job.id)
    # The trainer ran the steps after step 24 twice; the API reports each once.
    assert rerun_steps(server.data_dir, job.id)
    steps = [e.data["step"] for e in all_events(client, job.id) if e.type == "metrics"]
    assert steps == list(range(1, STEPS + 1))


def test_restarting_the_service_mid_training_loses_nothing_and_the_job_finishes(make_server):
    server = make_server().start()
    client = server.client()
    job = start_job(client)
    wait_for_step(client, job.id, 5)
    server.stop(signal.SIGKILL)  # the service dies; its training attempt keeps running in its own session
    time.sleep(2)
    server.start()
    client = server.client()
    done = wait_for(client, job.id, "succeeded")
    events = all_events(client, job.id)
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == list(range(1, STEPS + 1))  # every step reported once: nothing lost, nothing doubled
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [STEPS, 48, 24]
    assert checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model
    assert len([m for m in events if m.message == "The job has successfully completed"]) == 1


@sqlite_only
def test_a_broken_base_model_fails_the_job_with_the_trainers_error(make_server, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    server = make_server()
    server.env["OPENFT_MODELS"] = server.env["OPENFT_MODELS"][:-1] + f', "broken": "{broken}"}}'
    client = server.start().client()
    job = client.fine_tuning.jobs.create(model="broken", training_file=upload(client, chat_rows(12)))
    failed = wait_for(client, job.id, "failed")
    assert failed.error.code == "server_error" and failed.error.message and failed.finished_at
    assert any(e.level == "error" for e in all_events(client, job.id))


@sqlite_only
def test_a_worker_that_keeps_dying_is_retried_a_bounded_number_of_times_then_fails(make_server):
    server = make_server(max_attempts=3, trainer_python="/bin/false")  # every attempt exits at once, no result
    client = server.start().client()
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(12)))
    failed = wait_for(client, job.id, "failed")
    assert failed.error.code == "server_error" and "3 attempts" in failed.error.message
    warnings = [e.message for e in all_events(client, job.id) if e.level == "warn"]
    assert len(warnings) == 2 and all("resuming from the beginning" in w for w in warnings)
