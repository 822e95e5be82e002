"""The FastAPI application: one router mounted under /v1 (OpenAI) and /api/v1/llm (MKA1), errors rendered once in
OpenAI's envelope, an x-request-id on every response, and the scheduler started with the app."""

from __future__ import annotations

import json
import logging
import uuid
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from openft import dashboard, webhooks
from openft.api import chat, checkpoints, files, graders, jobs, models, uploads
from openft.api import webhooks as webhook_routes
from openft.api import openapi
from openft.api.guard import Guard
from openft.blobs import Blobs, storage_fault
from openft.config import Settings
from openft.errors import APIError
from openft.executors import make_executor
from openft.graders.worker import GraderSlots
from openft.infer.client import InferenceClient
from openft.scheduler import Scheduler
from openft.services import Services
from openft.store import Store, migrate

log = logging.getLogger("openft")
PREFIXES = ("/v1", "/api/v1/llm")
HTTP_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url()
    migrate(url)
    store = Store(url)
    blobs = Blobs(settings.resolved_blob_url(), json.loads(settings.blob_options))
    return Services(settings=settings, store=store, blobs=blobs, open_mode=not store.has_keys())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = build_services(settings)
        app.state.services = svc
        if svc.open_mode:
            log.warning("No API keys configured: serving without auth as organization org_local (loopback only)")
        scheduler = Scheduler(svc.store, svc.blobs, settings, make_executor(settings))
        if settings.enable_scheduler:
            scheduler.start()
        app.state.scheduler = scheduler
        app.state.grader_slots = GraderSlots(settings.grader_concurrency, settings.grader_concurrency_per_org,
                                             settings.grader_queue_per_org)
        dispatcher = webhooks.Dispatcher(svc.store, settings)
        if settings.enable_webhooks:
            dispatcher.start()
        # The inference worker (torch) starts at the first chat completion, never in this process.
        app.state.inference = InferenceClient.from_settings(settings, log_path=settings.data_dir / "inference.log")
        yield
        await app.state.inference.close()
        scheduler.stop()
        dispatcher.stop()
        svc.store.engine.dispose()

    app = FastAPI(title="openft", version="0.1.0", lifespan=lifespan)
    api = APIRouter()
    for module in (files, uploads, jobs, checkpoints, models, chat, graders, webhook_routes):
        api.include_router(module.router)
    for prefix in PREFIXES:
        app.include_router(api, prefix=prefix)
    # What differs between the two APIs: model objects, and MKA1's chat stream route.
    app.include_router(models.openai_router, prefix="/v1")
    for module in (models, chat):
        app.include_router(module.mka1_router, prefix="/api/v1/llm")
    _install_error_handlers(app)
    openapi.install(app)
    dashboard.mount(app)
    app.add_middleware(Guard, prefixes=PREFIXES)
    app.add_middleware(RequestId)  # added last, so outermost: the guard's answers carry the id too

    @app.get("/health", include_in_schema=False)
    async def health():  # on the event loop: it answers even when every request thread is busy
        return {"status": "ok"}

    return app


class RequestId:
    """An x-request-id on every response, and a 500 in the envelope (with its id) for any unhandled error. Plain
    ASGI rather than FastAPI's http middleware, which costs a task and a stream per request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = f"req_{uuid.uuid4().hex}".encode()
        started = False

        async def send_with_id(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid)]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:  # rendered here so that even a 500 carries the envelope and the request id
            log.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                raise
            response = _error(500, "The server had an error while processing your request.", "server_error")
            await response(scope, receive, send_with_id)


def _error(status: int, message: str, type_: str, param=None, code=None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(x) for x in first["loc"] if x not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        message = f"Invalid value for '{param}': {first['msg']}" if param else first["msg"]
        if first["type"] == "extra_forbidden":
            message = f"Unrecognized request argument supplied: {param}"
        if first["type"] == "json_invalid":
            message = "The request body is not valid JSON."
        return _error(400, message, "invalid_request_error", param)

    @app.exception_handler(OSError)
    async def os_error(_request, exc: OSError):
        fault = storage_fault(exc)  # a full disk or an I/O error on the way: a 507, not a traceback
        if fault is None:
            raise exc
        return JSONResponse(fault.body(), status_code=fault.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        fault = storage_fault(exc.__cause__) if exc.__cause__ else None  # the body could not be spooled to disk
        if fault is not None:
            return JSONResponse(fault.body(), status_code=fault.status)
        if exc.status_code == 404:
            return _error(404, "Unknown endpoint.", "invalid_request_error", code="unknown_url")
        if exc.status_code == 405:
            allowed = _allowed_methods(request.app, request.scope)
            return _error(405, f"Method not allowed: this path answers {allowed}.", "invalid_request_error",
                          headers={"Allow": allowed})
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")


def _allowed_methods(app: FastAPI, scope) -> str:
    """Every method some route serves at this path (the router's own 405 names only the first route's methods)."""
    allowed = [method for method in HTTP_METHODS
               if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)]
    return ", ".join(allowed)
