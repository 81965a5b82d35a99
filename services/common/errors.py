"""One error type, one JSON shape ({"error", "error_type"}), one place that maps it to a status code."""

from __future__ import annotations

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
    def __init__(self, error_type: ErrorType, message: str, headers: dict | None = None):
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.headers = headers

    @property
    def status_code(self) -> int:
        return STATUS[self.error_type]


def error_response(status_code: int, message: str, error_type: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status_code, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        if err.get("type") == "json_invalid":
            parts.append(f"body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return error_response(exc.status_code, exc.message, exc.error_type.value, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(422, _describe_validation(exc), ErrorType.VALIDATION.value)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # Starlette's "error parsing the body": the body is not JSON
            return error_response(422, f"body: {exc.detail}", ErrorType.VALIDATION.value)
        kinds = {404: ErrorType.NOT_FOUND.value, 405: ErrorType.METHOD_NOT_ALLOWED.value}
        # Keep the handler's headers: a 405 must say what is allowed.
        return error_response(exc.status_code, str(exc.detail), kinds.get(exc.status_code, "http"), exc.headers)


def error_responses(*statuses: int) -> dict:
    """OpenAPI `responses` for the error statuses a route can answer, all with the one error shape."""
    descriptions = {400: "Empty or invalid text", 401: "Missing or wrong API key", 408: "Body sent too slowly",
                    413: "Too many inputs, a text over the token limit, or a body over the payload limit",
                    422: "Malformed body", 429: "Overloaded: retry after the Retry-After header's seconds",
                    503: "Not ready yet, or draining for shutdown (Retry-After)"}
    return {status: {"model": ErrorBody, "description": descriptions[status]} for status in statuses}


class ErrorBody(BaseModel):
    error: str
    error_type: str
