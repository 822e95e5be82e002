"""Security properties through the real service with API keys (official openai SDK and httpx): model graders
sample as the organization that runs them, sharing grants sampling and training but never the weights, one export
process per model however many ask, archives deleted with their model, and internal tokens that cannot be forged."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from openft import auth
from openft.config import Settings
from tests.conftest import Server, _kill_trainers
from tests.helpers import chat_rows, upload, wait_for


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """acme's fine-tuned tiny model (two epochs, so with an intermediate checkpoint), on SQLite."""
    data_dir = tmp_path_factory.mktemp("security")
    server = Server(data_dir, f"sqlite:///{data_dir / 'openft.db'}", {"tiny": str(tiny_model)})
    keys = {org: server.cli("keys", "create", "--org", org) for org in ("acme", "globex")}
    server.start()
    acme = server.client(api_key=keys["acme"])
    job = acme.fine_tuning.jobs.create(model="tiny", training_file=upload(acme, chat_rows(12)), seed=2,
                                       hyperparameters={"n_epochs": 2, "batch_size": 4}, suffix="sec")
    job = wait_for(acme, job.id, "succeeded")
    clients = {org: server.client(api_key=key) for org, key in keys.items()}
    headers = {org: {"Authorization": f"Bearer {key}"} for org, key in keys.items()}
    yield {"server": server, "c": clients, "h": headers, "job": job}
    server.stop(signal.SIGKILL)
    _kill_trainers(data_dir)


def _judge(model: str) -> dict:
    return {"type": "score_model", "name": "judge", "model": model,
            "input": [{"role": "user", "content": "Rate {{sample.output_text}} from 0 to 1."}],
            "sampling_params": {"max_completions_tokens": 4}}


def test_model_graders_sample_as_the_organization_that_runs_them(trained):
    model = trained["job"].fine_tuned_model
    theirs = trained["c"]["globex"].fine_tuning.alpha.graders.run(grader=_judge(model), model_sample="x")
    errors = theirs.metadata.errors
    assert errors.model_grader_server_error and "HTTP 404" in errors.model_grader_server_error_details
    assert "model_not_found" in errors.model_grader_server_error_details  # acme's model does not exist for globex
    own = trained["c"]["acme"].fine_tuning.alpha.graders.run(grader=_judge(model), model_sample="x")
    assert not own.metadata.errors.model_grader_server_error, own.metadata.errors.model_grader_server_error_details
    assert own.model_grader_token_usage_per_model[model]["completion_tokens"] > 0  # acme's grader sampled it


def test_sharing_grants_sampling_and_training_but_no_export(trained):
    server, c, h, job = trained["server"], trained["c"], trained["h"], trained["job"]
    model = job.fine_tuned_model
    c["acme"].fine_tuning.checkpoints.permissions.create(model, project_ids=["globex"])
    assert c["globex"].chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=2).choices[0].message.content is not None
    derived = c["globex"].fine_tuning.jobs.create(model=model, training_file=upload(c["globex"], chat_rows(10)),
                                                  hyperparameters={"n_epochs": 1, "batch_size": 10,
                                                                   "learning_rate_multiplier": 1e-9})
    derived = wait_for(c["globex"], derived.id, "succeeded")
    for name in (model, derived.fine_tuned_model):
        for fmt in ("merged", "adapter"):
            r = httpx.get(f"{server.url}/v1/models/{name}/export", params={"format": fmt}, headers=h["globex"])
            assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_exportable", r.text
            assert "shared" in r.json()["error"]["message"]
    r = httpx.get(f"{server.url}/v1/models/{model}/export", params={"format": "adapter"}, headers=h["acme"])
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('-adapter.tar.gz"')
    filename = r.headers["content-disposition"].split("filename=")[1].strip('"')
    assert all(ch.isalnum() or ch in "._-" for ch in filename) and ".." not in filename


def test_concurrent_exports_share_one_process_and_the_archive_goes_with_the_model(trained):
    server, c, h, job = trained["server"], trained["c"], trained["h"], trained["job"]
    checkpoint = c["acme"].fine_tuning.jobs.checkpoints.list(job.id).data[-1].fine_tuned_model_checkpoint
    assert checkpoint.endswith(":ckpt-step-3")
    seen, done = [], threading.Event()

    def count_exporters():
        while not done.is_set():
            seen.append(sum(1 for p in Path("/proc").glob("[0-9]*/cmdline") if _is_export(p, server.data_dir)))
            time.sleep(0.02)

    watcher = threading.Thread(target=count_exporters)
    watcher.start()
    url = f"{server.url}/v1/models/{checkpoint}/export"
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: httpx.get(url, params={"format": "merged"}, headers=h["acme"],
                                                        timeout=300), range(3)))
    finally:
        done.set()
        watcher.join()
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].content == answers[1].content == answers[2].content
    assert max(seen) == 1  # one export process served all three
    assert list((server.data_dir / "exports").glob("*.tar.gz"))
    c["acme"].models.delete(checkpoint)
    assert not list((server.data_dir / "exports").glob("*-merged.tar.gz"))


def _is_export(cmdline: Path, data_dir: Path) -> bool:
    try:
        parts = cmdline.read_bytes().split(b"\0")
    except OSError:
        return False
    return b"openft.export" in parts and any(str(data_dir).encode() in part for part in parts)


def test_internal_tokens_name_one_organization_and_cannot_be_forged(tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path)
    token = auth.mint(settings, "acme")
    assert auth.verify(settings, token) == ("acme", None)
    assert auth.verify(settings, auth.mint(settings, "acme", job_id="ftjob-1")) == ("acme", "ftjob-1")
    assert auth.verify(settings, token.replace("acme", "globex", 1)) is None  # the signature covers the org
    assert auth.verify(Settings(data_dir=tmp_path / "other"), token) is None  # another server's secret
    assert (tmp_path / "internal-token.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setattr(time, "time", lambda: 4e9)
    assert auth.verify(settings, token) is None  # expired


def test_a_python_grader_that_fills_the_disk_is_stopped_at_the_total_cap():
    from openft.graders.outcome import GradeError
    from openft.graders.sandbox import run_python

    source = ("def grade(sample, item):\n    for n in range(200):\n        with open(f'f{n}', 'wb') as f:\n"
              "            f.write(b'x' * (2 << 20))\n    return 1.0\n")  # 400 MB in files of 2 MB, under the per-file cap
    with pytest.raises(GradeError) as err:
        run_python(source, {}, {}, disk_bytes=16 << 20)
    assert err.value.flag == "python_grader_runtime_error" and "disk" in err.value.details
    assert run_python(source.replace("200", "2"), {}, {}, disk_bytes=16 << 20) == 1.0


def test_a_training_file_line_past_the_limit_is_refused_naming_the_line():
    from openft.validation import MAX_JSONL_LINE_BYTES, validate_training_file

    row = {"messages": [{"role": "user", "content": "x" * MAX_JSONL_LINE_BYTES},
                        {"role": "assistant", "content": "y"}]}
    report = validate_training_file(b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
                                    b'"content": "yo"}]}\n' + (json.dumps(row) + "\n").encode(),
                                    param="training_file", min_examples=1)
    assert report.error["code"] == "invalid_training_file"
    assert report.error["message"].startswith("Line 2: is ") and "at most" in report.error["message"]


def test_a_jobs_internal_token_works_only_while_the_job_is_not_finished(trained):
    server, c, job = trained["server"], trained["c"], trained["job"]
    settings = Settings(data_dir=server.data_dir)  # the server's own secret, as its scheduler mints them
    models = server.url + "/v1/models"

    def as_token(token: str) -> httpx.Response:
        return httpx.get(models, headers={"Authorization": f"Bearer {token}"})

    r = as_token(auth.mint(settings, "acme"))
    assert r.status_code == 200 and job.fine_tuned_model in {m["id"] for m in r.json()["data"]}
    assert as_token(auth.mint(settings, "acme", job_id=job.id)).status_code == 401  # that job has finished
    live = c["acme"].fine_tuning.jobs.create(model="tiny", training_file=upload(c["acme"], chat_rows(10)))
    token = auth.mint(settings, "acme", job_id=live.id)
    assert as_token(token).status_code == 200
    assert as_token(auth.mint(settings, "globex", job_id=live.id)).status_code == 401  # not globex's job
    c["acme"].fine_tuning.jobs.cancel(live.id)
    wait_for(c["acme"], live.id, "cancelled")
    assert as_token(token).status_code == 401
