"""The gate every HTTP request passes, as one pure ASGI middleware (no
BaseHTTPMiddleware: it would hide the client's disconnect from the handlers).

In order: count the request in flight; refuse it with 503 while the server drains
(health endpoints excepted); check the API key (401; health endpoints stay open); read
the body up to --max-request-bytes (413 past it, before any parsing) and hand it on
(as JSON when sent without a JSON content type, as curl -d does);
then, when the answer has gone out, log one line (method, route, status, items, tokens,
latency) and update the request metrics.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

from starlette.responses import JSONResponse

from .errors import error_body

logger = logging.getLogger("engine.server")

# Open without an API key, and answered while draining (readiness says "draining").
OPEN_PATHS = ("/v1/health/live", "/v1/health/ready", "/health")
# Open without an API key (documentation and a browser UI, which hold no data).
PUBLIC_PREFIXES = ("/docs", "/openapi.json", "/redoc", "/playground", "/static")


class ServerMiddleware:
    def __init__(self, app, *, state):
        self.app = app
        self.state = state  # the FastAPI app's state: config, metrics, scorer, draining

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope.get("path", "")
        info = scope.setdefault("state", {})
        status = {"code": 0}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        metrics = self.state.metrics
        metrics.in_flight.inc()
        self.state.in_flight += 1
        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                info["error_code"] = _code_of(refusal)
                await refusal(scope, receive, send_and_record)
                return
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                limit = self.state.config.max_request_bytes
                declared = _content_length(scope)
                if declared is not None and declared > limit:
                    body, too_big = b"", True
                else:
                    body, too_big = await _read_body(receive, limit)
                if too_big:
                    response = _error(
                        413,
                        f"the body is larger than the server's limit of "
                        f"{limit} bytes (--max-request-bytes)",
                        "body_too_large",
                    )
                    info["error_code"] = "body_too_large"
                    await response(scope, receive, send_and_record)
                    return
                bad_byte = _first_non_utf8(body)
                if bad_byte is not None:
                    info["error_code"] = "invalid_utf8"
                    response = _error(
                        400,
                        f"the body is not valid UTF-8 (byte {bad_byte}): "
                        "send JSON encoded as UTF-8",
                        "invalid_utf8",
                    )
                    await response(scope, receive, send_and_record)
                    return
                receive = _replay(body, receive)
                _default_to_json(scope)
            await self.app(scope, receive, send_and_record)
        finally:
            self.state.in_flight -= 1
            metrics.in_flight.dec()
            self._record(scope, path, status["code"], info, time.perf_counter() - start)

    def _refusal(self, scope, path: str):
        if path in OPEN_PATHS:
            return None
        if self.state.draining:
            retry = str(self.state.config.retry_after_s)
            return _error(503, "the server is shutting down: retry on another replica",
                          "draining", {"Retry-After": retry})  # fmt: skip
        key = self.state.config.api_key
        if key is None or path.startswith(PUBLIC_PREFIXES) or path == "/":
            return None
        given = _bearer(scope)
        if given is None:
            return _error(401, "missing API key: send 'Authorization: Bearer <key>'",
                          "missing_api_key")  # fmt: skip
        if not hmac.compare_digest(given.encode(), key.encode()):
            return _error(401, "wrong API key", "invalid_api_key")
        return None

    def _record(self, scope, path, code, info, seconds) -> None:
        label = _route_label(scope, path, self.state)
        m = self.state.metrics
        m.requests.labels(label, str(code or 499)).inc()
        m.latency.labels(label).observe(seconds)
        if info.get("error_code"):
            m.errors.labels(info["error_code"]).inc()
        items, tokens = info.get("items", 0), info.get("tokens", 0)
        if items:
            m.items.labels(label).inc(items)
            m.prompt_tokens.labels(label).inc(tokens)
        if path in OPEN_PATHS and code == 200:
            return  # probes every few seconds would drown the log
        logger.info("%s %s %s items=%d tokens=%d %.1f ms", scope.get("method"), path,
                    code or "499 (client gone)", items, tokens, seconds * 1000)  # fmt: skip


def _route_label(scope, path: str, state) -> str:
    """The route's path template (a bounded set of label values): the matched route's,
    or for a request refused before routing, the documented path it names."""
    route = scope.get("route")
    if route is not None:
        return route.path
    if state.documented_paths is None:
        state.documented_paths = frozenset(state.openapi()["paths"])
    return path if path in state.documented_paths else "unmatched"


def _error(status, message, code, headers=None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def _code_of(response: JSONResponse) -> str:
    return json.loads(response.body)["error"]["code"]


def _first_non_utf8(body: bytes) -> int | None:
    """1-based offset of the first byte that is not UTF-8, or None."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start + 1
    return None


def _default_to_json(scope) -> None:
    """Read a body sent without a JSON content type (curl -d sends a form type) as JSON:
    every endpoint takes JSON and nothing else."""
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-type"]
    given = next((v for k, v in scope.get("headers", ()) if k == b"content-type"), b"")
    if given.split(b";")[0].strip().lower() in (b"", b"application/x-www-form-urlencoded",
                                                  b"text/plain"):  # fmt: skip
        scope["headers"] = [*headers, (b"content-type", b"application/json")]


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _bearer(scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
    return None


async def _read_body(receive, limit: int) -> tuple[bytes, bool]:
    """The whole body, or (what was read, True) as soon as it passes `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive):
    """A receive that gives the buffered body once, then the server's own messages (so a
    handler still sees http.disconnect when the client leaves)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
