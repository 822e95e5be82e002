"""Files with an ``expires_after`` policy: ``expires_at`` is set, the file disappears from the API when it expires
and its bytes are removed, except while an unfinished job was created on it: that job still trains."""

from __future__ import annotations

import io
import time

import openai
import pytest

from tests.helpers import chat_rows, jsonl, wait_for

EXPIRY = {"anchor": "created_at", "seconds": 2}


def _upload(client, rows: int, expires_after=EXPIRY):
    return client.files.create(file=("train.jsonl", io.BytesIO(jsonl(chat_rows(rows)))), purpose="fine-tune",
                               expires_after=expires_after)


def _gone(client, file_id: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            client.files.retrieve(file_id)
        except openai.NotFoundError:
            return
        time.sleep(0.2)
    raise AssertionError(f"{file_id} did not expire")


def test_an_expired_file_disappears_but_a_job_created_on_it_still_trains(make_server):
    server = make_server(min_file_expiry_seconds=1).start()
    client = server.client()
    used, unused = _upload(client, 10), _upload(client, 10)
    assert used.expires_at == used.created_at + 2
    blobs = server.data_dir / "blobs"
    job = client.fine_tuning.jobs.create(model="tiny", training_file=used.id,
                                         hyperparameters={"n_epochs": 1, "batch_size": 5})
    client.fine_tuning.jobs.pause(job.id)  # keep the job unfinished while its file expires
    wait_for(client, job.id, "paused")

    for file in (used, unused):
        _gone(client, file.id)
        assert file.id not in {f.id for f in client.files.list()}
    deadline = time.time() + 30
    while (blobs / unused.id).exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not (blobs / unused.id).exists()  # its bytes are removed by the sweep…
    assert (blobs / used.id).exists()  # …but not those of a file an unfinished job needs
    with pytest.raises(openai.BadRequestError):  # a new job cannot use an expired file
        client.fine_tuning.jobs.create(model="tiny", training_file=used.id)

    client.fine_tuning.jobs.resume(job.id)
    assert wait_for(client, job.id, "succeeded").fine_tuned_model
    deadline = time.time() + 30
    while (blobs / used.id).exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not (blobs / used.id).exists()  # released once the job is done


def test_a_bad_expiry_policy_is_a_400_naming_the_field(make_server):
    client = make_server().start().client()
    for policy, param in (({"anchor": "last_active_at", "seconds": 3600}, "expires_after.anchor"),
                          ({"anchor": "created_at", "seconds": 60}, "expires_after.seconds"),
                          ({"anchor": "created_at", "seconds": 2592001}, "expires_after.seconds")):
        with pytest.raises(openai.BadRequestError) as err:
            _upload(client, 1, policy)
        assert err.value.param == param
    assert _upload(client, 1, {"anchor": "created_at", "seconds": 3600}).expires_at is not None
    assert _upload(client, 1, openai.omit).expires_at is None
