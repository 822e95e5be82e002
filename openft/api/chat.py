"""Route for chat/completions: sample a base, fine-tuned or checkpoint model (see openft.sampling)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from openft import sampling
from openft.api.deps import scope, services
from openft.errors import InvalidRequest
from openft.services import Services
from openft.store import Scope

router = APIRouter(tags=["chat"])


@router.post("/chat/completions")
async def create_chat_completion(request: Request, who: Scope = Depends(scope), svc: Services = Depends(services)):
    try:
        body = json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.") from None
    result = await sampling.complete(svc, request.app.state.inference, who, body, lambda: _disconnect(request))
    if isinstance(result, dict):
        return result
    return StreamingResponse(result, media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def _disconnect(request: Request) -> None:
    """Return when the client disconnects (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
