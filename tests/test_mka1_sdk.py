"""The MKA1 SDK's own model objects, chat stream and file content against the service: models carry true values
from the model's files (context window, parameter count, licence, languages), fine-tuned models name the model
they were trained on, ``chat.stream`` parses, and a .jsonl file's content comes back with a type the SDK takes."""

from __future__ import annotations

import io
import json
import math
import shutil
import signal

import httpx
import pytest
from meetkai_mka1 import SDK
from safetensors import safe_open

from tests.conftest import Server, _kill_trainers
from tests.helpers import chat_rows, jsonl, upload, wait_for

CARD = "---\nlicense: apache-2.0\nlanguage:\n- en\n- fr\nbase_model: HuggingFaceTB/SmolLM2-135M\n---\n# tiny\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """A server whose catalog model has a model card, and one fine-tuned model of it."""
    data_dir = tmp_path_factory.mktemp("mka1")
    model = data_dir / "tiny-card"
    shutil.copytree(tiny_model, model)
    (model / "README.md").write_text(CARD)
    server = Server(data_dir, f"sqlite:///{data_dir / 'openft.db'}", {"tiny": str(model)}).start()
    client = server.client()
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(10)), seed=1,
                                         hyperparameters={"n_epochs": 1, "batch_size": 5}, suffix="card")
    job = wait_for(client, job.id, "succeeded")
    with SDK(bearer_auth="unused", server_url=server.url) as sdk:
        yield server, sdk, job, model
    server.stop(signal.SIGKILL)
    _kill_trainers(data_dir)


def _parameters(folder) -> int:
    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            total += sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    return total


def test_models_list_and_get_carry_the_model_card_from_the_models_files(trained):
    server, sdk, job, model = trained
    listed = {m.id: m for m in sdk.llm.models.list().data}
    assert {"tiny", job.fine_tuned_model} <= set(listed)
    base = sdk.llm.models.get(model_id="tiny")
    config = json.loads((model / "config.json").read_text())
    assert base.context_window == config["max_position_embeddings"] == listed["tiny"].context_window
    assert base.parameter_count == _parameters(model) > 0
    assert (base.license, base.languages, base.base_model) == ("apache-2.0", ["en", "fr"], "HuggingFaceTB/SmolLM2-135M")
    assert base.model_type == "llm" and base.input_modalities == ["text"] and base.active_parameter_count is None
    assert base.lifecycle.status == "active" and base.capabilities.supports_temperature
    tuned = sdk.llm.models.get(model_id=job.fine_tuned_model)
    assert tuned.base_model == "tiny" and tuned.owned_by == "org_local" and tuned.weights == "open"
    assert (tuned.context_window, tuned.parameter_count, tuned.license) == (base.context_window,
                                                                           base.parameter_count, "apache-2.0")
    # OpenAI's prefix keeps OpenAI's four fields
    assert set(httpx.get(server.url + "/v1/models/tiny").json()) == {"id", "object", "created", "owned_by"}
    assert {m["id"]: set(m) for m in httpx.get(server.url + "/v1/models").json()["data"]}["tiny"] == {
        "id", "object", "created", "owned_by"}


def test_chat_stream_through_the_mka1_sdk_yields_chunks_then_done(trained):
    _, sdk, job, _ = trained
    events = list(sdk.llm.chat.stream(model=job.fine_tuned_model, max_tokens=4, temperature=0,
                                      messages=[{"role": "user", "content": "What is item number 3?"}]))
    kinds = [e.event for e in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"message"} and len(kinds) >= 3, kinds
    text = "".join(e.data.choices[0].delta.content or "" for e in events[:-1] if e.data.choices)
    assert events[0].data.object == "chat.completion.chunk" and text


def test_file_content_of_a_jsonl_file_parses_in_the_mka1_sdk(trained):
    server, sdk, _, _ = trained
    data = jsonl(chat_rows(3))
    uploaded = sdk.llm.files.upload(file={"file_name": "rows.jsonl", "content": io.BytesIO(data)}, purpose="fine-tune")
    response = sdk.llm.files.content(file_id=uploaded.id)
    assert response.headers["content-type"].startswith("application/jsonl") and response.read() == data


def test_the_demo_models_conversion_keeps_the_gguf_files_licence_and_languages(tmp_path):
    from openft import modelcard
    from openft.train.convert import smollm2_gguf_path, write_model_card

    write_model_card(smollm2_gguf_path(), tmp_path)
    card = modelcard.read(tmp_path)
    assert (card.license, card.languages) == ("apache-2.0", ["en"])
