"""Full fine-tuning (OPENFT_FULL_FINE_TUNING, an extension of the API): a job trains every weight, and its model is
sampled, exported and trained on like a LoRA one, through the official openai SDK."""

from __future__ import annotations

import io
import tarfile

import httpx
import openai
import pytest

from tests.conftest import sqlite_only
from tests.helpers import chat_rows, upload, wait_for

QUESTION = [{"role": "user", "content": "What is item number 3?"}]


@sqlite_only
def test_a_fully_fine_tuned_model_is_sampled_exported_and_trained_on(make_server):
    server = make_server(full_fine_tuning="true").start()
    client = server.client()
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(12)), seed=2,
                                         hyperparameters={"n_epochs": 2, "batch_size": 4,
                                                          "learning_rate_multiplier": 4})
    done = wait_for(client, job.id, "succeeded")
    final = server.data_dir / "jobs" / job.id / "checkpoints" / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()

    base = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=8, temperature=0)
    tuned = client.chat.completions.create(model=done.fine_tuned_model, messages=QUESTION, max_tokens=8,
                                           temperature=0)
    assert tuned.choices[0].message.content != base.choices[0].message.content

    url = f"{server.url}/v1/models/{done.fine_tuned_model}/export"
    r = httpx.get(url, params={"format": "merged"}, timeout=120)
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = tar.getnames()
    assert any(n.endswith("model.safetensors") for n in names) and not any("optimizer" in n for n in names)
    r = httpx.get(url, params={"format": "adapter"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "format"

    child = client.fine_tuning.jobs.create(model=done.fine_tuned_model, training_file=upload(client, chat_rows(10)),
                                           hyperparameters={"n_epochs": 1, "batch_size": 10})
    child = wait_for(client, child.id, "succeeded")
    assert child.fine_tuned_model.startswith("ft:tiny:")
    # The parent may be deleted: the child, built on its whole-model folder, keeps it until the child goes too.
    assert client.models.delete(done.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(done.fine_tuned_model)
    assert client.chat.completions.create(model=child.fine_tuned_model, messages=QUESTION, max_tokens=4).choices
    assert final.is_dir()
    client.models.delete(child.fine_tuned_model)
    assert not final.exists()
