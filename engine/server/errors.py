"""Errors as HTTP answers: every failure is ``{"error": {"message", "type", "code"}}``.

The shape is OpenAI's error object (what the `openai` client parses into its
APIStatusError), with ``code`` a short stable word a program can switch on and
``message`` a sentence that says what to fix. Handlers raise ``APIError``; the
exception handlers below also turn FastAPI's validation errors and Starlette's HTTP
errors (bad JSON, unknown route, wrong method) into the same shape, so no request
ever gets an HTML page or a bare 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# type of each status, as OpenAI names them
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An answer other than 200: status, a message that says what to fix, a code."""

    def __init__(self, status: int, message: str, code: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"),
                      "code": code}}  # fmt: skip


def error_response(status: int, message: str, code: str, headers=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        _note_error(request, exc.code)
        return error_response(exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        code = "invalid_json" if _is_json_error(exc) else "invalid_request"
        _note_error(request, code)
        return error_response(400, describe_validation_errors(exc.errors()), code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.url.path}: see /openapi.json for the endpoints"
        elif exc.status_code == 400 and "parsing the body" in message:
            message, code = "the body is not valid JSON in UTF-8", "invalid_json"
        _note_error(request, code)
        return error_response(exc.status_code, message, code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        _note_error(request, "internal")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "internal")


def describe_validation_errors(errors) -> str:
    """One sentence per pydantic error, naming where in the body it is."""
    parts = []
    for err in list(errors)[:5]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) if loc else "the body"
        kind = err.get("type", "")
        if kind == "json_invalid":
            ctx = err.get("ctx", {}).get("error", "")
            parts.append(f"the body is not valid JSON ({ctx})" if ctx else "the body is not "
                         "valid JSON")  # fmt: skip
            continue
        if kind == "missing":
            parts.append("the body is missing: send a JSON object" if not loc
                         else f"{where} is missing")  # fmt: skip
            continue
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    if len(errors) > 5:
        parts.append(f"... and {len(errors) - 5} more problems")
    return "; ".join(parts)


def _is_json_error(exc: RequestValidationError) -> bool:
    return any(e.get("type") == "json_invalid" for e in exc.errors())


def _note_error(request: Request, code: str) -> None:
    """The middleware counts errors by kind; the handler only names the kind."""
    request.scope.setdefault("state", {})["error_code"] = code
