"""Request dependencies: who is calling (the organization the request guard authenticated, openft.api.guard;
X-On-Behalf-Of → end user) and shared services.

Both are ``async``: they only read the request, and FastAPI runs a plain ``def`` dependency in the thread pool, a
hop (two thread switches) per dependency on every request."""

from __future__ import annotations

from fastapi import Request

from openft.errors import InvalidRequest, Unauthorized
from openft.services import Services
from openft.store import Scope


async def services(request: Request) -> Services:
    return request.app.state.services


async def scope(request: Request) -> Scope:
    org = getattr(request.state, "organization", None)  # set by the guard before the route reads anything
    if org is None:
        raise Unauthorized("Missing API key: send Authorization: Bearer <key>.")
    user = request.headers.get("x-on-behalf-of")
    if user is not None and not (1 <= len(user) <= 150 and user.isascii() and user.isprintable()):
        raise InvalidRequest("X-On-Behalf-Of must be 1 to 150 printable ASCII characters.", param="X-On-Behalf-Of")
    return Scope(org=org, user=user)
