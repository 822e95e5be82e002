"""The published OpenAPI document (``/openapi.json``), finished in one place so that it describes what the service
really answers:

- every operation documents the errors any request can get, in OpenAI's envelope ``ErrorResponse``: 400 (an
  invalid request — the service never answers FastAPI's 422), 401 (no or a wrong API key), 404, 409, 413 (a body
  over its limit), 429 (too many requests in progress, with ``Retry-After``) and 507 (storage failed: a full disk,
  an object store refusing a write, an I/O error; what the request sent was not kept); a route's own further
  errors (an export's 403) are declared on the route and given the same envelope here;
- the API key is declared as a bearer security scheme;
- a route that parses its own body (chat completions) names a protocol model with ``json_body``, whose JSON schema
  becomes the operation's request body here;
- what a create returns links to the operations on the created object (``POST /files`` → ``/files/{file_id}``…),
  so that clients and stateful fuzzers can follow them.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

ERROR_ENVELOPE = {
    "type": "object",
    "title": "ErrorResponse",
    "description": "OpenAI's error envelope.",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string", "minLength": 1},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        },
    }},
}
ERRORS = {
    "400": "Invalid request: a missing, malformed or out-of-range parameter (named in `param`).",
    "401": "No API key, or a key the service does not know.",
    "404": "No such object for this organization (or no such route).",
    "409": "The request conflicts with the object's state (a job's status, a model in use).",
    "413": "The request body is larger than its limit.",
    "429": "Too many requests of this organization in progress: retry after `Retry-After` seconds.",
    "507": "The service's storage failed (a full disk, an object store refusing a write, an I/O error): nothing the "
           "request sent was kept; retry once space is freed.",
}
_BODIES: dict[str, type[BaseModel]] = {}


def json_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` for a route that reads its JSON body itself: the body is documented as ``model``."""
    _BODIES[model.__name__] = model
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install(app: FastAPI) -> None:
    """Serve the finished document (built once, on first request)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = finish(document)
        return app.openapi_schema

    app.openapi = openapi


def finish(document: dict) -> dict:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["ErrorResponse"] = ERROR_ENVELOPE
    for name, model in _BODIES.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                            "description": "An API key: `openft keys create`."}}
    document["security"] = [{"bearer": []}]
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in ERRORS.items():
                responses.setdefault(status, {"description": description, **error})
            for status, response in responses.items():  # a route's own errors (an export's 403)
                if status.startswith("4") and "content" not in response:
                    response.update(error)
    _link_creates(document["paths"], schemas)
    return document


def _link_creates(paths: dict, schemas: dict) -> None:
    """``POST /x`` answering an object with an ``id`` links to every operation on ``/x/{param}`` and below."""
    for path, operations in paths.items():
        created = operations.get("post", {}).get("responses", {}).get("200")
        if path.endswith("}") or not created or not _has_id(created, schemas):
            continue
        links = {}
        for target, target_ops in paths.items():
            param = target[len(path) + 1:].split("/")[0]
            if not (target.startswith(path + "/{") and param.endswith("}")):
                continue
            for op in target_ops.values():
                links[op["operationId"]] = {"operationId": op["operationId"],
                                            "parameters": {param[1:-1]: "$response.body#/id"}}
        if links:
            created["links"] = links


def _has_id(response: dict, schemas: dict) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    for option in schema.get("anyOf", [schema]):
        ref = option.get("$ref", "").rsplit("/", 1)[-1]
        if "id" in schemas.get(ref, {}).get("properties", {}):
            return True
    return False
