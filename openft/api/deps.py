"""Request dependencies: who is calling (API key → organization, X-On-Behalf-Of → end user) and shared services."""

from __future__ import annotations

from fastapi import Request

from openft.errors import InvalidRequest, Unauthorized
from openft.services import Services
from openft.store import Scope

LOCAL_ORG = "org_local"

def services(request: Request) -> Services:
    return request.app.state.services


def scope(request: Request) -> Scope:
    svc: Services = request.app.state.services
    if svc.open_mode:
        org = LOCAL_ORG
    else:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        org = svc.store.org_for_key(key) if key else None
        if org is None:
            raise Unauthorized("Incorrect API key provided." if key else "Missing API key: send Authorization: Bearer <key>.")
    user = request.headers.get("x-on-behalf-of")
    if user is not None and not (1 <= len(user) <= 150 and user.isascii() and user.isprintable()):
        raise InvalidRequest("X-On-Behalf-Of must be 1 to 150 printable ASCII characters.", param="X-On-Behalf-Of")
    return Scope(org=org, user=user)
