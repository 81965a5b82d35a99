"""One error type, one JSON shape ({"error", "error_type"}), one place that maps it to a status code."""

from __future__ import annotations

from enum import Enum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ErrorType(str, Enum):
    VALIDATION = "validation"  # 422: malformed body, wrong types
    EMPTY = "empty"  # 400: no input, or an empty string
    TOO_LARGE = "too_large"  # 413: too many inputs, a text over the token limit, body over the payload limit
    OVERLOADED = "overloaded"  # 429: the queue is full
    UNHEALTHY = "unhealthy"  # 503: not warmed up yet
    BACKEND = "backend"  # 500: the model failed (never caused by client input)
    NOT_FOUND = "not_found"


STATUS = {
    ErrorType.VALIDATION: 422,
    ErrorType.EMPTY: 400,
    ErrorType.TOO_LARGE: 413,
    ErrorType.OVERLOADED: 429,
    ErrorType.UNHEALTHY: 503,
    ErrorType.BACKEND: 500,
    ErrorType.NOT_FOUND: 404,
}


class ApiError(Exception):
    def __init__(self, error_type: ErrorType, message: str):
        super().__init__(message)
        self.error_type = error_type
        self.message = message

    @property
    def status_code(self) -> int:
        return STATUS[self.error_type]


def error_response(status_code: int, message: str, error_type: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status_code, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        headers = {"Retry-After": "1"} if exc.error_type is ErrorType.OVERLOADED else None
        return error_response(exc.status_code, exc.message, exc.error_type.value, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return error_response(422, _describe_validation(exc), ErrorType.VALIDATION.value)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        kind = ErrorType.NOT_FOUND.value if exc.status_code == 404 else "http"
        return error_response(exc.status_code, str(exc.detail), kind)
