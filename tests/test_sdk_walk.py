"""Every public method of both official SDKs' fine-tuning surface, sync and async, called against the service and
parsed without error: ``meetkai_mka1``'s ``llm.fine_tuning``, ``llm.files``, ``llm.models`` and ``llm.chat``, and the
openai SDK's files, uploads, fine_tuning, models and chat. The methods are enumerated by introspection, so a method
that a new SDK version adds fails here until it is called below or listed as out of scope with its reason."""

from __future__ import annotations

import asyncio
import inspect
import io
import signal

import pytest
from meetkai_mka1 import SDK
from openai import AsyncOpenAI, OpenAI
from openai._resource import AsyncAPIResource, SyncAPIResource
from pydantic import BaseModel, ValidationError

from tests.conftest import Server, _kill_trainers
from tests.helpers import chat_rows, jsonl, upload, wait_for

OPENAI_RESOURCES = ("files", "uploads", "fine_tuning", "models", "chat")
MKA1_RESOURCES = ("fine_tuning", "files", "models", "chat")
OUT_OF_SCOPE = {
    # Stored chat completions (`store: true`) are not kept by this service: it samples, it does not log.
    "chat.completions.list": "stored completions are not kept",
    "chat.completions.retrieve": "stored completions are not kept",
    "chat.completions.update": "stored completions are not kept",
    "chat.completions.delete": "stored completions are not kept",
    "chat.completions.messages.list": "stored completions are not kept",
    # Structured outputs: response_format json_schema is refused with a 400 (generation is not constrained).
    "chat.completions.parse": "structured outputs (json_schema response formats) are not supported",
}
MKA1_MODELS_IN_SCOPE = {"list", "get"}  # the rest of llm.models administers MKA1's gateway catalog, prices, quotas
GRADER = {"type": "string_check", "name": "eq", "input": "{{sample.output_text}}", "reference": "Paris",
          "operation": "eq"}
PAUSE_STATUSES = ("pausing", "paused")
QUESTION = [{"role": "user", "content": "What is item number 2?"}]


def openai_methods(client) -> list[str]:
    """Dotted names of every public method under the SDK's resources we serve."""
    out: list[str] = []

    def walk(obj, path):
        for name in dir(type(obj)):
            if name.startswith("_") or name in ("with_raw_response", "with_streaming_response"):
                continue
            attr = getattr(type(obj), name)
            if isinstance(attr, property) or type(attr).__name__ == "cached_property":
                child = getattr(obj, name)
                if isinstance(child, (SyncAPIResource, AsyncAPIResource)):
                    walk(child, f"{path}.{name}")
            elif callable(attr):
                out.append(f"{path}.{name}")

    for resource in OPENAI_RESOURCES:
        walk(getattr(client, resource), resource)
    return out


def mka1_methods(sdk) -> list[str]:
    out = []
    for resource in MKA1_RESOURCES:
        obj = getattr(sdk.llm, resource)
        names = [n for n in vars(type(obj)) if not n.startswith("_") and callable(getattr(obj, n))]
        out += [f"{resource}.{n}" for n in names
                if resource != "models" or n.removesuffix("_async") in MKA1_MODELS_IN_SCOPE]
    return out


def mka1_out_of_scope(sdk) -> set[str]:
    obj = sdk.llm.models
    names = [n for n in vars(type(obj)) if not n.startswith("_") and callable(getattr(obj, n))]
    return {f"models.{n}" for n in names if n.removesuffix("_async") not in MKA1_MODELS_IN_SCOPE}


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model):
    """A server with one fine-tuned model (3 epochs: two epoch checkpoints and the final model)."""
    data_dir = tmp_path_factory.mktemp("walk")
    server = Server(data_dir, f"sqlite:///{data_dir / 'openft.db'}", {"tiny": str(tiny_model)}).start()
    client = server.client()
    train = upload(client, chat_rows(10))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=train, seed=1, suffix="walk",
                                         hyperparameters={"n_epochs": 3, "batch_size": 5})
    job = wait_for(client, job.id, "succeeded")
    checkpoints = [c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id)
                   if c.fine_tuned_model_checkpoint != job.fine_tuned_model]
    yield {"server": server, "train": train, "job": job, "checkpoints": checkpoints}
    server.stop(signal.SIGKILL)
    _kill_trainers(data_dir)


def _check(result) -> None:
    """A result parsed into the SDK's models: re-validate it strictly against its own class (the openai SDK
    builds its models without validation). The one allowed difference: the job statuses ``pausing`` and
    ``paused``, which this service adds to OpenAI's (the SDK passes them through)."""
    if isinstance(result, BaseModel) and hasattr(result, "to_dict"):
        try:
            type(result).model_validate(result.to_dict())
        except ValidationError as err:
            other = [e for e in err.errors() if not (e["loc"] == ("status",) and e["input"] in PAUSE_STATUSES)]
            assert not other, other


async def _call(fn, *args, **kwargs):
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    _check(result)
    return result


async def _walk_openai(client, env, spare_checkpoint: str) -> set[str]:
    """Calls every in-scope method once; returns the names it called."""
    called: set[str] = set()

    async def call(name, *args, **kwargs):
        obj = client
        for part in name.split("."):
            obj = getattr(obj, part)
        called.add(name)
        return await _call(obj, *args, **kwargs)

    data = jsonl(chat_rows(10))
    file = await call("files.create", file=("walk.jsonl", io.BytesIO(data)), purpose="fine-tune")
    await call("files.retrieve", file.id)
    await call("files.wait_for_processing", file.id, poll_interval=0.1)
    assert (await call("files.content", file.id)).content == data
    assert await call("files.retrieve_content", file.id) == data.decode()
    await call("files.list")
    assert (await call("files.delete", file.id)).deleted

    up = await call("uploads.create", bytes=len(data), filename="up.jsonl", mime_type="application/jsonl",
                    purpose="fine-tune")
    part = await call("uploads.parts.create", up.id, data=data)
    assert (await call("uploads.complete", up.id, part_ids=[part.id])).file.bytes == len(data)
    other = await _call(client.uploads.create, bytes=1, filename="x.jsonl", mime_type="application/jsonl",
                        purpose="fine-tune")
    assert (await call("uploads.cancel", other.id)).status == "cancelled"
    assert (await call("uploads.upload_file_chunked", file=data, filename="c.jsonl", bytes=len(data), part_size=400,
                       mime_type="application/jsonl", purpose="fine-tune")).status == "completed"

    job = env["job"]
    new = await call("fine_tuning.jobs.create", model="tiny", training_file=env["train"],
                     hyperparameters={"n_epochs": 50, "batch_size": 1})
    assert (await call("fine_tuning.jobs.pause", new.id)).status in ("paused", "pausing")
    wait_for(env["server"].client(), new.id, "paused")  # it may have started: a running job pauses at a step end
    await call("fine_tuning.jobs.resume", new.id)
    assert (await call("fine_tuning.jobs.cancel", new.id)).status == "cancelled"
    await call("fine_tuning.jobs.retrieve", job.id)
    await call("fine_tuning.jobs.list")
    await call("fine_tuning.jobs.list_events", job.id)
    await call("fine_tuning.jobs.checkpoints.list", job.id)
    perms = await call("fine_tuning.checkpoints.permissions.create", job.fine_tuned_model, project_ids=["globex"])
    await call("fine_tuning.checkpoints.permissions.retrieve", job.fine_tuned_model)
    await call("fine_tuning.checkpoints.permissions.list", job.fine_tuned_model)
    await call("fine_tuning.checkpoints.permissions.delete", perms.data[0].id,
               fine_tuned_model_checkpoint=job.fine_tuned_model)
    await call("fine_tuning.alpha.graders.validate", grader=GRADER)
    assert (await call("fine_tuning.alpha.graders.run", grader=GRADER, model_sample="Paris")).reward == 1.0

    await call("models.list")
    assert (await call("models.retrieve", job.fine_tuned_model)).owned_by == "org_local"
    assert (await call("models.delete", spare_checkpoint)).deleted

    reply = await call("chat.completions.create", model=job.fine_tuned_model, messages=QUESTION, max_tokens=3)
    assert reply.choices[0].message.content
    stream = client.chat.completions.stream(model=job.fine_tuned_model, messages=QUESTION, max_tokens=3)
    called.add("chat.completions.stream")
    # Iterated, not get_final_completion(): the SDK refuses to "parse" any completion cut at max_tokens.
    if isinstance(client, AsyncOpenAI):
        async with stream as events:
            kinds = [event.type async for event in events]
            snapshot = events.current_completion_snapshot
    else:
        with stream as events:
            kinds = [event.type for event in events]
            snapshot = events.current_completion_snapshot
    assert "content.delta" in kinds and snapshot.choices[0].message.content
    return called


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_every_openai_sdk_method_in_scope_parses_against_the_service(env, flavour):
    server = env["server"]
    kind = OpenAI if flavour == "sync" else AsyncOpenAI
    client = kind(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    spare = env["checkpoints"][0 if flavour == "sync" else 1]
    called = asyncio.run(_walk_openai(client, env, spare))
    methods = set(openai_methods(client))
    assert called | set(OUT_OF_SCOPE) == methods, f"not walked: {methods - called - set(OUT_OF_SCOPE)}"


async def _walk_mka1(sdk, env, suffix: str) -> set[str]:
    called: set[str] = set()

    async def call(name, **kwargs):
        resource, method = name.split(".")
        called.add(name + suffix)
        return await _call(getattr(getattr(sdk.llm, resource), method + suffix), **kwargs)

    data = jsonl(chat_rows(3))
    file = await call("files.upload", file={"file_name": "m.jsonl", "content": io.BytesIO(data)}, purpose="fine-tune")
    await call("files.get", file_id=file.id)
    await call("files.list")
    content = await call("files.content", file_id=file.id)
    assert (await content.aread() if suffix else content.read()) == data
    assert (await call("files.delete", file_id=file.id)).deleted

    job = env["job"]
    new = await call("fine_tuning.create", model="tiny", training_file=env["train"],
                     hyperparameters={"n_epochs": 50, "batch_size": 1})
    await call("fine_tuning.pause", fine_tuning_job_id=new.id)
    wait_for(env["server"].client(), new.id, "paused")
    await call("fine_tuning.resume", fine_tuning_job_id=new.id)
    assert (await call("fine_tuning.cancel", fine_tuning_job_id=new.id)).status == "cancelled"
    await call("fine_tuning.retrieve", fine_tuning_job_id=job.id)
    await call("fine_tuning.list")
    await call("fine_tuning.list_events", fine_tuning_job_id=job.id)
    await call("fine_tuning.list_checkpoints", fine_tuning_job_id=job.id)

    await call("models.list")
    assert (await call("models.get", model_id=job.fine_tuned_model)).base_model == "tiny"

    reply = await call("chat.create_chat", model=job.fine_tuned_model, messages=QUESTION, max_tokens=3)
    assert reply.choices[0].message.content
    events = await call("chat.stream", model=job.fine_tuned_model, messages=QUESTION, max_tokens=3)
    kinds = [e.event async for e in events] if suffix else [e.event for e in events]
    assert kinds[-1] == "done" and "message" in kinds
    return called


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("suffix", ["", "_async"])
def test_every_mka1_sdk_method_in_scope_parses_against_the_service(env, suffix):
    with SDK(bearer_auth="unused", server_url=env["server"].url) as sdk:
        called = asyncio.run(_walk_mka1(sdk, env, suffix))
        methods = {m for m in mka1_methods(sdk) if m.endswith("_async") == bool(suffix)}
        assert called == methods, f"not walked: {methods - called}"
        assert mka1_out_of_scope(sdk)  # the gateway administration part of llm.models, listed by rule
