"""Using fine-tuned models through the real service and the official openai SDK: chat completions (plain and
streamed) for base, fine-tuned and checkpoint models, greedy output equal to plain transformers on the merged
export, sharing with another organization, export downloads, and continued training on top of an ft: model."""

from __future__ import annotations

import io
import signal
import tarfile
import time

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import Server, _kill_trainers
from tests.helpers import all_events, chat_rows, upload, wait_for

QUESTION = [{"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is item number 3?"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """acme's fine-tuned tiny model (trained hard enough to answer differently from the base), on SQLite."""
    data_dir = tmp_path_factory.mktemp("chat")
    server = Server(data_dir, f"sqlite:///{data_dir / 'openft.db'}", {"tiny": str(tiny_model)})
    keys = {org: server.cli("keys", "create", "--org", org) for org in ("acme", "globex", "initech")}
    server.start()
    acme = server.client(api_key=keys["acme"])
    valid_rows = chat_rows(10, offset=100)
    job = acme.fine_tuning.jobs.create(
        model="tiny", training_file=upload(acme, chat_rows(12)), validation_file=upload(acme, valid_rows, "v.jsonl"),
        hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 20}, seed=5, suffix="chat",
    )
    job = wait_for(acme, job.id, "succeeded")
    clients = {org: server.client(api_key=key) for org, key in keys.items()}
    yield {"server": server, "c": clients, "job": job, "keys": keys, "valid_rows": valid_rows}
    server.stop(signal.SIGKILL)
    _kill_trainers(data_dir)


def checkpoint_name(t) -> str:
    return t["c"]["acme"].fine_tuning.jobs.checkpoints.list(t["job"].id).data[-1].fine_tuned_model_checkpoint


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1/llm"])
def test_base_fine_tuned_and_checkpoint_models_answer_plain_and_streamed(trained, prefix):
    acme = trained["server"].client(prefix, api_key=trained["keys"]["acme"])
    answers = {}
    for model in ("tiny", trained["job"].fine_tuned_model, checkpoint_name(trained)):
        plain = acme.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0)
        assert plain.object == "chat.completion" and plain.model == model and plain.id.startswith("chatcmpl-")
        message = plain.choices[0].message
        assert message.role == "assistant" and plain.choices[0].finish_reason in ("stop", "length")
        assert 0 < plain.usage.completion_tokens <= 12 and plain.usage.prompt_tokens > 10
        assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

        chunks = list(acme.chat.completions.create(model=model, messages=QUESTION, max_tokens=12, temperature=0,
                                                   stream=True, stream_options={"include_usage": True}))
        assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == message.content
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish == [plain.choices[0].finish_reason]
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
        answers[model] = message.content
    assert answers["tiny"] != answers[trained["job"].fine_tuned_model]  # the adapter is applied


def test_greedy_through_the_service_equals_transformers_on_the_merged_export(trained, tmp_path):
    server, model = trained["server"], trained["job"].fine_tuned_model
    out = tmp_path / "merged"
    server.cli("export", model, "--org", "acme", "--format", "merged", "--out", str(out))
    tokenizer = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    with torch.no_grad():
        ids = merged.generate(**prompt, do_sample=False, max_new_tokens=20, pad_token_id=tokenizer.eos_token_id)
    new = ids[0, prompt["input_ids"].shape[1]:].tolist()
    if tokenizer.convert_tokens_to_ids("<|im_end|>") in new:
        new = new[: new.index(tokenizer.convert_tokens_to_ids("<|im_end|>")) + 1]
    expected = tokenizer.decode(new, skip_special_tokens=True)

    got = trained["c"]["acme"].chat.completions.create(model=model, messages=QUESTION, max_tokens=20, temperature=0)
    assert got.choices[0].message.content == expected
    assert got.usage.completion_tokens == len(new)


def test_a_shared_checkpoint_can_be_sampled_by_the_grantee_only(trained):
    c, checkpoint = trained["c"], checkpoint_name(trained)
    with pytest.raises(openai.NotFoundError) as err:
        c["globex"].chat.completions.create(model=checkpoint, messages=QUESTION, max_tokens=2)
    assert err.value.code == "model_not_found"
    perm = c["acme"].fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=["globex"]).data[0]
    mine = c["acme"].chat.completions.create(model=checkpoint, messages=QUESTION, max_tokens=6, temperature=0)
    theirs = c["globex"].chat.completions.create(model=checkpoint, messages=QUESTION, max_tokens=6, temperature=0)
    assert theirs.choices[0].message.content == mine.choices[0].message.content
    for model in (checkpoint, trained["job"].fine_tuned_model, "ft:tiny:nobody::AAAAAAAA"):
        with pytest.raises(openai.NotFoundError) as err:
            c["initech"].chat.completions.create(model=model, messages=QUESTION, max_tokens=2)
        assert err.value.code == "model_not_found"
    c["acme"].fine_tuning.checkpoints.permissions.delete(perm.id, fine_tuned_model_checkpoint=checkpoint)
    with pytest.raises(openai.NotFoundError):
        c["globex"].chat.completions.create(model=checkpoint, messages=QUESTION, max_tokens=2)


def test_bad_chat_requests_are_400s_naming_the_field(trained):
    acme = trained["c"]["acme"]
    cases = [({"temperature": 3}, "temperature"), ({"n": 0}, "n"), ({"max_tokens": 0}, "max_tokens"),
             ({"messages": []}, "messages"), ({"logprobs": True}, "logprobs")]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            acme.chat.completions.create(**{"model": "tiny", "messages": QUESTION, **extra})
        assert err.value.param == param, (extra, err.value.param)


def test_sampling_with_a_seed_repeats_and_n_gives_several_choices(trained):
    acme, model = trained["c"]["acme"], trained["job"].fine_tuned_model
    kw = dict(model=model, messages=QUESTION, max_tokens=10, temperature=1.0, seed=11, n=2)
    a, b = acme.chat.completions.create(**kw), acme.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_export_downloads_through_the_api(trained):
    server, model = trained["server"], trained["job"].fine_tuned_model
    headers = {"authorization": f"Bearer {trained['keys']['acme']}"}
    for fmt, expected in (("adapter", "adapter_model.safetensors"), ("merged", "model.safetensors")):
        r = httpx.get(f"{server.url}/v1/models/{model}/export", params={"format": fmt}, headers=headers, timeout=120)
        assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
        with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
            assert any(name.endswith(expected) for name in tar.getnames())
    other = {"authorization": f"Bearer {trained['keys']['initech']}"}
    r = httpx.get(f"{server.url}/v1/models/{model}/export", params={"format": "adapter"}, headers=other)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.get(f"{server.url}/v1/models/{model}/export", params={"format": "gguf"}, headers=headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "format"


def test_continued_training_starts_from_the_parents_weights(trained):
    """A job on top of ft:… trains from its weights: with the parent's validation file as its training file in one
    batch, its first loss is the parent's last full evaluation of that same file."""
    acme, parent = trained["c"]["acme"], trained["job"]
    parent_eval = [e.data for e in all_events(acme, parent.id) if e.type == "metrics"][-1]["full_valid_loss"]
    child = acme.fine_tuning.jobs.create(
        model=parent.fine_tuned_model, training_file=upload(acme, trained["valid_rows"]), seed=1,
        hyperparameters={"n_epochs": 1, "batch_size": 10},
    )
    child = wait_for(acme, child.id, "succeeded")
    first = [e.data for e in all_events(acme, child.id) if e.type == "metrics"][0]
    assert first["step"] == 1 and first["train_loss"] == pytest.approx(parent_eval, rel=1e-4)
    assert child.fine_tuned_model.startswith("ft:tiny:acme::")


def test_a_checkpoint_of_a_running_job_answers_chat_completions(trained):
    acme = trained["c"]["acme"]
    job = acme.fine_tuning.jobs.create(
        model="tiny", training_file=upload(acme, chat_rows(12)), seed=3, suffix="live",
        hyperparameters={"n_epochs": 50, "batch_size": 4, "learning_rate_multiplier": 20})
    try:
        deadline = time.time() + 180
        while not (checkpoints := acme.fine_tuning.jobs.checkpoints.list(job.id).data):
            assert time.time() < deadline and acme.fine_tuning.jobs.retrieve(job.id).status in (
                "validating_files", "queued", "running")
            time.sleep(0.2)
        newest = checkpoints[0].fine_tuned_model_checkpoint
        answer = acme.chat.completions.create(model=newest, messages=QUESTION, max_tokens=5, temperature=0)
        assert answer.model == newest and answer.usage.completion_tokens > 0
        assert acme.fine_tuning.jobs.retrieve(job.id).status == "running"  # it was sampled while training
    finally:
        acme.fine_tuning.jobs.cancel(job.id)
        wait_for(acme, job.id, "cancelled")


def test_a_client_that_goes_away_frees_its_generation(trained):
    """Plain and streamed: the worker stops the request (it logs a cancel) instead of generating for nobody."""
    server, log = trained["server"], trained["server"].data_dir / "inference.log"
    url, headers = f"{server.url}/v1/chat/completions", {"authorization": f"Bearer {trained['keys']['acme']}"}
    long = {"model": "tiny", "messages": QUESTION, "max_tokens": 1900, "n": 16, "temperature": 0}
    trained["c"]["acme"].chat.completions.create(model="tiny", messages=QUESTION, max_tokens=1)  # worker warm

    def cancels() -> int:
        return log.read_text().count(" cancelled") if log.exists() else 0

    def wait_for_cancel(before: int) -> None:
        deadline = time.time() + 60
        while cancels() == before:
            assert time.time() < deadline, "the abandoned generation was not stopped"
            time.sleep(0.2)

    before = cancels()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=long, headers=headers, timeout=3)
    wait_for_cancel(before)

    before = cancels()
    with httpx.stream("POST", url, json={**long, "stream": True}, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first chunk, then hang up
    wait_for_cancel(before)
