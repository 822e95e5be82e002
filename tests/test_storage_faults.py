"""Storage faults, real ones: the kernel's file size limit (RLIMIT_FSIZE, set with prlimit on the running trainer or
server) makes a write fail with EFBIG exactly as a full disk fails one with ENOSPC. A checkpoint that cannot be
written fails the job with an error that says so, and leaves the checkpoints listed before it intact as the only
ones listed; an upload that cannot be stored answers 507 in OpenAI's envelope, lists nothing and leaves no bytes
behind, and goes through once the storage has room again."""

from __future__ import annotations

import io
import os
import resource
import signal
import time

import httpx
import openai
import pytest
from safetensors.torch import load_file

from tests.chaos import trainer_pids
from tests.helpers import all_events, chat_rows, jsonl, upload, wait_for

@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'openft.db'}"


def limit_file_size(pid: int, limit: int) -> None:
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))  # the soft limit: liftable


def test_a_checkpoint_that_cannot_be_written_fails_the_job_clearly_and_lists_only_whole_checkpoints(server):
    client = server.client()
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(20)),
                                         hyperparameters={"n_epochs": 2, "batch_size": 1})
    wait_for(client, job.id, "running")
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:  # the epoch-1 checkpoint, at step 20
        time.sleep(0.05)
    for pid in trainer_pids(server.data_dir, job.id):
        limit_file_size(pid, 50_000)  # smaller than a checkpoint's adapter (~69 kB), larger than the event log

    failed = wait_for(client, job.id, "failed", timeout=300)
    assert failed.error.code == "server_error"
    assert "storage could not be written (File too large)" in failed.error.message, failed.error.message
    assert any(e.level == "error" and "File too large" in e.message for e in all_events(client, job.id))
    listed = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in listed] == [20]  # the one being written when storage failed is not listed
    folder = server.data_dir / "jobs" / job.id / "checkpoints" / "checkpoint-20"
    assert load_file(folder / "adapter_model.safetensors") and (folder / "trainer_state.json").exists()


def assert_storage_error(exc: openai.APIStatusError) -> None:
    assert exc.status_code == 507
    error = exc.response.json()["error"]
    assert error["code"] == "storage_error" and error["type"] == "server_error"
    assert "File too large" in error["message"]


def stored_blobs(server) -> list[str]:
    return sorted(str(p.relative_to(server.data_dir / "blobs")) for p in (server.data_dir / "blobs").rglob("*")
                  if p.is_file())


def test_an_upload_that_cannot_be_stored_is_a_507_that_leaves_nothing_and_works_once_there_is_room(server):
    client = server.client()
    small = upload(client, chat_rows(10))
    data = jsonl(chat_rows(1)) * 12_000  # about 3 MB
    before = stored_blobs(server)
    limit_file_size(server.proc.pid, 2_000_000)  # the database and the log stay far below it

    with pytest.raises(openai.APIStatusError) as exc:
        client.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="fine-tune")
    assert_storage_error(exc.value)

    # The Uploads API: a part too large for the storage, then an assembly too large for it.
    up = client.uploads.create(bytes=len(data), filename="big.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    with pytest.raises(openai.APIStatusError) as exc:
        client.uploads.parts.create(up.id, data=data)
    assert_storage_error(exc.value)
    half = len(data) // 2
    parts = [client.uploads.parts.create(up.id, data=chunk).id for chunk in (data[:half], data[half:])]
    with pytest.raises(openai.APIStatusError) as exc:
        client.uploads.complete(up.id, part_ids=parts)
    assert_storage_error(exc.value)
    assert [f.id for f in client.files.list()] == [small]
    assert len(stored_blobs(server)) == len(before) + 2  # the two parts only: no partial file, no orphan

    limit_file_size(server.proc.pid, resource.RLIM_INFINITY)  # room again
    done = client.uploads.complete(up.id, part_ids=parts)
    assert done.status == "completed" and client.files.content(done.file.id).content == data
    assert client.files.create(file=("big.jsonl", io.BytesIO(data)), purpose="fine-tune").bytes == len(data)
    assert httpx.get(server.url + "/health").status_code == 200


def test_bytes_a_killed_service_left_without_a_row_are_removed_when_it_starts_again(server):
    client = server.client()
    kept = upload(client, chat_rows(10))
    gone = upload(client, chat_rows(10, offset=5))
    client.files.delete(gone)
    up = client.uploads.create(bytes=4, filename="a.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    client.uploads.complete(up.id, part_ids=[client.uploads.parts.create(up.id, data=b"{}\n\n").id])
    pending = client.uploads.create(bytes=4, filename="b.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    client.uploads.parts.create(pending.id, data=b"{}\n\n")
    server.stop(signal.SIGKILL)
    # What a kill between the two writes leaves: bytes whose row never came, a deleted file's bytes, the parts of
    # a completed upload; and an upload just written by another replica (recent: its row may still come).
    blobs = server.data_dir / "blobs"
    hour_ago = time.time() - 3700
    for name in ("file_orphan", gone):
        (blobs / name).write_bytes(b"{}\n")
        os.utime(blobs / name, (hour_ago, hour_ago))
    (blobs / "file_recent").write_bytes(b"{}\n")
    (blobs / "uploads" / up.id).mkdir(parents=True, exist_ok=True)
    (blobs / "uploads" / up.id / "part-stray").write_bytes(b"{}\n")
    os.utime(blobs / kept, (hour_ago, hour_ago))

    client = server.start().client()
    deadline = time.time() + 30
    while (blobs / "file_orphan").exists() and time.time() < deadline:
        time.sleep(0.1)
    left = stored_blobs(server)
    assert "file_orphan" not in left and gone not in left and not any(k.startswith(f"uploads/{up.id}") for k in left)
    assert {"file_recent", kept} <= set(left) and any(k.startswith(f"uploads/{pending.id}/") for k in left)
    assert client.files.content(kept).content == jsonl(chat_rows(10))
