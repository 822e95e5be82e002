"""Preference fine-tuning (method "dpo") through the real service and the official openai SDK: the whole lifecycle
under both prefixes with a pause and a resume that equals an uninterrupted run bitwise, "auto" beta, beta's range,
and DPO on top of a supervised job's fine-tuned model."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import sqlite_only
from tests.helpers import all_events, chat_rows, preference_rows, step_losses, upload, wait_for, wait_for_step
from tests.test_lifecycle import assert_valid_job

HP = {"n_epochs": 2, "batch_size": 2, "beta": 0.2}
STEPS = 2 * 8  # 16 pairs, batch 2


def dpo_method(**hp) -> dict:
    return {"type": "dpo", "dpo": {"hyperparameters": hp}}


def final_adapter(server, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(server.data_dir / "jobs" / job_id / "checkpoints" / "final" / "adapter_model.safetensors")


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1/llm"])
@sqlite_only
def test_dpo_job_paused_and_resumed_equals_an_uninterrupted_run(make_server, prefix):
    server = make_server().start()
    client = server.client(prefix)
    train = upload(client, preference_rows(16))
    valid = upload(client, preference_rows(4, offset=100), "valid.jsonl")

    def create():
        return client.fine_tuning.jobs.create(model="tiny", training_file=train, validation_file=valid, seed=7,
                                              method=dpo_method(**HP))

    reference = create()
    done = wait_for(client, reference.id, "succeeded")
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.2
    assert_valid_job(done)  # the seed's FineTuningJob schema
    assert done.fine_tuned_model.startswith("ft:tiny:")

    job = create()
    wait_for_step(client, job.id, 3)
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for(client, job.id, "paused")
    checkpoint = client.fine_tuning.jobs.checkpoints.list(paused.id).data[0]
    assert 3 <= checkpoint.step_number < STEPS
    client.fine_tuning.jobs.resume(job.id)
    wait_for(client, job.id, "succeeded")

    losses = step_losses(client, job.id)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses == step_losses(client, reference.id)
    ref, got = final_adapter(server, reference.id), final_adapter(server, job.id)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)

    metrics = [e.data for e in all_events(client, job.id) if e.type == "metrics"]
    for name in ("train_loss", "train_mean_token_accuracy", "train_reward_margin", "train_reward_accuracy",
                 "train_chosen_logps", "train_rejected_logps", "valid_loss"):
        assert all(name in m for m in metrics), name
    csv = client.files.content(done.result_files[0]).text.splitlines()
    assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(csv) == STEPS + 1


def test_dpo_auto_beta_is_resolved_and_beta_out_of_range_is_a_400(make_server):
    server = make_server(enable_scheduler="false").start()
    client = server.client()
    train = upload(client, preference_rows(12))
    for beta in (0, 2.5, -1):
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model="tiny", training_file=train, method=dpo_method(beta=beta))
        assert err.value.param == "method.dpo.hyperparameters.beta"
    with pytest.raises(openai.BadRequestError) as err:  # the deprecated field is for supervised jobs only
        client.fine_tuning.jobs.create(model="tiny", training_file=train, method=dpo_method(),
                                       hyperparameters={"n_epochs": 1})
    assert err.value.param == "hyperparameters"
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train, method=dpo_method())
    assert job.method.dpo.hyperparameters.beta == "auto"


def test_a_chat_file_for_a_dpo_job_fails_validation_with_the_line(make_server):
    server = make_server().start()
    client = server.client()
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(12)),
                                         method=dpo_method())
    failed = wait_for(client, job.id, "failed")
    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert "line 1" in failed.error.message.lower()


@sqlite_only
def test_sft_then_dpo_on_its_fine_tuned_model_which_outlives_the_deleted_parent(make_server):
    server = make_server().start()
    client = server.client()
    sft = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(12)), seed=1,
                                         hyperparameters={"n_epochs": 1, "batch_size": 4}, suffix="sft")
    parent = wait_for(client, sft.id, "succeeded").fine_tuned_model
    dpo = client.fine_tuning.jobs.create(model=parent, training_file=upload(client, preference_rows(12)), seed=1,
                                         method=dpo_method(n_epochs=1, batch_size=4), suffix="dpo")
    assert dpo.model == parent
    done = wait_for(client, dpo.id, "succeeded")
    assert done.fine_tuned_model.startswith("ft:tiny:org-local:dpo:")  # named after the root base model
    assert done.fine_tuned_model in {m.id for m in client.models.list()}
    spec = (server.data_dir / "jobs" / dpo.id / "spec.json").read_text()
    parent_weights = server.data_dir / "blobs" / "jobs" / sft.id / "checkpoints" / "final"  # as published
    assert str(parent_weights) in spec  # trained from its weights

    # The parent can be deleted: its name is gone at once, its weights stay while the DPO model needs them.
    assert client.models.delete(parent).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(parent)
    assert parent not in {m.id for m in client.models.list()}
    assert parent_weights.is_dir()
    question = [{"role": "user", "content": "What is item number 3?"}]
    reply = client.chat.completions.create(model=done.fine_tuned_model, messages=question, max_tokens=4)
    assert reply.choices[0].message.content
    export = httpx.get(f"{server.url}/v1/models/{done.fine_tuned_model}/export", params={"format": "merged"},
                       timeout=300)
    assert export.status_code == 200 and export.content[:2] == b"\x1f\x8b"  # a gzip archive
    # Deleting the last model built on them removes the parent's weights too.
    assert client.models.delete(done.fine_tuned_model).deleted
    assert not parent_weights.exists()
