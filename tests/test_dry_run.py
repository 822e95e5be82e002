"""The dry run of job creation (an extension): a plan with figures and nothing created, or the very error the job
would fail with; the API process still never loads torch."""

from __future__ import annotations

import math
from pathlib import Path

import openai
import pytest

from tests.helpers import chat_rows, jsonl, upload, wait_for


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # test time: its SQL is one plain query
def test_a_dry_run_returns_the_plan_and_creates_nothing(server):
    client = server.client()
    train, valid = upload(client, chat_rows(25)), upload(client, chat_rows(5, offset=50), "valid.jsonl")
    plan = client.fine_tuning.jobs.with_raw_response.create(
        model="tiny", training_file=train, validation_file=valid, extra_body={"dry_run": True},
        method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
    ).http_response.json()
    assert plan["object"] == "fine_tuning.job.dry_run" and plan["model"] == "tiny"
    hp = plan["method"]["supervised"]["hyperparameters"]
    assert hp == {"batch_size": 8, "learning_rate_multiplier": 2.0, "n_epochs": 4}  # 25 examples: 100 // 25 epochs
    assert plan["hyperparameters"] == hp
    assert plan["training_file"]["id"] == train and plan["training_file"]["n_examples"] == 25
    assert plan["validation_file"]["n_examples"] == 5 and plan["validation_file"]["n_truncated"] == 0
    assert plan["total_steps"] == math.ceil(25 / 8) * 4
    assert plan["trained_tokens"] == plan["training_file"]["n_tokens"] * 4 > 0
    assert plan["estimated_seconds"] > 0 and plan["estimated_peak_memory_bytes"] > 0
    assert plan["calibration"]["source"] == "default"
    assert client.fine_tuning.jobs.list().data == []
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps  # counting tokens ran in a child process

    # The real job trains exactly the tokens the plan counted, and calibrates the next plan.
    method = {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}}
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train, validation_file=valid, method=method)
    done = wait_for(client, job.id, "succeeded")
    assert done.trained_tokens == plan["trained_tokens"]
    again = client.post("/fine_tuning/jobs", cast_to=object,
                        body={"model": "tiny", "training_file": train, "dry_run": True})
    assert again["calibration"]["source"] == "measured" and again["calibration"]["jobs"] == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_dry_run_of_a_bad_file_fails_with_the_jobs_error(server):
    client = server.client()
    good = upload(client, chat_rows(12))
    bad = upload(client, jsonl(chat_rows(2)) + b'{"messages": [{"role": "user"}]}\n' + jsonl(chat_rows(10)))
    for param in ("training_file", "validation_file"):
        files = {"training_file": good, param: bad}
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model="tiny", **files, extra_body={"dry_run": True})
        job = wait_for(client, client.fine_tuning.jobs.create(model="tiny", **files).id, "failed")
        error = caught.value.body
        assert caught.value.status_code == 400 and error["type"] == "invalid_request_error"
        assert (error["code"], error["param"], error["message"]) == (job.error.code, job.error.param, job.error.message)
        assert error["message"].startswith("Line 3: ") and error["param"] == param
