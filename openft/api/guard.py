"""The request guard: an ASGI middleware in front of every API route that decides, before a route reads a byte of
the body, whether the request may proceed.

In order: a single ``X-On-Behalf-Of`` header (two are a 400); the caller's organization (a 401 for a missing or
wrong key, answered without reading the body); at most ``OPENFT_MAX_REQUESTS_PER_KEY`` requests of one
organization in progress (a 429 with Retry-After); then the body's size: a ``Content-Length`` over the limit is a
413 at once, and the limit is enforced again while the body streams in (a chunked body that grows past it is cut
off with a 413). File uploads (``POST /files``, upload parts) may be ``OPENFT_MAX_FILE_BYTES`` (plus the multipart
framing) and stream through to the route; every other body may be ``OPENFT_MAX_REQUEST_BYTES`` and is read here,
checked for JSON nesting deeper than ``OPENFT_MAX_JSON_DEPTH`` (a 400, before any parser recurses into it) and
handed to the route. A NUL character in the path, the query or a JSON body is a 400 (PostgreSQL cannot store
one, and no field needs one).

The organization is left in the request's state for ``openft.api.deps.scope``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from urllib.parse import unquote_to_bytes

from fastapi.responses import JSONResponse

from openft.auth import Authenticator
from openft.errors import APIError, InvalidRequest, RateLimited, TooLarge, Unauthorized
from openft.limits import has_nul, too_deep

MULTIPART_FRAMING = 1 << 20  # boundaries, part headers and the small form fields beside the file
UPLOAD_PATHS = re.compile(r"/files|/uploads/[^/]+/parts")


class BodyTooLarge(Exception):
    """Raised into the route from ``receive`` when a streaming body passes its limit."""


class Guard:
    def __init__(self, app, prefixes: tuple[str, ...]):
        self.app, self.prefixes = app, prefixes
        self.auth = Authenticator()
        self.in_progress: dict[str, int] = defaultdict(int)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        prefix = next((p for p in self.prefixes if path.startswith(p + "/")), None)
        if scope["type"] != "http" or prefix is None:
            return await self.app(scope, receive, send)
        svc = scope["app"].state.services
        try:
            org = self._admit(svc, scope)
        except APIError as exc:
            return await _reject(exc, scope, receive, send)
        self.in_progress[org] += 1
        try:
            scope.setdefault("state", {})["organization"] = org
            upload = scope["method"] == "POST" and UPLOAD_PATHS.fullmatch(path[len(prefix):])
            if upload:
                await self._stream(svc.settings.max_file_bytes + MULTIPART_FRAMING, scope, receive, send)
            else:
                await self._buffered(svc.settings, scope, receive, send)
        finally:
            self.in_progress[org] -= 1
            if not self.in_progress[org]:
                del self.in_progress[org]

    def _admit(self, svc, scope) -> str:
        headers = scope["headers"]
        if sum(1 for name, _ in headers if name == b"x-on-behalf-of") > 1:
            raise InvalidRequest("Send X-On-Behalf-Of at most once.", param="X-On-Behalf-Of")
        authorization = next((v.decode("latin-1") for name, v in headers if name == b"authorization"), "")
        org = self.auth.organization(svc, authorization)
        if org is None:
            raise Unauthorized("Incorrect API key provided." if authorization.strip() else
                               "Missing API key: send Authorization: Bearer <key>.")
        limit = svc.settings.max_requests_per_key
        if self.in_progress[org] >= limit:
            raise RateLimited(f"Too many requests in progress for this organization (at most {limit} at once); "
                              "retry after the ones in progress finish.")
        if "\x00" in scope["path"] or b"\x00" in unquote_to_bytes(scope["query_string"]):
            raise InvalidRequest("The request's path or query contains a NUL character.", code="nul_character")
        length = next((v for name, v in headers if name == b"content-length"), None)
        if length is not None and not length.isdigit():
            raise InvalidRequest("Content-Length is not a number.")
        return org

    async def _stream(self, limit: int, scope, receive, send):
        """Pass the body through, counting: past ``limit`` the route's read fails and the answer is a 413."""
        if _declared_length(scope) > limit:
            return await _reject(_too_large(limit), scope, receive, send)
        seen, over, started = 0, False, False

        async def counted():
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                over = True
                raise BodyTooLarge()
            return message

        async def guarded_send(message):
            nonlocal started
            if over and not started:  # whatever the route made of the cut-off body, the answer is the 413
                return
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except BodyTooLarge:
            pass
        if over and not started:
            await _reject(_too_large(limit), scope, receive, send)

    async def _buffered(self, settings, scope, receive, send):
        """Read the whole (bounded) body here, check its nesting, and replay it to the route."""
        limit = settings.max_request_bytes
        if _declared_length(scope) > limit:
            return await _reject(_too_large(limit), scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return await _reject(_too_large(limit), scope, receive, send)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if too_deep(body, settings.max_json_depth):
            error = InvalidRequest("The request body nests arrays and objects more than "
                                   f"{settings.max_json_depth} levels deep.", code="json_too_deep")
            return await _reject(error, scope, receive, send)
        if has_nul(body):
            error = InvalidRequest("The request body contains a NUL character (\\u0000), which no field accepts.",
                                   code="nul_character")
            return await _reject(error, scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _declared_length(scope) -> int:
    length = next((v for name, v in scope["headers"] if name == b"content-length"), b"0")
    return int(length) if length.isdigit() else 0


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"The request body is larger than the limit of {limit} bytes.", code="request_too_large")


async def _reject(exc: APIError, scope, receive, send) -> None:
    await JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)(scope, receive, send)
