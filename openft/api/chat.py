"""Routes for chat/completions: sample a base, fine-tuned or checkpoint model (see openft.sampling).

MKA1 also serves ``POST /api/v1/llm/chat/completions/stream`` (``mka1_router``): the same request, always
streamed, as server-sent events that name their kind — ``event: message`` with a ``chat.completion.chunk``,
``event: error`` with the error envelope as a JSON string, and a closing ``event: done``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from openft import protocol as p
from openft import sampling
from openft.api.deps import scope, services
from openft.api.openapi import json_body
from openft.errors import InvalidRequest
from openft.services import Services
from openft.store import Scope

router = APIRouter(tags=["chat"])
mka1_router = APIRouter(tags=["chat"])


@router.post("/chat/completions", openapi_extra=json_body(p.ChatCompletionRequest),
             responses={200: {"content": {"text/event-stream": {}}}})
async def create_chat_completion(request: Request, who: Scope = Depends(scope), svc: Services = Depends(services)):
    body = await _json_object(request)
    result = await sampling.complete(svc, request.app.state.inference, who, body, lambda: _disconnect(request))
    if isinstance(result, dict):
        return result
    return StreamingResponse(result, media_type="text/event-stream", headers={"cache-control": "no-cache"})


@mka1_router.post("/chat/completions/stream", openapi_extra=json_body(p.ChatCompletionRequest),
                   response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def stream_chat_completion(request: Request, who: Scope = Depends(scope), svc: Services = Depends(services)):
    body = await _json_object(request)
    result = await sampling.complete(svc, request.app.state.inference, who, {**body, "stream": True})
    return StreamingResponse(_named_events(result), media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})


async def _json_object(request: Request) -> dict:
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


async def _named_events(lines: AsyncIterator[str]):
    """OpenAI's ``data:`` lines as MKA1's named events."""
    async for line in lines:
        data = line.removeprefix("data: ").strip()
        if data == "[DONE]":
            yield "event: done\ndata: [DONE]\n\n"
        elif data.startswith('{"error"'):
            yield f"event: error\ndata: {json.dumps(data)}\n\n"
        else:
            yield f"event: message\ndata: {data}\n\n"


async def _disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
