"""What a person meets in a browser: /docs and /redoc that work offline, a front page at `/`.

The documentation pages load Swagger UI 5 and ReDoc from the pinned `fastapi-offline` package, served by
this server (FastAPI's defaults load them from a public CDN, so on a network without internet /docs
would be blank; Swagger UI 4 cannot render the OpenAPI 3.1 that FastAPI writes).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi_offline import FastAPIOffline

TITLE = "Optimus SageMaker kit"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs-assets"  # Swagger UI's and ReDoc's JavaScript, CSS and icon
DOCS_PATHS = (DOCS_URL, REDOC_URL, OPENAPI_URL, ASSETS_URL)  # the documentation, and everything under it


def create(**options: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc load their assets from this server."""
    return FastAPIOffline(
        docs_url=DOCS_URL, redoc_url=REDOC_URL, openapi_url=OPENAPI_URL, static_url=ASSETS_URL, **options
    )


def index(request: Request, models: Sequence[str] | None, version: str, load_error: str | None) -> Response:
    """The front page: models, version and links; HTML for a browser, JSON for everyone else."""
    links = {"docs": DOCS_URL, "redoc": REDOC_URL, "openapi": OPENAPI_URL, "metrics": "/metrics", "ping": "/ping"}
    names = list(models or ())
    metadata = {name: f"/api/metadata/{name}" for name in names}
    state = "serving" if models is not None else ("failed" if load_error else "loading")
    body = {
        "service": TITLE,
        "version": version,
        "status": state,
        "models": names,
        "metadata": metadata,
        "links": links,
    }
    if "text/html" not in (request.headers.get("accept") or ""):
        return Response(orjson.dumps(body), media_type="application/json")
    items = "".join(
        f'<li><a href="{html.escape(url)}">{html.escape(label)}</a></li>'
        for label, url in [*links.items(), *((f"metadata of {name}", url) for name, url in metadata.items())]
    )
    shown = ", ".join(html.escape(name) for name in names) or state
    return HTMLResponse(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{TITLE}</title></head><body>"
        f"<h1>{TITLE} {html.escape(version)}</h1><p>Models: {shown}</p><ul>{items}</ul></body></html>"
    )
