"""Reinforcement fine-tuning (method "reinforcement") through the real service and the official openai SDK: create
checks (grader required and validated, hyperparameter ranges), and a job with a grader end to end with a pause and
a resume that equals an uninterrupted run bitwise, validation checkpoints kept by reward."""

from __future__ import annotations

import openai
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import sqlite_only
from tests.helpers import FUZZY_GRADER, all_events, reinforcement_rows, upload, wait_for, wait_for_step
from tests.test_lifecycle import assert_valid_job

HP = {"n_epochs": 2, "batch_size": 2, "compute_multiplier": 0.5, "eval_interval": 2, "reasoning_effort": "low"}
STEPS = 2 * 5  # 10 prompts, batch 2


def rft(grader=FUZZY_GRADER, **hp) -> dict:
    return {"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hp}}


def test_create_checks_the_grader_and_the_hyperparameters(make_server):
    server = make_server(enable_scheduler="false").start()
    client = server.client()
    train = upload(client, reinforcement_rows(10))
    bad = [
        ({"type": "reinforcement", "reinforcement": {"hyperparameters": {}}}, "method.reinforcement.grader"),
        (rft({**FUZZY_GRADER, "evaluation_metric": "rouge_9"}), "method.reinforcement.grader.evaluation_metric"),
        (rft(compute_multiplier=20), "method.reinforcement.hyperparameters.compute_multiplier"),
        (rft(eval_interval=0), "method.reinforcement.hyperparameters.eval_interval"),
    ]
    for method, param in bad:
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model="tiny", training_file=train, method=method)
        assert err.value.param == param, (method, err.value.message)
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train, method=rft())
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.name == "close"


@sqlite_only
def test_rft_job_paused_and_resumed_equals_an_uninterrupted_run(make_server):
    server = make_server().start()
    client = server.client()
    train = upload(client, reinforcement_rows(10))
    valid = upload(client, reinforcement_rows(3, offset=50), "valid.jsonl")

    def create():
        return client.fine_tuning.jobs.create(model="tiny", training_file=train, validation_file=valid, seed=3,
                                              method=rft(**HP))

    reference = create()
    done = wait_for(client, reference.id, "succeeded", timeout=300)
    hp = done.method.reinforcement.hyperparameters
    assert (hp.eval_interval, hp.eval_samples, hp.compute_multiplier) == (2, 1, 0.5)
    assert_valid_job(done)  # the seed's FineTuningJob schema

    job = create()
    wait_for_step(client, job.id, 6)  # in the second epoch
    client.fine_tuning.jobs.pause(job.id)
    wait_for(client, job.id, "paused")
    client.fine_tuning.jobs.resume(job.id)
    wait_for(client, job.id, "succeeded", timeout=300)

    def steps(job_id):
        metrics = [e.data for e in all_events(client, job_id) if e.type == "metrics"]
        return {m["step"]: (m["train_loss"], m["train_mean_reward"], m.get("full_valid_mean_reward")) for m in metrics}

    ours, theirs = steps(job.id), steps(reference.id)
    assert sorted(ours) == list(range(1, STEPS + 1)) and ours == theirs
    assert all(theirs[s][2] is not None for s in (2, 4, 6, 8, 10))  # a validation every eval_interval steps
    folder = server.data_dir / "jobs"
    ref, got = (load_file(folder / j / "checkpoints" / "final" / "adapter_model.safetensors")
                for j in (reference.id, job.id))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)

    # Validation checkpoints: the best 3 by validation reward are kept (plus the final model).
    checkpoints = client.fine_tuning.jobs.checkpoints.list(reference.id).data
    evals = [c for c in checkpoints if c.fine_tuned_model_checkpoint != done.fine_tuned_model]
    assert len(evals) == 3
    rewards = sorted((theirs[s][2] for s in (2, 4, 6, 8)), reverse=True)
    assert sorted((c.metrics.full_valid_mean_reward for c in evals), reverse=True) == rewards[:3]
