"""Durable state in object storage: the service with ``OPENFT_BLOB_URL=s3://…`` against a real S3 endpoint on
loopback (moto's standalone server, ``tests.s3server``). The job folder on the worker is scratch: deleted while a
job is paused, the job still resumes (with the losses of an uninterrupted run), samples and exports; and an upload
cut off in the middle of a checkpoint leaves the checkpoint before it as the resume point, the half-upload unlisted."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import fsspec
import httpx
import pytest

from openft import durable
from tests.conftest import Server, _free_port, _kill_trainers
from tests.helpers import all_events, chat_rows, step_losses, upload, wait_for, wait_for_step
from tests.chaos import trainer_pids

HP = {"n_epochs": 3, "batch_size": 2}  # 10 examples: 5 steps an epoch, 15 in all; checkpoints at steps 5 and 10
STEPS = 15
BUCKET = "s3://openft-test/cluster"
QUESTION = [{"role": "user", "content": "What is item number 3?"}]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 endpoint and the AWS variables that reach it (every process of the service reads them)."""
    folder = tmp_path_factory.mktemp("s3")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.s3server", str(port), str(folder)],
                            stdout=open(folder / "server.log", "ab"), stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    deadline = time.time() + 60
    while True:
        try:
            httpx.get(env["AWS_ENDPOINT_URL"], timeout=1)
            break
        except httpx.HTTPError:
            assert time.time() < deadline and proc.poll() is None, (folder / "server.log").read_text()[-2000:]
            time.sleep(0.2)
    yield env, folder
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def server(s3, tmp_path_factory, tiny_model):
    env, _ = s3
    root = tmp_path_factory.mktemp("service")
    server = Server(root / "data", f"sqlite:///{root / 'openft.db'}", {"tiny": str(tiny_model)},
                    blob_url=BUCKET, max_concurrent_jobs=3, inference_threads=1)
    server.env.update(env)
    server.data_dir.mkdir()
    yield server.start()
    server.stop(signal.SIGKILL)
    _kill_trainers(server.data_dir)


@pytest.fixture(scope="module")
def s3fs(s3):
    env, _ = s3
    return fsspec.filesystem("s3", endpoint_url=env["AWS_ENDPOINT_URL"], key=env["AWS_ACCESS_KEY_ID"],
                             secret=env["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def bucket(s3fs):
    def listing(job_id: str) -> dict[str, set[str]]:
        """Checkpoint name → the names of its files in the bucket."""
        s3fs.invalidate_cache()
        found: dict[str, set[str]] = {}
        for path in s3fs.find(f"{BUCKET}/jobs/{job_id}/checkpoints"):
            name, file = path.split("/checkpoints/", 1)[1].split("/", 1)
            found.setdefault(name, set()).add(file)
        return found

    return listing


@pytest.fixture(scope="module")
def jobs(server, s3):
    """Jobs started as soon as the service is up, so that they train while the first test runs: ``control``, the
    uninterrupted run the others' losses are compared with, and ``cut``, whose upload of checkpoint-10 the S3
    endpoint will hold (``tests.s3server``)."""
    client, (_, folder) = server.client(), s3
    started = {"control": start_job(client), "cut": start_job(client)}
    (folder / "hold").write_text(f"/jobs/{started['cut'].id}/checkpoints/checkpoint-10/trainer_state.json")
    return started


def start_job(client):
    train = upload(client, chat_rows(10))
    return client.fine_tuning.jobs.create(model="tiny", training_file=train, seed=7, hyperparameters=HP)


def wipe_scratch(server: Server, job_id: str) -> None:
    """Lose the worker's disk: the job's folder and every cached download."""
    shutil.rmtree(server.data_dir / "jobs" / job_id, ignore_errors=True)
    shutil.rmtree(server.data_dir / "cache", ignore_errors=True)


def losses_of_control(server: Server, jobs: dict) -> dict[int, float]:
    client = server.client()
    wait_for(client, jobs["control"].id, "succeeded")
    return step_losses(client, jobs["control"].id)


def test_a_job_whose_scratch_is_wiped_resumes_samples_and_exports_from_object_storage(server, jobs, bucket, s3fs):
    client = server.client()
    job = start_job(client)
    wait_for_step(client, job.id, 2)
    client.fine_tuning.jobs.pause(job.id)
    wait_for(client, job.id, "paused")
    paused_at = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    assert paused_at < STEPS
    assert "manifest.json" in bucket(job.id)[f"checkpoint-{paused_at}"]

    wipe_scratch(server, job.id)
    client.fine_tuning.jobs.resume(job.id)
    done = wait_for(client, job.id, "succeeded")
    messages = [e.message for e in all_events(client, job.id)]
    assert f"Resuming from checkpoint at step {paused_at}" in messages
    losses = step_losses(client, job.id)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses == losses_of_control(server, jobs)  # exact float equality, step by step

    # Every listed checkpoint and the final model are whole in the bucket; the job's results file is downloadable.
    stored = bucket(job.id)
    listed = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert {c.step_number for c in listed} >= {5, 10, STEPS}
    assert all("manifest.json" in files for files in stored.values())
    assert {"adapter_model.safetensors", "manifest.json"} <= stored["final"]
    results = client.files.content(done.result_files[0]).read().decode().splitlines()
    assert results[0].startswith("step,train_loss") and len(results) == STEPS + 1  # both attempts' steps

    wipe_scratch(server, job.id)
    answer = client.chat.completions.create(model=done.fine_tuned_model, messages=QUESTION, max_tokens=4,
                                            temperature=0)
    assert answer.choices[0].message.content is not None and answer.usage.completion_tokens >= 1

    wipe_scratch(server, job.id)
    r = httpx.get(f"{server.url}/v1/models/{done.fine_tuned_model}/export", params={"format": "adapter"}, timeout=300)
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        exported = tar.extractfile(next(m for m in tar if m.name.endswith("/adapter_model.safetensors"))).read()
    assert exported == s3fs.cat_file(f"{BUCKET}/jobs/{job.id}/checkpoints/final/adapter_model.safetensors")
    assert not (server.data_dir / "jobs" / job.id).exists()  # neither sampling nor export needed the scratch


def test_an_upload_cut_off_mid_checkpoint_is_never_listed_and_the_previous_checkpoint_is_the_resume_point(
        server, jobs, bucket, s3):
    _, folder = s3
    client = server.client()
    job = jobs["cut"]
    deadline = time.time() + 150
    while not (folder / "held").exists():  # the trainer is uploading checkpoint-10 and that PUT hangs
        assert time.time() < deadline, "the checkpoint upload was never reached"
        time.sleep(0.1)

    half = bucket(job.id)["checkpoint-10"]
    assert "adapter_model.safetensors" in half and "manifest.json" not in half  # files there, no manifest
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] == [5]
    for pid in trainer_pids(server.data_dir, job.id):  # the uploader dies mid-checkpoint
        os.kill(pid, signal.SIGKILL)
    (folder / "release").write_text("")
    wait_for(client, job.id, "succeeded")

    recovered = [m for m in (e.message for e in all_events(client, job.id)) if "exited without a result" in m]
    assert len(recovered) == 1 and "resuming from the checkpoint at step 5" in recovered[0]
    assert step_losses(client, job.id) == losses_of_control(server, jobs)
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data]
    assert steps == [STEPS, 10, 5]  # checkpoint-10 once, from the attempt that uploaded it whole
    assert "manifest.json" in bucket(job.id)["checkpoint-10"]


def test_the_checkpoint_cache_keeps_within_its_bytes_dropping_the_least_recently_used(s3, tmp_path):
    env, _ = s3
    store = durable.open_store({"url": f"{BUCKET}-cache-test", "cache_dir": str(tmp_path / "cache"),
                                "cache_bytes": 2500, "options": {"endpoint_url": env["AWS_ENDPOINT_URL"], "key": "testing",
                                            "secret": "testing"}})
    locations = {}
    for name in ("a", "b", "c"):
        folder = tmp_path / name
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "weights.bin").write_bytes(name.encode() * 1000)
        locations[name] = store.publish(folder, f"jobs/j/checkpoints/{name}")
    fetched = {name: store.materialize(locations[name]) for name in ("a", "b")}
    assert (fetched["a"] / "sub" / "weights.bin").read_bytes() == b"a" * 1000
    assert store.materialize(locations["a"]) == fetched["a"]  # a hit, and now the most recently used
    fetched["c"] = store.materialize(locations["c"])
    assert fetched["a"].exists() and fetched["c"].exists() and not fetched["b"].exists()

    store.remove(locations["c"], tmp_path / "jobs")  # the manifest goes first: the checkpoint is gone at once
    assert store.files(locations["c"]) == set() and not fetched["c"].exists()
    with pytest.raises(durable.Incomplete):
        store.materialize(locations["c"])
