"""Typed API errors. Domain code raises them; the API renders them once, in OpenAI's error envelope."""

from __future__ import annotations


class APIError(Exception):
    status = 400
    type = "invalid_request_error"
    headers: dict[str, str] = {}

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(APIError):
    status = 400


class Unauthorized(APIError):
    status = 401

    def __init__(self, message: str = "Incorrect API key provided."):
        super().__init__(message, code="invalid_api_key")


class NotFound(APIError):
    status = 404


class Conflict(APIError):
    """A request that conflicts with a job's status: the SDK must not retry it."""

    status = 409
    headers = {"x-should-retry": "false"}

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_job_status"):
        super().__init__(message, param=param, code=code)


class TooLarge(APIError):
    status = 413


class StorageFull(APIError):
    """The blob store could not take the bytes (a full disk, a file size limit, an I/O error): nothing was stored."""

    status = 507
    type = "server_error"

    def __init__(self, message: str):
        super().__init__(message, code="storage_error")


class Forbidden(APIError):
    status = 403


class RateLimited(APIError):
    """Too many requests in progress: the SDK retries after ``Retry-After`` seconds."""

    status = 429
    type = "requests"

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message, code="rate_limit_exceeded")
        self.headers = {"retry-after": str(retry_after)}
