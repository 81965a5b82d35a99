"""One error type, one place that maps it to a status code, and the JSON shape each API's clients read.

text-embeddings-inference routes answer `{"error": message, "error_type": kind}`; the OpenAI routes (`/v1/...`)
answer OpenAI's nested `{"error": {"message", "type", "param", "code"}}`, which the `openai` client reads into
its exceptions, with the same `error_type` beside it (so one check reads both shapes).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorType(StrEnum):
    VALIDATION = "validation"  # 422: malformed body (not JSON, wrong types)
    EMPTY = "empty"  # 400: no input, an empty string, or a text with nothing visible to embed
    INVALID_TEXT = "invalid_text"  # 400: a text that is not valid Unicode (a lone surrogate)
    INVALID_PARAMETER = "invalid_parameter"  # 400: a well-typed field with a value this model cannot serve
    UNAUTHORIZED = "unauthorized"  # 401: an API key is required and was missing or wrong
    NOT_FOUND = "not_found"  # 404
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405 (with Allow)
    TIMEOUT = "timeout"  # 408: the client sent its body too slowly
    TOO_LARGE = "too_large"  # 413: too many inputs, a text over the token limit, body over the payload limit
    OVERLOADED = "overloaded"  # 429: estimated queue wait over budget, too many in flight, or shed past its deadline
    UNHEALTHY = "unhealthy"  # 503: not warmed up yet, or draining for shutdown
    BACKEND = "backend"  # 500: the model failed (never caused by client input)


STATUS = {
    ErrorType.VALIDATION: 422,
    ErrorType.EMPTY: 400,
    ErrorType.INVALID_TEXT: 400,
    ErrorType.INVALID_PARAMETER: 400,
    ErrorType.UNAUTHORIZED: 401,
    ErrorType.NOT_FOUND: 404,
    ErrorType.METHOD_NOT_ALLOWED: 405,
    ErrorType.TIMEOUT: 408,
    ErrorType.TOO_LARGE: 413,
    ErrorType.OVERLOADED: 429,
    ErrorType.UNHEALTHY: 503,
    ErrorType.BACKEND: 500,
}


class ApiError(Exception):
    def __init__(
        self, error_type: ErrorType, message: str, headers: Mapping[str, str] | None = None, param: str | None = None
    ):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.headers = headers
        self.param = param  # the request field at fault, where one is (OpenAI's `param`)

    @property
    def status_code(self) -> int:
        return STATUS[self.error_type]

    def response(self, path: str = "") -> JSONResponse:
        """This error as the API `path` belongs to answers it (for code that runs outside a route)."""
        return error_response(self.status_code, self.message, self.error_type.value, self.headers, path, self.param)


OPENAI_PREFIX = "/v1/"
# OpenAI's `type` by status (https://platform.openai.com/docs/guides/error-codes); `code` carries our error_type.
_OPENAI_TYPES = {
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


def openai_error_body(status_code: int, message: str, error_type: str, param: str | None = None) -> dict:
    kind = _OPENAI_TYPES.get(status_code, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": error_type}, "error_type": error_type}


def error_response(
    status_code: int,
    message: str,
    error_type: str,
    headers: Mapping[str, str] | None = None,
    path: str = "",
    param: str | None = None,
) -> JSONResponse:
    """The error in the shape of the API `path` belongs to (OpenAI's under /v1/, TEI's elsewhere)."""
    if path.startswith(OPENAI_PREFIX):
        body = openai_error_body(status_code, message, error_type, param)
    else:
        body = {"error": message, "error_type": error_type}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """(message, the first field at fault)."""
    parts, param = [], None
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            parts.append(f"body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})")
            continue
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        param = param or (loc[0] if loc else None)
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = _describe_validation(exc)
        return ApiError(ErrorType.VALIDATION, message, param=param).response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        path = request.url.path
        if exc.status_code == 400:  # Starlette's "error parsing the body": the body is not JSON
            return ApiError(ErrorType.VALIDATION, f"body: {exc.detail}").response(path)
        kind = {404: ErrorType.NOT_FOUND, 405: ErrorType.METHOD_NOT_ALLOWED}.get(exc.status_code)
        if kind is not None:  # keep the handler's headers: a 405 must say what is allowed
            return ApiError(kind, str(exc.detail), exc.headers).response(path)
        return error_response(exc.status_code, str(exc.detail), "http", exc.headers, path=path)


def error_responses(*statuses: int) -> dict:
    """OpenAPI `responses` for the error statuses a route can answer, all with the one error shape."""
    descriptions = {
        400: "Empty or invalid text, or a parameter this model cannot serve",
        401: "Missing or wrong API key",
        404: "No such model",
        408: "Body sent too slowly",
        413: "Too many inputs, a text over the token limit, or a body over the payload limit",
        422: "Malformed body",
        429: "Overloaded: retry after the Retry-After header's seconds",
        503: "Not ready yet, or draining for shutdown (Retry-After)",
    }
    return {status: {"model": ErrorBody, "description": descriptions[status]} for status in statuses}


class ErrorBody(BaseModel):
    """TEI routes' error shape; the /v1/ routes nest `error` as OpenAI does (OpenAIErrorBody)."""

    error: str
    error_type: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail
    error_type: str


def openai_error_responses(*statuses: int) -> dict:
    return {status: {**spec, "model": OpenAIErrorBody} for status, spec in error_responses(*statuses).items()}
