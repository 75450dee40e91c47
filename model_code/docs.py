"""What a person meets in a browser: /docs and /redoc that work offline, a front page at `/`.

The documentation pages load Swagger UI 5 and ReDoc from the pinned `fastapi-offline` package, served by
this server (FastAPI's defaults load them from a public CDN, so on a network without internet /docs
would be blank; Swagger UI 4 cannot render the OpenAPI 3.1 that FastAPI writes).

The OpenAPI document names what this server hosts (`document`): each route's `{model}` choices, and for
every tile route an example body per model, a tile of its size, so that "Try it out" succeeds as it comes.
"""

from __future__ import annotations

import base64
import copy
import functools
import html
import io
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image

from model_code.catalogue import METADATA, MODELS

TITLE = "Optimus SageMaker kit"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OPENAPI_URL = "/openapi.json"
ASSETS_URL = "/docs-assets"  # Swagger UI's and ReDoc's JavaScript, CSS and icon
DOCS_PATHS = (DOCS_URL, REDOC_URL, OPENAPI_URL, ASSETS_URL)  # the documentation, and everything under it
MODE_KEY = "x-optimus-mode"  # on an /api/.../{model} operation: the mode its route gives
WIRE_KEY = "x-optimus-wire"  # on an operation taking records that name their own model_name and mode
EXAMPLE_RGB = (214, 160, 198)  # an eosin pink: a tile of one colour is a valid input and compresses to bytes
ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "example": "field 'image_data': not a PNG, JPEG, TIFF or WebP image"},
        "status": {"type": "integer", "example": 400},
        "field": {"type": "string", "example": "image_data"},
        "reason": {"type": "string"},
        "record": {"type": ["integer", "null"], "description": "the record's index in a request of many"},
    },
}
ERRORS = {
    400: "a field is wrong: `field` names it, `error` says why",
    404: "a model this server does not host",
    406: "an Accept header this server cannot answer",
    413: "a body, a request's records or an answer over the limits",
    415: "a Content-Type other than JSON, JSON lines or a slide",
    503: "the models are still loading, or a forward pass failed (retry)",
}
SLIDE_BODY = {"schema": {"type": "string", "format": "binary"}}
SLIDE_TYPES = ("image/tiff", "application/octet-stream", "application/x-tar")


def request_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An operation's `openapi_extra`: records as JSON or JSON lines, a whole slide, and the errors it answers."""
    content: dict[str, Any] = {
        "application/json": {"schema": schema},
        "application/jsonlines": {"schema": {"type": "string", "description": "one record per line"}},
        **{kind: SLIDE_BODY for kind in SLIDE_TYPES},
    }
    return {"requestBody": {"required": True, "description": description, "content": content}, **responses()}


def responses(*codes: int) -> dict[str, Any]:
    """The error answers of an operation (all of ERRORS unless `codes` names some), in the server's layout."""
    json_error = {"application/json": {"schema": ERROR_SCHEMA}}
    return {"responses": {str(code): {"description": ERRORS[code], "content": json_error} for code in codes or ERRORS}}


def rest_schema(wire: dict[str, Any]) -> dict[str, Any]:
    """The wire record's schema for a route that gives the model and the mode: neither is required there."""
    schema = copy.deepcopy(wire)
    schema["required"] = [name for name in schema.get("required", []) if name not in ("model_name", "mode")]
    for name in ("model_name", "mode"):
        schema["properties"][name]["description"] = "given by the route; a record that sends it must agree"
    return schema


def describe_wire(schema: dict[str, Any]) -> dict[str, Any]:
    """The wire record's schema with what a person needs to fill it in."""
    described = copy.deepcopy(schema)
    fields = described["properties"]
    fields["image_data"]["description"] = (
        "the tile, base64 of a PNG, JPEG, TIFF or WebP image of the model's size (224x224 for the encoders and "
        "m-optimus, 512x512 for tissue-seg); empty for metadata"
    )
    fields["bulk_rna"]["description"] = "m-optimus only: raw counts of its input genes in order, -1 if not measured"
    fields["model_name"]["description"] = "a model this server hosts (GET /ping lists them)"
    return described


@functools.cache
def example_tile(size: int) -> str:
    """base64 of a size x size PNG of one colour: a few hundred bytes an example body can carry."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), EXAMPLE_RGB).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def example_record(model: str, mode: str | None = None) -> dict[str, Any]:
    """A record asking `model` for one tile of its size; with `mode`, naming model and mode (for /invocations)."""
    size = MODELS[model].tile_size
    record: dict[str, Any] = {"image_data": example_tile(size), "width": size, "height": size}
    record |= {"slide_name": "example", "x": 0, "y": 0, "patch_idx": 0}
    return record | ({"model_name": model, "mode": mode} if mode else {})


def document(app: FastAPI, hosted: Callable[[], Sequence[str] | None]) -> None:
    """Fill `app`'s OpenAPI document with the models `hosted()` gives (the catalogue's until they are loaded):
    `{model}` choices and examples, example bodies, and 400 where FastAPI lists a 422 the server never sends.
    Rebuilt when the hosted models change."""
    inner = app.openapi
    built: list[tuple[str, ...]] = []

    def openapi() -> dict[str, Any]:
        models = tuple(hosted() or MODELS)
        if built != [models]:
            app.openapi_schema = None
        schema = inner()
        if built != [models]:
            _fill(schema, models)
            built[:] = [models]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _fill(schema: dict[str, Any], models: Sequence[str]) -> None:
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
            mode = operation.pop(MODE_KEY, None)
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if mode is not None:
                choices = [name for name in models if mode in MODELS[name].modes] or list(models)
                for parameter in operation.get("parameters", []):
                    if parameter["name"] == "model":
                        parameter["schema"] |= {"enum": choices}
                        parameter["example"] = choices[0]
                        parameter["description"] = f"a model this server hosts with mode {mode}"
                if body is not None:
                    body["examples"] = {
                        name: {"summary": f"a {MODELS[name].tile_size}-pixel tile for {name}",
                               "value": example_record(name)}
                        for name in choices
                    }  # fmt: skip
            if operation.pop(WIRE_KEY, False) and body is not None:
                body["examples"] = {
                    name: {"summary": f"{name}: {first_mode(name)} of a {MODELS[name].tile_size}-pixel tile",
                           "value": example_record(name, first_mode(name))}
                    for name in models
                }  # fmt: skip
    for unused in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(unused, None)


def first_mode(model: str) -> str:
    """The model's first mode that runs a tile (embedding for the encoders, prediction for tissue-seg)."""
    return next(mode for mode in MODELS[model].modes if mode != METADATA)


def create(**options: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc load their assets from this server."""
    return FastAPIOffline(
        docs_url=DOCS_URL, redoc_url=REDOC_URL, openapi_url=OPENAPI_URL, static_url=ASSETS_URL, **options
    )


def index(
    request: Request, models: Sequence[str] | None, version: str, load_error: str | None, token: bool = False
) -> Response:
    """The front page: models, version, links and first requests to copy; HTML for a browser, JSON else."""
    links = {"docs": DOCS_URL, "redoc": REDOC_URL, "openapi": OPENAPI_URL, "metrics": "/metrics", "ping": "/ping"}
    names = list(models or ())
    metadata = {name: f"/api/metadata/{name}" for name in names}
    state = "serving" if models is not None else ("failed" if load_error else "loading")
    tries = first_requests(str(request.base_url).rstrip("/"), names, token)
    body = {
        "service": TITLE,
        "version": version,
        "status": state,
        "models": names,
        "metadata": metadata,
        "links": links,
        "try": tries,
    }
    if "text/html" not in (request.headers.get("accept") or ""):
        return Response(orjson.dumps(body), media_type="application/json")
    items = "".join(
        f'<li><a href="{html.escape(url)}">{html.escape(label)}</a></li>'
        for label, url in [*links.items(), *((f"metadata of {name}", url) for name, url in metadata.items())]
    )
    shown = ", ".join(html.escape(name) for name in names) or state
    commands = "".join(f"<pre>{html.escape(command)}</pre>" for command in tries)
    first = (
        f"<h2>A first request</h2>{commands}<p>Every route, tried in the browser: <a href='{DOCS_URL}'>/docs</a>.</p>"
    )
    return HTMLResponse(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{TITLE}</title></head><body>"
        f"<h1>{TITLE} {html.escape(version)}</h1><p>Models: {shown}</p>{first if tries else ''}<ul>{items}</ul>"
        "</body></html>"
    )


def first_requests(base: str, models: Sequence[str], token: bool) -> list[str]:
    """curl command lines that succeed as they are: the first model's metadata, then one tile through it."""
    if not models:
        return []
    model = models[0]
    auth = ' -H "Authorization: Bearer $OPTIMUS_TOKEN"' if token else ""
    record = orjson.dumps(example_record(model, first_mode(model))).decode()
    return [
        f"curl{auth} {base}/api/metadata/{model}",
        f"curl{auth} -X POST {base}/invocations -H 'Content-Type: application/json' -d '{record}'",
    ]
