"""Fine-tune SmolLM2-135M-Instruct on the bundled Acme Rocket Co. support dataset with the official openai SDK,
pausing and resuming the job on the way. Run it against `scripts/serve`: .venv/bin/python examples/quickstart.py"""

import time

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")  # no keys configured: open on loopback

train = client.files.create(file=open("openft/examples/quickstart.jsonl", "rb"), purpose="fine-tune")
valid = client.files.create(file=open("openft/examples/quickstart_validation.jsonl", "rb"), purpose="fine-tune")
job = client.fine_tuning.jobs.create(
    model="SmolLM2-135M-Instruct",
    training_file=train.id,
    validation_file=valid.id,
    suffix="acme",
    method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5, "batch_size": 4}}},
)
print("created", job.id, job.status)


def wait(*statuses):
    while (current := client.fine_tuning.jobs.retrieve(job.id)).status not in statuses:
        if current.status in ("succeeded", "failed", "cancelled"):
            raise SystemExit(f"job {current.status}: {current.error}")
        time.sleep(1)
    return current


def latest_step():
    events = client.fine_tuning.jobs.list_events(job.id, limit=10).data
    return max((e.data["step"] for e in events if e.type == "metrics"), default=0)


start = time.time()
wait("running")
while latest_step() < 3:  # let it train a few steps, then pause
    time.sleep(1)
client.fine_tuning.jobs.pause(job.id)
job = wait("paused")
checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]
print("paused at step", checkpoint.step_number, "->", checkpoint.fine_tuned_model_checkpoint)

client.fine_tuning.jobs.resume(job.id)
job = wait("succeeded")
for event in reversed(client.fine_tuning.jobs.list_events(job.id, limit=100).data):
    print(" ", event.message)
print(job.status, job.fine_tuned_model, f"trained_tokens={job.trained_tokens}", f"{time.time() - start:.0f}s")
print(client.files.content(job.result_files[0]).text[:300])
