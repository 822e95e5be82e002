"""`kill -9` of the API server (`openft serve`) at random moments, then a restart on the same data and database:
running trainers are adopted, no job is lost, no event or checkpoint is lost or doubled, and no upload is ever
listed (or stored under its key) half written; a create cut short leaves a whole job or none, and every job is
driven on after the restart."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid

import httpx
import openai
import pytest

from tests.chaos import metrics
from tests.helpers import TERMINAL, all_events, chat_rows, jsonl, upload, wait_for, wait_for_step


@pytest.fixture
def database_url(tmp_path):  # the stores' transactions are covered on both backends elsewhere; SQLite keeps this fast
    return f"sqlite:///{tmp_path / 'openft.db'}"


def restart(server, after: float = 0.0):
    time.sleep(after)
    server.stop(signal.SIGKILL)
    return server.start().client()


def test_killing_the_server_while_jobs_train_loses_and_doubles_nothing(make_server):
    rng = random.Random(2)
    server = make_server(max_concurrent_jobs=1).start()
    client = server.client()
    train = upload(client, chat_rows(12))
    hp = {"n_epochs": 2, "batch_size": 1}  # 24 steps, a checkpoint at 12
    ids = [client.fine_tuning.jobs.create(model="tiny", training_file=train, seed=7, hyperparameters=hp).id
           for _ in range(2)]  # the second waits in the queue while the server dies
    wait_for_step(client, ids[0], 2)
    for _ in range(2):
        client = restart(server, after=rng.uniform(0.5, 3))
    for job_id in ids:
        wait_for(client, job_id, "succeeded", timeout=300)
    reference = metrics(client, ids[0])
    for job_id in ids:
        events = all_events(client, job_id)
        assert [m["step"] for m in metrics(client, job_id)] == list(range(1, 25))
        assert metrics(client, job_id) == reference  # same seed, same data: killing the server changed nothing
        assert sum(e.message == "The job has successfully completed" for e in events) == 1
        assert sum(e.message.startswith("Created fine-tuning job") for e in events) == 1
        assert not any(e.level == "warn" for e in events), [e.message for e in events]  # adopted, never re-run
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
        assert [c.step_number for c in checkpoints] == [24, 12]


def _multipart(boundary: str, body: bytes, chunk: int, on_chunk) -> bytes:
    yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    for i in range(0, len(body), chunk):
        on_chunk(i)
        yield body[i:i + chunk]
    yield f"\r\n--{boundary}--\r\n".encode()


def _post_file(server, body: bytes, on_chunk=lambda i: None) -> httpx.Response | None:
    boundary = uuid.uuid4().hex
    try:
        return httpx.post(server.url + "/v1/files", content=_multipart(boundary, body, 1 << 20, on_chunk),
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=60)
    except httpx.HTTPError:
        return None


def assert_no_half_upload(server, client, body: bytes) -> None:
    """Every listed file has all its bytes, and every blob stored under a key is whole (a write in progress has
    its own temporary name)."""
    for f in client.files.list():
        if f.filename == "big.jsonl":
            assert f.bytes == len(body) and client.files.content(f.id).content == body
    for blob in (server.data_dir / "blobs").iterdir():
        if blob.is_file() and ".partial-" not in blob.name and blob.stat().st_size > 1 << 20:
            assert blob.read_bytes() == body, f"{blob.name} holds {blob.stat().st_size} of {len(body)} bytes"


def test_killing_the_server_during_a_file_upload_never_stores_half_of_it(make_server):
    server = make_server().start()
    body = jsonl(chat_rows(1)) * 48_000  # about 12 MB
    half = len(body) // 2 // (1 << 20) * (1 << 20)

    # While the body streams in: the connection breaks, nothing is listed.
    assert _post_file(server, body, lambda i: i == half and server.proc.kill()) is None
    server.proc.wait()
    client = server.start().client()
    assert client.files.list().data == []
    assert_no_half_upload(server, client, body)

    # What a killed write left under a temporary name is removed at a start once it is an hour old.
    left = server.data_dir / "blobs" / "file-left.partial-0"
    left.write_bytes(body[:1000])
    os.utime(left, (time.time() - 7200, time.time() - 7200))

    # Once the whole body is sent, at random moments while the server stores it.
    rng = random.Random(5)
    for _ in range(2):
        killer = threading.Timer(rng.uniform(0.0, 0.3), server.proc.kill)
        _post_file(server, body, lambda i: i + (1 << 20) >= len(body) and killer.start())
        killer.join()
        server.proc.wait()
        client = server.start().client()
        assert_no_half_upload(server, client, body)
    assert _post_file(server, body).status_code == 200  # and the service takes the next upload
    assert_no_half_upload(server, client, body)
    assert not left.exists()


def test_killing_the_server_during_job_creates_leaves_whole_jobs_that_are_driven_on(make_server):
    server = make_server(max_concurrent_jobs=1).start()
    client = server.client()
    train = upload(client, chat_rows(10))
    answered, stop = [], threading.Event()

    def create_in_a_loop():
        c = server.client(timeout=10)
        while not stop.is_set() and len(answered) < 4:
            try:
                answered.append(c.fine_tuning.jobs.create(model="tiny", training_file=train,
                                                          hyperparameters={"n_epochs": 1, "batch_size": 10}).id)
            except openai.APIError:  # the server died under this request, or is starting again
                pass
            time.sleep(0.2)

    creators = [threading.Thread(target=create_in_a_loop) for _ in range(2)]
    for thread in creators:
        thread.start()
    rng = random.Random(9)
    try:
        for _ in range(2):
            client = restart(server, after=rng.uniform(0.2, 1.0))
    finally:
        stop.set()
        for thread in creators:
            thread.join()
    listed = [j.id for j in client.fine_tuning.jobs.list(limit=100)]
    assert set(answered) <= set(listed) and len(answered) >= 2  # no answered create is lost
    for job_id in listed:  # each whole, and driven on by the restarted scheduler: validated, then cancelled
        messages = [e.message for e in all_events(client, job_id)]
        assert messages[:2] == [f"Created fine-tuning job: {job_id}",
                                f"Validating training file: {train}"], messages[:3]
        if wait_for(client, job_id, {"queued", "running", "succeeded"}).status != "succeeded":
            client.fine_tuning.jobs.cancel(job_id)
    for job_id in listed:
        assert wait_for(client, job_id, TERMINAL).status in ("cancelled", "succeeded")
