"""The FastAPI application: one router mounted under /v1 (OpenAI) and /api/v1/llm (MKA1), errors rendered once in
OpenAI's envelope, an x-request-id on every response, and the scheduler started with the app."""

from __future__ import annotations

import logging
import uuid
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from openft.api import chat, checkpoints, files, graders, jobs, models
from openft.blobs import Blobs
from openft.config import Settings
from openft.errors import APIError
from openft.executors import LocalExecutor
from openft.infer.client import InferenceClient
from openft.scheduler import Scheduler
from openft.services import Services
from openft.store import Store, migrate

log = logging.getLogger("openft")
PREFIXES = ("/v1", "/api/v1/llm")


def build_services(settings: Settings) -> Services:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url()
    migrate(url)
    store = Store(url)
    return Services(settings=settings, store=store, blobs=Blobs(settings.resolved_blob_url()), open_mode=not store.has_keys())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = build_services(settings)
        app.state.services = svc
        if svc.open_mode:
            log.warning("No API keys configured: serving without auth as organization org_local (loopback only)")
        scheduler = Scheduler(svc.store, svc.blobs, settings, LocalExecutor(settings.trainer_python))
        if settings.enable_scheduler:
            scheduler.start()
        app.state.scheduler = scheduler
        # The inference worker (torch) starts at the first chat completion, never in this process.
        app.state.inference = InferenceClient.from_settings(settings, log_path=settings.data_dir / "inference.log")
        yield
        await app.state.inference.close()
        scheduler.stop()
        svc.store.engine.dispose()

    app = FastAPI(title="openft", version="0.1.0", lifespan=lifespan)
    api = APIRouter()
    for module in (files, jobs, checkpoints, models, chat, graders):
        api.include_router(module.router)
    for prefix in PREFIXES:
        app.include_router(api, prefix=prefix)
    _install_error_handlers(app)

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = f"req_{uuid.uuid4().hex}"
        request.state.request_id = rid
        try:
            response = await call_next(request)
        except Exception:  # rendered here so that even a 500 carries the envelope and the request id
            log.exception("unhandled error in %s %s", request.method, request.url.path)
            response = _error(500, "The server had an error while processing your request.", "server_error")
        response.headers["x-request-id"] = rid
        return response

    @app.get("/health", include_in_schema=False)
    def health():
        return {"status": "ok"}

    return app


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

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        if exc.status_code == 404:
            return _error(404, "Unknown endpoint.", "invalid_request_error", code="unknown_url")
        if exc.status_code == 405:
            return _error(405, "Method not allowed.", "invalid_request_error")
        return _error(exc.status_code, str(exc.detail), "invalid_request_error")
