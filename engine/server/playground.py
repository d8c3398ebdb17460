"""The browser playground: a static page served by `reward-engine serve` at `/` and `/playground`.

The page (engine/server/static/: index.html, playground.css, playground.js) is plain HTML,
CSS and JavaScript with no build step and nothing loaded from elsewhere, so it works on
offline machines. It calls the server's own JSON endpoints (`GET /v1/models`,
`POST /v1/score`, `POST /v1/tokenize`) with the same API key rules as any client: the
page itself and its assets are public, and the page asks for the key when the server
answers 401, then sends it as a Bearer header.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "mount_playground"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Everything the page uses comes from this server; the policy makes a stray reference to
# another host (a CDN, a web font) fail loudly in the browser instead of silently
# needing a network.
_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": _CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def mount_playground(app: FastAPI) -> None:
    """Serve the playground page at `/` and `/playground`, its assets under
    `/playground/static/`. Not part of the OpenAPI schema (it is not a JSON API)."""
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        raise RuntimeError(f"the playground page is missing from the package ({index})")

    async def playground_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=_PAGE_HEADERS)

    for path in ("/", "/playground"):
        app.add_api_route(path, playground_page, methods=["GET"], include_in_schema=False)
    app.mount("/playground/static", StaticFiles(directory=STATIC_DIR), name="playground-static")
