"""Chat completions (OpenAI's ``POST /chat/completions``) for catalog, fine-tuned and checkpoint models.

The API process never imports torch: it checks the request (``openft.infer.request``), resolves the model name
for the caller (``openft.models``: another organization's model is a 404 unless it was shared), and hands the
generation to the inference worker through ``InferenceClient``. This module shapes the worker's answer as OpenAI's
``chat.completion`` object, or as ``chat.completion.chunk`` server-sent events ending in ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.concurrency import run_in_threadpool

from openft import models
from openft.errors import APIError, InvalidRequest
from openft.ids import now
from openft.infer.client import InferenceClient, InferenceError
from openft.infer.request import parse_chat_request
from openft.services import Services
from openft.store import Scope


class InferenceFailed(APIError):
    """An error from the inference worker, rendered in the same envelope as every other error."""

    def __init__(self, err: InferenceError):
        super().__init__(err.message, param=err.param, code=err.code)
        self.status, self.type = err.status, err.type
        self.headers = {"retry-after": str(err.retry_after)} if err.retry_after is not None else {}


class ClientGone(APIError):
    """The caller disconnected before its answer was ready: the generation was stopped (nobody reads this)."""

    status = 499


def _model(svc: Services, who: Scope, body: dict) -> tuple[str, dict]:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("model is required: the name of a base, fine-tuned or checkpoint model.", param="model")
    ref = models.materialize(svc.settings, models.resolve(svc.store, svc.settings, who.org, name))
    adapter = ref.adapters[-1] if ref.adapters else None
    return name, {"base": str(ref.base_path), "adapter": adapter, "parents": ref.adapters[:-1]}


async def complete(svc: Services, client: InferenceClient, who: Scope, body: dict,
                   gone: Callable[[], Awaitable[None]] | None = None):
    """A ``chat.completion`` dict, or (``stream: true``) an async iterator of SSE lines. ``gone`` returns when the
    caller disconnects: a non-streamed generation is then stopped rather than finished for nobody (a stream stops
    when its reader does)."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    params = parse_chat_request(body)
    name, model = await run_in_threadpool(_model, svc, who, body)  # SQL: off the event loop
    completion_id, created = "chatcmpl-" + secrets.token_hex(12), now()
    if not params.stream:
        try:
            result = await _unless_gone(client.chat(model, body), gone)
        except InferenceError as err:
            raise InferenceFailed(err) from None
        choices = [{**c, "logprobs": None} for c in result["choices"]]
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": name,
                "choices": choices, "usage": result["usage"], "system_fingerprint": None}
    events = client.chat_stream(model, body)
    try:
        first = await anext(events)  # a bad request fails here, while a plain error response is still possible
    except InferenceError as err:
        raise InferenceFailed(err) from None
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return _sse(events, first, params.n, usage, {"id": completion_id, "created": created, "model": name})


async def _unless_gone(work: Awaitable[dict], gone: Callable[[], Awaitable[None]] | None) -> dict:
    """Await ``work``, cancelling it (which cancels the generation in the worker) if the caller goes away first."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(gone()) if gone is not None else None
    try:
        await asyncio.wait({task} | ({watch} if watch else set()), return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise ClientGone("The client disconnected; the generation was stopped.")
        return task.result()
    finally:
        for pending in (task, watch):
            if pending is not None and not pending.done():
                pending.cancel()
        await asyncio.gather(*(t for t in (task, watch) if t is not None), return_exceptions=True)


async def _sse(events: AsyncIterator[dict], first: dict, n: int, include_usage: bool, head: dict):
    def chunk(choices: list[dict], usage=None) -> str:
        body = {**head, "object": "chat.completion.chunk", "choices": choices, "system_fingerprint": None}
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    def choice(index: int, delta: dict, finish_reason=None) -> dict:
        return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}

    yield chunk([choice(i, {"role": "assistant", "content": ""}) for i in range(n)])
    event = first
    try:
        while True:
            if event.get("done"):
                if include_usage:
                    yield chunk([], event["usage"])
                break
            yield chunk([choice(event["index"], event.get("delta") or {}, event.get("finish_reason"))])
            event = await anext(events)
    except InferenceError as err:  # the worker failed mid-stream: say so in the stream, as OpenAI does
        yield f"data: {json.dumps(err.body(), separators=(',', ':'))}\n\n"
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"
